"""One function per moe_gating figure: every number its claims and preconditions read.

``<figure>(runs, cfg)`` takes the figure's runs table (:func:`replicate.runs.figure_runs`: one row
per sweep point, each with the run's ``probes``) and the composed figure config
(``cfg.figure.measure.window``: the pre-registered slope window) and returns
``{measurement key: Estimate or number}``; ``cfg.figure.measure`` also gives ``sliding`` (sample
sizes per sliding window) and ``mle_tol`` (nats). A run's setting is read from the config values its
probes record (the truth's name and gate, the initialisation noise schedule, the fitted top-K),
never from its position in the sweep. Rates are :func:`analysis.slope_estimate`: the mean of the
per-replicate slopes of log error on log n, with a t interval over replicates; beside each rate,
its drift (:func:`analysis.window_drift`: last sliding window minus the whole window) and the
largest drift its interval allows. Every setting reports its fit health: fits below the truth,
fits off the MLE (:func:`analysis.off_mle`), fits stopped at the iteration cap, never-selected
experts.

Papers: Nguyen, Akbarian, Yan & Ho, ICLR 2024 (top-K sparse softmax gating: Theorem 1 for the
exact-specified fit, Sec. 4 for the over-specified one); Nguyen, Akbarian & Ho, ICML 2024
(temperature vs activation dense-to-sparse gates).
"""

from __future__ import annotations

from typing import Callable, Mapping

import pandas as pd

from replicate import claims
from replicate.papers.moe_gating import analysis as A

TOPK_EXACT_METRICS = ("voronoi", "hellinger", "w1", "weight", "a", "b", "var")
DRIFT_METRICS = ("voronoi", "hellinger", "split_w1", "gate_raw")  # the metrics rate claims read
OVERSPECIFIED_METRICS = ("hellinger", "voronoi", "split_w1", "split_b", "split_a", "split_var", "a")
TEMPERATURE_METRICS = ("gate_raw", "gate_effective", "gate_identified", "hellinger", "a", "var")

Measurements = dict[str, "claims.Estimate | float"]


# --------------------------------------------------------------------------- settings
def init_schedule(init: Mapping) -> str:
    """``shrinking`` (start at the truth plus noise 0.1 n^-rate, rate > 0: the papers' protocol),
    ``fixed`` (rate 0: noise 0.1 at every n) or ``data`` (data-driven starts, no truth)."""
    if init.get("kind") == "data":
        return "data"
    return "shrinking" if float(init["rate"]) > 0 else "fixed"


def topk_exact_setting(probes: Mapping) -> str:
    """A truth fitted from the data alone is named by the truth (``generic_jump``); a truth
    started near itself by its init schedule (``shrinking``, ``fixed``)."""
    schedule = init_schedule(probes["init"])
    return probes["truth"]["name"] if schedule == "data" else schedule


def topk_overspecified_setting(probes: Mapping) -> str:
    """``<truth name>_top<K>`` (e.g. ``template_top3``): the truth and the fitted gate's top-K."""
    return f"{probes['truth']['name']}_top{probes['top_k']}"


def temperature_setting(probes: Mapping) -> str:
    """``<truth gate>_<init schedule>``, e.g. ``temperature_shrinking``."""
    return f"{probes['truth']['gate']}_{init_schedule(probes['init'])}"


def fits_by_setting(runs: pd.DataFrame, setting: Callable[[Mapping], str]) -> pd.DataFrame:
    """One row per fit of every run (:func:`analysis.fits_frame`) with the run's ``setting``
    (``setting(probes)``); two runs with the same setting are an error."""
    runs = runs.assign(setting=[setting(p) for p in runs["probes"]])
    repeated = runs.setting[runs.setting.duplicated()]
    if len(repeated):
        raise ValueError(f"two runs of the figure have the setting {repeated.iloc[0]!r}: a sweep value "
                         "the measures cannot tell apart")
    return A.fits_frame(runs, ["setting"])


def _window(cfg) -> list[float]:
    return [float(v) for v in cfg.figure.measure.window]


def _rates(fits: pd.DataFrame, metrics, cfg, key: str = "{metric}_{setting}") -> Measurements:
    """The rate of every metric in every setting (``slope_`` + ``key``, filled with ``metric``,
    ``setting`` and, for ``<gate>_<schedule>`` settings, ``gate`` and ``schedule``); for the
    metrics rate claims read (DRIFT_METRICS), the drift of the last sliding window
    (``window_drift_`` + key) and the largest drift its interval allows (``window_drift_bound_``)."""
    window, size = _window(cfg), int(cfg.figure.measure.sliding)
    out: Measurements = {}
    for setting, part in fits.groupby("setting", sort=False):
        name = lambda metric: key.format(metric=metric, setting=setting, gate=setting.rsplit("_", 1)[0],  # noqa: E731
                                         schedule=setting.rsplit("_", 1)[-1])
        for metric in metrics:
            out[f"slope_{name(metric)}"] = A.slope_estimate(part, metric, window)
            if metric in DRIFT_METRICS:
                drift = A.window_drift(part, metric, window, size)
                out[f"window_drift_{name(metric)}"] = drift
                out[f"window_drift_bound_{name(metric)}"] = A.drift_bound(drift)
    return out


def _fit_health(fits: pd.DataFrame, cfg) -> Measurements:
    """Per setting: fits below the truth's log-likelihood, fits more than ``mle_tol`` nats below the
    best maximum found on their data (``off_mle``) and the largest such gap, fits stopped at the
    iteration cap (count and share), never-selected experts, median gap truth - fit, EM
    iterations of the run."""
    tol = float(cfg.figure.measure.mle_tol)
    out: Measurements = {}
    for setting, part in fits.groupby("setting", sort=False):
        out.update({f"fits_below_truth_{setting}": A.fits_below_truth(part),
                    f"off_mle_{setting}": A.off_mle(part, tol),
                    f"max_mle_gap_{setting}": float(part.mle_gap.max()),
                    f"unconverged_{setting}": A.unconverged(part),
                    f"iteration_cap_share_{setting}": A.cap_share(part),
                    f"never_selected_{setting}": A.never_selected(part),
                    f"median_ll_gap_{setting}": float(part.ll_gap.median()),
                    f"em_steps_{setting}": int(part.steps.iloc[0])})
    return out


# --------------------------------------------------------------------------- figures
def topk_exact(runs: pd.DataFrame, cfg) -> Measurements:
    """Exact-specified top-K (ICLR 2024, Theorem 1: D1 and the density's Hellinger distance at
    n^-1/2): rates of every error per setting (``shrinking`` init on the template truth, one per
    data-driven truth), the fit-health preconditions, the largest gap truth - fit and the number
    of fits. Where a run computed the Hellinger distance on a finer quadrature too
    (``hellinger_fine``): its rate and ``hellinger_quadrature_shift_<setting>``, the absolute
    difference of the two rates (the coarse rate is claimed only when it is small)."""
    fits = fits_by_setting(runs, topk_exact_setting)
    out = {**_rates(fits, TOPK_EXACT_METRICS, cfg), **_fit_health(fits, cfg),
           "max_ll_gap": float(fits.ll_gap.max()), "fits": int(len(fits))}
    if "hellinger_fine" in fits:
        for setting, part in fits.groupby("setting", sort=False):
            if part.hellinger_fine.notna().all():
                fine = A.slope_estimate(part, "hellinger_fine", _window(cfg))
                out[f"slope_hellinger_fine_{setting}"] = fine
                out[f"hellinger_quadrature_shift_{setting}"] = abs(out[f"slope_hellinger_{setting}"].value - fine.value)
    return out


def topk_overspecified(runs: pd.DataFrame, cfg) -> Measurements:
    """Over-specified top-K (ICLR 2024, Sec. 4): rates per (truth, fitted top-K) setting, the fit
    health (convergence included: over-specified EM converges slowly), the median D2 and the mean
    Hellinger distance at the largest n."""
    fits = fits_by_setting(runs, topk_overspecified_setting)
    out = {**_rates(fits, OVERSPECIFIED_METRICS, cfg), **_fit_health(fits, cfg)}
    largest = fits.n.max()
    for setting, part in fits.groupby("setting", sort=False):
        out[f"median_voronoi_{setting}"] = float(part.voronoi.median())
        out[f"hellinger_at_largest_n_{setting}"] = float(part[part.n == largest].hellinger.mean())
    return out


def temperature_vs_activation(runs: pd.DataFrame, cfg) -> Measurements:
    """Temperature vs activation gates (ICML 2024): rates per (gate, init schedule)
    (``slope_<gate>_<metric>_<schedule>``) and the fit health; where both init schedules ran, per
    gate and gate-error form, the paired difference of the two schedules' slopes
    (``init_effect_*``) and whether either schedule's slope leaves the other's interval
    (``init_schedules_disagree_*``, :func:`analysis.disagree`)."""
    window = _window(cfg)
    fits = fits_by_setting(runs, temperature_setting)
    out = {**_rates(fits, TEMPERATURE_METRICS, cfg, "{gate}_{metric}_{schedule}"), **_fit_health(fits, cfg)}
    gates = sorted({s.rsplit("_", 1)[0] for s in fits.setting})
    for gate in gates:
        shrinking, fixed = (fits[fits.setting == f"{gate}_{s}"] for s in ("shrinking", "fixed"))
        if shrinking.empty or fixed.empty:
            continue
        for metric in ("gate_raw", "gate_identified"):
            form = metric.removeprefix("gate_")
            out[f"init_effect_{gate}_{form}"] = A.slope_difference(shrinking, fixed, metric, window)
            out[f"init_schedules_disagree_{gate}_{form}"] = A.disagree(out[f"slope_{gate}_{metric}_shrinking"],
                                                                      out[f"slope_{gate}_{metric}_fixed"])
    return out
