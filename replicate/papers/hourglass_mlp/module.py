"""One training job of the Hourglass architecture search: every shape of the grid at every
learning rate of its family, side by side, for one (task, seed).

The paper (arXiv 2510.01796, Sec. 4) searches over (d_z, d_h, L) for the Hourglass MLP and over
(d_h, L) for the conventional MLP and draws performance-vs-parameters Pareto frontiers. Each
point is a small network, so one process trains *all* of them: every shape is a
:class:`~.stacked.StackedNet` holding one copy per learning rate of its family's grid
(``lrs``), all copies starting from the shape's initialisation for this seed and seeing the same
batches and noise. The loss is the sum of every copy's mean squared error; copies and shapes
share no parameters, so each parameter's gradient is that of its own copy's loss, and
:class:`~.stacked.StackedAdam` (Adam with a learning rate per copy) makes the updates each copy
would get trained alone with Adam at its rate (tested). No gradient clipping (a global norm would
couple the copies).

A copy whose loss becomes non-finite is marked diverged (a buffer, saved in checkpoints) and left
out of the loss from then on; the job goes on for the others and the probe reports it (NaN PSNR).

Training: Adam, linear warmup then cosine decay to zero (our choice; the paper's schedule is not
known to us), MSE between the network's output and the clean image (both flattened).
Measurements (``probe_metrics``): per shape and learning rate, on the validation images (used
to pick the learning rate and the frontier), on the test images (what the figures report) and on
a fixed sample of training images (the overfitting gap), each with a fixed degradation
independent of the run's seed: the mean per-image PSNR and the PSNR of the mean MSE, for the
whole split and per held-out photo (the units of the figures' intervals). The same split-level
numbers are recorded at every validation check (``curve_*``: the training curves behind the
convergence preconditions). Beside the networks, the same numbers for the degraded input itself
(the identity map) and for a classical filter: denoising, a Gaussian blur whose width is picked
on validation PSNR from ``classical.sigmas``; super-resolution, bicubic interpolation of the
pooled image (:func:`~.data.bicubic_upsample`).
"""

from __future__ import annotations

import hashlib
import itertools
import math

import lightning as L
import torch
from torch import nn

from replicate.papers.hourglass_mlp.data import (TASKS, bicubic_upsample, degrade, gaussian_blur, group_psnr, patch_mse,
                                                 psnr, random_affine, to_psnr)
from replicate.papers.hourglass_mlp.model import FAMILIES, Shape, build, count_parameters
from replicate.papers.hourglass_mlp.stacked import StackedAdam, StackedNet

EVAL_STREAMS = {"val": 1_000_003, "test": 1_000_033, "train": 1_000_037}  # fixed degradations


def stream_generator(seed: int, index: int, stream: str) -> torch.Generator:
    digest = hashlib.sha256(f"hourglass_mlp:{stream}:{int(seed)}:{int(index)}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "big") >> 1)


def grid_shapes(grid: dict) -> list[Shape]:
    """Every shape of a search grid. A family is either a product of axes
    ``{d_h: [...], depth: [...], d_z: [...], train_lift: [...]}`` or an explicit design
    ``{shapes: [[d_z, d_h, depth], ...], train_lift: [...]}`` (hourglass; conventional families
    list ``[d_h, depth]``), e.g. a Latin square over three axes with as many shapes as a baseline's
    full two-axis product (equal grid sizes per family).

    Hourglass shapes keep only d_h < d_z (wide-narrow-wide); conventional shapes are built at the
    input width, so their ``d_z`` is unused and must be absent.
    """
    shapes = []
    for family, axes in grid.items():
        if family not in FAMILIES:
            raise ValueError(f"grid family {family!r}; expected some of {FAMILIES}")
        axes = {k: v for k, v in dict(axes).items() if not (k == "shapes" and v is None)}
        if family != "hourglass" and ("d_z" in axes or "train_lift" in axes):
            raise ValueError(f"grid.{family}: d_z and train_lift belong to the hourglass family only")
        if "shapes" in axes:
            names = ["d_z", "d_h", "depth"] if family == "hourglass" else ["d_h", "depth"]
            extra = sorted(set(axes) - {"shapes", "train_lift"})
            if extra:
                raise ValueError(f"grid.{family}: {extra} cannot be combined with an explicit 'shapes' list")
            lifts = list(axes.get("train_lift", [False])) if family == "hourglass" else [None]
            designs = []
            for row in axes["shapes"]:
                if len(row) != len(names):
                    raise ValueError(f"grid.{family}.shapes: {list(row)} should be {names}")
                for lift in lifts:
                    designs.append({**dict(zip(names, row)), **({} if lift is None else {"train_lift": lift})})
        else:
            keys = list(axes)
            designs = [dict(zip(keys, values)) for values in itertools.product(*(axes[k] for k in keys))]
        for design in designs:
            shape = Shape(family=family, **design)
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


def _rounded(value, digits: int = 4):
    """PSNRs (dB) kept to 1e-4 dB in the stored probes (a float, or a list of floats)."""
    if isinstance(value, float):
        return round(value, digits) if math.isfinite(value) else value
    if isinstance(value, list):
        return [_rounded(v, digits) for v in value]
    return value


def warmup_cosine(step: int, total: int, warmup: int) -> float:
    """LR multiplier: linear warmup over ``warmup`` steps, then cosine from 1 to 0 at ``total``."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return 0.5 * (1 + math.cos(math.pi * progress))


class HourglassGrid(L.LightningModule):
    def __init__(self, grid: dict, task: dict, lrs: dict, seed: int = 0, image_shape=(1, 16, 16),
                 augment: dict | None = None, optim: dict | None = None, max_steps: int = 1000,
                 train_eval_images: int = 512, eval_batch: int = 1024, residual: bool = False,
                 classical: dict | None = None):
        super().__init__()
        self.save_hyperparameters()
        if task["kind"] not in TASKS:
            raise ValueError(f"task.kind={task['kind']!r}; expected one of {TASKS}")
        self.task, self.seed, self.max_steps = dict(task), int(seed), int(max_steps)
        self.augment_cfg = dict(augment or {"rotate_deg": 0.0, "scale": 0.0, "shift_px": 0.0})
        self.optim_cfg = {"warmup_fraction": 0.05, "betas": [0.9, 0.999], "eps": 1e-8, **(optim or {})}
        self.image_shape = tuple(image_shape)
        self.d_x = math.prod(self.image_shape)
        self.shapes = grid_shapes(grid)
        self.lrs = {k: [float(v) for v in lrs[k]] for k in lrs}
        missing = sorted({s.family for s in self.shapes} - set(self.lrs))
        if missing:
            raise ValueError(f"module.lrs has no learning-rate grid for {missing}")
        self.residual = bool(residual)
        self.classical = {"sigmas": [0.5, 0.75, 1.0, 1.25, 1.5, 2.0], **(classical or {})}
        self.nets = nn.ModuleList(self._build(s) for s in self.shapes)
        self.train_eval_images, self.eval_batch = int(train_eval_images), int(eval_batch)
        self.curve: list[dict] = []  # one entry per validation check (saved in checkpoints)

    def shape_lrs(self, shape: Shape) -> list[float]:
        return self.lrs[shape.family]

    def _build(self, shape: Shape) -> nn.Module:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(init_seed(self.seed, shape))
            reference = build(shape, self.d_x, self.d_x)
        net = StackedNet(shape, self.d_x, self.d_x, len(self.shape_lrs(shape)), reference=reference,
                         residual=self.residual)
        net.register_buffer("alive", torch.ones(net.copies, dtype=torch.bool))
        return net

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
        total, live = None, []
        for net in self.nets:
            per_copy = (net(inputs) - target).pow(2).mean(dim=(1, 2))  # (copies,)
            net.alive &= torch.isfinite(per_copy.detach())
            if not net.alive.any():
                continue
            loss = torch.where(net.alive, per_copy, torch.zeros_like(per_copy)).sum()
            live.append(per_copy.detach()[net.alive])
            total = loss if total is None else total + loss
        if total is None:  # every copy diverged: a zero loss keeps the loop going, nothing updates
            return torch.zeros((), requires_grad=True)
        self.log("train_mse_mean", torch.cat(live).mean(), on_step=True, on_epoch=False, prog_bar=True)
        return total

    def validation_step(self, batch, batch_idx):
        inputs, target = self.pairs(batch[0], stream_generator(0, batch_idx, "val-loss"))
        mses = [(net(inputs) - target).pow(2).mean(dim=(1, 2))[net.alive] for net in self.nets]
        mses = torch.cat(mses)
        loss = mses.mean() if len(mses) else torch.tensor(float("nan"))
        self.log("val_loss", loss, on_step=False, on_epoch=True, prog_bar=True, batch_size=len(target))

    def configure_optimizers(self):
        o = self.optim_cfg
        groups = [{"params": [net.flat], "row_lr": self.shape_lrs(shape)} for net, shape in zip(self.nets, self.shapes)]
        opt = StackedAdam(groups, betas=tuple(o["betas"]), eps=o["eps"])
        warmup = max(1, int(o["warmup_fraction"] * self.max_steps))
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: warmup_cosine(s, self.max_steps, warmup))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    # ------------------------------------------------------------------ measurements
    @torch.no_grad()
    def split_mse(self, clean: torch.Tensor, stream: str) -> dict:
        """Per-image MSE (after clamping to [0, 1]) on ``clean`` under the split's fixed
        degradation: ``nets`` (one (copies, N) tensor per shape, NaN rows for diverged copies),
        ``identity`` (N,) the degraded input itself, and ``classical`` {name: (N,)} the classical
        filters (denoise: Gaussian blur at each sigma of ``classical.sigmas``; superres: bicubic)."""
        nets = [[] for _ in self.nets]
        identity, classical = [], {}
        for k, chunk in enumerate(clean.split(self.eval_batch)):
            chunk = chunk.to(self.device)
            inputs, target = self.pairs(chunk, stream_generator(EVAL_STREAMS[stream], k, stream))
            identity.append(patch_mse(inputs, target))
            if self.task["kind"] == "denoise":
                images = inputs.view(-1, *self.image_shape)
                filters = {f"gaussian_blur_sigma={s:g}": gaussian_blur(images, float(s)) for s in self.classical["sigmas"]}
            else:
                filters = {"bicubic": bicubic_upsample(chunk, int(self.task["factor"]))}
            for name, out in filters.items():
                classical.setdefault(name, []).append(patch_mse(out.flatten(1), target))
            for i, net in enumerate(self.nets):
                nets[i].append((net(inputs).clamp(0, 1) - target).pow(2).mean(-1))
        out_nets = []
        for net, parts in zip(self.nets, nets):
            m = torch.cat(parts, 1)
            m[~net.alive.to(m.device)] = float("nan")
            out_nets.append(m)
        return {"nets": out_nets, "identity": torch.cat(identity),
                "classical": {k: torch.cat(v) for k, v in classical.items()}}

    def _curve_point(self, datamodule) -> dict:
        """Split-level mean per-image PSNR and PSNR of the mean MSE of every copy, val and test."""
        point = {"step": int(self.global_step)}
        for split in ("val", "test"):
            mse = self.split_mse(datamodule.held_out(split), split)["nets"]
            point[f"{split}_psnr"] = [to_psnr(m).mean(1).tolist() for m in mse]
            point[f"{split}_mse_psnr"] = [to_psnr(m.double().mean(1)).tolist() for m in mse]
        return point

    def on_validation_epoch_end(self):
        trainer = getattr(self, "_trainer", None)
        if trainer is None or trainer.sanity_checking or trainer.datamodule is None:
            return
        if not hasattr(trainer.datamodule, "held_out_photos"):
            return
        if self.curve and self.curve[-1]["step"] == int(self.global_step):
            return
        was_training = self.training
        self.eval()
        self.curve.append(self._curve_point(trainer.datamodule))
        self.train(was_training)

    def on_save_checkpoint(self, checkpoint):
        checkpoint["hourglass_curve"] = self.curve

    def on_load_checkpoint(self, checkpoint):
        self.curve = list(checkpoint.get("hourglass_curve", []))

    @torch.no_grad()
    def split_psnr(self, clean: torch.Tensor, stream: str) -> tuple[list[list[float]], float]:
        """(mean per-image PSNR of every copy of every shape, PSNR of the degraded input itself) on
        ``clean`` under the split's fixed degradation; NaN for diverged copies."""
        sums = [torch.zeros(net.copies, dtype=torch.float64) for net in self.nets]
        input_sum = torch.zeros((), dtype=torch.float64)
        for k, chunk in enumerate(clean.split(self.eval_batch)):
            inputs, target = self.pairs(chunk.to(self.device), stream_generator(EVAL_STREAMS[stream], k, stream))
            input_sum += psnr(inputs, target).double().sum()
            for i, net in enumerate(self.nets):
                out = net(inputs)  # (copies, n, d)
                sums[i] += psnr(out.flatten(0, 1), target.repeat(net.copies, 1)).view(net.copies, -1).double().sum(1)
        out = []
        for net, total in zip(self.nets, sums):
            means = (total / len(clean)).tolist()
            out.append([m if bool(a) else float("nan") for m, a in zip(means, net.alive)])
        return out, float(input_sum / len(clean))

    @torch.no_grad()
    def probe_metrics(self, datamodule) -> dict:
        was_training = self.training
        self.eval()
        train = self.split_psnr(datamodule.train_sample(self.train_eval_images), "train")
        held = {}
        photos = getattr(datamodule, "held_out_photos", None)
        for split in ("val", "test"):
            groups = photos(split) if photos else torch.zeros(len(datamodule.held_out(split)), dtype=torch.long)
            held[split] = (self.split_mse(datamodule.held_out(split), split), groups, int(groups.max()) + 1)
        self.train(was_training)

        def summary(mse: torch.Tensor, groups: torch.Tensor, n: int) -> dict:
            photo_psnr, photo_mse_psnr = group_psnr(mse, groups, n)
            m = mse.double()
            return {"psnr": float(to_psnr(m).mean()), "mse_psnr": float(to_psnr(m.mean())),
                    "photo_psnr": photo_psnr, "photo_mse_psnr": photo_mse_psnr}

        baselines = {"identity": {split: summary(h[0]["identity"], h[1], h[2]) for split, h in held.items()}}
        filters = {name: {split: summary(h[0]["classical"][name], h[1], h[2]) for split, h in held.items()}
                   for name in held["val"][0]["classical"]}
        pick = max(filters, key=lambda name: filters[name]["val"]["psnr"])  # chosen on validation
        baselines["classical"] = {"name": pick, **filters[pick]}
        baselines["classical_candidates"] = {name: {"val_psnr": f["val"]["psnr"]} for name, f in filters.items()}

        curve = list(self.curve)
        rows = []
        for i, (shape, net) in enumerate(zip(self.shapes, self.nets)):
            counts = count_parameters(shape, self.d_x, self.d_x)
            for k, lr in enumerate(self.shape_lrs(shape)):
                row = {**shape.as_dict(), **counts, "lr": lr, "diverged": not bool(net.alive[k]),
                       "train_psnr": train[0][i][k]}
                for split, (mse, groups, n) in held.items():
                    values = summary(mse["nets"][i][k], groups, n)
                    row.update({f"{split}_{key}": value for key, value in values.items()})
                    for key in ("psnr", "mse_psnr"):
                        row[f"curve_{split}_{key}"] = [point[f"{split}_{key}"][i][k] for point in curve]
                rows.append({key: _rounded(value) for key, value in row.items()})
        names = getattr(datamodule, "photo_names_of", None)
        return {"shapes": rows, "input_psnr": {"val": baselines["identity"]["val"]["psnr"],
                                               "test": baselines["identity"]["test"]["psnr"], "train": train[1]},
                "baselines": baselines, "curve_steps": [point["step"] for point in curve],
                "photos": {split: (names(split) if names else [split]) for split in ("val", "test")},
                "lrs": self.lrs, "task": self.task, "residual": self.residual}
