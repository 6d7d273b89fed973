"""Compose and validate the Hydra config of one figure.

    compose("gated_attention/attention_sink", hardware="cpu", scale="default",
            overrides=["figure.run.trainer.max_steps=100"])

returns a validated, read-only DictConfig with three top-level keys:

* ``hardware`` — configs/hardware/<name>.yaml (``auto`` resolved to ``gpu`` or ``cpu`` here),
* ``scale``    — configs/scale/<name>.yaml,
* ``figure``   — configs/figure/<paper>/<figure>.yaml with its ``scales.<scale>`` block merged
  over it and then dropped, validated against :class:`FigureSchema`.

A wrong key, a wrong type or an unknown name raises :class:`ConfigError` whose one-line message
names the key and the file it came from.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import hashlib
import itertools
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

REPO_ROOT = Path(os.environ.get("REPLICATE_ROOT", Path(__file__).resolve().parents[1]))
CONFIG_DIR = REPO_ROOT / "configs"
FIGURE_DIR = CONFIG_DIR / "figure"


class ConfigError(ValueError):
    """A config problem a user can fix; the message names the key and the file."""


# --------------------------------------------------------------------------- schemas
@dataclass
class HardwareSchema:
    name: str
    accelerator: str
    devices: int = 1
    precision: str = "32-true"
    matmul_precision: str = "highest"
    compile: bool = False
    deterministic: bool = True
    threads_per_job: int = 1
    num_workers: int = 0
    gpus_per_job: int = 0


@dataclass
class ScaleSchema:
    name: str
    description: str = ""


@dataclass
class ClaimSchema:
    """One claim a figure checks (rules and kinds: replicate/claims.py)."""

    id: str
    kind: str  # paper (counted) | control (our ablation; names `qualifies`) | sanity (by construction)
    statement: str
    paper_value: str
    measured: str  # name of the measurement the figure's notebook reports
    replicated: str  # verdict rule, e.g. ">= 3" or "in [-0.65, -0.35]", applied to the interval
    partial: Optional[str] = None
    source: str = ""  # where the paper makes the claim (section, table, figure, equation)
    qualifies: Optional[str] = None  # control claims: the id of the paper claim they bear on
    requires: dict[str, str] = field(default_factory=dict)  # preconditions: measurement -> rule


@dataclass
class TrainerSchema:
    max_steps: int = 100
    val_check_interval: int = 50
    limit_val_batches: int = 4
    gradient_clip_val: Optional[float] = 1.0
    log_every_n_steps: int = 10  # checkpoints are written after every validation
    # the checkpoint of a finished run: last (kept) | none (deleted once metrics.json is written) |
    # auto (none at scale full, else last). Not part of the run's hash: it changes no number.
    keep_checkpoints: str = "auto"


@dataclass
class RunSchema:
    seed: int = 0
    module: Any = None  # {_target_: LightningModule class, ...kwargs}
    data: Any = None  # {_target_: LightningDataModule class, ...kwargs}
    trainer: TrainerSchema = field(default_factory=TrainerSchema)


@dataclass
class PaperSourceSchema:
    arxiv: str = ""  # the paper's arXiv id, e.g. "2505.06708" (several: comma-separated)
    where: str = ""  # the section / table / figure / equation this figure reproduces


@dataclass
class SeedsSchema:
    """A two-stage seed design (replicate/seeds.py): the first ``pilot`` seeds of the sweep's
    ``seed`` list decide how many of the list to train, aiming at an interval half-width of
    ``half_width`` times each paper claim's margin."""

    pilot: int = 3
    half_width: float = 0.5


@dataclass
class FigureSchema:
    paper: str = ""
    name: str = ""
    title: str = ""
    source: PaperSourceSchema = field(default_factory=PaperSourceSchema)
    regime: str = ""  # which regime the figure uses and how it differs from the paper
    claims: list[ClaimSchema] = field(default_factory=list)
    run: Optional[RunSchema] = None
    # a grid {dotted key in run: values}, or a list of such grids whose points are concatenated
    sweep: Any = field(default_factory=dict)
    measure: dict[str, Any] = field(default_factory=dict)  # cheap notebook-side parameters
    seeds: Optional[SeedsSchema] = None  # two-stage seed design; None: train every listed seed


# --------------------------------------------------------------------------- discovery
def list_figures() -> list[str]:
    """Every ``<paper>/<figure>`` under configs/figure, sorted."""
    return sorted(str(p.relative_to(FIGURE_DIR).with_suffix("")) for p in FIGURE_DIR.glob("*/*.yaml"))


def figure_file(figure: str) -> Path:
    path = FIGURE_DIR / f"{figure}.yaml"
    if figure not in list_figures():
        raise ConfigError(f"unknown figure '{figure}': known figures are {', '.join(list_figures())}")
    return path


def _choices(group: str) -> list[str]:
    return sorted(p.stem for p in (CONFIG_DIR / group).glob("*.yaml"))


def resolve_hardware_name(name: str) -> str:
    if name not in _choices("hardware"):
        raise ConfigError(f"unknown hardware '{name}': choose from {', '.join(_choices('hardware'))}")
    if name == "auto":
        if not _torch_built_for_gpu():  # a CPU-only torch has no CUDA device: no need to import it
            return "cpu"
        import torch

        return "gpu" if torch.cuda.is_available() else "cpu"
    return name


def _torch_built_for_gpu() -> bool:
    """Whether the installed torch was built for CUDA or ROCm, read from ``torch/version.py``
    without importing torch (an import costs a second; a CPU build never sees a GPU). When the
    file cannot be read this way the answer is True, so that torch itself is asked."""
    import ast
    import importlib.util

    spec = importlib.util.find_spec("torch")
    if spec is None or not spec.submodule_search_locations:
        return True
    try:
        tree = ast.parse((Path(next(iter(spec.submodule_search_locations))) / "version.py").read_text())
    except (OSError, SyntaxError):
        return True
    builds = {}
    for node in tree.body:
        targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(node, ast.AnnAssign) else []
        for target in targets:
            if isinstance(target, ast.Name) and target.id in ("cuda", "hip"):
                builds[target.id] = node.value
    return set(builds) != {"cuda", "hip"} or not all(
        isinstance(v, ast.Constant) and v.value is None for v in builds.values())


def check_scale(name: str) -> str:
    if name not in _choices("scale"):
        raise ConfigError(f"unknown scale '{name}': choose from {', '.join(_choices('scale'))}")
    return name


def load_hardware(name: str) -> DictConfig:
    """One hardware profile, validated, with ``auto`` resolved."""
    resolved = resolve_hardware_name(name)
    raw = OmegaConf.load(CONFIG_DIR / "hardware" / f"{resolved}.yaml")
    return OmegaConf.merge(OmegaConf.structured(HardwareSchema), raw)


# --------------------------------------------------------------------------- compose
def compose(figure: str, hardware: str = "auto", scale: str = "default",
            overrides: list[str] | tuple[str, ...] = ()) -> DictConfig:
    """Compose, merge the scale block and validate one figure's config."""
    return _compose(figure, hardware, scale, overrides)[0]


def _compose(figure: str, hardware: str, scale: str, overrides, with_sources: bool = False
             ) -> tuple[DictConfig, list[str]]:
    """:func:`compose`, and (``with_sources``) the files under configs/ it was composed from."""
    from hydra import compose as hydra_compose, initialize_config_dir
    from hydra.errors import HydraException

    import yaml

    path = figure_file(figure)
    hardware = resolve_hardware_name(hardware)
    check_scale(scale)
    args = [f"figure={figure}", f"hardware={hardware}", f"scale={scale}", *overrides]
    try:
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
            loaded = _record_loaded_configs() if with_sources else []
            raw = hydra_compose("config", overrides=args)
    except yaml.YAMLError as err:
        raise ConfigError(_yaml_error(err, path)) from None
    except HydraException as err:
        raise ConfigError(f"{figure}: {_first_line(err)} (overrides: {' '.join(overrides) or 'none'})") from None
    sources = sorted({f"{name}.yaml" for name in loaded if (CONFIG_DIR / f"{name}.yaml").is_file()})
    return _validate(raw, figure, scale, path, overrides), sources


def _record_loaded_configs() -> list[str]:
    """The config paths Hydra loads from now on in this ``initialize_config_dir`` context, listed
    as they are read: the defaults list of a compose, nested defaults included (the primary
    config, hardware, scale, figure, training configs, parts), and Hydra's own configs. Its
    repository reads each file once per compose, so recording the reads costs nothing extra."""
    from hydra.core.global_hydra import GlobalHydra

    repository = GlobalHydra.instance().config_loader().repository
    loaded, load = [], repository.load_config

    def recording_load(config_path: str):
        loaded.append(config_path)
        return load(config_path=config_path)

    repository.load_config = recording_load
    return loaded


def _validate(raw: DictConfig, figure: str, scale: str, path: Path, overrides) -> DictConfig:
    paper, name = figure.split("/")
    fig = OmegaConf.to_container(raw.figure, resolve=False)
    scale_blocks = fig.pop("scales", {}) or {}
    unknown = set(scale_blocks) - set(_choices("scale"))
    if unknown:
        raise ConfigError(f"{path}: unknown scale block(s) {sorted(unknown)} under 'scales'")
    block = dict(scale_blocks.get(scale) or {})
    if "sweep" in block and (isinstance(block["sweep"], list) or isinstance(fig.get("sweep"), list)):
        fig["sweep"] = block.pop("sweep")  # a list of grids replaces the sweep, never merges
    fig = OmegaConf.merge(fig, block)
    _reapply_figure_overrides(fig, overrides)  # command-line values beat the scale block
    fig.paper, fig.name = paper, name
    try:
        sweep = fig.pop("sweep", {})
        validated = OmegaConf.merge(OmegaConf.structured(FigureSchema), fig)
        validated.sweep = sweep  # a grid or a list of grids: assigned, since merging cannot change type
        hw = OmegaConf.merge(OmegaConf.structured(HardwareSchema), raw.hardware)
        sc = OmegaConf.merge(OmegaConf.structured(ScaleSchema), raw.scale)
        cfg = OmegaConf.create({"hardware": hw, "scale": sc, "figure": validated})
        OmegaConf.resolve(cfg.copy())  # interpolation errors now, not inside a job
    except OmegaConfBaseException as err:
        key = getattr(err, "full_key", "") or "?"
        raise ConfigError(f"{path}: bad value at '{key}': {_first_line(err)}") from None
    _check_sweep(cfg.figure, path)
    _check_claims(cfg.figure, path)
    _check_source(cfg.figure, path)
    _check_constructor_keys(cfg.figure, path)
    _resolve_keep_checkpoints(cfg.figure, scale, path)
    OmegaConf.set_readonly(cfg, True)
    return cfg


KEEP_CHECKPOINTS = ("last", "none", "auto")


def _resolve_keep_checkpoints(fig: DictConfig, scale: str, path: Path) -> None:
    """``run.trainer.keep_checkpoints: auto`` becomes ``none`` at scale full, else ``last``."""
    if fig.run is None:
        return
    value = fig.run.trainer.keep_checkpoints
    if value not in KEEP_CHECKPOINTS:
        raise ConfigError(f"{path}: run.trainer.keep_checkpoints must be one of "
                          f"{', '.join(KEEP_CHECKPOINTS)}, got '{value}'")
    if value == "auto":
        fig.run.trainer.keep_checkpoints = "none" if scale == "full" else "last"


def _without_keep_checkpoints(run: dict) -> dict:
    """A run config without ``trainer.keep_checkpoints`` (it changes no number: not hashed)."""
    trainer = {k: v for k, v in (run.get("trainer") or {}).items() if k != "keep_checkpoints"}
    return {**run, "trainer": trainer} if "trainer" in run else run


def _reapply_figure_overrides(fig: DictConfig, overrides) -> None:
    from hydra.core.override_parser.overrides_parser import OverridesParser

    for override in OverridesParser.create().parse_overrides(list(overrides)):
        key = override.key_or_group
        if key.startswith("figure.") and not override.is_delete():
            OmegaConf.update(fig, key[len("figure."):], override.value(), merge=False, force_add=True)


def _check_sweep(fig: DictConfig, path: Path) -> None:
    if not isinstance(fig.sweep, (DictConfig, ListConfig)):
        raise ConfigError(f"{path}: 'sweep' must be a grid (key: [values]) or a list of grids")
    if fig.sweep and fig.run is None:
        raise ConfigError(f"{path}: 'sweep' needs a 'run' block to sweep over")
    for grid in grids(fig):
        if not isinstance(grid, dict):
            raise ConfigError(f"{path}: each grid of a sweep list must be a mapping key: [values]")
        for key, values in grid.items():
            if OmegaConf.select(fig.run, key, default="__missing__") == "__missing__":
                raise ConfigError(f"{path}: sweep key '{key}' is not a key of 'run'")
            if not isinstance(values, list) or len(values) == 0:
                raise ConfigError(f"{path}: sweep key '{key}' needs a non-empty list of values")


def _check_claims(fig: DictConfig, path: Path) -> None:
    from replicate.claims import validate_specs

    try:
        validate_specs(OmegaConf.to_container(fig.claims), where=str(path))
    except ValueError as err:
        raise ConfigError(str(err)) from None


def _check_constructor_keys(fig: DictConfig, path: Path) -> None:
    """Every key beside a ``_target_`` in ``run.module`` and ``run.data`` (nested targets too) is a
    parameter of that class's ``__init__``, and every parameter without a default is given, so a
    misspelt key fails here, when the plan is made, not inside a training job."""
    if fig.run is None:
        return
    run = OmegaConf.to_container(fig.run, resolve=False)
    for part in ("module", "data"):
        _check_target_keys(run.get(part), f"run.{part}", path)


def _check_target_keys(node: Any, where: str, path: Path) -> None:
    if isinstance(node, list):
        for i, item in enumerate(node):
            _check_target_keys(item, f"{where}[{i}]", path)
    if not isinstance(node, dict):
        return
    for key, value in node.items():
        _check_target_keys(value, f"{where}.{key}", path)
    if "_target_" not in node:
        return
    target = node["_target_"]
    accepted, required = _init_parameters(target, path)
    given = {key for key in node if not key.startswith("_")}  # _target_, _convert_, ... are Hydra's
    unknown = sorted(given - accepted) if accepted is not None else []
    if unknown:
        raise ConfigError(f"{path}: '{where}.{unknown[0]}' is not a parameter of {target} "
                          f"(its parameters: {', '.join(sorted(accepted))})")
    missing = sorted(required - given)
    if missing:
        raise ConfigError(f"{path}: '{where}' lacks '{missing[0]}', a required parameter of {target}")


@functools.lru_cache(maxsize=None)
def _init_parameters(target: str, path: Path) -> tuple[Optional[frozenset], frozenset]:
    """The keyword parameters of ``target``'s constructor (None when it takes ``**kwargs`` or
    Python cannot tell, as for some classes written in C) and those without a default. A class of
    this package that defines its own ``__init__`` is read from its source (no import: a cold plan
    then imports neither torch nor Lightning); any other class is imported and inspected."""
    import importlib
    import inspect

    from_source = _init_parameters_from_source(target)
    if from_source is not None:
        return from_source
    module, _, name = target.rpartition(".")
    try:
        target_class = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as err:
        raise ConfigError(f"{path}: _target_ {target} cannot be loaded ({_first_line(err)})") from None
    try:
        signature = inspect.signature(target_class)
    except (TypeError, ValueError):
        return None, frozenset()
    named = [p for p in signature.parameters.values()
             if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    takes_any = any(p.kind == p.VAR_KEYWORD for p in signature.parameters.values())
    return (None if takes_any else frozenset(p.name for p in named),
            frozenset(p.name for p in named if p.default is p.empty))


def _init_parameters_from_source(target: str) -> Optional[tuple[Optional[frozenset], frozenset]]:
    """:func:`_init_parameters` read from the source of a ``replicate.*`` class whose body defines
    ``__init__`` (no decorator, no positional-only parameters); None when the source cannot say."""
    import ast

    module, _, name = target.rpartition(".")
    if module.split(".")[0] != __name__.split(".")[0]:
        return None
    source = Path(__file__).parent.joinpath(*module.split(".")[1:]).with_suffix(".py")
    if not source.is_file():
        return None
    tree = ast.parse(source.read_text(encoding="utf-8"))
    cls = next((n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == name), None)
    init = cls and next((n for n in cls.body if isinstance(n, ast.FunctionDef) and n.name == "__init__"), None)
    if init is None or cls.decorator_list or init.args.posonlyargs or not init.args.args:
        return None
    args, kwonly = init.args.args[1:], init.args.kwonlyargs  # args[0] is self
    required = [a.arg for a in args[:len(args) - len(init.args.defaults)]]
    required += [a.arg for a, default in zip(kwonly, init.args.kw_defaults) if default is None]
    named = frozenset(a.arg for a in args + kwonly)
    return (None if init.args.kwarg else named), frozenset(required)


ARXIV_ID = re.compile(r"\d{4}\.\d{4,5}")


def _check_source(fig: DictConfig, path: Path) -> None:
    """``source.arxiv``, when given, is one or more comma-separated arXiv ids."""
    ids = [part.strip() for part in fig.source.arxiv.split(",") if part.strip()]
    bad = [i for i in ids if not ARXIV_ID.fullmatch(i)]
    if bad:
        raise ConfigError(f"{path}: source.arxiv '{bad[0]}' is not an arXiv id like 2505.06708")


def arxiv_links(fig: DictConfig | dict) -> list[str]:
    """``https://arxiv.org/abs/<id>`` for every id in the figure's ``source.arxiv``."""
    return [f"https://arxiv.org/abs/{part.strip()}" for part in fig["source"]["arxiv"].split(",") if part.strip()]


def _yaml_error(err: Exception, path: Path) -> str:
    """``<file>:<line>:<column>: YAML syntax error: <problem>`` (the file that failed to parse)."""
    mark = getattr(err, "problem_mark", None)
    where = f"{mark.name}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(path)
    problem = getattr(err, "problem", None) or _first_line(err)
    return f"{where}: YAML syntax error: {problem}"


def _first_line(err: Exception) -> str:
    return str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__


# --------------------------------------------------------------------------- sweep points
def grids(fig: DictConfig) -> list[dict[str, list[Any]]]:
    """``figure.sweep`` as a list of grids (a single grid is a list of one)."""
    sweep = OmegaConf.to_container(fig.sweep)
    return sweep if isinstance(sweep, list) else [sweep]


def points(cfg: DictConfig) -> list[dict[str, Any]]:
    """The figure's sweep points: each grid's cartesian product in key order, grids in order."""
    if cfg.figure.run is None:
        return []
    return [dict(zip(grid, values)) for grid in grids(cfg.figure)
            for values in itertools.product(*grid.values())]


def run_config(cfg: DictConfig, point: int) -> DictConfig:
    """The fully resolved training config of sweep point ``point`` plus the hardware it runs on."""
    all_points = points(cfg)
    if not 0 <= point < len(all_points):
        raise ConfigError(f"{cfg.figure.paper}/{cfg.figure.name}: point={point} out of range "
                          f"(this figure has {len(all_points)} points)")
    return OmegaConf.create(_resolved_run(cfg, OmegaConf.create(_run_scope(cfg)), all_points[point]))


def run_configs(cfg: DictConfig) -> list[DictConfig]:
    """``run_config`` of every sweep point, in point order."""
    return [OmegaConf.create(run) for run in _resolved_runs(cfg)]


def _run_scope(cfg: DictConfig) -> dict:
    """Only what a run may interpolate from, as plain data: ``${figure.run.*}`` and ``${hardware.*}``."""
    return {"figure": {"run": OmegaConf.to_container(cfg.figure.run)},
            "hardware": OmegaConf.to_container(cfg.hardware)}


def _resolved_run(cfg: DictConfig, scope: DictConfig, values: dict[str, Any]) -> dict:
    """One sweep point's run config as plain data: ``values`` set in a copy of ``scope``, then resolved."""
    full = copy.deepcopy(scope)
    for key, value in values.items():
        OmegaConf.update(full, f"figure.run.{key}", value, merge=False)
    resolved = OmegaConf.to_container(full, resolve=True)  # after the point's values
    return {"paper": cfg.figure.paper, "run": resolved["figure"]["run"], "hardware": resolved["hardware"]}


def _resolved_runs(cfg: DictConfig) -> list[dict]:
    scope = OmegaConf.create(_run_scope(cfg))
    return [_resolved_run(cfg, scope, values) for values in points(cfg)]


def find_run(paper: str, wanted: str, hardware: str = "auto", scale: str = "default",
             out: str | Path | None = None) -> DictConfig:
    """The run config whose hash is ``wanted`` among the sweep points of ``paper``'s figures
    (read from the plan cache under ``out`` when one is given; see :func:`composed`)."""
    hardware = resolve_hardware_name(hardware)
    for figure in (f for f in list_figures() if f.split("/")[0] == paper):
        if out is None:
            runs = _resolved_runs(compose(figure, hardware, scale))
            hashes = [run_hash(run) for run in runs]
        else:
            cached = composed(figure, hardware, scale, out)
            runs, hashes = cached.runs, cached.run_hashes
        if wanted in hashes:
            return OmegaConf.create(runs[hashes.index(wanted)])
    raise ConfigError(f"no sweep point of paper '{paper}' has run hash {wanted} "
                      f"(hardware={hardware}, scale={scale})")


def run_hash(run_cfg: DictConfig | dict) -> str:
    """Identity of a training run: everything that can change its numbers.

    Hardware fields that only change speed (num_workers) are left out so that a run is reused
    across them; thread count is kept because it changes CPU float reductions. ``run_cfg`` is a
    run config or the same as plain data (:func:`run_config`'s container).
    """
    run = run_cfg if isinstance(run_cfg, dict) else OmegaConf.to_container(run_cfg)
    hw = {k: v for k, v in run["hardware"].items() if k not in ("num_workers", "name")}
    payload = {"paper": run["paper"], "run": _without_keep_checkpoints(run["run"]), "hardware": hw}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def config_sha256(cfg: DictConfig) -> str:
    return _figure_sha256(OmegaConf.to_container(cfg.figure, resolve=True))


def _figure_sha256(figure: dict) -> str:
    """sha256 of a figure block resolved to plain data, ``run.trainer.keep_checkpoints`` left out."""
    if figure.get("run"):
        figure = {**figure, "run": _without_keep_checkpoints(figure["run"])}
    return hashlib.sha256(json.dumps(figure, sort_keys=True).encode()).hexdigest()


# --------------------------------------------------------------------------- the plan cache
PLAN_CACHE = Path(".replicate") / "plan"  # under the out dir: <hardware>-<scale>/<paper>/<figure>.json
PLAN_CACHE_FORMAT = "1"


@dataclass(frozen=True)
class ComposedFigure:
    """What a plan needs of one composed figure, as plain data (one file of the plan cache):
    the figure block resolved, its :func:`config_sha256`, every sweep point's resolved run
    config (:func:`run_config`) with its :func:`run_hash`, in point order, and the config files
    it was composed from (relative to configs/)."""

    figure: dict
    config_sha256: str
    runs: list
    run_hashes: list
    sources: list = field(default_factory=list)

    @classmethod
    def of(cls, cfg: DictConfig) -> "ComposedFigure":
        figure = OmegaConf.to_container(cfg.figure, resolve=True)
        runs = _resolved_runs(cfg)
        return cls(figure, _figure_sha256(figure), runs, [run_hash(run) for run in runs])


def composed(figure: str, hardware: str, scale: str, out: str | Path) -> ComposedFigure:
    """One figure at ``hardware`` (``cpu`` or ``gpu``: resolved) and ``scale``, from the plan cache
    under ``out`` while its key still matches, else composed and written there.

    The key (:func:`_cache_key`) is of the contents of every config file the figure was composed
    from (its defaults list: configs/config.yaml, the hardware and scale files, the figure, its
    training configs and parts), the scale names, and the code that composes and validates, so
    an edit to any of them recomposes exactly the figures that read it.
    """
    path = Path(out) / PLAN_CACHE / f"{hardware}-{scale}" / f"{figure}.json"
    entry = _read_entry(path)
    if entry is not None and entry.get("key") == _cache_key(entry.get("sources", []), hardware, scale):
        return ComposedFigure(**{k: entry[k] for k in ("figure", "config_sha256", "runs", "run_hashes", "sources")})
    cfg, sources = _compose(figure, hardware, scale, (), with_sources=True)
    result = dataclasses.replace(ComposedFigure.of(cfg), sources=list(sources))
    entry = {"key": _cache_key(sources, hardware, scale), **vars(result)}
    # cached only when plain JSON round-trips it exactly (e.g. no int keys) and its files alone
    # decide it (a resolver such as ${oc.env:HOME} reads what no key covers)
    if json.loads(json.dumps(entry)) == entry and not any(
            RESOLVER_CALL.search((CONFIG_DIR / source).read_text()) for source in sources):
        _write_entry(path, entry)
    return result


RESOLVER_CALL = re.compile(r"\$\{\s*[\w.]+\s*:")  # ${oc.env:HOME}, not ${figure.run.seed}


def _cache_key(sources: list[str], hardware: str, scale: str) -> str:
    digest = hashlib.sha256()
    for part in (PLAN_CACHE_FORMAT, _code_version(), hardware, scale, " ".join(_choices("scale"))):
        digest.update(part.encode() + b"\0")
    for source in sources:
        path = CONFIG_DIR / source
        digest.update(source.encode() + b"\0" + (path.read_bytes() if path.is_file() else b"<missing>") + b"\0")
    return digest.hexdigest()


@functools.lru_cache(maxsize=None)
def _code_version() -> str:
    """What composes and validates a figure: the source of this module and of the claim rules,
    and the OmegaConf and Hydra versions. A change to any of them rebuilds the plan cache."""
    import importlib.util

    import omegaconf

    hydra_init = Path(importlib.util.find_spec("hydra").origin).read_text()
    hydra_version = re.search(r"__version__\s*=\s*[\"']([^\"']+)", hydra_init)
    here = Path(__file__).resolve().parent
    code = hashlib.sha256(b"".join((here / name).read_bytes() for name in ("config.py", "claims.py")))
    return (f"omegaconf={omegaconf.__version__} "
            f"hydra={hydra_version.group(1) if hydra_version else '?'} {code.hexdigest()}")


def _read_entry(path: Path) -> Optional[dict]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None  # no cache yet, or a damaged one: compose


def _write_entry(path: Path, entry: dict) -> None:
    """Written through a temporary file and a rename (jobs may write side by side); an out dir
    that cannot be written only costs the cache."""
    import tempfile

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError:
        return
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(entry, fh)
        os.replace(tmp, path)
    except OSError:
        Path(tmp).unlink(missing_ok=True)
