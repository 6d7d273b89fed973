"""The shipped results of a clone, dated by the history that made them.

A clone ships every figure (``figures/``) and, for the runs those figures read, the run store's
results: each run's ``metrics.json`` and resolved ``config.yaml`` under ``runs/<paper>/<hash>/``
(checkpoints are not shipped), and each two-stage figure's seed decision
(``.replicate/seeds/<paper>/<figure>.json``, the seeds checkpoint's output: without it Snakemake
would not know the checkpoint ran, and would take the figure as up to date whatever changed).
Snakemake decides what to rerun by modification times, and git writes a fresh clone's files at
checkout time in path order: ``figures/`` before ``notebooks/`` and ``replicate/``, so every
figure would look older than its notebook and be re-executed.

:func:`date_by_history` gives each tracked file the time of the last commit that changed it
(never a later time than it has: a file edited and then committed keeps its edit time), so
Snakemake's rule reads what the history says: a figure committed after its notebook, code and
configs is up to date; a figure whose paper code was committed after it is not, and neither is a
run whose training code changed since. A run's files are dated no later than the first figure
that read them (the figure's json names each run and the sha256 of the metrics.json it read, so
the date is only moved for the exact file the figure used): results committed after their figure
still count as what the figure was made from; so is a figure's seed decision.

Files that differ from ``HEAD`` (a user's edits) and untracked files keep their own times. The
dating is done once per ``HEAD`` (its commit is recorded in ``<repo>/.replicate/dated``); a copy
without git history is left as it is.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from replicate import config as C
from replicate.integrity import metrics_sha256
from replicate.pipeline import FIGURE_SUFFIXES, PAGE_SUFFIX

STAMP = Path(".replicate") / "dated"


def date_by_history(repo: Path = C.REPO_ROOT) -> int:
    """Date the tracked, unmodified files of ``repo`` by their last commit (see the module
    docstring); return how many files were dated (0 when already done for this ``HEAD``)."""
    head = _git(repo, "rev-parse", "HEAD")
    stamp = repo / STAMP
    if head is None or (stamp.is_file() and stamp.read_text().strip() == head.strip()):
        return 0
    edited = set((_git(repo, "diff", "--name-only", "HEAD") or "").splitlines())
    dates = {name: when for name, when in last_commit_times(repo).items() if name not in edited}
    dates.update(figure_outputs_dated_together(dates))
    dates.update(run_dates_capped_by_figures(repo, dates))
    dated = 0
    for name, when in dates.items():
        path = repo / name
        if path.is_file() and not path.is_symlink() and path.stat().st_mtime > when:
            os.utime(path, (when, when))  # only ever back: a file written before its commit keeps its time
            dated += 1
    stamp.parent.mkdir(parents=True, exist_ok=True)
    stamp.write_text(head)
    return dated


def last_commit_times(repo: Path) -> dict[str, int]:
    """``{tracked path: unix time of the newest commit on HEAD that changed it}``."""
    log = _git(repo, "log", "--format=%x00%ct", "--name-only", "--no-renames", "HEAD") or ""
    times: dict[str, int] = {}
    for block in log.split("\0")[1:]:
        lines = block.strip().splitlines()
        for name in lines[1:]:
            times.setdefault(name, int(lines[0]))  # newest first: keep the first time seen
    return times


SCORECARD_OUTPUTS = ("figures/SCORECARD.md", "figures/index.html", "figures/SCORECARD.rst")  # rule scorecard


def figure_outputs_dated_together(dates: dict[str, int]) -> dict[str, int]:
    """The outputs of one job dated together, at the newest of them: a figure's outputs no earlier
    than its json (an execution that rewrote the json but left a png byte-identical, so not
    committed again, made that png as much as the json), and the scorecard's three files."""
    groups = [[name[:-len(".json")] + suffix for suffix in (*FIGURE_SUFFIXES, PAGE_SUFFIX)]
              for name in dates if name.startswith("figures/") and name.endswith(".json")]
    together = {}
    for group in [*groups, list(SCORECARD_OUTPUTS)]:
        present = [name for name in group if name in dates]
        newest = max((dates[name] for name in present), default=None)
        together.update({name: newest for name in present if dates[name] < newest})
    return together


def run_dates_capped_by_figures(repo: Path, dates: dict[str, int]) -> dict[str, int]:
    """For each run a dated figure json names with the sha256 of its metrics.json, the run's
    dated files moved back to the figure's date when they were committed after it."""
    capped: dict[str, int] = {}
    for name, when in dates.items():
        if not (name.startswith("figures/") and name.endswith(".json")):
            continue
        paper = Path(name).parent.name
        for run in _figure_runs(repo / name):
            folder = f"runs/{paper}/{run.get('run')}"
            if f"{folder}/metrics.json" not in dates or not _read_by(run, repo / folder):
                continue
            for part in ("metrics.json", "config.yaml"):
                key = f"{folder}/{part}"
                if key in dates:
                    capped[key] = min(capped.get(key, dates[key]), when)
        decision = _decision_path(".", name).as_posix()
        if decision in dates and _decided_by(repo / name, repo / decision):
            capped[decision] = min(capped.get(decision, dates[decision]), when)
    return capped


def _decision_path(out: str | Path, figure_json: str | Path) -> Path:
    """The seeds checkpoint's output for the figure whose json is ``figure_json``."""
    from replicate.seeds import decision_path  # numpy: only where a decision is looked for

    figure_json = Path(figure_json)
    return decision_path(out, f"{figure_json.parent.name}/{figure_json.stem}")


def _decided_by(figure_json: Path, decision: Path) -> bool:
    """Whether ``decision`` holds the seed decision the figure's json records."""
    try:
        return json.loads(decision.read_text()) == json.loads(figure_json.read_text()).get("seeds")
    except (OSError, ValueError, AttributeError):
        return False


def shipped_run_files(out: str | Path = ".") -> list[Path]:
    """The run-store files to commit with the figures under ``out``: ``metrics.json`` and
    ``config.yaml`` of every run a figure json names, when the file there is the one it read,
    and the seed decision a two-stage figure's json records, when the file holds it."""
    files = []
    for figure in sorted(Path(out, "figures").glob("*/*.json")):
        decision = _decision_path(out, figure)
        if _decided_by(figure, decision):
            files.append(decision)
        for run in _figure_runs(figure):
            folder = Path(out, "runs", figure.parent.name, str(run.get("run")))
            if _read_by(run, folder):
                files += [folder / "metrics.json"] + [folder / "config.yaml"] * (folder / "config.yaml").is_file()
    return sorted(set(files))


def _read_by(run: dict, folder: Path) -> bool:
    """Whether ``folder`` holds the metrics.json the figure's ``run`` entry says it read."""
    return (folder / "metrics.json").is_file() and metrics_sha256(folder) == run.get("metrics_sha256")


def _figure_runs(path: Path) -> list[dict]:
    try:
        runs = json.loads(path.read_text()).get("runs") or []
    except (OSError, ValueError, AttributeError):
        return []  # not a figure's claims json
    return [run for run in runs if isinstance(run, dict)]


def _git(repo: Path, *args: str) -> str | None:
    try:
        done = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, check=False)
    except OSError:
        return None  # no git on this machine
    return done.stdout if done.returncode == 0 else None
