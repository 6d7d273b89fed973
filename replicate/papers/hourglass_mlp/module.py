"""One training job of the Hourglass architecture search: every shape of the grid, side by side.

The paper (arXiv 2510.01796, Sec. 4) searches over (d_z, d_h, L) for the Hourglass MLP and over
(d_h, L) for the conventional MLP and draws performance-vs-parameters Pareto frontiers. Each
point is a small network, so one process trains *all* shapes of the grid for one
(task, learning rate, seed): the loss is the sum of the shapes' mean squared errors. The shapes
share no parameters, so every parameter's gradient is that of its own shape's loss, and Adam
(elementwise) makes the same updates as if each shape were trained alone; gradient clipping is
off because a global norm would couple them. All shapes see the same batches, warps and noise.

A shape whose loss becomes non-finite is marked diverged (a buffer, saved in checkpoints) and
left out from then on; the job goes on for the others and the probe reports it (NaN PSNR).

Training: Adam, linear warmup then cosine decay to zero (our choice; the paper's schedule is not
known to us), MSE between the network's output and the clean image (both flattened).
Measurements (``probe_metrics``): per shape, mean per-image PSNR on the validation half (used to
pick the learning rate), on the test half (what the figures show) and on the first training
images (the overfitting gap), each with a fixed degradation independent of the run's seed.
"""

from __future__ import annotations

import hashlib
import itertools
import math

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn

from replicate.papers.hourglass_mlp.data import TASKS, degrade, psnr, random_affine
from replicate.papers.hourglass_mlp.model import FAMILIES, Shape, build, count_parameters

EVAL_STREAMS = {"val": 1_000_003, "test": 1_000_033, "train": 1_000_037}  # fixed degradations


def stream_generator(seed: int, index: int, stream: str) -> torch.Generator:
    digest = hashlib.sha256(f"hourglass_mlp:{stream}:{int(seed)}:{int(index)}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "big") >> 1)


def grid_shapes(grid: dict) -> list[Shape]:
    """Every shape of a search grid ``{family: {d_h: [...], depth: [...], d_z: [...], train_lift: [...]}}``.

    Hourglass shapes keep only d_h < d_z (wide-narrow-wide); conventional shapes are built at the
    input width, so their ``d_z`` is unused and must be absent.
    """
    shapes = []
    for family, axes in grid.items():
        if family not in FAMILIES:
            raise ValueError(f"grid family {family!r}; expected some of {FAMILIES}")
        axes = dict(axes)
        if family != "hourglass" and ("d_z" in axes or "train_lift" in axes):
            raise ValueError(f"grid.{family}: d_z and train_lift belong to the hourglass family only")
        keys = list(axes)
        for values in itertools.product(*(axes[k] for k in keys)):
            shape = Shape(family=family, **dict(zip(keys, values)))
            if family != "hourglass" or shape.d_h < shape.d_z:
                shapes.append(shape)
    if not shapes:
        raise ValueError("the search grid has no shapes")
    return shapes


def init_seed(seed: int, shape: Shape) -> int:
    """Initialisation seed of one shape: (run seed, architecture), independent of the rest of the
    grid and of ``train_lift`` (a fixed and a trained lift of one shape start identical)."""
    key = f"{seed}:{shape.family}:{shape.d_z}:{shape.d_h}:{shape.depth}"
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") >> 1


def warmup_cosine(step: int, total: int, warmup: int) -> float:
    """LR multiplier: linear warmup over ``warmup`` steps, then cosine from 1 to 0 at ``total``."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return 0.5 * (1 + math.cos(math.pi * progress))


class HourglassGrid(L.LightningModule):
    def __init__(self, grid: dict, task: dict, seed: int = 0, image_shape=(1, 8, 8),
                 augment: dict | None = None, optim: dict | None = None, max_steps: int = 1000,
                 train_eval_images: int = 512, eval_batch: int = 1024):
        super().__init__()
        self.save_hyperparameters()
        if task["kind"] not in TASKS:
            raise ValueError(f"task.kind={task['kind']!r}; expected one of {TASKS}")
        self.task, self.seed, self.max_steps = dict(task), int(seed), int(max_steps)
        self.augment_cfg = dict(augment or {"rotate_deg": 0.0, "scale": 0.0, "shift_px": 0.0})
        self.optim_cfg = {"lr": 1e-3, "warmup_fraction": 0.05, "betas": [0.9, 0.999], "weight_decay": 0.0,
                          **(optim or {})}
        self.image_shape = tuple(image_shape)
        self.d_x = math.prod(self.image_shape)
        self.shapes = grid_shapes(grid)
        self.models = nn.ModuleList(self._build(s) for s in self.shapes)
        self.register_buffer("alive", torch.ones(len(self.shapes), dtype=torch.bool))
        self.train_eval_images, self.eval_batch = int(train_eval_images), int(eval_batch)

    def _build(self, shape: Shape) -> nn.Module:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(init_seed(self.seed, shape))
            return build(shape, self.d_x, self.d_x)

    # ------------------------------------------------------------------ task
    def pairs(self, clean: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """(flattened degraded input, flattened clean target)."""
        if tuple(clean.shape[1:]) != self.image_shape:
            raise ValueError(f"images of shape {tuple(clean.shape[1:])}, but module.image_shape is "
                             f"{self.image_shape}: set it to the data's")
        t = self.task
        noisy = degrade(clean, t["kind"], generator, t["sigma"], t["factor"])
        return noisy.flatten(1), clean.flatten(1)

    def training_step(self, batch, batch_idx):
        generator = stream_generator(self.seed, self.global_step, "train")
        clean = random_affine(batch[0], generator, **self.augment_cfg)
        inputs, target = self.pairs(clean, generator)
        total, losses = None, []
        for i, model in enumerate(self.models):
            if not self.alive[i]:
                continue
            loss = F.mse_loss(model(inputs), target)
            if not torch.isfinite(loss):
                self.alive[i] = False
                continue
            losses.append(loss.detach())
            total = loss if total is None else total + loss
        if total is None:  # every shape diverged: a zero loss keeps the loop going, nothing updates
            return torch.zeros((), requires_grad=True)
        self.log("train_mse_mean", torch.stack(losses).mean(), on_step=True, on_epoch=False, prog_bar=True)
        return total

    def validation_step(self, batch, batch_idx):
        inputs, target = self.pairs(batch[0], stream_generator(0, batch_idx, "val-loss"))
        mses = [F.mse_loss(m(inputs), target) for i, m in enumerate(self.models) if self.alive[i]]
        loss = torch.stack(mses).mean() if mses else torch.tensor(float("nan"))
        self.log("val_loss", loss, on_step=False, on_epoch=True, prog_bar=True, batch_size=len(target))

    def configure_optimizers(self):
        o = self.optim_cfg
        params = [p for p in self.parameters() if p.requires_grad]
        opt = torch.optim.Adam(params, lr=o["lr"], betas=tuple(o["betas"]), weight_decay=o["weight_decay"])
        warmup = max(1, int(o["warmup_fraction"] * self.max_steps))
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: warmup_cosine(s, self.max_steps, warmup))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    # ------------------------------------------------------------------ measurements
    @torch.no_grad()
    def split_psnr(self, clean: torch.Tensor, stream: str) -> tuple[list[float], float]:
        """(mean per-image PSNR of every shape, PSNR of the degraded input itself) on ``clean``
        under the split's fixed degradation; NaN for diverged shapes."""
        sums = torch.zeros(len(self.models) + 1, dtype=torch.float64)
        dev = self.alive.device
        for k, chunk in enumerate(clean.split(self.eval_batch)):
            inputs, target = self.pairs(chunk.to(dev), stream_generator(EVAL_STREAMS[stream], k, stream))
            sums[-1] += psnr(inputs, target).double().sum()
            for i, model in enumerate(self.models):
                if self.alive[i]:
                    sums[i] += psnr(model(inputs), target).double().sum()
        means = (sums / len(clean)).tolist()
        return [m if bool(a) else float("nan") for m, a in zip(means[:-1], self.alive)], means[-1]

    @torch.no_grad()
    def probe_metrics(self, datamodule) -> dict:
        was_training = self.training
        self.eval()
        splits = {"val": datamodule.held_out("val"), "test": datamodule.held_out("test"),
                  "train": datamodule.train_sample(self.train_eval_images)}
        measured = {name: self.split_psnr(images, name) for name, images in splits.items()}
        self.train(was_training)
        rows = []
        for i, shape in enumerate(self.shapes):
            counts = count_parameters(shape, self.d_x, self.d_x)
            rows.append({**shape.as_dict(), **counts, "diverged": not bool(self.alive[i]),
                         **{f"{name}_psnr": measured[name][0][i] for name in splits}})
        return {"shapes": rows, "input_psnr": {name: measured[name][1] for name in splits},
                "lr": self.optim_cfg["lr"], "task": self.task}
