"""Every mistake a user can make is one line on stderr and exit status 2, and no crash leaves
the pipeline stuck (issue: "Every mistake a user can make gets one line and exit 2").

Each test drives one row of that issue's table in a scratch copy of the repository whose only
figure is a freshly scaffolded toy paper (a linear regression that trains in a second), at smoke
scale; it checks the exit status, that stderr is at most three lines naming the file or key,
that nothing is left half-written, and that a rerun after the fix (or the crash) completes.
"""

import fcntl
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
    for name in ("Snakefile", "profiles"):
        src = C.REPO_ROOT / name
        (shutil.copytree if src.is_dir() else shutil.copy2)(src, root / name)
    (root / "notebooks").mkdir()
    (root / "tests").mkdir()
    assert cli(root, "new-paper", "toy").returncode == 0
    return root


def env(root: Path) -> dict:
    return {**os.environ, "PYTHONPATH": str(root), "REPLICATE_ROOT": str(root)}


def cli(root: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "replicate", *args], cwd=root, env=env(root),
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
    one_line(cli(repo, "run", "toy/main", "point=0", *SMOKE, "figure.run.module.dim=big"),
             "run.module", "ToyModule")
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


def test_a_run_being_trained_elsewhere_is_refused_naming_the_holder(repo):
    out = repo / "shared_out"
    assert cli(repo, "run", "toy/main", "point=1", *SMOKE, f"out={out}").returncode == 0
    (run_dir,) = (out / "runs" / "toy").iterdir()
    (run_dir / "metrics.json").unlink()  # unfinished again, and another process holds it
    with open(run_dir / ".lock", "a+") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        held.write(f"pid {os.getpid()} on the-other-checkout")
        held.flush()
        one_line(cli(repo, "run", "toy/main", "point=1", *SMOKE, f"out={out}"), "being trained by",
                 "the-other-checkout")
    assert cli(repo, "run", "toy/main", "point=1", *SMOKE, f"out={out}").returncode == 0  # released


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
