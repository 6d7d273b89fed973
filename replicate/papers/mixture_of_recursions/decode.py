"""Autoregressive decoding with recursion-wise KV caching (Bae et al. 2025, Sec. 2.2.2 and 4.2).

``Decoder(model, batch, max_len)`` feeds one token per row per call and keeps one K/V cache per
block application ("slot"): vanilla has ``n_layer`` slots, the recursive models one for the
first block, one per (recursion, middle block) and one for the last. Routing is causal: MoR-EC
uses the threshold rule (``sigmoid(logit) > 0.5`` among tokens active at the previous step, on
the logits ``RecursiveLM.predicted_logits`` names; capacity-1 steps keep every token), MoR-TC its top-1 depth. A token runs recursion r only if it
is active there, and only then writes its K/V into that recursion's slots (recursion-wise
caching); a later token at recursion r attends to the earlier tokens that reached r. With
recursive KV sharing, recursions r >= 1 write nothing and attend to recursion 0's cache.

Rows that skip a recursion are left out of its computation (their hidden states are gathered
out and scattered back), which is where MoR saves decode FLOPs. Caches are preallocated dense
tensors; ``cache_bytes()`` counts what a compact (paged) cache would hold: 2 (K and V) x d_model
x element size per stored (token, slot) entry. Teacher-forced decoding reproduces
``model(idx, rule="threshold")`` (a test checks it).
"""

from __future__ import annotations

import time

import torch

from replicate.papers.mixture_of_recursions.model import RecursiveLM, block_forward_kv, token_choice_exit


class SlotCache:
    """K/V of one block application for every row and position, with a validity mask."""

    def __init__(self, batch: int, n_head: int, max_len: int, head_dim: int, dtype, device):
        self.k = torch.zeros(batch, n_head, max_len, head_dim, dtype=dtype, device=device)
        self.v = torch.zeros_like(self.k)
        self.valid = torch.zeros(batch, max_len, dtype=torch.bool, device=device)

    def attend_fn(self, rows: torch.Tensor, t: int, write: bool):
        """A ``block_forward_kv`` context callable for ``rows`` at position t."""
        def context(k_new, v_new):
            if write:
                self.k[rows, :, t] = k_new[:, :, 0]
                self.v[rows, :, t] = v_new[:, :, 0]
                self.valid[rows, t] = True
            return self.k[rows, :, : t + 1], self.v[rows, :, : t + 1]
        return context

    def mask(self, rows: torch.Tensor, t: int, writing: bool) -> torch.Tensor:
        """Keys the rows may attend to at position t (their own, when being written, included)."""
        mask = self.valid[rows, : t + 1].clone()
        if writing:
            mask[:, t] = True
        return mask[:, None, None, :]


class Decoder:
    def __init__(self, model: RecursiveLM, batch: int, max_len: int):
        if model.mor.rand_router:
            raise ValueError("Decoder: a random-router model (model.rand_router) has no router to decode with")
        self.model, self.t = model.eval(), 0
        p = model.base.lm_head.weight
        cfg = model.cfg
        self.schedule = model.layer_schedule()
        self.caches = [SlotCache(batch, cfg.n_head, max_len, cfg.head_dim, p.dtype, p.device)
                       for _ in self.schedule]
        self.depths: list[torch.Tensor] = []

    def _slot(self, recursion: int, block: int) -> int:
        return self.schedule.index((recursion, block))

    def _run(self, block, slot: int, h: torch.Tensor, rows: torch.Tensor, read_slot: int | None = None):
        """Block on the given rows at the current position; K/V written to ``slot`` (or, with
        read_slot, read from that slot and nothing written)."""
        cache = self.caches[slot if read_slot is None else read_slot]
        pos = torch.full((1,), self.t, device=h.device)
        writing = read_slot is None
        out, _ = block_forward_kv(block, h, pos, cache.attend_fn(rows, self.t, writing),
                                  cache.mask(rows, self.t, writing))
        return out

    @torch.no_grad()
    def step(self, token: torch.Tensor) -> torch.Tensor:
        """Logits (B, vocab) of the next token after feeding ``token`` (B,) at position t."""
        m, B = self.model, token.shape[0]
        all_rows = torch.arange(B, device=token.device)
        h = m.base.embed(token[:, None], torch.full((1,), self.t, device=token.device))
        if m.mor.variant == "vanilla":
            for i, block in enumerate(m.base.blocks):
                h = self._run(block, i, h, all_rows)
        elif m.mor.variant == "vanilla_gated":
            h, i = self._run(m.first, 0, h, all_rows), 1
            for group in m.gated_groups():
                x = h
                for block in group:
                    x, i = self._run(block, i, x, all_rows), i + 1
                h = h + m.mor.fixed_gate() * x
            h = self._run(m.last, i, h, all_rows)
        else:
            h = self._run(m.first, 0, h, all_rows)
            h = self._recursions(h)
            h = self._run(m.last, len(self.schedule) - 1, h, all_rows)
        self.t += 1
        return m.base.lm_head(m.base.norm_f(h))[:, 0]

    def _recursions(self, h: torch.Tensor) -> torch.Tensor:
        m = self.model
        active = torch.ones(h.shape[0], dtype=torch.bool, device=h.device)
        depth = torch.zeros(h.shape[0], dtype=torch.long, device=h.device)
        tc = m._token_choice(h) if m.mor.variant == "mor_tc" else None
        h_in = out = h
        for r in range(m.mor.n_rec):
            weight = None
            if m.mor.variant == "mor_ec":
                logits = m.routing_logits(h, r)
                weight = m.mor.alpha * torch.sigmoid(logits[:, 0, 0])
                if m.mor.capacities()[r] < 1.0:
                    active = active & (m.predicted_logits(h, r, logits)[:, 0, 0] > 0)
            elif tc is not None:
                active = tc[0][:, 0] > r  # plain h <- f(h) until the token's last recursion
            elif m.mor.fixed_gate() is not None:
                weight = torch.full((h.shape[0],), m.mor.fixed_gate(), dtype=h.dtype, device=h.device)
            rows = active.nonzero()[:, 0]
            depth += active.long()
            if len(rows) == 0:
                break
            x = h[rows]
            for j, block in enumerate(m.middle, start=1):
                shared = self._slot(0, j) if (m.mor.kv_share and r > 0) else None
                x = self._run(block, self._slot(r, j), x, rows, read_slot=shared)
            h = h.clone()
            h[rows] = x if weight is None else h[rows] + weight[rows, None, None] * x
            if tc is not None:
                out = token_choice_exit(h_in, h, tc, r, out)
        self.depths.append(depth)
        return out if tc is not None else h

    def cache_bytes(self) -> int:
        """Bytes a compact cache would hold for everything stored so far (all rows)."""
        d, size = self.model.cfg.d_model, self.caches[0].k.element_size()
        return sum(int(c.valid.sum()) for c in self.caches) * 2 * d * size


@torch.no_grad()
def teacher_forced_logits(model: RecursiveLM, idx: torch.Tensor) -> torch.Tensor:
    dec = Decoder(model, idx.shape[0], idx.shape[1])
    return torch.stack([dec.step(idx[:, t]) for t in range(idx.shape[1])], dim=1)


@torch.no_grad()
def generate(model: RecursiveLM, prompt: torch.Tensor, max_len: int) -> dict:
    """Greedy generation to ``max_len`` tokens; returns tokens, decode seconds (after the
    prompt), generated token count, cache bytes per sequence and the mean recursion depth."""
    B = prompt.shape[0]
    dec = Decoder(model, B, max_len)
    tokens = [prompt[:, t] for t in range(prompt.shape[1])]
    for tok in tokens[:-1]:
        dec.step(tok)
    start = time.perf_counter()
    nxt = tokens[-1]
    while len(tokens) < max_len:
        nxt = dec.step(nxt).argmax(-1)
        tokens.append(nxt)
    seconds = time.perf_counter() - start
    depth = torch.stack(dec.depths).float().mean().item() if dec.depths else float("nan")
    return {"tokens": torch.stack(tokens, 1), "seconds": seconds, "generated": B * (max_len - prompt.shape[1]),
            "cache_bytes_per_seq": dec.cache_bytes() / B, "mean_depth": depth}
