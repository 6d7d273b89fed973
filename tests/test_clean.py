"""``python -m replicate clean``: run folders no figure asks for, listed with their sizes, deleted
only with ``--yes``; everything else under runs/ is left alone."""

from pathlib import Path

from replicate import clean
from replicate import config as C
from replicate.cli import main

WANTED, OLD = "0123456789abcdef", "fedcba9876543210"


def scratch_store(out: Path) -> None:
    """A wanted run (10 bytes), an old one of the same paper (1,500,000 bytes in two files), the
    wanted hash under another paper (old there), and a folder not named by a hash."""
    files = {f"runs/moe_gating/{WANTED}/metrics.json": 10, f"runs/moe_gating/{OLD}/metrics.json": 500_000,
             f"runs/moe_gating/{OLD}/checkpoints/last.ckpt": 1_000_000, f"runs/mist/{WANTED}/metrics.json": 7,
             "runs/moe_gating/notes/readme.txt": 3}
    for name, size in files.items():
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        (out / name).write_bytes(b"x" * size)


def test_a_dry_run_lists_old_runs_with_sizes_and_deletes_nothing(tmp_path):
    scratch_store(tmp_path)
    text = clean.clean(tmp_path, delete=False, wanted={"moe_gating": {WANTED}})
    lines = text.splitlines()
    assert lines[0] == f"    0.0 MB  {tmp_path}/runs/mist/{WANTED}"
    assert lines[1] == f"    1.5 MB  {tmp_path}/runs/moe_gating/{OLD}"
    assert lines[2].startswith("2 run folder(s) no figure config asks for, 1.5 MB: nothing deleted")
    assert (tmp_path / "runs" / "moe_gating" / OLD / "checkpoints" / "last.ckpt").is_file()


def test_yes_deletes_only_the_old_runs(tmp_path):
    scratch_store(tmp_path)
    text = clean.clean(tmp_path, delete=True, wanted={"moe_gating": {WANTED}})
    assert text.splitlines()[-1] == "deleted 2 run folder(s) no figure config asks for, 1.5 MB"
    left = sorted(str(p.relative_to(tmp_path)) for p in (tmp_path / "runs").glob("*/*"))
    assert left == [f"runs/moe_gating/{WANTED}", "runs/moe_gating/notes"]


def test_the_wanted_hashes_are_the_figures_sweep_points(tmp_path):
    wanted = clean.wanted_run_hashes(tmp_path, ["moe_gating/topk_exact"], ["cpu"], ["smoke"])
    assert wanted == {"moe_gating": set(C.composed("moe_gating/topk_exact", "cpu", "smoke", tmp_path).run_hashes)}
    assert wanted["moe_gating"]


def test_the_command_passes_yes_and_out(tmp_path, monkeypatch, capsys):
    scratch_store(tmp_path)
    monkeypatch.setattr(clean, "wanted_run_hashes", lambda out: {"moe_gating": {WANTED}, "mist": {WANTED}})
    assert main(["clean", f"out={tmp_path}"]) == 0
    assert f"runs/moe_gating/{OLD}" in capsys.readouterr().out
    assert main(["clean", f"out={tmp_path}", "--yes"]) == 0
    assert not (tmp_path / "runs" / "moe_gating" / OLD).exists()
    assert (tmp_path / "runs" / "mist" / WANTED).is_dir()


def test_the_command_refuses_overrides(capsys):
    assert main(["clean", "figure.run.seed=1"]) == 2
    assert "clean takes only out=<dir> and --yes" in capsys.readouterr().err
