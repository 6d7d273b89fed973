"""LightningModule for the MIP experiments (Ortiz, Guttag, Dalca, ICLR 2024).

``HypernetMIP(variant, seed, hyper, primary, task, optim, setting)`` takes plain dicts (Hydra
``instantiate`` with ``_convert_="all"``):

variant  ``default`` | ``encoding`` | ``residual`` | ``mip`` (model.VARIANTS; "default" = no
         encoding, θ₀ = 0, hyperlight's current init with zero biases: see model.py)
seeds    the seeds trained side by side in this one module (default ``[seed]``): one independent
         hypernetwork per seed (``HypernetMIP`` docstring)
hyper    hidden (list), activation (relu | leakyrelu | tanh | gelu | silu), norm (none | layer),
         encoding (the encoding MIP and encoding-only use: cos|sin | z|1-z), init
         (hyperlight | oneblock | scaled | torch: model.py)
primary  arch (mlp | cnn), in_shape [C, H, W], classes, hidden (mlp), channels (cnn), activation
task     kind, input_dim (k, the dimension of γ), noise_scale, l2_coef, val_gammas, probe_gammas
optim    name (adam | sgd), lr, momentum (sgd), betas (adam), weight_decay, fused (PyTorch's
         fused single-kernel update: same algorithm, ~4x faster on CPU for this many parameters)
setting  a partial dict of the above sections (and ``variant``) deep-merged over them: one cell
         of an ablation grid. It lets one sweep key vary several settings together (e.g.
         optimiser *and* learning rate); the effective config is ``self.config`` and lands in
         every run's probes.

Tasks (one γ ~ U(0, 1)^k per optimizer step and seed, drawn with its noise from a generator
seeded by sha256(seed, global step): a pure function of the step, so a resumed run continues
bit-exactly; each seed's hypernetwork is initialised under torch seed ``init_seed(seed)``):

``noise``  γ is an input-noise level. The image rows are cut into k contiguous bands; band j gets
           Gaussian noise of std ``noise_scale · γ_j``; loss = CE(f(x + σ(γ) ⊙ ε; θ(γ)), y). One
           hypernetwork thus learns a family of classifiers, one per noise level (an amortised
           family over a continuous input, as the paper's tasks; its own tasks differ, Sec. 5).
``l2``     γ weights the task loss against a weight penalty (k = 1): loss =
           (1 − γ)·CE(f(x; θ(γ)), y) + γ·l2_coef·Σ‖W‖² over the primary's weight matrices — the
           shallow trade-off regime of the feasibility probe (docs/papers/hypernet_mip.md).

Validation (``val_loss``): the task loss averaged over the fixed grid ``val_gammas`` (γ = g·1 for
k > 1, so every band has the same noise), on the fixed validation images with noise drawn from a
generator that depends only on (batch, grid point): identical for every run and seed. Per seed
in ``seed_state["val"]``; the logged ``val_loss`` is the mean over the seeds still alive.

Optimiser: Adam or SGD with momentum on every parameter of the hypernetwork (θ₀ included), no
weight decay by default (decay would shrink θ₀, a pitfall the paper's code avoids).
"""

from __future__ import annotations

import copy
import hashlib
import math

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


def init_seed(seed: int) -> int:
    """The torch seed a hypernetwork of run seed ``seed`` is initialised under (independent of the
    other seeds trained beside it and of the process's global seed)."""
    digest = hashlib.sha256(f"hypernet_mip:init:{int(seed)}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


class HypernetMIP(L.LightningModule):
    """One variant and setting, trained for every seed of ``seeds`` side by side (default: the one
    ``seed``): one independent hypernetwork per seed, each with its own init, γ/noise stream and
    (with ``data.SeedStackedDigits``) image stream. The returned training loss is the *sum* of the
    seeds' losses, so each hypernetwork gets exactly the gradient of its own loss (the optimiser
    is elementwise), i.e. the update it would get alone. A seed whose loss becomes non-finite is
    recorded as diverged and dropped; the others go on. Per-seed validation curves live in
    ``seed_state`` (saved in checkpoints) and land in ``probe_metrics()["per_seed"]``; the logged
    ``val_loss`` (the run's curve in metrics.json) is the mean over the live seeds."""

    def __init__(self, variant: str = "mip", seed: int = 0, hyper: dict | None = None,
                 primary: dict | None = None, task: dict | None = None, optim: dict | None = None,
                 setting: dict | None = None, seeds: list[int] | None = None):
        super().__init__()
        self.save_hyperparameters()
        self.config = effective_config(variant, hyper, primary, task, optim, setting)
        self.seeds = [int(s) for s in (seeds if seeds is not None else [seed])]
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds={self.seeds}: expected distinct seeds, at least one")
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
        self.models = torch.nn.ModuleList()
        for s in self.seeds:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(init_seed(s))
                self.models.append(HyperModel(self.spec, c["variant"], self.input_dim, h["hidden"],
                                              h["activation"], h["norm"], h["encoding"], h["init"]))
        self.seed_state = {"val": [], "train": [], "diverged_at_step": [None] * len(self.seeds)}
        self._val_sum, self._val_n = [0.0] * len(self.seeds), 0

    @property
    def seed(self) -> int:
        return self.seeds[0]

    @property
    def model(self) -> HyperModel:
        """The first seed's hypernetwork (the only one of a single-seed module)."""
        return self.models[0]

    # ------------------------------------------------------------------ task
    def task_loss(self, x: torch.Tensor, y: torch.Tensor, gamma: torch.Tensor,
                  generator: torch.Generator, reduction: str = "mean",
                  model: HyperModel | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(loss, logits) of the task at one γ (k,), noise drawn from ``generator``."""
        t = self.config["task"]
        model = self.model if model is None else model
        gamma = gamma.to(x.device, x.dtype)
        params = model.params(gamma)
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

    def train_gamma(self, step: int, seed: int | None = None) -> tuple[torch.Tensor, torch.Generator]:
        g = step_generator(self.seed if seed is None else seed, step)
        return torch.rand(self.input_dim, generator=g), g

    def _stacked(self, batch):
        """(x (S, B, C, H, W), y (S, B)): a plain (B, ...) batch is shared by every seed."""
        x, y = batch
        if x.dim() == 4:
            x, y = x.expand(len(self.seeds), *x.shape), y.expand(len(self.seeds), *y.shape)
        if x.shape[0] != len(self.seeds):
            raise ValueError(f"batch stacks {x.shape[0]} seeds, the module trains {len(self.seeds)}")
        return x, y

    def training_step(self, batch, batch_idx):
        x, y = self._stacked(batch)
        step = self.global_step
        dead = self.seed_state["diverged_at_step"]
        total, live, last = None, [], None
        for i, (s, m) in enumerate(zip(self.seeds, self.models)):
            if dead[i] is not None:
                continue
            gamma, gen = self.train_gamma(step, s)
            loss, _ = self.task_loss(x[i], y[i], gamma, gen, model=m)
            last = loss
            if not torch.isfinite(loss):
                dead[i] = step
                continue
            total = loss if total is None else total + loss
            live.append(float(loss.detach()))
        if total is None:  # every seed diverged: a non-finite loss ends the run (train.RunRecorder)
            return last
        if step % self._log_every() == 0:
            it = iter(live)
            self.seed_state["train"].append({"step": step, "train_loss": [
                None if d is not None else next(it) for d in dead]})
        self.log("train_loss", sum(live) / len(live), on_step=True, on_epoch=False, prog_bar=True,
                 batch_size=y.shape[-1])
        return total

    def _log_every(self) -> int:
        try:
            return max(1, int(self.trainer.log_every_n_steps))
        except (AttributeError, RuntimeError, TypeError):
            return 1

    def grid_losses(self, x, y, batch_idx: int, gammas,
                    model: HyperModel | None = None) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """(loss, logits) at each γ of a grid (γ = g·1), with the fixed validation noise."""
        out = []
        for i, g in enumerate(gammas):
            gen = step_generator(VAL_STREAM, batch_idx * 1000 + i, stream="val")
            out.append(self.task_loss(x, y, torch.full((self.input_dim,), float(g)), gen, model=model))
        return out

    def on_validation_epoch_start(self):
        self._val_sum, self._val_n = [0.0] * len(self.seeds), 0

    def validation_step(self, batch, batch_idx):
        x, y = batch
        gammas = self.config["task"]["val_gammas"]
        for i, m in enumerate(self.models):
            losses = [loss for loss, _ in self.grid_losses(x, y, batch_idx, gammas, model=m)]
            self._val_sum[i] += float(torch.stack(losses).mean()) * len(y)
        self._val_n += len(y)

    def on_validation_epoch_end(self):
        if self._val_n == 0:
            return
        dead = self.seed_state["diverged_at_step"]
        per_seed = []
        for i, total in enumerate(self._val_sum):
            v = total / self._val_n
            if dead[i] is None and not math.isfinite(v):
                dead[i] = self.global_step
            per_seed.append(v if dead[i] is None else float("nan"))
        live = [v for v, d in zip(per_seed, dead) if d is None]
        self.seed_state["val"].append({"step": self.global_step, "val_loss": per_seed})
        self.log("val_loss", sum(live) / len(live) if live else float("nan"), on_step=False, on_epoch=True,
                 prog_bar=True, batch_size=self._val_n)

    def on_save_checkpoint(self, checkpoint):
        checkpoint["hypernet_mip_seed_state"] = copy.deepcopy(self.seed_state)

    def on_load_checkpoint(self, checkpoint):
        if "hypernet_mip_seed_state" in checkpoint:
            self.seed_state = copy.deepcopy(checkpoint["hypernet_mip_seed_state"])

    def configure_optimizers(self):
        o = self.config["optim"]
        if o["name"] == "adam":
            return torch.optim.Adam(self.parameters(), lr=o["lr"], betas=tuple(o["betas"]),
                                    weight_decay=o["weight_decay"], fused=o["fused"])
        return torch.optim.SGD(self.parameters(), lr=o["lr"], momentum=o["momentum"],
                               weight_decay=o["weight_decay"], fused=o["fused"])

    # ------------------------------------------------------------------ probes
    @torch.no_grad()
    def theta_norms(self, gammas, model: HyperModel | None = None) -> dict[str, list[float]]:
        """‖θ(γ)‖, ‖Δθ(γ)‖ = ‖θ − θ₀‖ and the std of θ's entries at γ = g·1 for each g."""
        model = self.model if model is None else model
        out = {"theta_norm": [], "delta_norm": [], "theta_std": []}
        dev = model.hyper.out.weight.device
        for g in gammas:
            gamma = torch.full((self.input_dim,), float(g), device=dev)
            theta = model.flat_params(gamma).double()
            out["theta_norm"].append(float(theta.norm()))
            out["delta_norm"].append(float(model.hyper.delta(gamma).double().norm()))
            out["theta_std"].append(float(theta.std()))
        return out

    @torch.no_grad()
    def probe_metrics(self, datamodule) -> dict:
        """Per seed: its validation curve and final loss, status, per-γ validation loss and
        accuracy on ``task.probe_gammas`` and the norms of the predicted weights at those γ; plus
        the effective config of the run (base ⊕ setting)."""
        was_training = self.training
        self.eval()
        datamodule.setup("validate")
        gammas = self.config["task"]["probe_gammas"]
        dev = self.model.hyper.out.weight.device
        S = len(self.seeds)
        loss_sum = torch.zeros(S, len(gammas), dtype=torch.float64)
        correct = torch.zeros(S, len(gammas), dtype=torch.float64)
        n = 0
        for batch_idx, (x, y) in enumerate(datamodule.val_dataloader()):
            x, y = x.to(dev), y.to(dev)
            for s, m in enumerate(self.models):
                for i, (loss, logits) in enumerate(self.grid_losses(x, y, batch_idx, gammas, model=m)):
                    loss_sum[s, i] += float(loss) * len(y)
                    correct[s, i] += float((logits.argmax(-1) == y).sum())
            n += len(y)
        self.train(was_training)
        state = self.seed_state
        per_seed = []
        for s, (seed, m) in enumerate(zip(self.seeds, self.models)):
            dead = state["diverged_at_step"][s]
            val = [{"step": v["step"], "val_loss": v["val_loss"][s]} for v in state["val"]]
            per_seed.append({
                "seed": seed, "status": "finished" if dead is None else "diverged", "diverged_at_step": dead,
                "val": val, "final_val_loss": val[-1]["val_loss"] if val and dead is None else float("nan"),
                "train": [{"step": t["step"], "train_loss": t["train_loss"][s]} for t in state["train"]],
                "val_loss_by_gamma": (loss_sum[s] / n).tolist(), "val_acc_by_gamma": (correct[s] / n).tolist(),
                **self.theta_norms(gammas, m)})
        return {"gammas": list(gammas), "seeds": list(self.seeds), "per_seed": per_seed,
                "primary_params": self.spec.n_params, "effective": copy.deepcopy(self.config)}
