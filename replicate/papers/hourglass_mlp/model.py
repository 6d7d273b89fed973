"""Hourglass (wide-narrow-wide) and conventional (narrow-wide-narrow) residual MLPs.

Chen, Lee, Liao, Shiu, "Rethinking the shape convention of an MLP" (MediaTek Research,
arXiv 2510.01796, 2025; no official code). Notation follows the paper's Fig. 1:

* **Hourglass** (paper Fig. 1b): a lift ``z_0 = W_in x`` to a wide latent ``d_z`` (``W_in`` stays
  at its random initialisation, paper Sec. 3 "fixed random projection"; ``train_lift=True`` trains
  it for the ablation), ``L`` wide-narrow-wide residual blocks
  ``z_{i+1} = z_i + W2 σ(W1 norm(z_i))`` with a narrow hidden ``d_h < d_z`` (Fig. 1a), and a
  trainable output projection ``W_out: d_z -> d_out``.
* **Conventional**: the same block at the input width ``d_x`` with a wide hidden ``d_h > d_x``;
  ``head=False`` returns the last residual stream as the output (``d_out = d_x``), ``head=True``
  adds a trainable ``d_x -> d_out`` linear head like the Hourglass's ``W_out``.

Choices the paper's text available to us does not pin down (unconfirmed, named in the configs):
pre-norm LayerNorm (with affine) inside every block, GELU for σ, biases on ``W1``, ``W2`` and
``W_out``, no bias on ``W_in``, ``W_in ~ N(0, 1/d_x)`` (so each coordinate of ``z_0`` has the
variance of ``‖x‖² / d_x``), PyTorch's default ``nn.Linear`` initialisation elsewhere, and no
normalisation before the output head.

Residual output (``residual=True``): the networks with a head predict the residual ``y - x``,
``f(x) = x + W_out(...)``, so every family starts near the identity map (the plain conventional
MLP's last residual stream ``x + Σ branches`` already is of that form); ``residual=False`` is the
paper's Fig. 1b as drawn. Only meaningful when ``d_out = d_x`` (restoration tasks).

Parameter counts are written out explicitly in :func:`count_parameters` (tested against a hand
count and against ``nn.Module.parameters()``): the Pareto frontiers use *trainable* parameters;
the fixed lift is reported beside them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

FAMILIES = ("hourglass", "conventional", "conventional_head")


@dataclass(frozen=True)
class Shape:
    """One architecture of the search grid. ``d_z`` is only used by the Hourglass family; the
    conventional families keep their residual stream at the input width ``d_x``."""

    family: str
    d_h: int
    depth: int
    d_z: int = 0
    train_lift: bool = False

    def __post_init__(self):
        if self.family not in FAMILIES:
            raise ValueError(f"family={self.family!r}; expected one of {FAMILIES}")
        if self.d_h < 1 or self.depth < 1:
            raise ValueError(f"d_h and depth must be >= 1, got d_h={self.d_h}, depth={self.depth}")
        if self.family == "hourglass" and self.d_z < 1:
            raise ValueError("an hourglass shape needs d_z >= 1")

    @property
    def label(self) -> str:
        if self.family == "hourglass":
            return f"hourglass d_z={self.d_z} d_h={self.d_h} L={self.depth}" + (" (trained W_in)" if self.train_lift else "")
        return f"{self.family} d_h={self.d_h} L={self.depth}"

    def as_dict(self) -> dict:
        return asdict(self)


class ResidualBlock(nn.Module):
    """``z + W2 σ(W1 LayerNorm(z))`` at stream width ``width`` with hidden width ``hidden`` (paper
    Fig. 1a; the same block is wide-narrow-wide or narrow-wide-narrow depending on the widths)."""

    def __init__(self, width: int, hidden: int):
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.up = nn.Linear(width, hidden)
        self.down = nn.Linear(hidden, width)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return z + self.down(F.gelu(self.up(self.norm(z))))


class HourglassMLP(nn.Module):
    """Fixed random lift, ``depth`` wide-narrow-wide blocks at ``d_z``, trainable head."""

    def __init__(self, d_x: int, d_out: int, d_z: int, d_h: int, depth: int, train_lift: bool = False,
                 residual: bool = False):
        super().__init__()
        if residual and d_out != d_x:
            raise ValueError(f"a residual output needs d_out = d_x, got {d_out} != {d_x}")
        self.residual = bool(residual)
        self.lift = nn.Linear(d_x, d_z, bias=False)
        nn.init.normal_(self.lift.weight, std=d_x ** -0.5)
        self.lift.weight.requires_grad_(train_lift)
        self.blocks = nn.Sequential(*(ResidualBlock(d_z, d_h) for _ in range(depth)))
        self.head = nn.Linear(d_z, d_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.head(self.blocks(self.lift(x)))
        return x + out if self.residual else out


class ConventionalMLP(nn.Module):
    """``depth`` narrow-wide-narrow blocks at the input width, optionally a trainable head."""

    def __init__(self, d_x: int, d_out: int, d_h: int, depth: int, head: bool, residual: bool = False):
        super().__init__()
        if residual and d_out != d_x:
            raise ValueError(f"a residual output needs d_out = d_x, got {d_out} != {d_x}")
        self.residual = bool(residual) and head
        if not head and d_out != d_x:
            raise ValueError(f"a conventional MLP without head outputs its input width {d_x}, not {d_out}")
        self.blocks = nn.Sequential(*(ResidualBlock(d_x, d_h) for _ in range(depth)))
        self.head = nn.Linear(d_x, d_out) if head else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.head(self.blocks(x))
        return x + out if self.residual else out


def build(shape: Shape, d_x: int, d_out: int, residual: bool = False) -> nn.Module:
    if shape.family == "hourglass":
        return HourglassMLP(d_x, d_out, shape.d_z, shape.d_h, shape.depth, shape.train_lift, residual=residual)
    return ConventionalMLP(d_x, d_out, shape.d_h, shape.depth, head=shape.family == "conventional_head",
                           residual=residual)


def block_parameters(width: int, hidden: int) -> int:
    """LayerNorm (2·width) + W1 with bias (width·hidden + hidden) + W2 with bias (hidden·width + width)."""
    return 2 * width + (width * hidden + hidden) + (hidden * width + width)


def count_parameters(shape: Shape, d_x: int, d_out: int) -> dict[str, int]:
    """``{"trainable": n, "fixed": m}`` for a shape, by the formula (no module is built)."""
    if shape.family == "hourglass":
        lift = d_x * shape.d_z
        body = shape.depth * block_parameters(shape.d_z, shape.d_h) + (shape.d_z * d_out + d_out)
        return {"trainable": body + (lift if shape.train_lift else 0), "fixed": 0 if shape.train_lift else lift}
    head = d_x * d_out + d_out if shape.family == "conventional_head" else 0
    return {"trainable": shape.depth * block_parameters(d_x, shape.d_h) + head, "fixed": 0}


def module_parameters(model: nn.Module) -> dict[str, int]:
    """The same counts read off a built module."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    fixed = sum(p.numel() for p in model.parameters() if not p.requires_grad)
    return {"trainable": trainable, "fixed": fixed}
