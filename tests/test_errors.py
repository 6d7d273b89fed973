"""Every mistake a user can make is one line on stderr and exit status 2, and no crash leaves
the pipeline stuck (issue: "Every mistake a user can make gets one line and exit 2").

Each test drives one row of that issue's table in a scratch copy of the repository whose only
figure is a freshly scaffolded toy paper (a linear regression that trains in a second), at smoke
scale; it checks the exit status, that stderr is at most three lines naming the file or key,
that nothing is left half-written, and that a rerun after the fix (or the crash) completes.
"""

import fcntl
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from replicate import config as C

SMOKE = ["scale=smoke", "hardware=cpu"]


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    root = tmp_path_factory.mktemp("errors")
    shutil.copytree(C.REPO_ROOT / "replicate", root / "replicate",
                    ignore=shutil.ignore_patterns("__pycache__", "papers"))
    (root / "replicate" / "papers").mkdir()
    shutil.copy2(C.REPO_ROOT / "replicate" / "papers" / "__init__.py", root / "replicate" / "papers")
    shutil.copytree(C.REPO_ROOT / "configs", root / "configs", ignore=shutil.ignore_patterns("figure"))
    (root / "configs" / "figure").mkdir()
    for name in ("Snakefile", "profiles", "schemas", "envs", "report"):  # what the Snakefile reads
        src = C.REPO_ROOT / name
        (shutil.copytree if src.is_dir() else shutil.copy2)(src, root / name)
    (root / "notebooks").mkdir()
    (root / "tests").mkdir()
    assert cli(root, "new-paper", "toy").returncode == 0
    return root


def env(root: Path, **extra: str) -> dict:
    return {**os.environ, "PYTHONPATH": str(root), "REPLICATE_ROOT": str(root), **extra}


def cli(root: Path, *args: str, **extra_env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "replicate", *args], cwd=root, env=env(root, **extra_env),
                          capture_output=True, text=True, timeout=600)


def snakemake(root: Path, *args: str, config=SMOKE) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "snakemake", *args, "--cores", "1", "--config", *config],
                          cwd=root, env=env(root), capture_output=True, text=True, timeout=600)


def one_line(done: subprocess.CompletedProcess, *names: str) -> str:
    """Assert a user's mistake: exit 2, at most three lines on stderr naming each of ``names``."""
    err = done.stderr.strip()
    assert done.returncode == 2, (done.returncode, done.stdout[-2000:], err[-2000:])
    assert 0 < len(err.splitlines()) <= 3, err
    for name in names:
        assert name in err, (name, err)
    return err


@pytest.fixture
def figure_file(repo):
    """The toy figure's config, restored after the test."""
    path = repo / "configs" / "figure" / "toy" / "main.yaml"
    text = path.read_text()
    yield path
    path.write_text(text)


def test_a_yaml_syntax_error_is_one_line_and_does_not_break_the_other_figures(repo):
    broken = repo / "configs" / "figure" / "toy" / "broken.yaml"
    broken.write_text("title: t\nregime: r\nclaims: [\n  bad: : x\n")
    try:
        err = one_line(cli(repo, "list", *SMOKE), "broken.yaml:4:", "YAML syntax error")
        listed = cli(repo, "list", *SMOKE).stdout
        assert "toy/main" in listed and "claims: recovers_weights" in listed  # the good one is listed
        one_line(snakemake(repo, "-n", "all"), "broken.yaml:4:")
        assert snakemake(repo, "-n", "figures/toy/main.png").returncode == 0  # others still plan
        one_line(cli(repo, "run", "toy/broken", "point=0", *SMOKE), "broken.yaml")
    finally:
        broken.unlink()
    assert cli(repo, "list", *SMOKE).returncode == 0
    assert err.count("\n") == 0


def test_a_claim_rule_that_does_not_parse_is_caught_before_any_work(repo, figure_file):
    figure_file.write_text(figure_file.read_text().replace('replicated: "< 0.05"', 'replicated: "at least 0.05"'))
    one_line(cli(repo, "list", *SMOKE), "main.yaml", "recovers_weights", "at least 0.05")
    one_line(snakemake(repo, "-n", "all"), "main.yaml", "recovers_weights")
    one_line(cli(repo, "run", "toy/main", "point=0", *SMOKE), "recovers_weights")
    assert not (repo / "runs").exists()  # nothing trained


def test_a_wrong_typed_module_value_is_one_line_and_leaves_no_run_directory(repo):
    # data.dim interpolates module.dim, and the data is built (and checked) before the model
    one_line(cli(repo, "run", "toy/main", "point=0", *SMOKE, "figure.run.module.dim=big"),
             "run.data", "SyntheticRegression", "cannot be built from its config")
    assert not list(repo.glob("runs/toy/*"))


@pytest.mark.parametrize("config,names", [
    (["scale=huge", "hardware=cpu"], ["unknown scale 'huge'"]),
    (["scale=smoke", "hardware=tpu"], ["unknown hardware 'tpu'"]),
])
def test_bad_config_values_through_snakemake_are_one_line(repo, config, names):
    one_line(snakemake(repo, "-n", "all", config=config), *names)


def test_an_unknown_figure_target_is_one_line(repo):
    one_line(snakemake(repo, "-n", "figures/toy/nosuch.png"), "unknown figure 'toy/nosuch'", "toy/main")


def test_a_corrupt_checkpoint_is_moved_aside_and_the_run_restarts(repo):
    out = repo / "corrupt"
    assert cli(repo, "run", "toy/main", "point=0", *SMOKE, f"out={out}").returncode == 0
    (run_dir,) = (out / "runs" / "toy").iterdir()
    (run_dir / "metrics.json").unlink()  # as if killed after a checkpoint
    (run_dir / "checkpoints" / "last.ckpt").write_bytes(b"PK\x03\x04truncated")
    done = cli(repo, "run", "toy/main", "point=0", *SMOKE, f"out={out}")
    assert done.returncode == 0, done.stderr[-2000:]
    assert "cannot be read" in done.stderr and "training from scratch" in done.stderr
    assert list((run_dir / "checkpoints").glob("last.ckpt.corrupt-*"))
    assert (run_dir / "metrics.json").is_file() and "resuming" not in done.stderr


def test_an_out_dir_that_cannot_be_written_is_one_line(repo):
    blocker = repo / "not_a_dir"
    blocker.write_text("a file where a folder should be")
    one_line(cli(repo, "run", "toy/main", "point=0", *SMOKE, f"out={blocker}"), str(blocker))


def test_a_run_being_trained_elsewhere_is_waited_for_then_refused_naming_the_holder(repo):
    out = repo / "shared_out"
    assert cli(repo, "run", "toy/main", "point=1", *SMOKE, f"out={out}").returncode == 0
    (run_dir,) = (out / "runs" / "toy").iterdir()
    (run_dir / "metrics.json").unlink()  # unfinished again, and another process holds it
    with open(run_dir / ".lock", "a+") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        held.write(f"pid {os.getpid()} on the-other-checkout")
        held.flush()
        done = cli(repo, "run", "toy/main", "point=1", *SMOKE, f"out={out}", REPLICATE_RUN_LOCK_TIMEOUT="3")
        assert done.returncode == 2, done.stderr[-2000:]
        first = next(line for line in done.stderr.splitlines() if "waiting for it" in line)
        last = done.stderr.strip().splitlines()[-1]
        assert "being trained by pid" in first and "the-other-checkout; waiting" in first
        assert "still being trained by" in last and "the-other-checkout" in last and "after 3 s" in last
    assert cli(repo, "run", "toy/main", "point=1", *SMOKE, f"out={out}").returncode == 0  # released


def test_a_run_finished_by_the_lock_holder_is_reused_by_the_waiter(repo):
    """The waiter ends with the holder's result (exit 0, no training of its own), so Snakemake
    never fails the job and never deletes the holder's metrics.json as 'output of a failed job'."""
    out = repo / "waited_out"
    assert cli(repo, "run", "toy/main", "point=0", *SMOKE, f"out={out}").returncode == 0
    (run_dir,) = (out / "runs" / "toy").iterdir()
    finished = (run_dir / "metrics.json").read_bytes()
    (run_dir / "metrics.json").unlink()
    with open(run_dir / ".lock", "a+") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        held.write(f"pid {os.getpid()} on the-other-checkout")
        held.flush()
        waiter = subprocess.Popen([sys.executable, "-m", "replicate", "run", "toy/main", "point=0", *SMOKE,
                                   f"out={out}"], cwd=repo, env=env(repo), stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True)
        waiting = ""
        while "waiting for it" not in waiting and waiter.poll() is None:
            waiting = waiter.stderr.readline()
        assert "being trained by pid" in waiting and "the-other-checkout" in waiting, waiting
        (run_dir / "metrics.json").write_bytes(finished)  # the holder finishes
    stdout, stderr = waiter.communicate(timeout=120)
    assert waiter.returncode == 0, stderr[-2000:]
    assert "training" not in stderr and "finished after 40 steps" in stdout
    assert (run_dir / "metrics.json").read_bytes() == finished


def test_an_optimiser_value_of_the_wrong_type_is_one_line_and_leaves_no_run_directory(repo, figure_file):
    figure_file.write_text(figure_file.read_text().replace("module.lr: [0.01, 0.1]", "module.lr: [fast, 0.1]"))
    out = repo / "optimiser_out"
    one_line(cli(repo, "run", "toy/main", "point=0", *SMOKE, f"out={out}"), "optimiser", "ToyModule", "TypeError")
    assert not out.exists()


def test_zero_max_steps_is_one_line_and_leaves_no_run_directory(repo):
    out = repo / "max_steps_out"
    one_line(cli(repo, "run", "toy/main", "point=0", *SMOKE, f"out={out}", "figure.run.trainer.max_steps=0"),
             "max_steps", "got 0")
    assert not out.exists()


def figure_metrics(out: Path) -> dict[str, dict]:
    return {d.name: json.loads((d / "metrics.json").read_text()) for d in (out / "runs" / "toy").iterdir()}


@pytest.fixture
def module_file(repo):
    """The toy's training code, restored after the test."""
    path = repo / "replicate" / "papers" / "toy" / "module.py"
    text = path.read_text()
    yield path
    path.write_text(text)


def test_a_forced_rerun_and_a_code_edit_retrain_through_snakemake(repo, module_file):
    out = repo / "code_edit"
    config = [*SMOKE, f"out={out}"]
    for point in ("0", "1"):
        assert cli(repo, "run", "toy/main", f"point={point}", *config).returncode == 0
    first = figure_metrics(out)
    assert len(first) == 2 and all(m["code_sha256"] for m in first.values())
    targets = [str(out / "runs" / "toy" / name / "metrics.json") for name in first]

    forced = snakemake(repo, *targets, "--forcerun", "train", config=config)  # deletes metrics.json first
    assert forced.returncode == 0, forced.stderr[-3000:]
    logs = "".join(p.read_text() for p in (out / "logs" / "runs" / "toy").glob("*.log"))
    assert logs.count("is at step 40 of 40 but the run has no metrics.json") == 2 and "resuming" not in logs
    again = figure_metrics(out)
    for name, metrics in again.items():  # retrained: the same numbers, really computed
        assert metrics["val"] == first[name]["val"] and math.isfinite(metrics["step_seconds"])

    module_file.write_text(module_file.read_text().replace(
        "        self.model = ToyModel(dim)\n",
        "        self.model = ToyModel(dim)\n        nn.init.constant_(self.model.linear.weight, 5.0)\n"))
    edited = snakemake(repo, *targets, config=config)  # the edited module is newer than the metrics
    assert edited.returncode == 0, edited.stderr[-3000:]
    logs = "".join(p.read_text() for p in (out / "logs" / "runs" / "toy").glob("*.log"))
    assert logs.count("not by the training code now") == 2 and "resuming" not in logs
    changed = figure_metrics(out)
    for name, metrics in changed.items():
        assert metrics["code_sha256"] != first[name]["code_sha256"]
        assert metrics["final_val_loss"] != first[name]["final_val_loss"]


def clone(repo: Path, where: Path) -> Path:
    """A second checkout of the scratch repo (its own .snakemake), sharing nothing else."""
    shutil.copytree(repo, where, ignore=shutil.ignore_patterns(".snakemake", "__pycache__", "runs", "figures",
                                                               "logs", "*_out", "code_edit", "killed*",
                                                               "corrupt", "staged", "concurrent*"))
    return where


def test_two_checkouts_writing_one_out_dir_both_finish_with_every_output(repo, tmp_path):
    out = tmp_path / "shared"
    target = str(out / "figures" / "toy" / "main.png")
    checkouts = [repo, clone(repo, tmp_path / "second")]
    procs = [subprocess.Popen([sys.executable, "-m", "snakemake", target, "--cores", "1", "--config", *SMOKE,
                               f"out={out}"], cwd=root, env=env(root), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for root in checkouts]
    results = [proc.communicate(timeout=600) for proc in procs]
    for proc, (_, stderr) in zip(procs, results):
        assert proc.returncode == 0, stderr[-3000:]
    for suffix in (".png", ".pdf", ".ipynb", ".json", ".html"):
        assert (out / "figures" / "toy" / f"main{suffix}").is_file(), suffix
    assert all(runs_finished for runs_finished in figure_metrics(out).values())
    assert not list((out / "figures" / "toy").glob(".main.*"))  # no staging folder left


def test_a_live_notebooks_staging_folder_is_kept_and_a_dead_ones_removed(tmp_path):
    from replicate.pipeline import remove_dead_staging, staging_folder

    live = staging_folder(tmp_path, "main")
    dead_pid = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True).stdout.strip()
    dead = tmp_path / live.name.replace(f".main.{os.getpid()}-", f".main.{dead_pid}-")
    dead.mkdir()
    unnamed = tmp_path / ".main.a1b2c3"  # made before staging folders carried their owner
    unnamed.mkdir()
    other = tmp_path / ".other.a1b2c3"  # another figure's
    other.mkdir()
    remove_dead_staging(tmp_path, "main")
    assert live.is_dir() and other.is_dir()
    assert not dead.exists() and not unnamed.exists()


def test_a_failed_notebook_removes_stale_figures_but_not_another_writers(tmp_path, monkeypatch):
    from replicate import pipeline

    final = tmp_path / "figures" / "toy"
    final.mkdir(parents=True)
    (final / "main.json").write_text("stale")  # from before this attempt

    def fails_while_another_writer_finishes(source, output, **kwargs):
        (final / "main.png").write_bytes(b"another writer's figure")
        raise RuntimeError("the notebook failed")

    monkeypatch.setattr("papermill.execute_notebook", fails_while_another_writer_finishes)
    monkeypatch.setattr(pipeline.C, "figure_file", lambda figure: None)
    monkeypatch.setattr(pipeline.C, "REPO_ROOT", tmp_path)
    (tmp_path / "notebooks" / "toy").mkdir(parents=True)
    (tmp_path / "notebooks" / "toy" / "main.ipynb").write_text("{}")
    with pytest.raises(RuntimeError, match="the notebook failed"):
        pipeline.execute_notebook("toy/main", "cpu", "smoke", tmp_path)
    assert not (final / "main.json").exists()
    assert (final / "main.png").read_bytes() == b"another writer's figure"


def test_a_killed_notebook_leaves_no_staging_folder_after_the_next_run(repo):
    out = repo / "staged"
    leftover = out / "figures" / "toy" / ".main.killed"
    leftover.mkdir(parents=True)
    (leftover / "main.png").write_bytes(b"half")
    done = snakemake(repo, str(out / "figures" / "toy" / "main.png"), config=[*SMOKE, f"out={out}"])
    assert done.returncode == 0, done.stderr[-3000:]
    assert not leftover.exists() and (out / "figures" / "toy" / "main.json").is_file()


def test_after_kill_9_of_snakemake_the_documented_recovery_completes(repo):
    """kill -9 of a running `snakemake` mid-job; then the README's recovery: `--unlock` (Snakemake's
    own lock survives a kill -9), and the rerun redoes the incomplete outputs by itself (the
    workflow profile, profiles/default, sets rerun-incomplete)."""
    out = repo / "killed"
    target = str(out / "figures" / "toy" / "main.png")
    cmd = [sys.executable, "-m", "snakemake", target, "--cores", "1", "--config", *SMOKE, f"out={out}"]
    proc = subprocess.Popen(cmd, cwd=repo, env=env(repo), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 300
    while time.time() < deadline and not list((out / "runs" / "toy").glob("*/checkpoints/*")):
        time.sleep(0.2)  # wait until a training job has written its first checkpoint
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    unlock = subprocess.run(cmd[:4] + ["--unlock", "--config", *SMOKE, f"out={out}"], cwd=repo,
                            env=env(repo), capture_output=True, text=True)
    assert unlock.returncode == 0, unlock.stderr[-2000:]
    done = subprocess.run(cmd, cwd=repo, env=env(repo), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (out / "figures" / "toy" / "main.json").is_file()


def process_group(pgid: int) -> list[int]:
    """Live (not zombie) processes of process group ``pgid``."""
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            members.append(int(stat.parent.name))
    return members


def test_killing_snakemake_alone_stops_its_training_job_with_a_checkpoint(repo, figure_file):
    """kill -9 of the Snakemake process only (not its group): the training job it started
    notices within seconds, writes a checkpoint and exits; no orphan keeps training."""
    figure_file.write_text(figure_file.read_text().replace("max_steps: 40, val_check_interval: 10",
                                                           "max_steps: 1000000, val_check_interval: 10"))
    out = repo / "killed_master"
    cmd = [sys.executable, "-m", "snakemake", str(out / "figures" / "toy" / "main.png"), "--cores", "1",
           "--config", *SMOKE, f"out={out}"]
    proc = subprocess.Popen(cmd, cwd=repo, env=env(repo), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.time() + 300
        while not list((out / "runs" / "toy").glob("*/checkpoints/last.ckpt")):
            assert time.time() < deadline and proc.poll() is None, "no checkpoint"
            time.sleep(0.2)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        deadline = time.time() + 60
        while process_group(proc.pid):
            assert time.time() < deadline, "the training job outlived snakemake by a minute"
            time.sleep(0.2)
    finally:
        for pid in process_group(proc.pid):
            os.kill(pid, signal.SIGKILL)
    (log,) = (out / "logs" / "runs" / "toy").glob("*.log")
    assert "interrupted at step" in log.read_text() and "snakemake process" in log.read_text()
    assert list((out / "runs" / "toy").glob("*/checkpoints/last.ckpt"))
    unlock = subprocess.run(cmd[:4] + ["--unlock", "--config", *SMOKE, f"out={out}"], cwd=repo,
                            env=env(repo), capture_output=True, text=True)
    assert unlock.returncode == 0, unlock.stderr[-2000:]
