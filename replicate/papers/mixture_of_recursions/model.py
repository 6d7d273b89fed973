"""Recursive LMs with per-token depth: Mixture-of-Recursions (Bae et al. 2025, arXiv 2507.10524).

Built on the shared ``replicate.nn.transformer`` blocks (``Block.forward(x, positions, attn_mask)``
and ``causal_mask``). One class, ``RecursiveLM``, covers the four models the paper compares
and one ablation of ours:

``vanilla``    ``n_layer`` unique blocks (the shared LM's layout).
``recursive``  Middle-Cycle sharing (Sec. 2.1): the first and the last block are unique, the
               ``(n_layer - 2) / n_rec`` middle blocks form one group ``f`` that is applied
               ``n_rec`` times, ``h <- f(h)`` (the same Block objects, norms included, so the
               tensors are shared and their gradients accumulate over recursions).
``recursive_gated``  ablation, not in the paper: the recursive model with MoR-EC's update form
               and no router. Every token takes every recursion as ``h <- h + w f(h)`` with a
               FIXED gate ``w = alpha * sigmoid(0) = alpha / 2`` (0.05 at alpha = 0.1: the
               expert-choice router's score at initialisation, when its logits are ~0), so a
               recursion scales ``h`` by ``1 + w`` and the block group's change ``Delta`` by
               ``w``. It separates the effect of that small residual-branch scale from the
               effect of routing (same unique parameters and FLOPs as ``recursive``). A variant
               rather than a new config key, so that no existing run's resolved config changes.
``vanilla_gated``  control, not in the paper: vanilla's ``n_layer`` unique blocks with
               recursive_gated's update and no sharing. The ``n_layer - 2`` middle blocks form
               ``n_rec`` consecutive groups ``g_1..g_{N_r}`` of ``(n_layer - 2) / n_rec`` untied
               blocks, each applied as ``h <- h + w g_i(h)`` with the same fixed gate
               ``w = alpha / 2``; the first and last blocks are plain. It has vanilla's
               parameters and FLOPs and MoR's small residual-branch scale, so MoR against it
               compares routing with sharing to the same update without either.
``mor_ec``     Middle-Cycle + expert-choice routing (Sec. 2.2.1): one router per recursion step
               r = 0..n_rec-1, ``Linear(d -> 1)`` without bias, init N(0, 0.02), score
               ``w = alpha * sigmoid(logit)`` with alpha = 0.1. Step r keeps the top
               ``k_r = max(1, floor(c_r T))`` tokens, ``c_r = (n_rec - r) / n_rec``, among the tokens
               kept at step r-1 (hierarchical filtering), in causal order. The selected tokens
               run through ``f`` attending only to each other (recursion-wise KV caching), and
               are updated as the official ``expert_choice_router.py`` does it::

                   h_t <- h_t + w_t * f(h_t)     (t selected; f's output includes its residual,
                                                  so this is (1 + w_t) h_t + w_t * Delta_t)
                   h_t <- h_t                    (t not selected)

               The paper writes the routed update as ``g f(h) + h`` (Sec. 2.2.1); the official
               code scatter-adds the weighted block output onto ``h``, which is that expression
               with ``f`` the full pre-norm block group (its own residual included), so a
               selected token is scaled by ``1 + w`` (w <= alpha = 0.1). Auxiliary loss ("auxiliary
               loss"): BCE between router logits of the tokens scored at step r and the
               top-k mask, mean over those tokens, summed over steps, times ``aux_coef``.
               ``aux_mode`` says which logits (official ``expert_choice_router.py``,
               ``cfg.mor.expert.sampling``):

               ``logits``    the routing router's own logits (official ``aux_loss`` mode): the
                             BCE's gradient reaches the router and, through its input, every
                             block below it.
               ``detached``  the routing router applied to ``h.detach()``: the BCE trains the
                             router's weights only, never the blocks (ours, between the two).
               ``separate``  a second router per step on ``h.detach()`` (official ``aux_router``
                             mode, its ``mlp_router``): the BCE trains only that router, the
                             routing router learns from the LM loss alone, and the causal rule
                             thresholds the second router.

               The official router divides its input by ``cfg.mor.temp`` (``router_temp``
               here; a bias-free linear router, so the same as dividing its logits) and can
               warm the capacity up (``cap_warmup_step``: over the first W training steps the
               capacity decays by a cosine from 1 to (N_r - r)/N_r); ``cap_warmup_steps`` here,
               0 = off.

               Random routing (official ``cfg.mor.rand_router``, ``rand_router`` here): the
               routers are replaced by scores ``u ~ U(0, 1)`` drawn afresh per token and step,
               ``w = alpha * u``; top-k, hierarchical filtering and the update are unchanged and no
               auxiliary or z-loss is computed (the official code skips both). The scores read
               no token, so top-k over them is causal; the threshold rule keeps a token at step r
               when ``u > 1 - c_r / c_{r-1}`` (the same expected share as top-k). It is the
               control for "routing, not the gate": the same gate scale and token budget with
               no learned choice of tokens.

               Router z-loss (official ``cfg.mor.z_loss`` of the expert-choice router, off in its
               expert-choice configs; ``ec_z_coef`` here, 0 = off): ``sum_r mean_t (logit_t^(r))^2``
               over the tokens step r ranked, the logsumexp of a single logit being the logit
               itself (official ``torch.logsumexp(_router_weights, dim=-1) ** 2``, averaged over
               the gathered tokens; its division by ``num_items_in_batch / (bs * seq_len)`` is the
               gradient-accumulation count, 1 here).
``mor_tc``     Middle-Cycle + token-choice routing (Sec. 2.2.1): one router ``Linear(d -> n_rec)``
               on the hidden state entering the first recursion, softmax, top-1 gives each token
               its depth ``d_t`` in 1..n_rec and its gate ``g_t`` (the chosen probability). As the
               official ``token_choice_router.py`` does it, token t takes part in recursions
               r < d_t plainly, ``h_t <- f(h_t)``, and leaves the recursions as
               ``h_in_t + g_t f^(d_t)(h_in_t)`` (``h_in`` the state entering recursion 0: the
               gated block output of its last recursion is scatter-added onto the input). Balancing loss
               ``n_rec * sum_i f_i P_i`` (Switch-style; f_i the share of tokens given depth i, P_i
               the mean router probability) and router z-loss ``mean(logsumexp(logits)^2)``.

Expert-choice top-k over a sequence looks at future tokens. ``rule="threshold"`` is the causal
evaluation rule: at step r a token stays active if it was active at r-1 and
``sigmoid(logit) > 0.5`` (what the BCE auxiliary loss trains the router to predict; the
second router's logit under ``aux_mode="separate"``); a step with capacity 1 keeps every
token under both rules.

Recursive KV sharing (``kv_share=True``, Sec. 2.2.2): recursions r >= 1 reuse the keys and values
that each middle block computed at recursion 0 (over all tokens), so active queries attend to
every earlier token's first-recursion K/V. ``block_forward_kv`` runs a Block from its own layers
with externally supplied K/V for that; it ignores the shared LM's gate hooks (unused here).

Two execution paths give the same numbers (a test checks it): ``gather`` (exactly k tokens per
row: the selected tokens are gathered, run with their own positions and ``causal_mask``, and
scattered back, as the official code) used for top-k; and ``masked`` (any per-token active set:
the group runs on the whole sequence with keys restricted to active tokens and only active
tokens updated) used by the threshold rule, token-choice, KV sharing and the unrouted models.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from replicate.nn.transformer import Block, CausalLM, LMConfig, apply_rope, causal_mask, rope_angles

VARIANTS = ("vanilla", "vanilla_gated", "recursive", "recursive_gated", "mor_ec", "mor_tc")
UNSHARED = ("vanilla", "vanilla_gated")  # every block application has its own block
RULES = ("topk", "threshold")
AUX_MODES = ("logits", "detached", "separate")


@dataclass
class MoRConfig:
    """Recursion and routing settings (the LM's shape is an ``LMConfig``).

    variant       one of VARIANTS
    n_rec         N_r, number of recursions of the middle group (ignored by vanilla)
    alpha         expert-choice router scale (0.1 in the paper's configs); the fixed gate of
                  recursive_gated and vanilla_gated is alpha * sigmoid(0) = alpha / 2
    kv_share      recursive KV sharing: recursions r >= 1 reuse recursion 0's K/V
    aux_coef      expert-choice BCE auxiliary loss coefficient (0.001 in the paper)
    aux_mode      which logits the BCE trains: logits | detached | separate (module docstring)
    router_temp   the routing router's input is divided by it (official ``cfg.mor.temp``)
    cap_warmup_steps  capacity warm-up length in training steps (official ``cap_warmup_step``),
                  0 = capacities fixed from the first step
    balance_coef  token-choice balancing loss coefficient (0.1)
    z_coef        token-choice router z-loss coefficient (1e-5)
    rand_router   expert-choice with random scores instead of routers (official ``rand_router``)
    ec_z_coef     expert-choice router z-loss coefficient (official ``z_loss``/``z_coeff``; 0 = off)
    """

    variant: str = "vanilla"
    n_rec: int = 2
    alpha: float = 0.1
    kv_share: bool = False
    aux_coef: float = 0.001
    aux_mode: str = "logits"
    router_temp: float = 1.0
    cap_warmup_steps: int = 0
    balance_coef: float = 0.1
    z_coef: float = 1e-5
    rand_router: bool = False
    ec_z_coef: float = 0.0

    def __post_init__(self):
        if self.variant not in VARIANTS:
            raise ValueError(f"model.variant={self.variant!r}; expected one of {VARIANTS}")
        if self.n_rec < 1:
            raise ValueError(f"model.n_rec={self.n_rec} must be >= 1")
        if self.kv_share and self.variant in UNSHARED:
            raise ValueError(f"model.kv_share needs a recursive variant, not {self.variant}")
        if self.aux_mode not in AUX_MODES:
            raise ValueError(f"model.aux_mode={self.aux_mode!r}; expected one of {AUX_MODES}")
        if self.router_temp <= 0 or self.cap_warmup_steps < 0:
            raise ValueError("model.router_temp must be > 0 and model.cap_warmup_steps >= 0")
        if self.rand_router and self.variant != "mor_ec":
            raise ValueError(f"model.rand_router needs variant mor_ec, not {self.variant!r}")
        if self.ec_z_coef < 0:
            raise ValueError(f"model.ec_z_coef={self.ec_z_coef} must be >= 0")

    def fixed_gate(self) -> float | None:
        """The fixed gate w = alpha * sigmoid(0) of recursive_gated and vanilla_gated (None for
        every other variant)."""
        return self.alpha * 0.5 if self.variant in ("recursive_gated", "vanilla_gated") else None

    def capacities(self, step: int | None = None) -> list[float]:
        """Expert-choice capacity of each recursion step: (N_r - r) / N_r; at training step
        ``step`` (0-based) with a warm-up, c + (1 - c) (1 + cos(pi min(1, (step + 1) / W))) / 2
        (the official schedule: its counter is 1 at the first training forward)."""
        caps = [(self.n_rec - r) / self.n_rec for r in range(self.n_rec)]
        if step is None or self.cap_warmup_steps <= 0:
            return caps
        decay = 0.5 * (1.0 + math.cos(math.pi * min(1.0, (step + 1) / self.cap_warmup_steps)))
        return [c + (1.0 - c) * decay for c in caps]


@dataclass
class Routing:
    """What one forward pass decided: per step r the active mask (B, T); for expert-choice
    also each step's routing logits, the logits the BCE trains and the causal rule thresholds
    (``pred_logits``: the same tensor under aux_mode="logits") and the tokens the step ranked;
    for token-choice the router logits."""

    active: list[torch.Tensor] = field(default_factory=list)
    logits: list[torch.Tensor] = field(default_factory=list)
    pred_logits: list[torch.Tensor] = field(default_factory=list)
    scored: list[torch.Tensor] = field(default_factory=list)  # tokens the step's router ranked
    tc_logits: torch.Tensor | None = None

    def depth(self) -> torch.Tensor:
        """Recursions each token took, (B, T) integer (0 when no recursion ran)."""
        return torch.stack(self.active).sum(0) if self.active else torch.zeros(0)


def middle_layers(n_layer: int, n_rec: int) -> int:
    """Unique middle blocks under Middle-Cycle sharing; refuses layouts that do not divide."""
    if n_layer < 3 or (n_layer - 2) % n_rec:
        raise ValueError(f"Middle-Cycle needs (n_layer - 2) divisible by n_rec; got n_layer={n_layer}, n_rec={n_rec}")
    return (n_layer - 2) // n_rec


def block_forward_kv(block: Block, x: torch.Tensor, positions: torch.Tensor,
                     kv: tuple[torch.Tensor, torch.Tensor] | None, attn_mask: torch.Tensor | None):
    """``block(x)`` computed from the block's own layers, attending to ``kv`` when given
    (dropout and the shared LM's gate hooks are not applied: neither is used here).

    x (B, T, d) at ``positions`` (T,) or (B, T); kv = (k, v) of shape (B, H, S, D) already rotated,
    or a callable ``kv(own_k, own_v) -> (k, v)`` (a decoder appends this call's K/V to its cache);
    attn_mask boolean (B or 1, 1, T, S), None = causal over x itself. Returns the block output
    and this call's own (k, v), so a caller can cache or share them.
    """
    attn, cfg = block.attn, block.attn.cfg
    B, T, _ = x.shape
    xn = block.norm1(x)
    q, k, v = (proj(xn).view(B, T, attn.n_head, attn.head_dim) for proj in (attn.q_proj, attn.k_proj, attn.v_proj))
    if cfg.qk_norm:
        q, k = attn.q_norm(q), attn.k_norm(k)
    if cfg.pos == "rope":
        cos, sin = rope_angles(positions, attn.head_dim, cfg.rope_base)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
    q, k, v = (t.transpose(1, 2) for t in (q, k, v))
    keys, values = kv(k, v) if callable(kv) else (kv if kv is not None else (k, v))
    y = F.scaled_dot_product_attention(q, keys, values, attn_mask=attn_mask, is_causal=attn_mask is None)
    x = x + attn.o_proj(y.transpose(1, 2).reshape(B, T, -1))
    return x + block.mlp(block.norm2(x)), (k, v)


class RecursiveLM(nn.Module):
    """Vanilla, recursive (Middle-Cycle) and MoR language models; see the module docstring."""

    def __init__(self, lm: LMConfig, mor: MoRConfig):
        super().__init__()
        self.cfg, self.mor = lm, mor
        self.base = CausalLM(lm)  # embeddings, blocks (the first n_unique used), final norm, head
        if mor.variant in UNSHARED:
            return
        m = middle_layers(lm.n_layer, mor.n_rec)
        del self.base.blocks[m + 2:]  # keep first, m middle, last: unique parameters only
        if mor.variant == "mor_ec" and not mor.rand_router:
            self.routers = nn.ModuleList(nn.Linear(lm.d_model, 1, bias=False) for _ in range(mor.n_rec))
            if mor.aux_mode == "separate":
                self.aux_routers = nn.ModuleList(nn.Linear(lm.d_model, 1, bias=False) for _ in range(mor.n_rec))
        elif mor.variant == "mor_tc":
            self.routers = nn.ModuleList([nn.Linear(lm.d_model, mor.n_rec, bias=False)])
        for r in [*getattr(self, "routers", []), *getattr(self, "aux_routers", [])]:
            nn.init.normal_(r.weight, mean=0.0, std=0.02)

    # ----------------------------------------------------------------- structure

    @property
    def first(self) -> Block:
        return self.base.blocks[0]

    @property
    def last(self) -> Block:
        return self.base.blocks[-1]

    @property
    def middle(self) -> list[Block]:
        return list(self.base.blocks[1:-1])

    def gated_groups(self) -> list[list[Block]]:
        """vanilla_gated's middle blocks in their ``n_rec`` consecutive groups."""
        blocks = list(self.base.blocks[1:-1])
        size = middle_layers(self.cfg.n_layer, self.mor.n_rec)
        return [blocks[i:i + size] for i in range(0, len(blocks), size)]

    def layer_schedule(self) -> list[tuple[int, int]]:
        """(recursion, unique block index) of every block application, in order; the first
        and last blocks are recursion -1."""
        if self.mor.variant in UNSHARED:
            return [(-1, i) for i in range(self.cfg.n_layer)]
        m = len(self.middle)
        inner = [(r, 1 + j) for r in range(self.mor.n_rec) for j in range(m)]
        return [(-1, 0), *inner, (-1, m + 1)]

    # ----------------------------------------------------------------- forward

    def routing_logits(self, h: torch.Tensor, r: int) -> torch.Tensor:
        """Expert-choice step r's routing logits (..., 1) (input divided by ``router_temp``)."""
        return self.routers[r](h / self.mor.router_temp if self.mor.router_temp != 1.0 else h)

    def predicted_logits(self, h: torch.Tensor, r: int, logits: torch.Tensor) -> torch.Tensor:
        """The logits the BCE trains and the causal rule thresholds at step r (module docstring);
        ``logits`` are the step's routing logits, returned as they are under aux_mode="logits"."""
        if self.mor.aux_mode == "logits":
            return logits
        if self.mor.aux_mode == "detached":
            return self.routing_logits(h.detach(), r)
        return self.aux_routers[r](h.detach())

    def forward(self, idx: torch.Tensor, rule: str = "topk", return_routing: bool = False,
                step: int | None = None):
        """Logits (B, T, vocab); with return_routing also the ``Routing`` record. ``step`` is the
        training step, for the capacity warm-up (None: target capacities)."""
        if rule not in RULES:
            raise ValueError(f"rule={rule!r}; expected one of {RULES}")
        h = self.base.embed(idx)
        routing = Routing()
        if self.mor.variant == "vanilla":
            for block in self.base.blocks:
                h = block(h)
        elif self.mor.variant == "vanilla_gated":
            h = self.first(h)
            for group in self.gated_groups():
                x = h
                for block in group:
                    x = block(x)
                h = h + self.mor.fixed_gate() * x
            h = self.last(h)
        else:
            h = self.first(h)
            h = self._recursions(h, rule, routing, step)
            h = self.last(h)
        logits = self.base.lm_head(self.base.norm_f(h))
        return (logits, routing) if return_routing else logits

    def _recursions(self, h: torch.Tensor, rule: str, routing: Routing, step: int | None = None) -> torch.Tensor:
        B, T, _ = h.shape
        positions = torch.arange(T, device=h.device)
        active = torch.ones(B, T, dtype=torch.bool, device=h.device)
        tc = self._token_choice(h, routing) if self.mor.variant == "mor_tc" else None
        h_in, h_out, shared_kv = h, h, None
        capacities = self.mor.capacities(step if self.training else None)
        for r in range(self.mor.n_rec):
            weight = None
            if self.mor.variant == "mor_ec":
                active, weight = self._expert_choice(h, r, active, rule, routing, capacities[r])
            elif tc is not None:
                active = tc[0] > r  # plain h <- f(h) until the token's last recursion
            elif self.mor.fixed_gate() is not None:
                weight = torch.full((B, T), self.mor.fixed_gate(), dtype=h.dtype, device=h.device)
            routing.active.append(active)
            kv = shared_kv if (self.mor.kv_share and r > 0) else None
            if self.mor.variant == "mor_ec" and rule == "topk" and not self.mor.kv_share:
                h = self._step_gathered(h, active, weight)
            else:
                h, own_kv = self._step_masked(h, positions, active, weight, kv)
                shared_kv = own_kv if r == 0 else shared_kv
            if tc is not None:
                h_out = token_choice_exit(h_in, h, tc, r, h_out)
        return h_out if tc is not None else h

    def _token_choice(self, h: torch.Tensor, routing: Routing | None = None):
        """Token-choice depth (1..N_r) and gate of every token, from the state entering recursion 0."""
        logits = self.routers[0](h)  # (B, T, N_r)
        if routing is not None:
            routing.tc_logits = logits
        probs = logits.float().softmax(-1)
        gate, choice = probs.max(-1)
        return choice + 1, gate.to(h.dtype)

    def _expert_choice(self, h, r, prev_active, rule, routing, capacity):
        """Active mask and update weights of expert-choice step r (hierarchical filtering)."""
        if self.mor.rand_router:
            logits, pred = random_scores(h.shape[:2], self._keep_share(r), h.device)
        else:
            logits = self.routing_logits(h, r).squeeze(-1)  # (B, T)
            pred = self.predicted_logits(h, r, logits[..., None]).squeeze(-1)
        weight = self.mor.alpha * torch.sigmoid(logits)
        k = max(1, int(capacity * h.shape[1]))
        if capacity >= 1.0 or (rule == "topk" and k >= h.shape[1]):
            active = prev_active.clone()
        elif rule == "topk":
            active = topk_mask(weight, prev_active, k)
        else:
            active = prev_active & (pred > 0)  # sigmoid(logit) > 0.5
        routing.logits.append(logits)
        routing.pred_logits.append(pred)
        routing.scored.append(prev_active)
        return active, weight

    def _keep_share(self, r: int) -> float:
        """Share of step r-1's tokens that step r keeps at the target capacities, c_r / c_{r-1}."""
        caps = [1.0, *self.mor.capacities()]
        return caps[r + 1] / caps[r]

    def _step_gathered(self, h, active, weight):
        """One recursion on exactly k active tokens per row: gather, run, scatter-add."""
        B, T, d = h.shape
        k = int(active[0].sum())
        index = active.nonzero()[:, 1].view(B, k)  # ascending = causal order
        x = h.gather(1, index[..., None].expand(B, k, d))
        mask = causal_mask(index)
        for block in self.middle:
            x = block(x, positions=index, attn_mask=mask)
        w = weight.gather(1, index)[..., None]
        return h.scatter_add(1, index[..., None].expand(B, k, d), w * x)

    def _step_masked(self, h, positions, active, weight, kv):
        """One recursion on any active set: keys restricted to active tokens (or, with shared
        kv, to recursion 0's keys), inactive tokens left unchanged."""
        T = h.shape[1]
        own_causal = torch.ones(T, T, dtype=torch.bool, device=h.device).tril()
        eye = torch.eye(T, dtype=torch.bool, device=h.device)
        if kv is None:
            mask = (own_causal & (active[:, None, :] | eye))[:, None]  # (B, 1, T, T)
        else:
            mask = own_causal[None, None]
        x, own = h, []
        for j, block in enumerate(self.middle):
            x, block_kv = block_forward_kv(block, x, positions, None if kv is None else kv[j], mask)
            own.append(block_kv)
        update = x if weight is None else h + weight[..., None] * x
        return torch.where(active[..., None], update, h), own

    # ----------------------------------------------------------------- losses

    def router_loss(self, routing: Routing) -> tuple[torch.Tensor, dict[str, float]]:
        """Weighted auxiliary router losses of one forward pass (0 for unrouted models)."""
        zero = torch.zeros((), device=self.base.lm_head.weight.device)
        if self.mor.variant == "mor_ec" and self.mor.rand_router:
            return zero, {}
        if self.mor.variant == "mor_ec":
            bce = sum((aux_bce(logits, scored, active) for logits, scored, active
                       in zip(routing.pred_logits, routing.scored, routing.active)), zero)
            loss, parts = self.mor.aux_coef * bce, {"aux_bce": float(bce.detach())}
            if self.mor.ec_z_coef > 0:
                z = sum((ec_z_loss(logits, scored) for logits, scored in zip(routing.logits, routing.scored)), zero)
                loss, parts["z_loss"] = loss + self.mor.ec_z_coef * z, float(z.detach())
            return loss, parts
        if self.mor.variant == "mor_tc":
            balance = balancing_loss(routing.tc_logits)
            z = torch.logsumexp(routing.tc_logits.float(), -1).square().mean()
            return self.mor.balance_coef * balance + self.mor.z_coef * z, {"balance": float(balance.detach()), "z_loss": float(z.detach())}
        return zero, {}


def topk_mask(scores: torch.Tensor, allowed: torch.Tensor, k: int) -> torch.Tensor:
    """(B, T) mask of the k highest scores per row among allowed tokens (hierarchical top-k)."""
    if k > int(allowed.sum(1).min()):
        raise ValueError(f"top-k of {k} tokens among fewer allowed ones")
    ranked = scores.masked_fill(~allowed, float("-inf")).topk(k, dim=1).indices
    return torch.zeros_like(allowed).scatter(1, ranked, True)


def token_choice_exit(h_in: torch.Tensor, h: torch.Tensor, tc: tuple[torch.Tensor, torch.Tensor], r: int,
                      out: torch.Tensor) -> torch.Tensor:
    """``out`` with the tokens whose token-choice depth is r + 1 set to ``h_in + g f^(r+1)(h_in)``
    (``h`` the state after recursion r; official ``token_choice_router.py``: the gated output of a
    token's last recursion is scatter-added onto the state that entered the recursions)."""
    depth, gate = tc
    return torch.where((depth == r + 1)[..., None], h_in + gate[..., None] * h, out)


def random_scores(shape, keep_share: float, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Random routing of one step: ``(logits, pred)`` with ``sigmoid(logits) = u ~ U(0, 1)`` per
    token (so top-k over ``alpha * u`` is the official random router's choice) and ``pred > 0``
    exactly when ``u > 1 - keep_share`` (the causal rule keeps that share in expectation)."""
    logits = torch.logit(torch.rand(shape, device=device).clamp(1e-6, 1 - 1e-6))
    shift = math.log((1.0 - keep_share) / keep_share) if keep_share < 1.0 else 0.0  # a capacity-1 step keeps all
    return logits, logits - shift


def ec_z_loss(logits: torch.Tensor, scored: torch.Tensor) -> torch.Tensor:
    """Expert-choice router z-loss of one step: mean over the ranked tokens of logsumexp over the
    router's single output squared, i.e. of the logit squared (official ``z_loss``)."""
    return (logits.float().square() * scored).sum() / scored.sum().clamp(min=1)


def aux_bce(logits: torch.Tensor, scored: torch.Tensor, selected: torch.Tensor) -> torch.Tensor:
    """BCE(router logit, top-k mask) averaged over the tokens the step's router ranked."""
    loss = F.binary_cross_entropy_with_logits(logits.float(), selected.float(), reduction="none")
    return (loss * scored).sum() / scored.sum().clamp(min=1)


def balancing_loss(logits: torch.Tensor) -> torch.Tensor:
    """Switch-style load balance N * sum_i f_i P_i over depths (1 when perfectly balanced)."""
    n = logits.shape[-1]
    probs = logits.float().softmax(-1).flatten(0, -2)
    share = F.one_hot(probs.argmax(-1), n).float().mean(0)
    return n * (share * probs.mean(0)).sum()


def unique_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def lm_config_for(model: dict) -> tuple[LMConfig, MoRConfig]:
    """Split a flat model dict into the LM shape and the recursion settings."""
    mor_keys = set(MoRConfig.__dataclass_fields__)
    mor = MoRConfig(**{k: v for k, v in model.items() if k in mor_keys})
    lm = LMConfig.from_dict({k: v for k, v in model.items() if k not in mor_keys})
    if mor.variant != "vanilla":
        middle_layers(lm.n_layer, mor.n_rec)  # vanilla_gated's groups divide the middle blocks too
    return lm, mor
