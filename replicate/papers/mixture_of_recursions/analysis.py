"""Notebook-side analysis of the Mixture-of-Recursions figures (Bae et al. 2025): the run
tables (one row per run: model label, seed, training FLOPs, isoFLOP budget, validation NLL under
both routing rules; depth shares and rule agreement) and the estimators that ``measures`` (one
function per figure) builds every claim's number from, each an :class:`replicate.claims.Estimate`
over its independent units. Runs are picked by their config values (variant, N_r, KV sharing,
auxiliary-loss setting, budget), never by position or display label.

Units are independent training runs: seeds, and for comparisons pooled over N_r in {2, 3},
(N_r, seed) pairs of runs (each pair a distinct pair of runs); never one seed picked. Notebook-only:
the training code never imports this module.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from replicate import claims as claims_lib

BUDGET_TOLERANCE = 0.05  # a run belongs to a budget when its FLOPs are within 5% of it


PAPER_AUX = ("logits", 0.001)  # the paper's auxiliary loss (text_lm.yaml's default): BCE on the routing logits, 0.001
DETACHED_AUX = ("detached", 0.1)  # our control: the BCE on the routing router applied to detached states, 0.1
DETACHED_AUX_SUFFIX = " (detached aux 0.1)"
RANDOM_ROUTER_SUFFIX = " random router"


def model_label(variant: str, n_rec: int, kv_share: bool = False, aux_mode: str | None = None,
                aux_coef: float | None = None, rand_router: bool = False) -> str:
    """Display label; an expert-choice model trained with the detached-BCE control setting gets
    ``DETACHED_AUX_SUFFIX``, any other non-paper setting its own, a random router
    ``RANDOM_ROUTER_SUFFIX`` (it has no router for an auxiliary loss to train)."""
    if variant == "vanilla":
        return "vanilla"
    if variant == "vanilla_gated":
        return f"vanilla fixed-gate ({n_rec} groups)"
    name = {"recursive": "recursive", "recursive_gated": "recursive fixed-gate", "mor_ec": "MoR-EC",
            "mor_tc": "MoR-TC"}[variant]
    label = f"{name} N_r={n_rec}" + (" +KV share" if kv_share else "")
    if variant == "mor_ec" and rand_router:
        return label + RANDOM_ROUTER_SUFFIX
    if variant == "mor_ec" and aux_mode is not None:
        if (aux_mode, float(aux_coef)) == DETACHED_AUX:
            label += DETACHED_AUX_SUFFIX
        elif (aux_mode, float(aux_coef)) != PAPER_AUX:
            label += f" ({aux_mode} aux {aux_coef:g})"
    return label


def probe_label(p: dict) -> str:
    """``model_label`` of a run from its probes."""
    return model_label(p["variant"], p["n_rec"], p["kv_share"], p.get("aux_mode"), p.get("aux_coef"),
                       bool(p.get("rand_router", False)))


def aux_setting(p: dict) -> str:
    """The expert-choice auxiliary-loss setting of a run from its probes: ``"paper"``
    (``PAPER_AUX``, and every model without a trained expert-choice router, for which the setting
    is inert), ``"detached"`` (``DETACHED_AUX``) or ``"<mode> <coef>"`` for any other."""
    if p["variant"] != "mor_ec" or p.get("aux_mode") is None or p.get("rand_router", False):
        return "paper"
    setting = (p["aux_mode"], float(p["aux_coef"]))
    return {PAPER_AUX: "paper", DETACHED_AUX: "detached"}.get(setting, f"{setting[0]} {setting[1]:g}")


def run_table(runs: pd.DataFrame, budgets: list[float]) -> pd.DataFrame:
    """One row per finished run: label, its config values (variant, n_rec, kv_share, aux setting,
    rand_router), seed, params, flops, budget (index into ``budgets``, or ``OFF_BUDGET``), nll_topk, nll_causal
    (the threshold rule; equal to top-k for models without expert-choice)."""
    rows = []
    for r in runs.itertuples():
        p = r.probes
        flops = p["train_flops"]
        ratios = [abs(flops / b - 1) for b in budgets]
        k = int(np.argmin(ratios))
        rows.append({"label": probe_label(p),
                     "variant": p["variant"], "n_rec": int(p["n_rec"]) if p["variant"] != "vanilla" else 0,  # vanilla_gated: its groups
                     "kv_share": bool(p["kv_share"]), "aux": aux_setting(p),
                     "rand_router": bool(p.get("rand_router", False)), "seed": run_seed(r),
                     "steps": r.steps, "params": r.params, "flops": flops,
                     "budget": k if ratios[k] < BUDGET_TOLERANCE else OFF_BUDGET,
                     "nll_topk": p["nll"]["topk"], "nll_causal": p["nll"]["threshold"],
                     "run_dir": r.run_dir, "wall_seconds": r.wall_seconds})
    return pd.DataFrame(rows)


def run_seed(row) -> int:
    seed = getattr(row, "seed", 0)
    return 0 if seed is None or pd.isna(seed) else int(seed)


# --------------------------------------------------------------------------- claim numbers

OFF_BUDGET = -1  # run_table's budget for runs that spend no isoFLOP budget (equal-steps controls)
NLL_COLUMNS = {"causal": "nll_causal", "topk": "nll_topk"}


@dataclass(frozen=True)
class Side:
    """One side of a paired comparison, picked by config values: the model (variant, N_r, KV
    sharing, auxiliary-loss setting, random router), the budget (index into the figure's budgets, or
    ``OFF_BUDGET`` for the equal-steps runs) and the routing rule whose validation NLL is read
    (``"causal"``: sigmoid > 0.5; ``"topk"``: the training rule)."""

    variant: str
    budget: int
    n_rec: int = 0
    rule: str = "causal"
    aux: str = "paper"
    kv_share: bool = False
    rand_router: bool = False

    def values(self, table: pd.DataFrame) -> pd.Series:
        """Validation NLL per seed of the runs this side names (empty when there are none)."""
        rows = table[(table.variant == self.variant) & (table.n_rec == self.n_rec) & (table.budget == self.budget)
                     & (table.aux == self.aux) & (table.kv_share == self.kv_share)
                     & (table.rand_router == self.rand_router)]
        return rows.groupby("seed")[NLL_COLUMNS[self.rule]].mean()


def paired_gaps(table: pd.DataFrame, comparisons: dict[str, tuple[Side, Side]]) -> pd.DataFrame:
    """One row per (comparison, seed) where both sides have a finished run: ``a``, ``b`` and
    ``gap = a - b``; the sides of a comparison are paired by seed (same seed, same data order)."""
    rows = []
    for name, (side_a, side_b) in comparisons.items():
        a, b = side_a.values(table), side_b.values(table)
        for seed in sorted(set(a.index) & set(b.index)):
            rows.append({"comparison": name, "seed": int(seed), "a": float(a[seed]), "b": float(b[seed]),
                         "gap": float(a[seed] - b[seed])})
    return pd.DataFrame(rows, columns=["comparison", "seed", "a", "b", "gap"])


def gap_estimate(gaps: pd.DataFrame) -> claims_lib.Estimate:
    """Mean of ``gaps.gap`` with a t interval over its rows (independent pairs of runs)."""
    unit = "seeds" if gaps.comparison.nunique() <= 1 else "(N_r, seed) run pairs"
    return claims_lib.paired_difference(gaps.a, gaps.b, unit=unit)


def share_of_gain(part: pd.DataFrame, whole: pd.DataFrame) -> claims_lib.Estimate:
    """Mean over the units both tables share (same comparison and seed) of the per-unit share
    ``part.gap / whole.gap``, with a t interval over those units: e.g. the fixed-gate model's gain
    over the recursive model as a share of MoR-EC's, seed by seed."""
    both = part.merge(whole, on=["comparison", "seed"], suffixes=("_part", "_whole"))
    unit = "seeds" if both.comparison.nunique() <= 1 else "(N_r, seed) units"
    return claims_lib.mean_interval(both.gap_part / both.gap_whole, unit=unit)


def over_n_rec(pair, n_recs=(2, 3)) -> dict[str, tuple[Side, Side]]:
    """``{"N_r=n": pair(n)}`` for each N_r: one comparison per recursion count, pooled as units."""
    return {f"N_r={n}": pair(n) for n in n_recs}


def trained_gates(run_dir) -> list[float]:
    """Mean update weight w = alpha * sigmoid(logit) over the tokens a trained MoR-EC model updates
    at each recursion (Bae et al. 2025, Sec. 2.2.1), on its first validation batch, training rule."""
    import torch

    from replicate import runs as runs_lib

    model = runs_lib.load_module(run_dir).model.eval()
    batch = next(iter(runs_lib.load_datamodule(run_dir).val_dataloader()))[0]
    with torch.no_grad():
        _, routing = model(batch, return_routing=True)
    return [float((model.mor.alpha * torch.sigmoid(logits))[active].mean())
            for logits, active in zip(routing.logits, routing.active)]


def gate_table(table: pd.DataFrame, budget: int, read_gates=trained_gates) -> pd.DataFrame:
    """One row per MoR-EC run (no KV sharing) at ``budget``: model, seed and the mean gate at each
    recursion (``read_gates(run_dir)``, by default from the run's checkpoint)."""
    runs = table[(table.variant == "mor_ec") & (table.budget == budget) & ~table.kv_share & ~table.rand_router]
    return pd.DataFrame([{"model": r.label, "seed": r.seed,
                          **{f"w at recursion {i + 1}": w for i, w in enumerate(read_gates(r.run_dir))}}
                         for r in runs.itertuples()])


def depth_coloured_text(run_dir, n_windows: int, bos: int = 256) -> tuple[list[int], list[int]]:
    """``(bytes, depths)`` of ``n_windows`` consecutive validation windows (from a third of the
    way in) run through a trained model under the causal rule: each byte's depth depends only on
    the bytes before it (the depth-coloured text of Bae et al. 2025, Fig. 1 right)."""
    import torch

    from replicate import runs as runs_lib

    module = runs_lib.load_module(run_dir)
    val = runs_lib.load_datamodule(run_dir).corpus.val
    width, start = module.lm_config.max_len - 1, len(val) // 3
    windows = torch.stack([torch.cat([torch.tensor([bos]), val[start + i * width: start + (i + 1) * width].long()])
                           for i in range(n_windows)])
    with torch.no_grad():
        _, routing = module.model(windows, rule="threshold", return_routing=True)
    return windows[:, 1:].flatten().tolist(), routing.depth()[:, 1:].flatten().tolist()


DEPTH_COLUMNS = ["label", "variant", "seed", "n_rec", "aux", "deep_share_topk", "deep_share_causal", "capacity",
                 "causal_deviation", "rule_agreement", "imbalance", "dead_token_ratio", "run_dir"]


def depth_table(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per MoR run with a trained router (random routers are left out): label, variant, seed, N_r, aux setting, the share of tokens reaching the
    deepest recursion under top-k and under the causal rule, its trained capacity (1/N_r for
    expert-choice; token-choice has none) and the causal share's absolute deviation from it, the
    mean rule agreement over routed steps (expert-choice), the imbalance (largest |share of depth
    i - 1/N_r| under the causal rule, for token-choice) and the dead-token ratio."""
    rows = []
    for r in runs.itertuples():
        p = r.probes
        if p["variant"] not in ("mor_ec", "mor_tc") or p.get("rand_router", False):
            continue
        n_rec = int(p["n_rec"])
        deep = float(p["depth_share"]["threshold"][-1])
        capacity = 1.0 / n_rec if p["variant"] == "mor_ec" else math.nan
        agreement = p.get("rule_agreement") or {}
        rows.append({"label": probe_label(p), "variant": p["variant"], "seed": run_seed(r), "n_rec": n_rec,
                     "aux": aux_setting(p), "deep_share_topk": float(p["depth_share"]["topk"][-1]),
                     "deep_share_causal": deep, "capacity": capacity,
                     "causal_deviation": abs(deep - capacity),
                     "rule_agreement": float(np.mean(list(agreement.values()))) if agreement else math.nan,
                     "imbalance": max(abs(x - 1.0 / n_rec) for x in p["depth_share"]["threshold"]),
                     "dead_token_ratio": float(p.get("dead_token_ratio", math.nan)),
                     "run_dir": r.run_dir})
    return pd.DataFrame(rows, columns=DEPTH_COLUMNS)


def expert_choice_runs(depths: pd.DataFrame, aux: str = "paper", n_rec: int | None = None) -> pd.DataFrame:
    """The expert-choice rows of ``depths`` with one auxiliary-loss setting (every N_r unless
    ``n_rec`` is given)."""
    rows = depths[(depths.variant == "mor_ec") & (depths.aux == aux)]
    return rows if n_rec is None else rows[rows.n_rec == n_rec]


def causal_depth_deviation(depths: pd.DataFrame, n_rec: int = 2, aux: str = "paper") -> claims_lib.Estimate:
    """Mean over seeds of |causal deep share - capacity 1/N_r| (Bae et al. 2025, Sec. 2.2.1) for one
    expert-choice model, t interval over its seeds (every seed of that model)."""
    return claims_lib.mean_interval(expert_choice_runs(depths, aux, n_rec).causal_deviation)


def rule_agreement(depths: pd.DataFrame, aux: str = "paper", n_rec: int | None = None) -> claims_lib.Estimate:
    """Mean over every expert-choice run of one aux setting (N_r in {2, 3} x seeds unless ``n_rec``
    is given) of its rule agreement (each run's mean over its routed steps), t interval over runs."""
    ec = expert_choice_runs(depths, aux, n_rec)
    unit = "runs (N_r x seeds)" if ec.n_rec.nunique() > 1 else "seeds"
    return claims_lib.mean_interval(ec.rule_agreement, unit=unit)


def tc_imbalance(depths: pd.DataFrame) -> claims_lib.Estimate:
    """Mean over every token-choice run (N_r x seeds) of its depth imbalance, t interval over runs."""
    return claims_lib.mean_interval(depths[depths.variant == "mor_tc"].imbalance, unit="runs (N_r x seeds)")


def speedup_estimate(seconds_model, seconds_base, batch_model, batch_base,
                     unit: str = "timing rounds") -> claims_lib.Estimate:
    """Per unit (an interleaved timing round, or a seed whose two models were timed in the same
    rounds), the model's tokens/s over the baseline's, (batch_model / t_model) / (batch_base /
    t_base) (both generate the same number of tokens per sequence; a batch is one number or one per
    unit); their geometric mean with a t interval on the logs over the units."""
    t_m, t_b = np.asarray(seconds_model, float), np.asarray(seconds_base, float)
    if len(t_m) != len(t_b):
        raise ValueError(f"speedup_estimate: {len(t_m)} and {len(t_b)} {unit} are not paired")
    return claims_lib.ratio_interval(np.asarray(batch_model, float) / t_m, np.asarray(batch_base, float) / t_b,
                                     unit=unit)


# --------------------------------------------------------------------------- the answer, first


def answer_markdown(claims: pd.DataFrame) -> str:
    """The opening answer of a figure's notebook, from its judged claims table (``ctx.report``):
    the paper claims first, then the controls (ours, each with the claim it qualifies), each as
    its verdict, measured value, interval and number of units, exactly as computed."""
    parts = []
    for kind, title in (("paper", "Paper claims (at the paper's setting)"), ("control", "Controls (ours)")):
        rows = claims[claims.kind.str.split(" ").str[0] == kind]
        if rows.empty:
            continue
        items = []
        for cid, row in rows.iterrows():
            value = row.measured
            shown = "n/a" if value is None or not math.isfinite(float(value)) else f"{float(value):.4g}"
            qualifies = row.kind.split("→", 1)[1].strip() if "→" in row.kind else ""
            items.append(f"`{cid}` **{row.verdict}** ({shown} {row.interval}, n = {row.n}"
                         + (f"; qualifies `{qualifies}`" if qualifies else "") + ")")
        parts.append(f"**{title}:** " + "; ".join(items) + ".")
    return "\n\n".join(parts)
