"""Probes of attention sinks, massive activations and gate scores (Qiu et al. 2025, Sec. 4-5;
Gu et al. 2024 "When Attention Sink Emerges in Language Models", sail-sg/Attention-Sink).

Everything works on a model from ``replicate.nn.transformer`` and a batch of token ids whose
position 0 is BOS. ``ProbeAccumulator`` sums statistics over batches; ``summary()`` returns
JSON-serialisable values (floats, lists, dicts; NaN where a quantity is undefined, None where it
does not apply, e.g. gate statistics of the baseline).

Definitions (queries at positions t >= 1 only: position 0 can only attend to itself):

first-token attention  mean over batch and queries t >= 1 of A[b, h, t, 0], per head; a layer's
                       value is the mean over its heads. Qiu et al. Table 4 reports this
                       ("attention score of the first token").
sink rate              Gu et al.'s Sink^epsilon_1: the share of (layer, head) pairs whose
                       first-token attention exceeds epsilon = 0.3.
max |hidden|           largest absolute entry of the residual stream after each block (the
                       paper's "max activation"), over all positions, and split BOS / others.
median |hidden|        median absolute entry of the residual stream after each block, per
                       probed batch, averaged over batches: the scale against which Sun et al.
                       (2024, "Massive Activations in Large Language Models", Sec. 2) call an
                       activation massive (thousands of times the median).
value-norm ratio       mean ||v|| at the BOS position over mean ||v|| at positions >= 1, per
                       layer (value states after any value gate): a small ratio means the sink
                       token carries little value, so attending to it is a no-op (Guo et al.).
gate statistics        mean score per layer, a 20-bin histogram on [0, 1] and quantiles (from a
                       1000-bin histogram, so to +-0.001) over all layers, and on the
                       Bigram-Backcopy task the mean score at trigger / non-trigger positions.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from replicate.nn.transformer import CausalLM, record

SINK_EPSILON = 0.3
HIST_BINS = 20
FINE_BINS = 1000
QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)


def first_token_attention(attn: torch.Tensor, query_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Per-head mean attention on position 0 over queries t >= 1 (and where query_mask is True).

    attn: (B, H, T, T) probabilities; query_mask: (B, T) bool. Returns (H,) (NaN if no query).
    """
    s, n = first_token_attention_sums(attn, query_mask)
    return s / n if n > 0 else torch.full_like(s, float("nan"))


def first_token_attention_sums(attn: torch.Tensor, query_mask: torch.Tensor | None = None):
    """(per-head sum of A[:, h, t, 0] over selected queries t >= 1, number of such queries)."""
    first = attn[:, :, 1:, 0].double()  # (B, H, T-1)
    if query_mask is None:
        return first.sum(dim=(0, 2)), first.shape[0] * first.shape[2]
    m = query_mask[:, 1:].to(first.dtype)[:, None, :]
    return (first * m).sum(dim=(0, 2)), int(query_mask[:, 1:].sum())


def sink_rate(per_head: list[list[float]] | torch.Tensor, epsilon: float = SINK_EPSILON) -> float:
    """Share of heads (all layers) whose first-token attention exceeds epsilon (Gu et al.)."""
    t = torch.as_tensor(per_head, dtype=torch.float64)
    return float((t > epsilon).double().mean())


def value_norm_sums(v: torch.Tensor) -> tuple[float, float, int, int]:
    """Sums and counts of per-head value norms at BOS and at positions >= 1. v: (B, T, H, D)."""
    norms = v.double().norm(dim=-1)  # (B, T, H)
    return (float(norms[:, 0].sum()), float(norms[:, 1:].sum()),
            norms[:, 0].numel(), norms[:, 1:].numel())


class ProbeAccumulator:
    """Sums the probe statistics of a model over batches."""

    def __init__(self):
        self.n_batches = self.n_sequences = 0
        self.loss_sum, self.loss_n = 0.0, 0
        self.layers: list[dict] | None = None
        self.has_mask = False
        self.fine_hist: torch.Tensor | None = None

    def _init_layers(self, n_layer: int, n_head: int):
        zeros = lambda: torch.zeros(n_head, dtype=torch.float64)  # noqa: E731
        self.layers = [{"first": zeros(), "first_n": 0, "trig": zeros(), "trig_n": 0,
                        "non": zeros(), "non_n": 0, "max_h": 0.0, "max_h_bos": 0.0,
                        "max_h_other": 0.0, "median_h": 0.0, "median_h_n": 0, "v_bos": 0.0, "v_other": 0.0, "v_bos_n": 0,
                        "v_other_n": 0, "gate_sum": 0.0, "gate_n": 0, "gate_trig": 0.0,
                        "gate_trig_n": 0, "gate_non": 0.0, "gate_non_n": 0, "has_gate": False}
                       for _ in range(n_layer)]

    @torch.no_grad()
    def update(self, model: CausalLM, inputs: torch.Tensor, targets: torch.Tensor,
               query_mask: torch.Tensor | None = None, max_attn_bytes: int = 2**30) -> None:
        """Add one batch; split into micro-batches so the recorded attention maps of all layers
        stay under ``max_attn_bytes`` (at least one sequence at a time)."""
        B, T = inputs.shape
        per_seq = 4 * model.cfg.n_layer * model.cfg.n_head * T * T
        micro = max(1, max_attn_bytes // per_seq)
        if micro < B:
            for i in range(0, B, micro):
                sl = slice(i, i + micro)
                self.update(model, inputs[sl], targets[sl],
                            None if query_mask is None else query_mask[sl], max_attn_bytes)
            self.n_batches -= -(-B // micro) - 1  # count the split batch once
            return
        with record(model) as rec:
            logits, hidden = model(inputs, return_hidden=True)
        if self.layers is None:
            self._init_layers(len(rec), model.cfg.n_head)
        self.n_batches += 1
        self.n_sequences += inputs.shape[0]
        loss = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), reduction="sum")
        self.loss_sum += float(loss)
        self.loss_n += targets.numel()
        self.has_mask = self.has_mask or query_mask is not None
        for acc, r, h in zip(self.layers, rec, hidden):
            s, n = first_token_attention_sums(r["attn"])
            acc["first"] += s.cpu()
            acc["first_n"] += n
            if query_mask is not None:
                s, n = first_token_attention_sums(r["attn"], query_mask)
                acc["trig"] += s.cpu()
                acc["trig_n"] += n
                s, n = first_token_attention_sums(r["attn"], ~query_mask)
                acc["non"] += s.cpu()
                acc["non_n"] += n
            a = h.detach().abs().float()
            acc["max_h"] = _nanmax(acc["max_h"], float(a.max()))
            acc["max_h_bos"] = _nanmax(acc["max_h_bos"], float(a[:, 0].max()))
            acc["median_h"] += float(a.median())
            acc["median_h_n"] += 1
            if a.shape[1] > 1:
                acc["max_h_other"] = _nanmax(acc["max_h_other"], float(a[:, 1:].max()))
            vb, vo, nb, no = value_norm_sums(r["v"])
            acc["v_bos"] += vb
            acc["v_other"] += vo
            acc["v_bos_n"] += nb
            acc["v_other_n"] += no
            score = r.get("gate") if r.get("gate") is not None else r.get("value_gate")
            if score is not None:
                self._update_gate(acc, score, inputs.shape, query_mask)

    def _update_gate(self, acc: dict, score: torch.Tensor, shape, query_mask) -> None:
        B, T = shape
        score = score.float().expand(B, T, *score.shape[2:])  # (B, T, H, width)
        acc["has_gate"] = True
        acc["gate_sum"] += float(score.double().sum())
        acc["gate_n"] += score.numel()
        if query_mask is not None:
            per_pos = score.double().flatten(2).sum(-1)  # (B, T)
            width = score[0, 0].numel()
            acc["gate_trig"] += float(per_pos[query_mask].sum())
            acc["gate_trig_n"] += int(query_mask.sum()) * width
            acc["gate_non"] += float(per_pos[~query_mask].sum())
            acc["gate_non_n"] += int((~query_mask).sum()) * width
        finite = score[torch.isfinite(score)].clamp(0, 1)
        hist = torch.histc(finite.cpu(), bins=FINE_BINS, min=0.0, max=1.0).double()
        self.fine_hist = hist if self.fine_hist is None else self.fine_hist + hist

    def summary(self) -> dict:
        if self.layers is None:
            raise ValueError("no batch was probed")
        div = lambda a, n: a / n if n else float("nan")  # noqa: E731
        per_head = [(acc["first"] / max(acc["first_n"], 1)).tolist() for acc in self.layers]
        first = [sum(h) / len(h) for h in per_head]
        out = {
            "val_loss": div(self.loss_sum, self.loss_n),
            "n_batches": self.n_batches,
            "n_sequences": self.n_sequences,
            "first_token_attention": first,
            "first_token_attention_per_head": per_head,
            "first_token_attention_mean": sum(first) / len(first),
            "sink_rate": sink_rate(per_head),
            "sink_rate_per_layer": [sink_rate([h]) for h in per_head],
            "sink_epsilon": SINK_EPSILON,
            "max_abs_hidden": [acc["max_h"] for acc in self.layers],
            "max_abs_hidden_bos": [acc["max_h_bos"] for acc in self.layers],
            "max_abs_hidden_other": [acc["max_h_other"] for acc in self.layers],
            "median_abs_hidden": [div(acc["median_h"], acc["median_h_n"]) for acc in self.layers],
            "value_norm_ratio": [div(div(acc["v_bos"], acc["v_bos_n"]), div(acc["v_other"], acc["v_other_n"]))
                                 for acc in self.layers],
        }
        if self.has_mask:
            for key, name in (("trig", "trigger"), ("non", "non_trigger")):
                heads = [(acc[key] / acc[f"{key}_n"]).tolist() if acc[f"{key}_n"] else
                         [float("nan")] * len(acc[key]) for acc in self.layers]
                out[f"first_token_attention_{name}"] = [sum(h) / len(h) for h in heads]
                out[f"first_token_attention_{name}_per_head"] = heads
        gated = any(acc["has_gate"] for acc in self.layers)
        out["gate_mean"] = [div(acc["gate_sum"], acc["gate_n"]) for acc in self.layers] if gated else None
        if gated and self.has_mask:
            out["gate_mean_trigger"] = [div(acc["gate_trig"], acc["gate_trig_n"]) for acc in self.layers]
            out["gate_mean_non_trigger"] = [div(acc["gate_non"], acc["gate_non_n"]) for acc in self.layers]
        out["gate_hist"] = out["gate_quantiles"] = None
        if gated and self.fine_hist is not None and self.fine_hist.sum() > 0:
            fine = self.fine_hist
            coarse = fine.view(HIST_BINS, FINE_BINS // HIST_BINS).sum(1)
            out["gate_hist"] = {"edges": torch.linspace(0, 1, HIST_BINS + 1).tolist(),
                                "fraction": (coarse / coarse.sum()).tolist()}
            cdf = fine.cumsum(0) / fine.sum()
            out["gate_quantiles"] = {str(q): (int(torch.searchsorted(cdf, torch.tensor(q, dtype=cdf.dtype))) + 0.5) / FINE_BINS
                                     for q in QUANTILES}
        return _plain(out)


def _nanmax(a: float, b: float) -> float:
    """max that propagates NaN (Python's max(0.0, nan) would return 0.0)."""
    return float("nan") if math.isnan(a) or math.isnan(b) else max(a, b)


def _plain(obj):
    """Plain Python containers and numbers (NaN/inf stay floats; json.dumps writes them)."""
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, torch.Tensor):
        return _plain(obj.tolist())
    return obj


@torch.no_grad()
def probe(model: CausalLM, batches, query_mask_fn=None) -> dict:
    """Run the probes over an iterable of (input, target) batches; see the module docstring."""
    was_training = model.training
    model.eval()
    acc = ProbeAccumulator()
    device = next(model.parameters()).device
    try:
        for x, y in batches:
            x, y = x.to(device), y.to(device)
            acc.update(model, x, y, query_mask_fn(x) if query_mask_fn is not None else None)
    finally:
        model.train(was_training)
    return acc.summary()
