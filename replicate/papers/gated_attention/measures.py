"""The numbers behind every Gated Attention claim (Qiu et al. 2025, arXiv 2505.06708), one
function per figure.

``measures.<figure>(runs, cfg)`` takes the run table of ``FigureContext.runs()`` (one row per
sweep point: ``gate``, ``seed``, ``lr``, ``qk_norm``, ``status``, ``final_val_loss``, ``probes``,
``train`` ...) and the composed figure config (``cfg.figure.measure`` holds the figure's
measurement parameters) and returns every measurement that a claim's ``measured`` or
``requires`` reads, as :class:`replicate.claims.Estimate` over every seed (never one picked).
Runs are selected by their config values (``gate``, ``lr``, ``qk_norm``), never by position.
The computations live in :mod:`replicate.papers.gated_attention.analysis`; the notebooks call
these functions and only plot and explain. Notebook-only: no training code imports this module.
"""

from __future__ import annotations

import pandas as pd

from replicate import claims
from replicate.papers.gated_attention import analysis

GATED = ("headwise", "elementwise")  # the paper's G1 variants (Eq. 1-2), compared with "none"


def attention_sink(runs: pd.DataFrame, cfg) -> dict[str, claims.Estimate]:
    """First-token attention per variant, the sink cuts baseline / G1 and the G2 and
    input-independent gates over G1 headwise (Table 4), and the preconditions that the baseline
    forms a sink (``measure.sink_threshold``, Gu et al. 2024): :func:`analysis.sink_measurements`."""
    return analysis.sink_measurements(analysis.sink_table(runs), float(cfg.figure.measure.sink_threshold))


def lr_stability(runs: pd.DataFrame, cfg) -> dict[str, claims.Estimate]:
    """Failures (the failure window of every variant), loss spikes and final losses where both
    runs have one over the learning-rate grid (Table 2, Fig. 1 right) with the figure's
    ``failed_above``, ``spike_window``, ``spike_jump`` and ``high_lr``:
    :func:`analysis.stability_measurements` for the headwise gate, plus the elementwise gate's
    large-lr gain and failed-lr difference."""
    m = cfg.figure.measure
    table = analysis.stability_table(runs, float(m.failed_above), int(m.spike_window), float(m.spike_jump))
    out = analysis.stability_measurements(table, float(m.high_lr), gated="headwise")
    if "elementwise" in set(table.gate):
        failed = analysis.failed_lrs_per_seed(table)
        out["failed_lrs_baseline_minus_elementwise"] = claims.paired_difference(failed["none"], failed["elementwise"])
    for g in GATED:  # a gate absent from the runs gives a non-finite (inconclusive) gain
        out.setdefault(f"high_lr_gain_{g}", claims.mean_interval([]))
    return out


def massive_activations(runs: pd.DataFrame, cfg) -> dict[str, claims.Estimate]:
    """Per G1 gate: the max-activation cut over the learning rates where both models trained
    (:func:`analysis.activation_cut`, Table 4) and the mean gate score at ``measure.gate_lr``
    (:func:`analysis.gate_score_mean`, Sec. 4.3); the precondition that the baseline has massive
    activations at all, ``baseline_max_over_median`` (:func:`analysis.massive_ratio`)."""
    table = analysis.activation_table(runs, float(cfg.figure.measure.failed_above))
    gate_lr = float(cfg.figure.measure.gate_lr)
    out: dict[str, claims.Estimate] = {"baseline_max_over_median": analysis.massive_ratio(table)}
    for g in GATED:
        out[f"max_activation_cut_{g}"] = analysis.activation_cut(table, g)
        out[f"gate_mean_{g}"] = analysis.gate_score_mean(table, g, gate_lr)
    return out


def loss(runs: pd.DataFrame, cfg, turns: pd.DataFrame | None = None) -> dict[str, claims.Estimate]:
    """Paired loss gains over seeds (Table 1; the QK-norm control against its own baseline) from
    :func:`analysis.loss_measurements`, and the step-time overhead of each G1 gate (Sec. 4.1,
    :func:`analysis.overhead_pct`) from ``turns``, the interleaved step times of
    :func:`analysis.step_turns` (timed now when not given)."""
    turns = analysis.step_turns(runs, cfg) if turns is None else turns
    out = analysis.loss_measurements(runs)
    for key in ("loss_gain_headwise", "loss_gain_elementwise", "loss_gain_headwise_qk_norm"):
        out.setdefault(key, claims.mean_interval([]))  # a variant absent from the runs: inconclusive
    for g in GATED:
        out[f"overhead_pct_{g}"] = (analysis.overhead_pct(turns, g) if {g, "none"} <= set(turns.columns)
                                    else claims.mean_interval([], unit="timing rounds"))
    return out
