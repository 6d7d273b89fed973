"""``python -m replicate new-paper NAME [figure=FIGURE]``: a new paper from the template.

Writes, from replicate/templates/ (see its README.md)::

    replicate/papers/NAME/{__init__,module,data}.py   LightningModule + DataModule (a working toy)
    replicate/papers/NAME/measures.py                 one function per figure: the claims' numbers
    configs/figure/NAME/FIGURE.yaml                   run, sweep, measure, claims, scales.smoke
    notebooks/NAME/FIGURE.ipynb                       parameters cell, FigureContext, plot, report
    tests/test_NAME.py                                unit tests + one smoke training run

The toy is a linear regression on synthetic data with a known answer, so the new figure runs end
to end at once (``snakemake figures/NAME/FIGURE.png``) and every place the paper's own content
goes is marked ``TEMPLATE``. Nothing existing is overwritten: a name already in use (any of those
paths exists) is refused, as is a name that is not a lowercase
Python identifier; both are one-line :class:`ScaffoldError` s (exit status 2 from the CLI).
"""

from __future__ import annotations

import json
import keyword
import re
from pathlib import Path

from replicate import config as C

TEMPLATES = Path(__file__).resolve().parent / "templates"
NAME = re.compile(r"^[a-z][a-z0-9_]*$")
MAX_NAME = 40


class ScaffoldError(C.ConfigError):
    """A paper name that cannot be used (one line, exit status 2)."""


def class_name(paper: str) -> str:
    """``my_paper`` -> ``MyPaper``."""
    return "".join(part[:1].upper() + part[1:] for part in paper.split("_") if part) or "Paper"


def check_name(name: str, what: str = "paper") -> str:
    if not NAME.match(name or "") or name.endswith("_") or "__" in name or len(name) > MAX_NAME:
        raise ScaffoldError(f"bad {what} name {name!r}: use lowercase letters, digits and single "
                            f"underscores, starting with a letter (e.g. my_paper), at most {MAX_NAME} "
                            "characters")
    if keyword.iskeyword(name):
        raise ScaffoldError(f"bad {what} name {name!r}: it is a Python keyword")
    return name


def targets(paper: str, figure: str, root: Path) -> dict[str, Path]:
    """Template file -> the path it becomes."""
    return {
        "paper/__init__.py.tmpl": root / "replicate" / "papers" / paper / "__init__.py",
        "paper/module.py.tmpl": root / "replicate" / "papers" / paper / "module.py",
        "paper/data.py.tmpl": root / "replicate" / "papers" / paper / "data.py",
        "paper/measures.py.tmpl": root / "replicate" / "papers" / paper / "measures.py",
        "figure.yaml.tmpl": root / "configs" / "figure" / paper / f"{figure}.yaml",
        "notebook.py.tmpl": root / "notebooks" / paper / f"{figure}.ipynb",
        "test_paper.py.tmpl": root / "tests" / f"test_{paper}.py",
    }


def _in_use(paper: str, root: Path) -> list[Path]:
    """Existing things a new paper called ``paper`` would overwrite or collide with."""
    candidates = [root / "replicate" / "papers" / paper, root / "configs" / "figure" / paper,
                  root / "notebooks" / paper, root / "tests" / f"test_{paper}.py"]
    used = []
    for path in candidates:
        if path.is_file() or (path.is_dir() and any(p.name != "__pycache__" for p in path.iterdir())):
            used.append(path)
    return used


def fill(text: str, paper: str, figure: str) -> str:
    out = text.replace("{{paper}}", paper).replace("{{figure}}", figure).replace("{{Class}}", class_name(paper))
    leftover = re.findall(r"\{\{\w+\}\}", out)
    if leftover:
        raise RuntimeError(f"template placeholder(s) {sorted(set(leftover))} not filled")
    return out


def notebook_from_percent(text: str) -> str:
    """A clean .ipynb (no outputs) from ``# %%`` cells (jupytext "percent" format, the subset
    the template uses: ``# %% [markdown]`` and ``# %% tags=["..."]``)."""
    cells = []
    for chunk in re.split(r"^# %%", text, flags=re.M)[1:]:
        header, _, body = chunk.partition("\n")
        body = body.strip("\n")
        if "[markdown]" in header:
            source = "\n".join(line[2:] if line.startswith("# ") else line.lstrip("#") for line in body.splitlines())
            cells.append({"cell_type": "markdown", "metadata": {}, "source": _lines(source)})
        else:
            tags = json.loads(m.group(1)) if (m := re.search(r"tags=(\[.*?\])", header)) else []
            cells.append({"cell_type": "code", "execution_count": None, "metadata": {"tags": tags},
                          "outputs": [], "source": _lines(body)})
    nb = {"cells": cells, "nbformat": 4, "nbformat_minor": 5,
          "metadata": {"kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
                       "language_info": {"name": "python"}}}
    return json.dumps(nb, indent=1, ensure_ascii=False) + "\n"


def _lines(source: str) -> list[str]:
    return source.splitlines(keepends=True)


def new_paper(paper: str, figure: str = "main", root: str | Path | None = None) -> list[Path]:
    """Create a paper from the template under ``root`` (default: this repository); return the
    files written. Refuses (ScaffoldError) before writing anything when the name is bad or in use."""
    root = Path(root) if root is not None else C.REPO_ROOT
    if not (TEMPLATES / "figure.yaml.tmpl").is_file():
        raise ScaffoldError(f"paper templates not found in {TEMPLATES}: new-paper needs the package "
                            "installed from a source checkout (pip install -e .)")
    check_name(paper, "paper")
    check_name(figure, "figure")
    if not (root / "configs" / "figure").is_dir() or not (root / "replicate" / "papers").is_dir():
        raise ScaffoldError(f"{root} is not a replicate checkout (no configs/figure or replicate/papers)")
    used = _in_use(paper, root)
    if used:
        raise ScaffoldError(f"paper name '{paper}' is taken: "
                            + ", ".join(str(p.relative_to(root)) for p in used)
                            + " already exist(s); choose another name (nothing was written)")
    rendered = {}
    for template, target in targets(paper, figure, root).items():
        text = fill((TEMPLATES / template).read_text(encoding="utf-8"), paper, figure)
        rendered[target] = notebook_from_percent(text) if target.suffix == ".ipynb" else text
    for target, text in rendered.items():
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text, encoding="utf-8")
    return list(rendered)
