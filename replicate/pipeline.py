"""What the Snakefile asks of the package: the job plan, and executing one figure notebook.

The Snakefile holds rules only; this module decides which training runs each figure needs
(by run hash, so figures that ask for the same run share one job; the job itself finds its
config again with ``python -m replicate run <paper> hash=<h>``) and runs notebooks with
papermill so that a failed notebook leaves no figure behind.
"""

from __future__ import annotations

import ast
import json
import os
import re
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from replicate import config as C

FIGURE_SUFFIXES = (".png", ".pdf", ".ipynb", ".json")  # what the notebook writes
PAGE_SUFFIX = ".html"  # the code-free page present() adds


@dataclass
class Plan:
    """Every configured figure at one hardware and scale, and the runs they need.

    Each figure comes from the plan cache under ``out`` (:func:`replicate.config.composed`),
    composed again only when a file it is composed from changed; what the Snakefile's input
    functions ask (run paths, config hashes, captions, code inputs) is computed here once.
    """

    hardware: str = "auto"
    scale: str = "default"
    out: str = "."
    figures: dict = field(init=False)

    def __post_init__(self):
        self.hardware = C.resolve_hardware_name(self.hardware)
        self.hw = C.load_hardware(self.hardware)
        C.check_scale(self.scale)
        self.figures, self.broken = {}, {}  # a broken figure config is reported, not fatal to the rest
        for name in C.list_figures():
            try:
                self.figures[name] = C.composed(name, self.hardware, self.scale, self.out)
            except C.ConfigError as err:
                self.broken[name] = str(err)
        self._needs = {name: [self.path("runs", fig.figure["paper"], h, "metrics.json") for h in fig.run_hashes]
                       for name, fig in self.figures.items()}
        self._captions = {name: _caption(name, fig.figure) for name, fig in self.figures.items()}
        self._two_stage = {name: _two_stage(fig.figure) for name, fig in self.figures.items()}
        self._paper_code = {paper: _paper_files(paper) for paper in {name.split("/")[0] for name in self.all_figures}}
        self._training_code: dict[str, list[str]] = {}

    def path(self, *parts: str) -> str:
        """A path under ``out`` spelled the way a user types it (no leading ``./``)."""
        return os.path.normpath(os.path.join(self.out, *parts))

    @classmethod
    def for_snakemake(cls, config: dict) -> "Plan":
        """The Snakefile's plan; a bad ``--config`` value is one line on stderr and exit status 2.
        The checkout's tracked files are first dated by their commits (replicate/store.py), so
        the shipped figures and runs are judged by the history that made them."""
        from replicate import store

        store.date_by_history()
        try:
            return cls(hardware=config.get("hardware", "auto"), scale=config.get("scale", "default"),
                       out=str(config.get("out", ".")))
        except C.ConfigError as err:
            fail(str(err))

    @property
    def all_figures(self) -> list[str]:
        """Every configured figure, broken ones included (``all`` fails on them with their line)."""
        return sorted([*self.figures, *self.broken])

    def require(self, figure: str) -> str:
        """``figure`` if it is configured and composes; else one line on stderr and exit 2.

        Called from the Snakefile's input functions, where an exception would become a traceback.
        """
        if figure in self.broken:
            fail(self.broken[figure])
        if figure not in self.figures:
            fail(f"unknown figure '{figure}' (no configs/figure/{figure}.yaml): known figures are "
                 + ", ".join(self.all_figures))
        return figure

    def run_metrics(self, figure: str, decided: str | None = None) -> list[str]:
        """The metrics.json of every run the figure needs (replicate.runs.run_dir). Under a
        two-stage seed design: the pilot's runs, or, given the seeds checkpoint's ``decided``
        file, the runs of the seeds it chose."""
        rules = self._two_stage.get(self.require(figure))
        if rules is None:
            return self._needs[figure]
        chosen = rules["seeds"][:rules["pilot"]] if decided is None else json.loads(Path(decided).read_text())["seeds"]
        runs, needs = self.figures[figure].runs, self._needs[figure]
        return [path for run, path in zip(runs, needs) if _seed_of(run, rules["key"]) in chosen]

    def seeds_decision(self, checkpoint, wildcards) -> str | None:
        """The seeds checkpoint's output for a two-stage figure (Snakemake waits for it); None for
        a figure that trains every listed seed."""
        if self._two_stage.get(self.require(f"{wildcards.paper}/{wildcards.figure}")) is None:
            return None
        return checkpoint.get(paper=wildcards.paper, figure=wildcards.figure).output[0]

    def figure_outputs(self, figure: str) -> list[str]:
        return [self.path("figures", f"{figure}{s}") for s in (*FIGURE_SUFFIXES, PAGE_SUFFIX)]

    def figure_configs(self, figure: str) -> list[str]:
        """The config files the figure is composed from: inputs of its job, so an edit to one
        (its claims, a shared part) reruns the figure even where Snakemake has no record of its
        params (a fresh clone's shipped figures)."""
        return [str(C.CONFIG_DIR.relative_to(C.REPO_ROOT) / source) for source in self.figures[self.require(figure)].sources]

    def figure_sha256(self, figure: str) -> str:
        """Hash of the figure's resolved config: a Snakemake param, so an edit reruns the figure."""
        return self.figures[self.require(figure)].config_sha256

    def caption(self, figure: str) -> str:
        """The figure's report caption: its title, the paper's source and its regime."""
        return self._captions[self.require(figure)]

    def paper_code(self, paper: str) -> list[str]:
        """The paper package's source files: inputs of its figures, so editing them reruns those."""
        return self._paper_code[paper] if paper in self._paper_code else _paper_files(paper)

    def training_code(self, paper: str) -> list[str]:
        """The paper's files its training runs import: inputs of its train jobs.

        Starting from the modules named by ``_target_`` in the paper's run configs, follow the
        imports (statically) inside ``replicate/papers/<paper>/``. A notebook-only helper
        (an analysis module no training module imports) can change without retraining.
        """
        if paper not in self._training_code:
            package = f"replicate.papers.{paper}"
            targets = {t.rsplit(".", 1)[0] for name, fig in self.figures.items()
                       if name.startswith(paper + "/") for run in fig.runs for t in _targets(run["run"])}
            self._training_code[paper] = _import_closure([package, *targets], package)
        return self._training_code[paper]


def _two_stage(fig: dict) -> dict | None:
    """The figure's two-stage seed design (replicate/seeds.py), or None (imported only when used)."""
    if fig.get("seeds") is None:
        return None
    from replicate import seeds

    return seeds.policy(fig)


def _seed_of(run: dict, key: str):
    from replicate import seeds

    return seeds.seed_of(run, key)


def _caption(figure: str, fig: dict) -> str:
    """A figure's report caption from its resolved figure block."""
    links = ", ".join(f"`arXiv {url.rsplit('/', 1)[-1]} <{url}>`_" for url in C.arxiv_links(fig))
    return (f"**{_rst_text(fig['title'])}** (paper: {links}, {_rst_text(fig['source']['where'])}). "
            f"{_rst_text(' '.join(fig['regime'].split()))} "
            f"Verdicts: figures/{figure}.html and figures/SCORECARD.md.")


def _paper_files(paper: str) -> list[str]:
    root = C.REPO_ROOT / "replicate" / "papers" / paper
    return sorted(str(p.relative_to(C.REPO_ROOT)) for p in root.rglob("*.py"))


def _rst_text(text: str) -> str:
    """``text`` as literal reStructuredText (the report's captions): markup characters escaped."""
    return re.sub(r"([\\`*_|\[\]<>])", r"\\\1", text)


def present(executed: Path, claims_json: Path, final_dir: Path, paths: dict[str, str]) -> None:
    """Make the executed notebook the reader's document: the answer (every claim's verdict, from
    the claims json) right under the title, code cells collapsed (``source_hidden``; tagged
    ``hide-input`` for renderers that honour it), and every path of this machine (the temporary
    output folder, the out dir, the checkout) replaced by the one a reader can follow, relative
    to the repository. Then write the code-free HTML page next to it (:func:`replicate.page.write_page`: offline)."""
    import nbformat

    from replicate import page, scorecard

    nb = nbformat.read(str(executed), as_version=4)
    record = json.loads(claims_json.read_text())
    answer = nbformat.v4.new_markdown_cell(scorecard.answer_markdown(record, final_dir))
    answer.metadata["tags"] = ["answer"]
    nb.cells.insert(1 if nb.cells and nb.cells[0].cell_type == "markdown" else 0, answer)
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        tags = cell.metadata.setdefault("tags", [])
        if "hide-input" not in tags:
            tags.append("hide-input")
        cell.metadata.setdefault("jupyter", {})["source_hidden"] = True
    nb = nbformat.reads(_relocate(nbformat.writes(nb), {**paths, str(C.REPO_ROOT): "."}), as_version=4)
    nbformat.write(nb, str(executed))
    page.write_page(nb, executed.with_suffix(".html"))


def _relocate(text: str, paths: dict[str, str]) -> str:
    """``text`` with each absolute path in ``paths`` (longest first) replaced by its shown form,
    where it is a whole path or a path's leading folders."""
    for old, new in sorted(paths.items(), key=lambda kv: -len(kv[0])):
        text = re.sub(re.escape(old) + r"(?=[/\"'\s\\]|$)", lambda _: new, text)
    return text


def _shown_path(path: Path) -> str:
    """``path`` relative to the repository root when it is inside it, else as it is."""
    try:
        return Path(os.path.relpath(path, C.REPO_ROOT)).as_posix() if Path(path).resolve().is_relative_to(
            C.REPO_ROOT.resolve()) else str(path)
    except ValueError:
        return str(path)


OUT_FOLDERS = ("figures", "runs", "logs")  # what the pipeline writes under the out dir


def outside_out_pattern(out: str) -> str:
    """A regex for paths with a ``figures/``, ``runs/`` or ``logs/`` folder that are not under
    ``out``: a target someone meant to write as ``<out>/figures/...``."""
    folders = "|".join(OUT_FOLDERS)
    return rf"(?!{re.escape(os.path.normpath(out))}/)(?:.*/)?(?:{folders})/.+"


def out_prefix_hint(target: str, out: str) -> str:
    """The error for ``target`` outside ``out``, naming the path under ``out`` that was meant."""
    parts = Path(target).parts
    start = next(i for i, part in enumerate(parts) if part in OUT_FOLDERS)
    meant = os.path.normpath(os.path.join(out, *parts[start:]))
    return f"{target} is not under out={out}: with --config out={out} ask for {meant}"


def fail(message: str) -> None:
    """End the Snakemake process with one line on stderr and exit status 2 (no traceback)."""
    print(f"error: {message}", file=sys.stderr, flush=True)
    raise SystemExit(2)


PAPERS = "replicate.papers"


def _import_closure(modules: list[str], package: str) -> list[str]:
    """The files of ``package`` that ``modules`` import, directly or through each other, and of
    any other paper package they import (a figure of one paper may use another's module)."""
    todo = [m for m in modules if m == package or m.startswith(package + ".")]
    package = PAPERS if package.startswith(PAPERS + ".") else package
    seen: set[Path] = set()
    while todo:
        path = _module_file(todo.pop())
        if path is None or path in seen:
            continue
        seen.add(path)
        todo += _imports(path, package)
    return sorted(str(p.relative_to(C.REPO_ROOT)) for p in seen)


def _targets(node) -> list[str]:
    """Every ``_target_`` string in a resolved config tree (plain data)."""
    if isinstance(node, dict):
        found = [node["_target_"]] if "_target_" in node else []
        return found + [t for value in node.values() for t in _targets(value)]
    if isinstance(node, list):
        return [t for value in node for t in _targets(value)]
    return []


def _module_file(module: str) -> Path | None:
    base = C.REPO_ROOT.joinpath(*module.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def _imports(path: Path, package: str) -> list[str]:
    """Modules of ``package`` that the file at ``path`` imports (absolute or relative imports);
    an imported name may itself be a submodule, so both readings are listed."""
    here = ".".join(path.relative_to(C.REPO_ROOT).with_suffix("").parts)
    here_package = here.removesuffix(".__init__") if path.name == "__init__.py" else here.rsplit(".", 1)[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = here_package.rsplit(".", node.level - 1)[0] if node.level > 1 else here_package
                base = f"{parent}.{base}" if base else parent
            found += [base] + [f"{base}.{alias.name}" for alias in node.names]
    return [m for m in found if m == package or m.startswith(package + ".")]


def execute_notebook(figure: str, hardware: str, scale: str, out: str | Path) -> Path:
    """Run ``notebooks/<figure>.ipynb`` with papermill; on success move its png, pdf, json and
    executed notebook into ``<out>/figures/<paper>/``. On failure nothing this attempt wrote is
    left there and no figure older than the attempt survives (a figure another writer finished
    meanwhile is kept): the executed notebook with the traceback goes to
    ``<out>/logs/notebooks/`` and the error is raised.

    The notebook writes into a staging folder named after this process (:func:`staging_folder`);
    staging folders of processes that are gone (killed attempts) are removed, live ones are not.
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
    remove_dead_staging(final_dir, name)
    before = {suffix: _identity(final_dir / f"{name}{suffix}") for suffix in (*FIGURE_SUFFIXES, PAGE_SUFFIX)}
    staging = staging_folder(final_dir, name)
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
        present(staging / f"{name}.ipynb", staging / f"{name}.json", final_dir, {
            str(staging): _shown_path(final_dir), str(out): _shown_path(out)})
        for suffix in (*FIGURE_SUFFIXES, PAGE_SUFFIX):
            os.replace(staging / f"{name}{suffix}", final_dir / f"{name}{suffix}")
    except BaseException:
        for suffix, identity in before.items():  # no stale figure survives a failed notebook
            target = final_dir / f"{name}{suffix}"
            if identity is not None and _identity(target) == identity:  # not replaced meanwhile
                target.unlink(missing_ok=True)
        failed = out / "logs" / "notebooks" / paper / f"{name}.ipynb"
        if (staging / f"{name}.ipynb").is_file():
            failed.parent.mkdir(parents=True, exist_ok=True)
            os.replace(staging / f"{name}.ipynb", failed)
            print(f"notebook failed; executed copy with the traceback: {failed}")
        raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return final_dir / f"{name}.png"


def staging_folder(final_dir: Path, name: str) -> Path:
    """A new folder ``.<name>.<pid>-<host>-<random>`` in ``final_dir`` for one notebook attempt."""
    return Path(tempfile.mkdtemp(prefix=f".{name}.{os.getpid()}-{_host()}-", dir=final_dir))


def remove_dead_staging(final_dir: Path, name: str) -> None:
    """Remove the staging folders of ``name`` left by attempts whose process is gone: those of
    this host whose pid no longer runs, and unnamed ones (made before folders carried a pid).
    A live attempt's folder, or one from another host (its pid cannot be checked), is kept."""
    owned = re.compile(rf"^\.{re.escape(name)}\.(\d+)-([A-Za-z0-9_]*)-[A-Za-z0-9_]+$")
    for folder in final_dir.glob(f".{name}.*"):
        if not folder.is_dir():
            continue
        match = owned.match(folder.name)
        if match and (match[2] != _host() or process_alive(int(match[1]))):
            continue
        shutil.rmtree(folder, ignore_errors=True)


def _host() -> str:
    import socket

    return re.sub(r"[^A-Za-z0-9_]", "_", socket.gethostname())


def process_alive(pid: int) -> bool:
    """Whether a process with this pid runs on this host."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by someone else
        return True
    return True


def _identity(path: Path) -> tuple[int, int] | None:
    """(inode, mtime) of ``path``, or None when it does not exist: a file replaced by another
    writer has a new identity."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return st.st_ino, st.st_mtime_ns
