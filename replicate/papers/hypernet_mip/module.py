"""LightningModule for the MIP experiments (Ortiz, Guttag, Dalca, ICLR 2024).

``HypernetMIP(variant, seed, hyper, primary, task, optim, setting)`` takes plain dicts (Hydra
``instantiate`` with ``_convert_="all"``):

variant  ``default`` | ``encoding`` | ``residual`` | ``mip`` (model.VARIANTS; "default" = no
         encoding, θ₀ = 0, hyperlight-style init with zero biases: see model.py)
hyper    hidden (list), activation (relu | leakyrelu | tanh | gelu | silu), norm (none | layer),
         encoding (the encoding MIP and encoding-only use: cos|sin | z|1-z), init
         (hyperlight | torch)
primary  arch (mlp | cnn), in_shape [C, H, W], classes, hidden (mlp), channels (cnn), activation
task     kind, input_dim (k, the dimension of γ), noise_scale, l2_coef, val_gammas, probe_gammas
optim    name (adam | sgd), lr, momentum (sgd), betas (adam), weight_decay, fused (PyTorch's
         fused single-kernel update: same algorithm, ~4x faster on CPU for this many parameters)
setting  a partial dict of the above sections (and ``variant``) deep-merged over them: one cell
         of an ablation grid. It lets one sweep key vary several settings together (e.g.
         optimiser *and* learning rate); the effective config is ``self.config`` and lands in
         every run's probes.

Tasks (one γ ~ U(0, 1)^k per optimizer step, drawn with its noise from a generator seeded by
sha256(seed, global step): a pure function of the step, so a resumed run continues bit-exactly):

``noise``  γ is an input-noise level. The image rows are cut into k contiguous bands; band j gets
           Gaussian noise of std ``noise_scale · γ_j``; loss = CE(f(x + σ(γ) ⊙ ε; θ(γ)), y). One
           hypernetwork thus learns a family of classifiers, one per noise level (an amortised
           family over a continuous input, as the paper's tasks; its own tasks differ, Sec. 5).
``l2``     γ weights the task loss against a weight penalty (k = 1): loss =
           (1 − γ)·CE(f(x; θ(γ)), y) + γ·l2_coef·Σ‖W‖² over the primary's weight matrices — the
           shallow trade-off regime of the feasibility probe (docs/papers/hypernet_mip.md).

Validation (``val_loss``): the task loss averaged over the fixed grid ``val_gammas`` (γ = g·1 for
k > 1, so every band has the same noise), on the fixed validation images with noise drawn from a
generator that depends only on (batch, grid point): identical for every run and seed.

Optimiser: Adam or SGD with momentum on every parameter of the hypernetwork (θ₀ included), no
weight decay by default (decay would shrink θ₀, a pitfall the paper's code avoids).
"""

from __future__ import annotations

import copy
import hashlib

import lightning as L
import torch
import torch.nn.functional as F

from replicate.papers.hypernet_mip.model import VARIANTS, HyperModel, PrimaryNet

DEFAULTS = {
    "hyper": {"hidden": [128, 128], "activation": "leakyrelu", "norm": "none", "encoding": "cos|sin",
              "init": "hyperlight"},
    "primary": {"arch": "mlp", "in_shape": [1, 8, 8], "classes": 10, "hidden": [64, 64, 64],
                "channels": [8, 16], "activation": "relu"},
    "task": {"kind": "noise", "input_dim": 1, "noise_scale": 1.0, "l2_coef": 0.01,
             "val_gammas": [0.0, 0.25, 0.5, 0.75, 1.0],
             "probe_gammas": [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0]},
    "optim": {"name": "adam", "lr": 3e-4, "momentum": 0.9, "betas": [0.9, 0.999], "weight_decay": 0.0,
              "fused": True},
}
TASKS = ("noise", "l2")
VAL_STREAM = 1_000_003  # the validation noise's generator stream (independent of the run seed)


def deep_merge(base: dict, patch: dict, where: str = "") -> dict:
    """``base`` with ``patch`` merged in; a key of ``patch`` that ``base`` lacks is an error."""
    out = copy.deepcopy(base)
    for key, value in (patch or {}).items():
        if key not in out:
            raise TypeError(f"unknown key '{where}{key}'; known: {sorted(out)}")
        if isinstance(out[key], dict) and isinstance(value, dict):
            out[key] = deep_merge(out[key], value, f"{where}{key}.")
        else:
            out[key] = copy.deepcopy(value)
    return out


def effective_config(variant: str = "mip", hyper: dict | None = None, primary: dict | None = None,
                     task: dict | None = None, optim: dict | None = None, setting: dict | None = None,
                     **_ignored) -> dict:
    """The config a module actually uses: DEFAULTS ⊕ the given sections ⊕ ``setting``."""
    given = {"variant": variant, **{k: deep_merge(DEFAULTS[k], v or {}, f"{k}.")
                                    for k, v in (("hyper", hyper), ("primary", primary),
                                                 ("task", task), ("optim", optim))}}
    return deep_merge(given, setting or {}, "setting.")


def step_generator(seed: int, step: int, stream: str = "train") -> torch.Generator:
    digest = hashlib.sha256(f"hypernet_mip:{stream}:{int(seed)}:{int(step)}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "big") >> 1)


def band_sigma(gamma: torch.Tensor, height: int, noise_scale: float) -> torch.Tensor:
    """Per-row noise std (H,) for γ (k,): rows split into k contiguous bands, band j -> scale·γ_j."""
    k = gamma.shape[-1]
    if k > height:
        raise ValueError(f"task.input_dim={k} exceeds the image height {height}")
    band = torch.arange(height, device=gamma.device) * k // height
    return noise_scale * gamma[band]


class HypernetMIP(L.LightningModule):
    def __init__(self, variant: str = "mip", seed: int = 0, hyper: dict | None = None,
                 primary: dict | None = None, task: dict | None = None, optim: dict | None = None,
                 setting: dict | None = None):
        super().__init__()
        self.save_hyperparameters()
        self.config = effective_config(variant, hyper, primary, task, optim, setting)
        self.seed = int(seed)
        c = self.config
        if c["variant"] not in VARIANTS:
            raise ValueError(f"variant={c['variant']!r}; expected one of {sorted(VARIANTS)}")
        if c["task"]["kind"] not in TASKS:
            raise ValueError(f"task.kind={c['task']['kind']!r}; expected one of {TASKS}")
        if c["task"]["kind"] == "l2" and c["task"]["input_dim"] != 1:
            raise ValueError("task.kind=l2 weighs two loss terms by one γ: it needs task.input_dim=1")
        if c["optim"]["name"] not in ("adam", "sgd"):
            raise ValueError(f"optim.name={c['optim']['name']!r}; expected adam or sgd")
        self.input_dim = int(c["task"]["input_dim"])
        self.spec = PrimaryNet(**c["primary"])
        h = c["hyper"]
        self.model = HyperModel(self.spec, c["variant"], self.input_dim, h["hidden"], h["activation"],
                                h["norm"], h["encoding"], h["init"])

    # ------------------------------------------------------------------ task
    def task_loss(self, x: torch.Tensor, y: torch.Tensor, gamma: torch.Tensor,
                  generator: torch.Generator, reduction: str = "mean") -> tuple[torch.Tensor, torch.Tensor]:
        """(loss, logits) of the task at one γ (k,), noise drawn from ``generator``."""
        t = self.config["task"]
        gamma = gamma.to(x.device, x.dtype)
        params = self.model.params(gamma)
        if t["kind"] == "noise":
            eps = torch.randn(x.shape, generator=generator).to(x.device, x.dtype)
            sigma = band_sigma(gamma, x.shape[-2], t["noise_scale"]).view(1, 1, -1, 1)
            logits = self.spec(params, x + sigma * eps)
            return F.cross_entropy(logits.float(), y, reduction=reduction), logits
        logits = self.spec(params, x)
        ce = F.cross_entropy(logits.float(), y, reduction=reduction)
        l2 = sum(params[n].float().pow(2).sum() for n in self.spec.weight_names)
        g = gamma[0].float()
        return (1 - g) * ce + g * t["l2_coef"] * l2, logits

    def train_gamma(self, step: int) -> tuple[torch.Tensor, torch.Generator]:
        g = step_generator(self.seed, step)
        return torch.rand(self.input_dim, generator=g), g

    def training_step(self, batch, batch_idx):
        x, y = batch
        gamma, gen = self.train_gamma(self.global_step)
        loss, _ = self.task_loss(x, y, gamma, gen)
        self.log("train_loss", loss, on_step=True, on_epoch=False, prog_bar=True)
        return loss

    def grid_losses(self, x, y, batch_idx: int, gammas) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """(loss, logits) at each γ of a grid (γ = g·1), with the fixed validation noise."""
        out = []
        for i, g in enumerate(gammas):
            gen = step_generator(VAL_STREAM, batch_idx * 1000 + i, stream="val")
            out.append(self.task_loss(x, y, torch.full((self.input_dim,), float(g)), gen))
        return out

    def validation_step(self, batch, batch_idx):
        x, y = batch
        losses = [loss for loss, _ in self.grid_losses(x, y, batch_idx, self.config["task"]["val_gammas"])]
        loss = torch.stack(losses).mean()
        self.log("val_loss", loss, on_step=False, on_epoch=True, prog_bar=True, batch_size=len(y))
        return loss

    def configure_optimizers(self):
        o = self.config["optim"]
        if o["name"] == "adam":
            return torch.optim.Adam(self.parameters(), lr=o["lr"], betas=tuple(o["betas"]),
                                    weight_decay=o["weight_decay"], fused=o["fused"])
        return torch.optim.SGD(self.parameters(), lr=o["lr"], momentum=o["momentum"],
                               weight_decay=o["weight_decay"], fused=o["fused"])

    # ------------------------------------------------------------------ probes
    @torch.no_grad()
    def theta_norms(self, gammas) -> dict[str, list[float]]:
        """‖θ(γ)‖, ‖Δθ(γ)‖ = ‖θ − θ₀‖ and the std of θ's entries at γ = g·1 for each g."""
        out = {"theta_norm": [], "delta_norm": [], "theta_std": []}
        dev = self.model.hyper.out.weight.device
        for g in gammas:
            gamma = torch.full((self.input_dim,), float(g), device=dev)
            theta = self.model.flat_params(gamma).double()
            out["theta_norm"].append(float(theta.norm()))
            out["delta_norm"].append(float(self.model.hyper.delta(gamma).double().norm()))
            out["theta_std"].append(float(theta.std()))
        return out

    @torch.no_grad()
    def probe_metrics(self, datamodule) -> dict:
        """Per-γ validation loss and accuracy on ``task.probe_gammas``, the norms of the predicted
        weights at those γ, and the effective config of the run (base ⊕ setting)."""
        was_training = self.training
        self.eval()
        datamodule.setup("validate")
        gammas = self.config["task"]["probe_gammas"]
        dev = self.model.hyper.out.weight.device
        loss_sum = torch.zeros(len(gammas), dtype=torch.float64)
        correct = torch.zeros(len(gammas), dtype=torch.float64)
        n = 0
        for batch_idx, (x, y) in enumerate(datamodule.val_dataloader()):
            x, y = x.to(dev), y.to(dev)
            for i, (loss, logits) in enumerate(self.grid_losses(x, y, batch_idx, gammas)):
                loss_sum[i] += float(loss) * len(y)
                correct[i] += float((logits.argmax(-1) == y).sum())
            n += len(y)
        self.train(was_training)
        return {"gammas": list(gammas), "val_loss_by_gamma": (loss_sum / n).tolist(),
                "val_acc_by_gamma": (correct / n).tolist(), **self.theta_norms(gammas),
                "primary_params": self.spec.n_params, "effective": copy.deepcopy(self.config)}
