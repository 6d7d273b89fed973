"""Gates of "Gated Attention for Large Language Models: Non-linearity, Sparsity, and
Attention-Sink-Free" (Qiu et al. 2025, arXiv 2505.06708; official code qiuzh20/gated_attention,
``modeling_qwen3.py``), plugged into the shared ``replicate.nn.transformer.CausalLM``.

The paper's gate (its Eq. for gating, Sec. 2): ``Y' = g(Y, X, W_theta, sigma) = Y ⊙ sigma(X W_theta)``,
with ``X`` the current token's hidden state after the block's input norm, ``Y`` the gated tensor,
``sigma`` the sigmoid and the product elementwise (broadcast for head-wise scores). Variants
(``gate=``):

``none``               baseline, no gate.
``headwise``           G1 (after SDPA), one score per head: W_theta is d_model -> H.
``elementwise``        G1, one score per head and channel: W_theta is d_model -> H * d_head.
``value``              G2, elementwise gate on the value projection output (before attention).
``input_independent``  G1 position with a learned score not depending on X:
                       Y' = Y ⊙ sigma(theta), theta of shape (H, d_head), initialised to 0
                       (score 0.5, as the input-dependent gates start). Which shape the paper's
                       input-independent variant used is unconfirmed here (Table 4 names it only).

Deviation / equivalence: the official code appends W_theta's outputs to a widened ``q_proj``
(bias = qkv_bias, False for Qwen3) initialised N(0, 0.02) with everything else. Here W_theta is a
separate bias-free ``nn.Linear`` on the same input; this is the same function and the same
initialisation (``gate_init="normal0.02"``, the default). ``gate_init="model"`` initialises it
like the rest of the model instead (PyTorch default under ``init="torch_default"``). Weight decay
treats it as the official code does (it is part of a projection matrix, so it is decayed).
Community versions often use a zero-initialised 2·sigmoid gate; we do not: ours is the paper's
plain sigmoid, starting near 0.5.
"""

from __future__ import annotations

import torch
from torch import nn

from replicate.nn.transformer import CausalLM, LMConfig

GATES = ("none", "headwise", "elementwise", "value", "input_independent")
GATE_INITS = ("normal0.02", "model")


class _Gate(nn.Module):
    """Common recording behaviour: while ``keep_score`` is set, ``last_score`` keeps the score."""

    def __init__(self):
        super().__init__()
        self.keep_score = False
        self.last_score: torch.Tensor | None = None

    def score(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        s = self.score(x)
        if self.keep_score:
            self.last_score = s.detach()
        return y * s.to(y.dtype)


class InputGate(_Gate):
    """sigma(X W_theta) reshaped to (B, T, H, width): width 1 = head-wise, d_head = elementwise."""

    def __init__(self, d_model: int, n_head: int, width: int, init: str = "normal0.02"):
        super().__init__()
        self.n_head, self.width = n_head, width
        self.proj = nn.Linear(d_model, n_head * width, bias=False)
        if init == "normal0.02":
            nn.init.normal_(self.proj.weight, mean=0.0, std=0.02)

    def score(self, x: torch.Tensor) -> torch.Tensor:
        B, T, _ = x.shape
        return torch.sigmoid(self.proj(x)).view(B, T, self.n_head, self.width)


class HeadwiseGate(InputGate):
    def __init__(self, d_model: int, n_head: int, head_dim: int, init: str = "normal0.02"):
        super().__init__(d_model, n_head, 1, init)


class ElementwiseGate(InputGate):
    def __init__(self, d_model: int, n_head: int, head_dim: int, init: str = "normal0.02"):
        super().__init__(d_model, n_head, head_dim, init)


class InputIndependentGate(_Gate):
    """sigma(theta), theta (H, d_head) a free parameter; broadcast over batch and time."""

    def __init__(self, d_model: int, n_head: int, head_dim: int, init: str = "normal0.02"):
        super().__init__()
        self.theta = nn.Parameter(torch.zeros(n_head, head_dim))

    def score(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.theta)[None, None]


def make_gate(kind: str, cfg: LMConfig, init: str = "normal0.02") -> tuple[str, nn.Module] | None:
    """(hook name, gate module) for one attention layer, or None for the baseline."""
    if kind not in GATES:
        raise ValueError(f"gate={kind!r}; expected one of {GATES}")
    if init not in GATE_INITS:
        raise ValueError(f"gate_init={init!r}; expected one of {GATE_INITS}")
    init = "torch_default" if init == "model" and cfg.init == "torch_default" else "normal0.02"
    args = (cfg.d_model, cfg.n_head, cfg.head_dim, init)
    if kind == "none":
        return None
    if kind == "headwise":
        return "gate", HeadwiseGate(*args)
    if kind == "elementwise":
        return "gate", ElementwiseGate(*args)
    if kind == "value":
        return "value_gate", ElementwiseGate(*args)
    return "gate", InputIndependentGate(*args)


def build_gated_lm(cfg: LMConfig | dict, gate: str = "none", gate_init: str = "normal0.02") -> CausalLM:
    """The shared causal LM with the given gate installed in every attention layer."""
    model = CausalLM(cfg)
    for attn in model.attentions:
        made = make_gate(gate, model.cfg, gate_init)
        if made is not None:
            hook, module = made
            setattr(attn, hook, module)
    model.gate_kind = gate
    return model


def gate_parameters(model: nn.Module) -> list[nn.Parameter]:
    return [p for m in model.modules() if isinstance(m, _Gate) for p in m.parameters()]
