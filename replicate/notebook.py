"""What a figure notebook needs, in one object.

    fig = FigureContext(figure, hardware=hardware, scale=scale, out=out, figure_dir=figure_dir)
    fig.setup_markdown()           # the regime, the scale, the sweep, as prose for the reader
    runs = fig.runs()              # one row per sweep point (trains missing ones only when allowed)
    fig.save(matplotlib_figure)    # <figure_dir>/<name>.png and .pdf
    fig.report(measures.attention_sink(runs, fig.cfg))   # every claim's number -> verdicts -> .json

Measurements are plain numbers or :class:`replicate.claims.Estimate` (a value with its interval
over seeds or other independent units); every verdict is computed by ``replicate.claims``.

Under the pipeline the notebook is executed by ``python -m replicate notebook`` with the
parameters of the Snakemake job; opened in JupyterLab it runs with its default parameters
(smoke scale, outputs in a temporary folder) and trains the few seconds of runs it needs.
"""

from __future__ import annotations

import datetime as dt
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any, Mapping

import pandas as pd
from omegaconf import OmegaConf

from replicate import claims as claims_lib
from replicate import config as C
from replicate import integrity
from replicate import plotting, runs as runs_lib, seeds as seeds_lib
from replicate.environment import describe


class FigureContext:
    def __init__(self, figure: str, hardware: str = "auto", scale: str = "smoke", out: str = "",
                 figure_dir: str = "", overrides: list[str] | tuple[str, ...] = (),
                 train_missing: bool = True):
        self._t0 = time.perf_counter()
        self.started = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
        self.cfg = C.compose(figure, hardware=hardware, scale=scale, overrides=list(overrides))
        self.figure = self.cfg.figure
        self.out = Path(out) if out else Path(tempfile.mkdtemp(prefix="replicate-"))
        self.figure_dir = Path(figure_dir) if figure_dir else self.out / "figures" / self.figure.paper
        self.train_missing = train_missing
        self._runs: pd.DataFrame | None = None
        self.seed_decision: dict | None = None  # set by runs() under a two-stage seed design
        self._layout: list[str] = []  # what save() found unreadable in the figures (plotting.layout_problems)
        plotting.set_theme()

    @property
    def measure(self) -> Mapping[str, Any]:
        """Notebook-side parameters of the figure (``measure:`` in its config)."""
        return OmegaConf.to_container(self.figure.measure)

    def setup_markdown(self) -> str:
        f, hw, decision = self.figure, self.cfg.hardware, self.decide_seeds()
        sweep = " + ".join(", ".join(f"`{k}` ∈ {sweep_values(v)}" for k, v in grid.items()) or "one point"
                           for grid in C.grids(f)) if f.sweep else "none"
        lines = [f"**{f.title}**", "", f.regime.strip(), "",
                 f"*Scale* `{self.cfg.scale.name}` ({self.cfg.scale.description}); "
                 f"*hardware* `{hw.name}` ({hw.accelerator}, {hw.precision}).",
                 f"*Sweep*: {sweep} — {len(C.points(self.cfg))} training runs"
                 + (" listed (the seeds line says how many were trained)." if decision else ".")]
        if f.run is not None:
            trainers = [rc.run.trainer for rc in C.run_configs(self.cfg)] or [f.run.trainer]
            steps = sorted({t.max_steps for t in trainers})
            every = sorted({t.val_check_interval for t in trainers})
            shown = lambda xs: str(xs[0]) if len(xs) == 1 else f"{xs[0]}–{xs[-1]} (by run)"  # noqa: E731
            lines.append(f"*Training*: {shown(steps)} steps, validation every {shown(every)}.")
        if decision is not None:
            lines.append(seed_decision_markdown(decision))
        return "\n".join(lines)

    def decide_seeds(self) -> dict | None:
        """Under a two-stage seed design (``seeds:`` in the config, replicate/seeds.py): how many
        seeds the pilot runs ask for (the pilot is trained first when missing); None otherwise."""
        if self.seed_decision is None and seeds_lib.policy(self.figure) is not None:
            self.seed_decision = seeds_lib.decide_from_pilot(self.cfg, self.out, self.train_missing)
        return self.seed_decision

    def runs(self) -> pd.DataFrame:
        """One row per training run the figure reads. Under a two-stage seed design (``seeds:`` in
        the config, replicate/seeds.py) the pilot seeds first, then as many seeds as they ask for."""
        if self._runs is None:
            decision = self.decide_seeds()
            cfg = self.cfg if decision is None else seeds_lib.with_seeds(self.cfg, decision["seeds"])
            self._runs = runs_lib.figure_runs(cfg, self.out, train_missing=self.train_missing)
        return self._runs

    def save(self, fig) -> list[Path]:
        """Write the figure (.png, .pdf); what a reader could not read of it (plotting.layout_problems)
        is printed and recorded in the json under ``layout``."""
        problems = plotting.layout_problems(fig)
        for problem in problems:
            print(f"layout: {problem}")
        self._layout += problems
        return plotting.save(fig, self.figure_dir / f"{self.figure.name}.png")

    def report(self, measurements: Mapping[str, Any]) -> pd.DataFrame:
        """Judge every claim of the figure and write ``<name>.json``; returns the claims table
        (kind, measured, interval, n, verdict and the reason for it)."""
        specs = OmegaConf.to_container(self.figure.claims)
        if self.seed_decision is not None:
            measurements = seeds_lib.finalize(measurements, self.seed_decision["pilot"])
        judged = claims_lib.evaluate(specs, measurements, where=f"{self.figure.paper}/{self.figure.name}")
        runs_wall = float(self._runs["wall_seconds"].sum()) if self._runs is not None and len(self._runs) else 0.0
        notebook_wall = time.perf_counter() - self._t0
        payload = {
            "claim_contract": claims_lib.CLAIM_CONTRACT,
            "paper": self.figure.paper, "figure": self.figure.name, "title": self.figure.title,
            "source": {**OmegaConf.to_container(self.figure.source), "links": C.arxiv_links(self.figure)},
            "rerun": rerun_command(f"{self.figure.paper}/{self.figure.name}", self.cfg),
            "scale": self.cfg.scale.name, "hardware": self.cfg.hardware.name,
            "git_commit": git_commit(self.figure.paper), "started": self.started,
            "wall_seconds": round(runs_wall + notebook_wall, 2),
            "runs_wall_seconds": round(runs_wall, 2), "notebook_wall_seconds": round(notebook_wall, 2),
            "runs": self._run_costs(),
            "config_sha256": C.config_sha256(self.cfg),
            "environment": describe(),
            "data": self._data_provenance(),
            "layout": self._layout,
            "measurements": dict(measurements),
            "claims": [c.to_dict() for c in judged],
            **({"seeds": self.seed_decision} if self.seed_decision is not None else {}),
        }
        payload["digest"] = integrity.digest(payload)
        runs_lib.write_json_atomic(self.figure_dir / f"{self.figure.name}.json", payload)
        return claims_table(judged)

    def _run_costs(self) -> list[dict]:
        """Each training run this figure read: its directory name (the run's hash), wall time and the
        sha256 of the metrics.json it read (the digest covers them)."""
        if self._runs is None or "wall_seconds" not in self._runs:
            return []
        return [{"run": Path(row.run_dir).name, "wall_seconds": round(float(row.wall_seconds), 2),
                 "metrics_sha256": integrity.metrics_sha256(row.run_dir)}
                for row in self._runs.itertuples()]

    def _data_provenance(self) -> dict:
        if self._runs is None or "data" not in self._runs or not len(self._runs):
            return {}
        return self._runs["data"].iloc[0]


def sweep_values(values: list) -> str:
    """A sweep axis as a reader scans it: ``{1e-3, 4e-3, 0.016}``; settings that are dicts by their
    ``name`` (or as "3 settings"); a long list by its ends."""
    if values and all(isinstance(v, dict) for v in values):
        names = [str(v["name"]) for v in values if "name" in v]
        return "{" + ", ".join(names) + "}" if len(names) == len(values) else f"{len(values)} settings"
    shown = [format(v, "g") if isinstance(v, float) else str(v) for v in values]
    if len(shown) > 8:
        shown = [*shown[:3], "…", *shown[-2:]]
    return "{" + ", ".join(shown) + "}" + (f" ({len(values)} values)" if len(values) > 8 else "")


def rerun_command(figure: str, cfg) -> str:
    """The one command that re-executes this figure (its notebook; missing or changed runs
    retrain first) at the scale and hardware it was made with."""
    return (f"snakemake figures/{figure}.png --forcerun figure --cores all "
            f"--config scale={cfg.scale.name} hardware={cfg.hardware.name}")


def git_commit(paper: str | None = None) -> str:
    """HEAD of the repo the configs come from, with ``-dirty`` when a tracked source file the
    figure is made from differs from it: the shared core and build files, and with ``paper`` that
    paper's package, configs and notebooks (without: every source). Outputs (``figures/``, the run
    store ``runs/``), documentation, tests and benchmarks are not sources."""
    def git(*args):
        return subprocess.run(["git", "-C", str(C.REPO_ROOT), *args], capture_output=True, text=True)

    head = git("rev-parse", "HEAD")
    if head.returncode != 0:
        return "unknown"
    if paper is None:
        sources = [".", ":!figures", ":!runs", ":!docs", ":!tests", ":!benchmarks"]
    else:
        sources = ["replicate", ":!replicate/papers", f"replicate/papers/{paper}", "configs/config.yaml",
                   "configs/hardware", "configs/scale", *(f"configs/{part}/{paper}" for part in ("figure", "training", "parts")),
                   f"notebooks/{paper}", "Snakefile", "pyproject.toml", "requirements-lock.txt"]
    dirty = git("status", "--porcelain", "--untracked-files=no", "--", *sources).stdout.strip()
    return head.stdout.strip() + ("-dirty" if dirty else "")


def claims_table(judged: list[claims_lib.Claim]) -> pd.DataFrame:
    """The judged claims as a table a reader scans: what, how much, how sure, which verdict, why."""
    rows = [{"id": c.id, "kind": c.kind + (f" → {c.qualifies}" if c.qualifies else ""),
             "measured": c.measured, "interval": _interval_text(c.interval), "n": c.n,
             "MDE": claims_lib.mde_text(c.to_dict()), "n to decide": c.units_to_decide,
             "paper": c.paper_value, "rule": c.criterion, "verdict": c.verdict, "reason": c.reason}
            for c in judged]
    return pd.DataFrame(rows).set_index("id")


def _interval_text(interval) -> str:
    return "—" if interval is None else f"[{interval[0]:.4g}, {interval[1]:.4g}]"


def seed_decision_markdown(decision: dict) -> str:
    """One line on a two-stage seed design (replicate/seeds.py): the pilot, the seeds it chose and
    the n each paper claim asked for (or why it did not ask)."""
    asked = "; ".join(f"`{claim}` {entry['n']}" if entry.get("n") else f"`{claim}`: {entry['why']}"
                      for claim, entry in decision["claims"].items())
    cap = " (the cap: some claim asked for more)" if decision["max_reached"] else ""
    return (f"*Seeds* (Stein's two-stage design): a pilot of {decision['pilot']} seeds, then "
            f"{decision['n']} of the {decision['max']} listed{cap}. Seeds each paper claim asked for: {asked}. "
            f"Every t interval uses the pilot's sd with {decision['pilot'] - 1} degrees of freedom.")
