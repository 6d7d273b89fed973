"""What the Snakefile asks of the package: the job plan, and executing one figure notebook.

The Snakefile holds rules only; this module decides which training runs each figure needs
(by run hash, so figures that ask for the same run share one job; the job itself finds its
config again with ``python -m replicate run <paper> hash=<h>``) and runs notebooks with
papermill so that a failed notebook leaves no figure behind.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from replicate import config as C

FIGURE_SUFFIXES = (".png", ".pdf", ".ipynb", ".json")


@dataclass
class Plan:
    """Every configured figure composed at one hardware and scale, and the runs they need."""

    hardware: str = "auto"
    scale: str = "default"
    out: str = "."
    figures: dict = field(init=False)

    def __post_init__(self):
        self.hardware = C.resolve_hardware_name(self.hardware)
        self.hw = C.load_hardware(self.hardware)
        self.figures = {f: C.compose(f, self.hardware, self.scale) for f in C.list_figures()}
        self._needs = {name: [self.run_path(run_cfg) for run_cfg in C.run_configs(cfg)]
                       for name, cfg in self.figures.items()}

    def path(self, *parts: str) -> str:
        """A path under ``out`` spelled the way a user types it (no leading ``./``)."""
        return os.path.normpath(os.path.join(self.out, *parts))

    def run_path(self, run_cfg) -> str:
        """The metrics.json that marks the run finished (replicate.runs.run_dir)."""
        return self.path("runs", run_cfg.paper, C.run_hash(run_cfg), "metrics.json")

    def run_metrics(self, figure: str) -> list[str]:
        return self._needs[figure]

    def figure_outputs(self, figure: str) -> list[str]:
        return [self.path("figures", f"{figure}{s}") for s in FIGURE_SUFFIXES]

    def figure_sha256(self, figure: str) -> str:
        """Hash of the figure's resolved config: a Snakemake param, so an edit reruns the figure."""
        return C.config_sha256(self.figures[figure])

    def paper_code(self, paper: str) -> list[str]:
        """The paper package's source files: declared inputs, so editing them reruns its jobs."""
        root = C.REPO_ROOT / "replicate" / "papers" / paper
        return sorted(str(p.relative_to(C.REPO_ROOT)) for p in root.rglob("*.py"))


def execute_notebook(figure: str, hardware: str, scale: str, out: str | Path) -> Path:
    """Run ``notebooks/<figure>.ipynb`` with papermill; on success move its png, pdf, json and
    executed notebook into ``<out>/figures/<paper>/``. On failure nothing is written there: the
    executed notebook with the traceback goes to ``<out>/logs/notebooks/`` and the error is raised.
    """
    import papermill as pm

    C.figure_file(figure)
    paper, name = figure.split("/")
    source = C.REPO_ROOT / "notebooks" / paper / f"{name}.ipynb"
    if not source.is_file():
        raise FileNotFoundError(f"figure '{figure}' has a config but no notebook at {source}")
    out = Path(out).resolve()
    final_dir = out / "figures" / paper
    final_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=final_dir))
    params = {"figure": figure, "hardware": hardware, "scale": scale, "out": str(out),
              "figure_dir": str(staging), "train_missing": False}
    try:
        pm.execute_notebook(str(source), str(staging / f"{name}.ipynb"), parameters=params,
                            kernel_name="python3", cwd=str(C.REPO_ROOT), progress_bar=False,
                            log_output=True)
        missing = [s for s in FIGURE_SUFFIXES if not (staging / f"{name}{s}").is_file()]
        if missing:
            raise RuntimeError(f"notebook {source} ran but wrote no {', '.join(missing)} "
                               "(it must call FigureContext.save and .report)")
        for suffix in FIGURE_SUFFIXES:
            os.replace(staging / f"{name}{suffix}", final_dir / f"{name}{suffix}")
    except BaseException:
        for suffix in FIGURE_SUFFIXES:  # no stale figure survives a failed notebook
            (final_dir / f"{name}{suffix}").unlink(missing_ok=True)
        failed = out / "logs" / "notebooks" / paper / f"{name}.ipynb"
        if (staging / f"{name}.ipynb").is_file():
            failed.parent.mkdir(parents=True, exist_ok=True)
            os.replace(staging / f"{name}.ipynb", failed)
            print(f"notebook failed; executed copy with the traceback: {failed}")
        raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return final_dir / f"{name}.png"
