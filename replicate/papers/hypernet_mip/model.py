"""Hypernetworks with and without Magnitude Invariant Parametrizations (MIP).

Ortiz, Guttag, Dalca, "Magnitude Invariant Parametrizations Improve Hypernetwork Learning",
ICLR 2024 (arXiv 2304.07645); official library JJGO/hyperlight (``hyperlight.hypernet``), read
for the encodings and the initialisation, not copied.

A hypernetwork ``h(·; ω)`` maps a conditioning vector ``γ ∈ [0, 1]^k`` to **every** parameter θ
of a primary network ``f(x; θ)``, which is then evaluated functionally with those weights
(``PrimaryNet.forward(params, x)``): one γ, hence one θ, per minibatch.

The proportionality problem (paper Sec. 3). With a fully connected hypernetwork whose biases are
zero (the usual initialisation) and a positively homogeneous activation (ReLU, LeakyReLU), every
layer is ``z -> φ(W z)`` with ``φ(c·z) = c·φ(z)`` for ``c >= 0``, so ``θ(c·γ) = c·θ(γ)``: the
predicted weights' magnitude is *proportional* to the input's, from ~0 at γ -> 0 to full scale
at ‖γ‖ = 1, and so are the primary network's activations and the gradients reaching ω.

MIP (paper Sec. 4, Fig. 2) removes it with two changes, each of which can be switched alone here:

* **input encoding** ``E(γ)`` of constant norm: ``"cos|sin"`` maps every coordinate to
  ``[cos(πγ/2), sin(πγ/2)]`` (‖E(γ)‖₂ = √k for every γ; hyperlight's default), ``"z|1-z"`` to
  ``[γ, 1 − γ]`` (constant L1 norm k). Both double the input width.
* **residual formulation** ``θ = θ₀ + Δθ``, ``Δθ = h(E(γ))`` without its output bias: θ₀ is an
  independent learnable vector initialised *as the primary network would be initialised* (Kaiming
  normal with the LeakyReLU gain, fan-in, for weights; zeros for biases — hyperlight's
  ``init_independent_weights``). As in hyperlight, θ₀ *is* the bias of the hypernetwork's output
  layer, so ``θ = W_out·z + θ₀``.

Variants (``VARIANTS``): ``default`` = no encoding and θ₀ = 0 (the output bias exists, is trainable
and starts at zero, as in a standard fully connected hypernetwork); ``encoding`` = encoding only;
``residual`` = residual only; ``mip`` = both.

Initialisation of ω (``init``, ``HyperNet.reset_parameters``):

* ``"hyperlight"`` (the default everywhere) follows hyperlight's current default, read in
  JJGO/hyperlight ``hyperlight/hypernet/model.py`` (``FullyConnectedNet.reset_parameters`` and
  ``HyperNet._init_output_split``, as of its commit 410a8a1 "Fix init") with
  ``hyperlight/hypernet/initialization.py`` (``initialize_weight``): hidden ``Linear`` weights
  Kaiming normal, fan-out, with the gain of the hypernetwork's activation (GELU/SiLU use the
  LeakyReLU gain), zero biases; the output layer re-initialised **per predicted tensor**: the
  block of rows predicting tensor b (numel_b rows) is Kaiming normal, fan-out = numel_b, with the
  activation's gain, i.e. std gain/√numel_b (LeakyReLU under ``kaiming_normal_``'s default
  a = 0: gain √2), bias tensors' blocks included; output bias 0 (or θ₀).
* ``"oneblock"``: the same, but the output layer as ONE block with linear gain (std 1/√P for P
  primary parameters): hyperlight's init before its commit b23eae3 ("Change to split init for
  last dense"), and what this project's baseline used at first. ‖θ(γ=1)‖ is about 1.0
  here against about 4.4 under ``"hyperlight"``.
* ``"scaled"``: ``"hyperlight"``, then each weight tensor's block of output rows multiplied so
  that Δθ_b(γ = 1) has exactly the norm the primary net's own init gives that tensor in
  expectation (``primary_init_norm``: √numel·gain/√fan_in, LeakyReLU gain, as θ₀), bias blocks'
  rows zeroed (the primary's biases start at 0). A control: the default and encoding-only
  hypernetworks at the primary net's (θ₀'s) scale at γ = 1; refused with θ₀ (residual, mip).
* ``"torch"``: PyTorch's own ``nn.Linear`` initialisation (uniform weights *and uniform
  biases*), whose nonzero biases already break the exact proportionality — shown in the
  proportionality figure, never used for training claims.

Under the first three the default variant is *exactly* proportional for ReLU/LeakyReLU.

Deviation / choice: optional LayerNorm in the hypernetwork (``norm="layer"``, Linear → LayerNorm →
activation) for the normalisation ablation; BatchNorm is not offered because the hypernetwork sees
one γ per minibatch (a batch of one).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

ENCODINGS = ("none", "cos|sin", "z|1-z")
VARIANTS = {  # name -> (input encoding on, residual θ0 on)
    "default": (False, False),
    "encoding": (True, False),
    "residual": (False, True),
    "mip": (True, True),
}
ACTIVATIONS = {"relu": nn.ReLU, "leakyrelu": nn.LeakyReLU, "tanh": nn.Tanh, "gelu": nn.GELU,
               "silu": nn.SiLU}
FUNCTIONAL = {"relu": F.relu, "leakyrelu": F.leaky_relu, "tanh": torch.tanh, "gelu": F.gelu,
              "silu": F.silu}


def _check(name: str, value: str, allowed) -> str:
    if value not in allowed:
        raise ValueError(f"{name}={value!r}; expected one of {sorted(allowed)}")
    return value


def kaiming_gain_name(activation: str) -> str:
    """The ``torch.nn.init`` nonlinearity name used for an activation's gain (hyperlight's rule:
    GELU and SiLU borrow LeakyReLU's)."""
    _check("activation", activation, ACTIVATIONS)
    return {"relu": "relu", "tanh": "tanh"}.get(activation, "leaky_relu")


# --------------------------------------------------------------------------- encoding (Sec. 4)


def encode(gamma: torch.Tensor, mode: str) -> torch.Tensor:
    """Input encoding ``E(γ)`` along the last dimension: ``(..., k) -> (..., k)`` for ``"none"``,
    ``(..., 2k)`` for ``"cos|sin"`` (``[cos(πγ/2), sin(πγ/2)]``, L2 norm √k) and ``"z|1-z"``
    (``[γ, 1 − γ]``, L1 norm k for γ in [0, 1])."""
    _check("encoding", mode, ENCODINGS)
    if mode == "none":
        return gamma
    if mode == "cos|sin":
        angle = 0.5 * math.pi * gamma
        return torch.cat([torch.cos(angle), torch.sin(angle)], dim=-1)
    return torch.cat([gamma, 1.0 - gamma], dim=-1)


def encoded_dim(input_dim: int, mode: str) -> int:
    return input_dim * (1 if _check("encoding", mode, ENCODINGS) == "none" else 2)


# --------------------------------------------------------------------------- primary networks


class PrimaryNet:
    """The primary network as a *specification*: named parameter shapes, their standard
    initialisation and a functional forward ``forward(params, x)``. It owns no parameters; the
    hypernetwork (or ``PrimaryModule`` for the no-hypernetwork baseline) provides them.

    arch ``"mlp"``: flatten → [Linear → act] × len(hidden) → Linear(classes).
    arch ``"cnn"``: [Conv3×3(pad 1) → act] × len(channels) → adaptive average pool to 4×4 →
    flatten → Linear(classes).
    """

    def __init__(self, arch: str = "mlp", in_shape: Sequence[int] = (1, 8, 8), classes: int = 10,
                 hidden: Sequence[int] = (64, 64, 64), channels: Sequence[int] = (8, 16),
                 activation: str = "relu", pool: int = 4):
        self.arch = _check("primary.arch", arch, ("mlp", "cnn"))
        self.in_shape, self.classes = tuple(int(s) for s in in_shape), int(classes)
        self.hidden, self.channels = tuple(hidden), tuple(channels)
        self.activation = _check("primary.activation", activation, FUNCTIONAL)
        self.pool = int(pool)
        shapes: OrderedDict[str, tuple[int, ...]] = OrderedDict()
        if self.arch == "mlp":
            width = math.prod(self.in_shape)
            for i, h in enumerate((*self.hidden, self.classes)):
                shapes[f"fc{i}.weight"], shapes[f"fc{i}.bias"] = (h, width), (h,)
                width = h
        else:
            c_in = self.in_shape[0]
            for i, c in enumerate(self.channels):
                shapes[f"conv{i}.weight"], shapes[f"conv{i}.bias"] = (c, c_in, 3, 3), (c,)
                c_in = c
            shapes["fc.weight"], shapes["fc.bias"] = (self.classes, c_in * self.pool ** 2), (self.classes,)
        self.shapes = shapes
        self.sizes = [math.prod(s) for s in shapes.values()]
        self.n_params = sum(self.sizes)

    @property
    def weight_names(self) -> list[str]:
        return [n for n in self.shapes if n.endswith(".weight")]

    def unflatten(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        """A flat vector of ``n_params`` values -> named tensors of the primary's shapes (views)."""
        if flat.shape[-1] != self.n_params:
            raise ValueError(f"expected {self.n_params} primary parameters, got {flat.shape[-1]}")
        return {n: t.view(s) for (n, s), t in zip(self.shapes.items(), flat.split(self.sizes, -1))}

    def init_flat(self, generator: torch.Generator | None = None) -> torch.Tensor:
        """θ₀ as the primary network would be initialised: Kaiming normal (fan-in, LeakyReLU gain,
        hyperlight's ``init_independent_weights``) for weights, zeros for biases."""
        parts = []
        gain = nn.init.calculate_gain("leaky_relu")
        for name, shape in self.shapes.items():
            if name.endswith(".weight"):
                fan_in = math.prod(shape[1:])
                parts.append(torch.randn(shape, generator=generator).flatten() * (gain / math.sqrt(fan_in)))
            else:
                parts.append(torch.zeros(math.prod(shape)))
        return torch.cat(parts)

    def forward(self, params: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        """Logits of the primary network with the given parameters; ``x`` is (B, C, H, W)."""
        if tuple(x.shape[1:]) != self.in_shape:
            raise ValueError(f"primary network expects inputs of shape (B, {', '.join(map(str, self.in_shape))}), "
                             f"got {tuple(x.shape)}: set module.primary.in_shape to the data's")
        act = FUNCTIONAL[self.activation]
        if self.arch == "mlp":
            h = x.flatten(1)
            n = len(self.hidden) + 1
            for i in range(n):
                h = F.linear(h, params[f"fc{i}.weight"], params[f"fc{i}.bias"])
                if i < n - 1:
                    h = act(h)
            return h
        h = x
        for i in range(len(self.channels)):
            h = act(F.conv2d(h, params[f"conv{i}.weight"], params[f"conv{i}.bias"], padding=1))
        h = F.adaptive_avg_pool2d(h, self.pool).flatten(1)
        return F.linear(h, params["fc.weight"], params["fc.bias"])

    __call__ = forward


class PrimaryModule(nn.Module):
    """The primary network trained directly (no hypernetwork), with θ₀'s initialisation: the
    baseline of the overhead benchmark."""

    def __init__(self, spec: PrimaryNet, generator: torch.Generator | None = None):
        super().__init__()
        self.spec = spec
        self.flat = nn.Parameter(spec.init_flat(generator))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.spec(self.spec.unflatten(self.flat), x)


# --------------------------------------------------------------------------- the hypernetwork


INITS = ("hyperlight", "oneblock", "scaled", "torch")


def primary_init_norm(shape: Sequence[int]) -> float:
    """Expected ‖·‖ of one primary tensor under the primary net's own init (``PrimaryNet.init_flat``:
    Kaiming normal, fan-in, LeakyReLU gain for weights, i.e. std gain/√fan_in over numel entries;
    0 for biases)."""
    if len(shape) < 2:
        return 0.0
    fan_in = math.prod(shape[1:])
    return math.sqrt(math.prod(shape)) * nn.init.calculate_gain("leaky_relu") / math.sqrt(fan_in)


class HyperNet(nn.Module):
    """``θ(γ) = W_out · body(E(γ)) + b_out`` with ``b_out = θ₀`` (residual) or 0 (default).

    ``input_dim`` is k, the dimension of γ; the encoding is applied inside ``forward``.
    ``forward(gamma)`` takes γ of shape (k,) and returns the flat θ of shape (n_out,);
    ``delta(gamma)`` returns Δθ = θ − b_out, the part the hypernetwork *predicts*.
    ``blocks`` are the predicted tensors' ``(name, shape)`` in output order (one block of n_out
    rows when not given): the output layer's per-tensor blocks of rows.

    ``init`` (see the module docstring): ``hyperlight`` (its current default, per-tensor output
    blocks), ``oneblock`` (its init before commit b23eae3), ``scaled`` (``hyperlight``, then each
    block rescaled so that Δθ(γ = 1) has the primary net's init scale), ``torch``.
    """

    def __init__(self, input_dim: int, n_out: int, hidden: Sequence[int] = (128, 128),
                 activation: str = "leakyrelu", norm: str = "none", encoding: str = "none",
                 init: str = "hyperlight", theta0: torch.Tensor | None = None,
                 blocks: Sequence[tuple[str, Sequence[int]]] | None = None):
        super().__init__()
        self.input_dim, self.n_out = int(input_dim), int(n_out)
        self.encoding = _check("encoding", encoding, ENCODINGS)
        self.activation = _check("hyper.activation", activation, ACTIVATIONS)
        self.norm = _check("hyper.norm", norm, ("none", "layer"))
        self.init = _check("hyper.init", init, INITS)
        self.blocks = [(str(n), tuple(int(d) for d in s)) for n, s in (blocks or [("theta", (self.n_out,))])]
        if sum(math.prod(s) for _, s in self.blocks) != self.n_out:
            raise ValueError(f"blocks cover {sum(math.prod(s) for _, s in self.blocks)} outputs, expected {self.n_out}")
        if init == "scaled" and theta0 is not None:
            raise ValueError("hyper.init=scaled gives Δθ(γ=1) the primary net's scale; with the residual θ₀ "
                             "(variants residual, mip) θ already has it: use init=hyperlight")
        layers: list[nn.Module] = []
        width = encoded_dim(self.input_dim, encoding)
        for h in hidden:
            layers.append(nn.Linear(width, h))
            if norm == "layer":
                layers.append(nn.LayerNorm(h))
            layers.append(ACTIVATIONS[activation]())
            width = h
        self.body = nn.Sequential(*layers)
        self.out = nn.Linear(width, self.n_out)
        self.residual = theta0 is not None
        self.reset_parameters(theta0)

    def block_slices(self) -> list[tuple[str, tuple[int, ...], slice]]:
        out, offset = [], 0
        for name, shape in self.blocks:
            size = math.prod(shape)
            out.append((name, shape, slice(offset, offset + size)))
            offset += size
        return out

    def block_stds(self) -> dict[str, float]:
        """The std each output block of rows is drawn with under ``init`` (hyperlight, oneblock)."""
        if self.init == "oneblock":
            return {name: 1.0 / math.sqrt(self.n_out) for name, _ in self.blocks}
        # torch.nn.init.kaiming_normal_(nonlinearity=...) with its default a = 0 (LeakyReLU: √2);
        # fan-out of a block of rows = its number of rows = the predicted tensor's numel
        gain = nn.init.calculate_gain(kaiming_gain_name(self.activation), 0)
        return {name: gain / math.sqrt(math.prod(shape)) for name, shape in self.blocks}

    @torch.no_grad()
    def reset_parameters(self, theta0: torch.Tensor | None = None) -> None:
        if self.init != "torch":
            gain_name = kaiming_gain_name(self.activation)
            for m in self.body:
                if isinstance(m, nn.Linear):
                    nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity=gain_name)
                    nn.init.zeros_(m.bias)
            stds = self.block_stds()
            for name, _, rows in self.block_slices():
                self.out.weight[rows].normal_(0.0, stds[name])
            nn.init.zeros_(self.out.bias)
            if self.init == "scaled":
                self._rescale_to_primary_()
        # init == "torch": nn.Linear's own uniform weights and biases, as constructed
        if theta0 is not None:
            if theta0.shape != (self.n_out,):
                raise ValueError(f"theta0 has shape {tuple(theta0.shape)}, expected ({self.n_out},)")
            self.out.bias.copy_(theta0)

    @torch.no_grad()
    def _rescale_to_primary_(self) -> None:
        """Scale each weight block's rows so that ‖Δθ_b(γ = 1)‖ = ``primary_init_norm`` of that
        tensor; bias blocks' rows are zeroed (the primary net starts its biases at 0)."""
        z = self.features(torch.ones(self.input_dim))
        for _, shape, rows in self.block_slices():
            target = primary_init_norm(shape)
            block = self.out.weight[rows]
            now = float((block @ z).norm())
            block.mul_(target / now if target > 0 and now > 0 else 0.0)

    @property
    def theta0(self) -> torch.Tensor:
        """The hypernetwork's output bias: θ₀ under the residual formulation (0 at init otherwise)."""
        return self.out.bias

    def features(self, gamma: torch.Tensor) -> torch.Tensor:
        if gamma.shape[-1] != self.input_dim:
            raise ValueError(f"gamma has {gamma.shape[-1]} coordinates, the hypernetwork expects {self.input_dim}")
        return self.body(encode(gamma, self.encoding))

    def delta(self, gamma: torch.Tensor) -> torch.Tensor:
        return F.linear(self.features(gamma), self.out.weight)

    def forward(self, gamma: torch.Tensor) -> torch.Tensor:
        return self.out(self.features(gamma))


class HyperModel(nn.Module):
    """A hypernetwork and the primary network it parametrises, for one variant.

    ``params(gamma)`` -> the primary network's named parameters; ``forward(gamma, x)`` -> logits.
    """

    def __init__(self, primary: PrimaryNet, variant: str = "mip", input_dim: int = 1,
                 hidden: Sequence[int] = (128, 128), activation: str = "leakyrelu",
                 norm: str = "none", encoding: str = "cos|sin", init: str = "hyperlight"):
        super().__init__()
        use_encoding, use_residual = VARIANTS[_check("variant", variant, VARIANTS)]
        self.variant, self.primary = variant, primary
        theta0 = primary.init_flat() if use_residual else None
        self.hyper = HyperNet(input_dim, primary.n_params, hidden, activation, norm,
                              encoding if use_encoding else "none", init, theta0,
                              blocks=list(primary.shapes.items()))

    def flat_params(self, gamma: torch.Tensor) -> torch.Tensor:
        return self.hyper(gamma)

    def params(self, gamma: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.primary.unflatten(self.hyper(gamma))

    def forward(self, gamma: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return self.primary(self.params(gamma), x)
