"""What made the numbers: the machine, and the exact version of every package the project uses.

    python -m replicate.environment               # print the lock the installed versions give
    python -m replicate.environment --write       # rewrite requirements-lock.txt from them

Every figure's json records :func:`describe` (Python, CPU, threads, GPU and ``packages``: the
installed version of each distribution the project depends on, directly or not). The lock
``requirements-lock.txt`` pins those versions for the environment that made the shipped figures;
``README.md`` ("Reproduce exactly") installs it, and the scorecard flags a figure whose
``packages`` differ from the lock (:func:`lock_differences`).
"""

from __future__ import annotations

import argparse
import os
import platform
import re
from importlib import metadata
from pathlib import Path
from typing import Any

from packaging.requirements import Requirement

REPO_ROOT = Path(__file__).resolve().parent.parent
LOCK = REPO_ROOT / "requirements-lock.txt"
PROJECT = "replicate"
EXTRAS = ("test",)


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def packages(root: str = PROJECT, extras: tuple[str, ...] = EXTRAS) -> dict[str, str]:
    """``{distribution: version}`` for every installed distribution that ``root`` (with
    ``extras``) requires, followed transitively; markers are evaluated for this interpreter and
    the root itself is left out. Sorted by name."""
    found: dict[str, str] = {}
    todo = [(root, set(extras))]
    while todo:
        name, wanted = todo.pop()
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue
        key = _canonical(dist.metadata["Name"])
        if key in found and not wanted:
            continue
        if key != _canonical(root):
            found[key] = dist.version
        for text in dist.requires or []:
            req = Requirement(text)
            environments = [{"extra": e} for e in wanted] or [{"extra": ""}]
            if req.marker is None or any(req.marker.evaluate(env) for env in environments):
                if _canonical(req.name) not in found:
                    todo.append((req.name, set(req.extras)))
    return dict(sorted(found.items()))


def describe() -> dict[str, Any]:
    """The machine and software of this process: Python, CPU model, cores, torch threads, load
    average, GPU, and :func:`packages` (torch and Lightning versions are among them)."""
    import torch

    return {"python": platform.python_version(), "torch": torch.__version__,
            "lightning": packages().get("lightning"), "cpu": cpu_model(), "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "load_average": _load_average(),
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "packages": packages()}


def _load_average() -> list[float] | None:
    """The machine's 1-, 5- and 15-minute load averages: how shared it was while timings were taken."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else what :mod:`platform` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def lock_text(pinned: dict[str, str], python: str) -> str:
    """The lock file: one ``name==version`` per package, local labels dropped (``torch==2.13.0``
    matches the CPU wheel and a CUDA build alike)."""
    header = ("# The exact versions that made the shipped figures (python -m replicate.environment --write).\n"
              f"# Python {python}. Install: see README, \"Reproduce exactly\".\n")
    return header + "".join(f"{name}=={version.split('+', 1)[0]}\n" for name, version in pinned.items())


def read_lock(path: Path = LOCK) -> dict[str, str]:
    """``{distribution: version}`` pinned by the lock file (empty when there is none)."""
    if not Path(path).is_file():
        return {}
    pins = {}
    for line in Path(path).read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if "==" in line:
            name, version = line.split("==", 1)
            pins[_canonical(name)] = version.strip()
    return pins


def lock_differences(recorded: dict[str, str] | None, lock: dict[str, str]) -> list[str]:
    """Each package whose recorded version differs from the lock's, as ``name version (lock V)``;
    a package the lock pins but the record lacks counts as different. Local version labels
    (``2.13.0+cpu``) are compared without the label: the CPU and CUDA builds compute alike."""
    if not lock or recorded is None:
        return []
    recorded = {_canonical(k): v for k, v in recorded.items()}
    base = lambda v: str(v).split("+", 1)[0]  # noqa: E731
    return [f"{name} {recorded.get(name, 'missing')} (lock {version})"
            for name, version in lock.items() if base(recorded.get(name, "")) != base(version)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m replicate.environment", description=__doc__.split("\n")[0])
    parser.add_argument("--write", action="store_true", help=f"rewrite {LOCK.name}")
    args = parser.parse_args(argv)
    text = lock_text(packages(), platform.python_version())
    if args.write:
        tmp = LOCK.with_suffix(".txt.tmp")
        tmp.write_text(text)
        tmp.replace(LOCK)
        print(f"wrote {LOCK.name}: {len(text.splitlines()) - 2} packages")
    else:
        print(text, end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
