"""Validation probes of a trained recursive / MoR model (Bae et al. 2025, Sec. 3-4 analyses).

``probe(model, batches)`` runs the validation batches under both routing rules and returns a
JSON-able dict:

nll              {rule: mean next-token NLL (nats/byte)}; ``topk`` is the training rule (for
                 expert-choice it ranks the whole sequence, so it reads future tokens), and
                 ``threshold`` the causal rule (sigmoid(router logit) > 0.5). Models without an
                 expert-choice router give the same number under both.
depth_share      {rule: share of tokens with depth 1..N_r} (recursions taken)
score_hist       expert-choice only: per routed step (capacity < 1), 20-bin histograms on
                 [0, 1] of sigmoid(predicted logit: the logit the BCE trains and the causal
                 rule thresholds, ``RecursiveLM.predicted_logits``) over the tokens the step ranked, split by
                 whether top-k selected them ("selected" / "unselected")
rule_agreement   expert-choice only: share of ranked tokens on which top-k and the causal
                 threshold agree, per routed step
dead_token_ratio share of byte values (occurring >= DEAD_MIN_COUNT times in the validation
                 targets' inputs) that top-k never sends to the deepest recursion: the router's
                 "dead" tokens (our operational definition; the paper reports dead-token ratios
                 of expert-choice routers without a public formula)
depth_by_byte    {byte: mean depth under top-k} for bytes seen >= DEAD_MIN_COUNT times
sample           the first validation window: its input bytes and per-token depth under both
                 rules (for the rendered text in the depth-map figure)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from replicate.papers.mixture_of_recursions.model import RULES, RecursiveLM

HIST_BINS = 20
DEAD_MIN_COUNT = 20


def run_rule(model: RecursiveLM, batches, rule: str):
    """(mean NLL, depths (N, T), inputs (N, T), per-step (logits, scored, active) lists)."""
    nll, n_tok, depths, inputs, steps = 0.0, 0, [], [], []
    for x, y in batches:
        logits, routing = model(x, rule=rule, return_routing=True)
        nll += float(F.cross_entropy(logits.flatten(0, 1).float(), y.flatten(), reduction="sum"))
        n_tok += y.numel()
        depths.append(routing.depth() if routing.active else torch.zeros_like(x))
        inputs.append(x)
        steps.append(list(zip(routing.pred_logits, routing.scored, routing.active)))
    return nll / n_tok, torch.cat(depths), torch.cat(inputs), steps


def depth_share(depths: torch.Tensor, n_rec: int) -> list[float]:
    counts = torch.bincount(depths.flatten().long(), minlength=n_rec + 1)[1:n_rec + 1].double()
    return (counts / max(1, depths.numel())).tolist()


def score_histograms(steps, capacities: list[float]) -> dict:
    """Selected / unselected router-score histograms per routed step (top-k rule)."""
    out = {}
    for r, capacity in enumerate(capacities):
        if capacity >= 1.0:
            continue
        scores = {"selected": [], "unselected": []}
        for batch_steps in steps:
            logits, scored, active = batch_steps[r]
            s = torch.sigmoid(logits)
            scores["selected"].append(s[scored & active])
            scores["unselected"].append(s[scored & ~active])
        out[str(r)] = {k: torch.histc(torch.cat(v).float(), HIST_BINS, 0.0, 1.0).tolist() for k, v in scores.items()}
    return out


def rule_agreement(topk_steps, capacities: list[float]) -> dict:
    """Share of ranked tokens on which both rules make the same choice, per routed step.

    Compared on the same hidden states: the threshold rule applied to top-k's own logits."""
    out = {}
    for r, capacity in enumerate(capacities):
        if capacity >= 1.0:
            continue
        same = total = 0
        for batch_steps in topk_steps:
            logits, scored, active = batch_steps[r]
            same += int(((logits > 0) == active)[scored].sum())
            total += int(scored.sum())
        out[str(r)] = same / max(1, total)
    return out


def byte_depths(depths: torch.Tensor, inputs: torch.Tensor, n_rec: int) -> tuple[dict, float]:
    """Mean depth per frequent byte and the dead-token ratio (see the module docstring)."""
    flat_x, flat_d = inputs.flatten().long(), depths.flatten().double()
    counts = torch.bincount(flat_x, minlength=257)
    sums = torch.bincount(flat_x, weights=flat_d, minlength=257)
    deep = torch.bincount(flat_x, weights=(flat_d == n_rec).double(), minlength=257)
    frequent = (counts >= DEAD_MIN_COUNT).nonzero().flatten().tolist()
    mean = {int(b): float(sums[b] / counts[b]) for b in frequent}
    dead = sum(1 for b in frequent if deep[b] == 0) / max(1, len(frequent))
    return mean, dead


@torch.no_grad()
def probe(model: RecursiveLM, batches) -> dict:
    model.eval()
    n_rec = model.mor.n_rec if model.mor.variant not in ("vanilla", "vanilla_gated") else 0  # no routed depth
    runs = {rule: run_rule(model, batches, rule) for rule in RULES}
    out = {"nll": {rule: runs[rule][0] for rule in RULES},
           "depth_share": {rule: depth_share(runs[rule][1], n_rec) for rule in RULES}}
    topk_depths, inputs = runs["topk"][1], runs["topk"][2]
    out["sample"] = {"bytes": inputs[0].tolist(),
                     "depth": {rule: runs[rule][1][0].tolist() for rule in RULES}}
    if model.mor.variant == "mor_ec":
        caps = model.mor.capacities()
        out["score_hist"] = score_histograms(runs["topk"][3], caps)
        out["rule_agreement"] = rule_agreement(runs["topk"][3], caps)
    if n_rec:
        out["depth_by_byte"], out["dead_token_ratio"] = byte_depths(topk_depths, inputs, n_rec)
    return out
