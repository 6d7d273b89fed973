"""K copies of one shape trained side by side, each at its own learning rate (the lr sweep of a
grid in one batched network), and the Adam that updates them.

A :class:`StackedNet` holds ``K`` independent copies of one :class:`~.model.Shape` (the networks
of :mod:`.model`: paper Fig. 1, a fixed random lift, wide-narrow-wide pre-norm residual blocks
``z + W2 GELU(W1 LN(z))``, a head; or the conventional block at the input width). All copies
start from the same initialisation — the weights of the reference module :func:`~.model.build`
makes under the shape's init seed, copied ``K`` times — and see the same batches; copy ``k`` is
trained at learning rate ``lrs[k]``. Every weight of every copy lives in one flat parameter of
shape ``(K, n)``; the forward pass takes views of it (batched matrix products over the copy
axis), so copies share no arithmetic: row ``k`` of the gradient is the gradient of copy ``k``'s
own loss. The fixed lift is a buffer shared by the copies (it never changes).

:class:`StackedAdam` is Adam (Kingma & Ba 2015, the update of ``torch.optim.Adam`` without
weight decay or amsgrad) with a per-row learning rate: ``p[k] -= s * lrs[k] * m̂[k] / (sqrt(v̂[k])
+ eps)``, ``s`` the schedule's multiplier (the param group's ``lr``), computed by torch's fused
Adam kernel (``torch._fused_adam_``, the kernel of ``torch.optim.Adam(fused=True)``) on each row,
rows of equal rate batched into one call. So copy ``k`` follows the same trajectory as its shape
trained alone with ``torch.optim.Adam(lr=lrs[k])`` (up to floating-point rounding; tested).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from replicate.papers.hourglass_mlp.model import Shape, build


def _layout(shape: Shape, d_x: int, d_out: int) -> list[tuple[str, tuple[int, ...]]]:
    """(name, per-copy shape) of every trainable tensor, in the flat parameter's order."""
    width = shape.d_z if shape.family == "hourglass" else d_x
    out = []
    if shape.family == "hourglass" and shape.train_lift:
        out.append(("lift", (d_x, width)))
    for i in range(shape.depth):
        out += [(f"b{i}.ln_w", (width,)), (f"b{i}.ln_b", (width,)), (f"b{i}.up_w", (width, shape.d_h)),
                (f"b{i}.up_b", (shape.d_h,)), (f"b{i}.down_w", (shape.d_h, width)), (f"b{i}.down_b", (width,))]
    if shape.family != "conventional":
        out += [("head_w", (width, d_out)), ("head_b", (d_out,))]
    return out


def _reference_tensors(module: nn.Module, shape: Shape) -> dict[str, torch.Tensor]:
    """The reference module's weights under the layout's names (linear weights transposed to
    (in, out), so the stacked forward is ``x @ W + b``)."""
    t = {}
    if shape.family == "hourglass":
        t["lift"] = module.lift.weight.detach().t()
    for i, block in enumerate(module.blocks):
        t[f"b{i}.ln_w"], t[f"b{i}.ln_b"] = block.norm.weight.detach(), block.norm.bias.detach()
        t[f"b{i}.up_w"], t[f"b{i}.up_b"] = block.up.weight.detach().t(), block.up.bias.detach()
        t[f"b{i}.down_w"], t[f"b{i}.down_b"] = block.down.weight.detach().t(), block.down.bias.detach()
    if shape.family != "conventional":
        t["head_w"], t["head_b"] = module.head.weight.detach().t(), module.head.bias.detach()
    return t


class StackedNet(nn.Module):
    """``K`` copies of ``shape`` (inputs ``(B, d_x)`` shared by the copies, or ``(K, B, d_x)``;
    output ``(K, B, d_out)``), initialised from ``reference`` (a module :func:`build` made)."""

    def __init__(self, shape: Shape, d_x: int, d_out: int, copies: int, reference: nn.Module | None = None,
                 residual: bool = False):
        super().__init__()
        self.shape, self.d_x, self.d_out, self.copies = shape, int(d_x), int(d_out), int(copies)
        if residual and d_out != d_x:
            raise ValueError(f"a residual output needs d_out = d_x, got {d_out} != {d_x}")
        self.residual = bool(residual) and shape.family != "conventional"
        if shape.family == "conventional" and d_out != d_x:
            raise ValueError(f"a conventional MLP without head outputs its input width {d_x}, not {d_out}")
        reference = reference if reference is not None else build(shape, d_x, d_out)
        tensors = _reference_tensors(reference, shape)
        self.layout = _layout(shape, d_x, d_out)
        self.offsets, n = {}, 0
        for name, dims in self.layout:
            size = math.prod(dims)
            self.offsets[name] = (n, n + size, dims)
            n += size
        flat = torch.cat([tensors[name].reshape(-1) for name, _ in self.layout]) if self.layout else torch.zeros(0)
        self.flat = nn.Parameter(flat.unsqueeze(0).repeat(self.copies, 1).contiguous())
        if shape.family == "hourglass" and not shape.train_lift:
            self.register_buffer("lift", tensors["lift"].contiguous().clone())
        else:
            self.lift = None

    def view(self, name: str) -> torch.Tensor:
        a, b, dims = self.offsets[name]
        return self.flat[:, a:b].reshape(self.copies, *dims)

    def views(self) -> dict[str, torch.Tensor]:
        """Every tensor of the layout as a view of ``flat``, cut by one ``split`` (whose backward
        is one concatenation, not one full-size zero tensor per slice)."""
        sizes = [b - a for a, b, _ in self.offsets.values()]
        parts = self.flat.split(sizes, dim=1)
        return {name: part.reshape(self.copies, *dims) for (name, (_, _, dims)), part in zip(self.offsets.items(), parts)}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.shape
        w = self.views()
        if s.family == "hourglass":
            z = x @ self.lift if self.lift is not None else torch.matmul(x, w["lift"])
        else:
            z = x
        if z.dim() == 2:
            z = z.unsqueeze(0).expand(self.copies, *z.shape)
        width = z.shape[-1]
        for i in range(s.depth):
            h = torch.addcmul(w[f"b{i}.ln_b"].unsqueeze(1), F.layer_norm(z, (width,)), w[f"b{i}.ln_w"].unsqueeze(1))
            h = F.gelu(torch.baddbmm(w[f"b{i}.up_b"].unsqueeze(1), h, w[f"b{i}.up_w"]))
            z = z + torch.baddbmm(w[f"b{i}.down_b"].unsqueeze(1), h, w[f"b{i}.down_w"])
        if s.family != "conventional":
            z = torch.baddbmm(w["head_b"].unsqueeze(1), z, w["head_w"])
            if self.residual:  # predict y - x (model.py: residual output)
                z = z + x
        return z

    def copy_module(self, k: int) -> nn.Module:
        """Copy ``k`` as a reference module (:func:`build`) holding its current weights."""
        module = build(self.shape, self.d_x, self.d_out, residual=self.residual)
        with torch.no_grad():
            if self.shape.family == "hourglass":
                module.lift.weight.copy_((self.lift if self.lift is not None else self.view("lift")[k]).t())
            for i, block in enumerate(module.blocks):
                block.norm.weight.copy_(self.view(f"b{i}.ln_w")[k])
                block.norm.bias.copy_(self.view(f"b{i}.ln_b")[k])
                block.up.weight.copy_(self.view(f"b{i}.up_w")[k].t())
                block.up.bias.copy_(self.view(f"b{i}.up_b")[k])
                block.down.weight.copy_(self.view(f"b{i}.down_w")[k].t())
                block.down.bias.copy_(self.view(f"b{i}.down_b")[k])
            if self.shape.family != "conventional":
                module.head.weight.copy_(self.view("head_w")[k].t())
                module.head.bias.copy_(self.view("head_b")[k])
        return module


class StackedAdam(torch.optim.Optimizer):
    """Adam with a learning rate per row of each ``(K, n)`` parameter (see the module docstring).

    ``params``: a list of ``{"params": [flat], "row_lr": [lr_0, ..., lr_{K-1}]}`` groups; the
    group's ``lr`` (default 1.0) is the schedule multiplier a LambdaLR scales.
    """

    def __init__(self, groups, betas=(0.9, 0.999), eps: float = 1e-8):
        groups = [dict(g, row_lr=torch.as_tensor(g["row_lr"], dtype=torch.float32)) for g in groups]
        super().__init__(groups, {"lr": 1.0, "betas": tuple(betas), "eps": float(eps)})

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        # every row of every parameter at the same (rate, betas, eps) goes into one call of torch's
        # fused Adam kernel (one pass over the row's weights, gradient and moments)
        calls: dict[tuple, list[list[torch.Tensor]]] = {}
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["step"] = torch.zeros(p.shape[0], dtype=torch.float32)
                    state["exp_avg"] = torch.zeros_like(p)
                    state["exp_avg_sq"] = torch.zeros_like(p)
                state["step"] += 1  # the kernel reads the step count, torch's Adam increments it first
                for k, rate in enumerate(group["row_lr"].tolist()):
                    key = (group["lr"] * rate, *group["betas"], group["eps"])
                    lists = calls.setdefault(key, [[], [], [], [], []])
                    for slot, t in zip(lists, (p[k], p.grad[k], state["exp_avg"][k], state["exp_avg_sq"][k],
                                               state["step"][k])):
                        slot.append(t)
        for (lr, beta1, beta2, eps), (params, grads, avgs, avg_sqs, steps) in calls.items():
            torch._fused_adam_(params, grads, avgs, avg_sqs, [], steps, lr=lr, beta1=beta1, beta2=beta2,
                               weight_decay=0.0, eps=eps, amsgrad=False, maximize=False)
        return loss
