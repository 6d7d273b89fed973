"""SIGTERM (a scheduler's time-out, `kill`) and SIGINT (Ctrl-C) during training: one line, the
shell's status for the signal (143, 130), a checkpoint at the step reached, and a rerun that
resumes from it to the uninterrupted run's numbers exactly (dropout on, so the random states
in the checkpoint matter)."""

import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from replicate import runs

FIG = "gated_attention/attention_sink"
ARGS = [sys.executable, "-m", "replicate", "run", FIG, "point=1", "hardware=cpu", "scale=smoke",
        "+figure.run.module.model.dropout=0.1", "figure.run.trainer.max_steps=120",
        "figure.run.trainer.val_check_interval=40"]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("uninterrupted")
    done = subprocess.run([*ARGS, f"out={out}"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    return runs.read_metrics(next(out.glob("runs/*/*")))


def interrupt(out, signum) -> subprocess.CompletedProcess:
    """Start the run, send ``signum`` once it has passed its first validation, wait for it."""
    proc = subprocess.Popen([*ARGS, f"out={out}"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    deadline = time.time() + 300
    while not list(out.glob("runs/*/*/checkpoints/last.ckpt")):
        assert time.time() < deadline and proc.poll() is None, "the run ended before its first checkpoint"
        time.sleep(0.05)
    time.sleep(0.5)  # into the next validation interval, so the signal's step is not a validation's
    os.kill(proc.pid, signum)
    stdout, stderr = proc.communicate(timeout=120)
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)


@pytest.mark.parametrize("signum,status", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_saves_a_checkpoint_exits_with_its_status_and_the_rerun_resumes_exactly(
        tmp_path, reference, signum, status):
    done = interrupt(tmp_path, signum)
    assert done.returncode == status, done.stderr[-2000:]
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("error: interrupted at step ") and "rerun to resume" in last, done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    run_dir = next(tmp_path.glob("runs/*/*"))
    step = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)["global_step"]
    assert f"interrupted at step {step} ({signal.Signals(signum).name})" in last
    assert 40 < step < 120  # saved at the signal, not only at the last validation
    assert not runs.is_finished(run_dir)

    resumed = subprocess.run([*ARGS, f"out={tmp_path}"], capture_output=True, text=True)
    assert resumed.returncode == 0 and "resuming from" in resumed.stderr, resumed.stderr[-2000:]
    metrics = runs.read_metrics(run_dir)
    assert metrics["steps"] == 120
    assert metrics["train"] == reference["train"] and metrics["val"] == reference["val"]
