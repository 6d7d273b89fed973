"""Seeds where a claim needs them: Stein's (1945) two-stage design.

A figure config may ask for it::

    sweep:
      seed: [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11]   # the most seeds it may train (max_seeds)
    seeds:
      pilot: 3          # n0: the first n0 seeds of the list are the pilot
      half_width: 0.5   # target half-width of each paper claim's interval, as a fraction of its margin

First the pilot seeds are trained. The figure's measures on the pilot give each paper claim's
per-seed standard deviation s0 (of its measurement's units; of their logs for ratios). Stein's
second stage then trains the first n seeds of the list, n = max over the paper claims of
⌈(t_{n0-1} s0 / h)²⌉ with h = ``half_width`` × the claim's margin (the distance between its
replicated bar and its smallest effect of interest), capped by the list's length. n depends on
the pilot's spread only, never on its mean, so the final interval of every t-family measurement,
the mean of all n seeds ± t_{n0-1} s0/√n (:func:`replicate.claims.two_stage_interval`), keeps its
level: for normal units the mean is independent of the pilot's whole covariance matrix, so a
claim's interval stays exact even when another claim's spread chose n.

``decide`` is a pure function of the pilot runs, so the pipeline (a Snakemake checkpoint) and the
notebook compute the same n. Per-unit values must be ordered by seed, pilot first (the measures
functions' contract).
"""

from __future__ import annotations

import importlib
import math
from pathlib import Path
from typing import Any, Mapping

from omegaconf import DictConfig, ListConfig, OmegaConf

from replicate import claims as claims_lib
from replicate.claims import Estimate

T_FAMILY = {"t_mean": False, "t_log_mean": True}


def _plain(node) -> Any:
    return OmegaConf.to_container(node) if isinstance(node, DictConfig | ListConfig) else node


def policy(fig: DictConfig | Mapping) -> dict | None:
    """The figure's two-stage settings (``seeds:``), validated, with ``max`` and the seed key added;
    None when it trains a fixed list of seeds. ``fig`` is the figure block (config or plain data)."""
    settings = _plain(fig.get("seeds"))
    if settings is None:
        return None
    where = f"{fig['paper']}/{fig['name']}: seeds"
    unknown = set(settings) - {"pilot", "half_width"}
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {', '.join(sorted(unknown))} (expected pilot, half_width)")
    key, listed = seed_axis(fig)
    pilot, half = settings.get("pilot"), settings.get("half_width")
    if not isinstance(pilot, int) or not 2 <= pilot <= len(listed):
        raise ValueError(f"{where}.pilot = {pilot!r}: needs an integer from 2 to the {len(listed)} seeds "
                         f"listed in sweep.{key}")
    if not isinstance(half, (int, float)) or half <= 0:
        raise ValueError(f"{where}.half_width = {half!r}: needs a positive fraction of each claim's margin")
    return {"pilot": pilot, "half_width": float(half), "max": len(listed), "key": key, "seeds": listed}


def _grids(fig: DictConfig | Mapping) -> list[dict]:
    sweep = _plain(fig.get("sweep")) or {}
    return sweep if isinstance(sweep, list) else [sweep]


def seed_axis(fig: DictConfig | Mapping) -> tuple[str, list]:
    """The sweep key whose last component is ``seed`` and its values: the same key and the same
    list in every grid of the sweep (a list of grids, e.g. a baseline and its variants, shares
    its seeds, so seed ``s`` of every grid is one paired unit)."""
    where, axes = f"{fig['paper']}/{fig['name']}", []
    for grid in _grids(fig):
        keys = [k for k in grid if k.rsplit(".", 1)[-1] == "seed"]
        if len(keys) != 1:
            raise ValueError(f"{where}: a two-stage seed design needs one `seed` axis in each sweep grid "
                             f"(found {keys or 'none'})")
        axes.append((keys[0], list(grid[keys[0]])))
    if not axes or any(axis != axes[0] for axis in axes):
        raise ValueError(f"{where}: a two-stage seed design needs the same seed key and list in every "
                         f"sweep grid (found {axes})")
    return axes[0]


def seed_of(run: Mapping, key: str) -> Any:
    """The seed of a resolved run config (plain data, :func:`replicate.config.run_config`)."""
    node = run["run"]
    for part in key.split("."):
        node = node[part]
    return node


def margin(spec: Mapping[str, Any], log: bool) -> float | None:
    """Distance between a claim's replicated bar and its smallest effect of interest (in logs for a
    ratio); for ``in [a, b]`` rules, the smaller distance between matching ends. None without a
    smallest effect of interest, or when a ratio's bar is not positive."""
    if not spec.get("partial"):
        return None
    rep, weak = claims_lib.parse_rule(spec["replicated"]), claims_lib.parse_rule(spec["partial"])
    ends = [(rep[1], weak[1])] + ([(rep[2], weak[2])] if rep[0] == weak[0] == "in" else [])
    if log and any(a <= 0 or b <= 0 for a, b in ends):
        return None
    distance = [abs(math.log(a) - math.log(b)) if log else abs(a - b) for a, b in ends]
    return min(distance) if min(distance) > 0 else None


def decide(cfg: DictConfig, pilot_measurements: Mapping[str, Any]) -> dict:
    """How many seeds the figure trains: Stein's n per paper claim from the pilot's per-seed spread,
    the largest of them, capped by the seeds listed. Claims without a t-family measurement or a
    margin do not drive n (their entry says why)."""
    rules = policy(cfg.figure)
    if rules is None:
        raise ValueError(f"{cfg.figure.paper}/{cfg.figure.name} has no `seeds:` two-stage settings")
    per_claim = {}
    for spec in OmegaConf.to_container(cfg.figure.claims):
        if spec["kind"] == "paper":
            per_claim[spec["id"]] = _claim_n(spec, pilot_measurements.get(spec["measured"]), rules)
    wanted = [c["n"] for c in per_claim.values() if c.get("n")]
    n = max([rules["pilot"], *wanted])
    return {"pilot": rules["pilot"], "max": rules["max"], "n": n,
            "seeds": rules["seeds"][:n], "max_reached": any(w >= rules["max"] for w in wanted),
            "claims": per_claim}


def _claim_n(spec: Mapping[str, Any], est: Any, rules: Mapping[str, Any]) -> dict:
    name = ((est.estimator or {}).get("name") if isinstance(est, Estimate) else None)
    if name not in T_FAMILY:
        return {"n": None, "why": f"measurement is not a t-family estimate ({name or 'a plain number'})"}
    log = T_FAMILY[name]
    distance = margin(spec, log)
    if distance is None:
        return {"n": None, "why": "no smallest effect of interest to set a margin"}
    units = list(est.units)[:rules["pilot"]]
    try:
        n = claims_lib.two_stage_sample_size(units, rules["half_width"] * distance, max_n=rules["max"], log=log)
    except ValueError as err:
        return {"n": None, "why": str(err)}
    return {"n": n, "margin": distance, "scale": "log" if log else "linear"}


def finalize(measurements: Mapping[str, Any], pilot: int) -> dict[str, Any]:
    """Every t-family Estimate over at least ``pilot`` units as Stein's final interval (the pilot's
    sd, n0-1 degrees of freedom); everything else unchanged."""
    out = dict(measurements)
    for key, est in measurements.items():
        name = (est.estimator or {}).get("name") if isinstance(est, Estimate) else None
        if name in T_FAMILY and est.n >= pilot and est.interval is not None:
            unit = (est.estimator or {}).get("unit", "seeds")
            out[key] = claims_lib.two_stage_interval(est.units, pilot, est.estimator.get("level", 0.95),
                                                     unit, log=T_FAMILY[name])
    return out


def with_seeds(cfg: DictConfig, seeds: list) -> DictConfig:
    """A copy of the composed figure config whose sweep trains only ``seeds`` (the runs keep their
    hashes: a run's config does not depend on which other seeds its figure lists)."""
    key, _ = seed_axis(cfg.figure)
    out, readonly = cfg.copy(), OmegaConf.is_readonly(cfg)
    OmegaConf.set_readonly(out, False)
    grids = out.figure.sweep if isinstance(out.figure.sweep, ListConfig) else [out.figure.sweep]
    for grid in grids:
        grid[key] = list(seeds)
    OmegaConf.set_readonly(out, readonly)
    return out


DECISIONS = Path(".replicate") / "seeds"  # under the out dir: <paper>/<figure>.json


def decision_path(out: str | Path, figure: str) -> Path:
    """Where the pipeline's seeds checkpoint writes a figure's decision."""
    return Path(out) / DECISIONS / f"{figure}.json"


def decide_from_pilot(cfg: DictConfig, out: str | Path, train_missing: bool = False) -> dict:
    """The figure's decision from its pilot runs in the run store under ``out`` (trained first when
    ``train_missing``): the figure's own measures on the pilot, then :func:`decide`."""
    from replicate import runs as runs_lib

    rules = policy(cfg.figure)
    if rules is None:
        raise ValueError(f"{cfg.figure.paper}/{cfg.figure.name} has no `seeds:` two-stage settings")
    pilot_cfg = with_seeds(cfg, rules["seeds"][:rules["pilot"]])
    pilot = runs_lib.figure_runs(pilot_cfg, out, train_missing=train_missing)
    return decide(cfg, measures_function(cfg.figure.paper, cfg.figure.name)(pilot, pilot_cfg))


def write_decision(cfg: DictConfig, out: str | Path) -> Path:
    """Decide from the finished pilot runs and write the decision (the seeds checkpoint's output)."""
    from replicate import runs as runs_lib

    path = decision_path(out, f"{cfg.figure.paper}/{cfg.figure.name}")
    runs_lib.write_json_atomic(path, decide_from_pilot(cfg, out))
    return path


def measures_function(paper: str, figure: str):
    """``replicate.papers.<paper>.measures.<figure>``: the function that measures a figure's runs."""
    module = importlib.import_module(f"replicate.papers.{paper}.measures")
    try:
        return getattr(module, figure)
    except AttributeError:
        raise ValueError(f"replicate/papers/{paper}/measures.py has no function {figure}(runs, cfg)") from None
