"""``python -m replicate clean``: the run folders under ``<out>/runs/`` that no figure asks for.

A run folder is ``<out>/runs/<paper>/<hash>`` (:func:`replicate.runs.run_dir`). It is still asked
for when its hash is among the sweep points of a current figure config of its paper at some
scale and hardware profile (every one under configs/, not only the one in use: a GPU run is
kept on a CPU machine). The rest were left by edited configs; they are listed with their sizes,
and deleted only when asked (``--yes``).
"""

from __future__ import annotations

import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from replicate import config as C

RUN_HASH = re.compile(r"[0-9a-f]{16}")


@dataclass(frozen=True)
class StaleRun:
    path: Path
    size: int  # bytes of every file under the folder


def wanted_run_hashes(out: str | Path, figures: list[str] | None = None,
                      hardware: list[str] | None = None, scales: list[str] | None = None) -> dict[str, set[str]]:
    """``{paper: run hashes}`` that ``figures`` (default: every configured figure) ask for at each
    of ``hardware`` and ``scales`` (default: every profile and scale under configs/, ``auto``
    aside: it is ``cpu`` or ``gpu``), read through the plan cache under ``out``."""
    hardware = hardware or [h for h in C._choices("hardware") if h != "auto"]
    scales = scales or C._choices("scale")
    wanted: dict[str, set[str]] = {}
    for figure in figures or C.list_figures():
        hashes = wanted.setdefault(figure.split("/")[0], set())
        for profile in hardware:
            for scale in scales:
                hashes.update(C.composed(figure, profile, scale, out).run_hashes)
    return wanted


def stale_runs(out: str | Path, wanted: dict[str, set[str]]) -> list[StaleRun]:
    """The run folders under ``<out>/runs/`` whose hash is not in ``wanted`` for their paper,
    sorted by path. Anything else there (files, folders not named by a run hash) is left alone."""
    found = []
    for folder in sorted(Path(out, "runs").glob("*/*")):
        if folder.is_dir() and RUN_HASH.fullmatch(folder.name) and folder.name not in wanted.get(
                folder.parent.name, set()):
            found.append(StaleRun(folder, sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())))
    return found


def clean(out: str | Path, delete: bool, wanted: dict[str, set[str]] | None = None) -> str:
    """List (and with ``delete`` remove) the run folders no figure asks for; the text to print."""
    wanted = wanted_run_hashes(out) if wanted is None else wanted
    stale = stale_runs(out, wanted)
    lines = [f"{_megabytes(run.size):>10}  {run.path}" for run in stale]
    total = f"{len(stale)} run folder(s) no figure config asks for, {_megabytes(sum(r.size for r in stale))}"
    if delete:
        for run in stale:
            shutil.rmtree(run.path)
        lines.append(f"deleted {total}")
    else:
        lines.append(f"{total}: nothing deleted (dry run; `python -m replicate clean out={out} --yes` deletes them)")
    return "\n".join(lines)


def _megabytes(size: int) -> str:
    return f"{size / 1e6:.1f} MB"
