"""MIST's meta-dataset as a resumable stream of meta-batches.

Training (Gritsai et al. 2025, Sec. 3): every optimizer step sees ``datasets_per_step`` fresh
datasets, generated on the fly (the paper stores 625k datasets; we never repeat one). One step's
datasets share one sample size n ~ U{n_min..n_max} and one pair of dimensions (drawn per step):
d_x ~ U{d_min..d_max}, then d_y = d_x with probability ``equal_dims`` and d_y ~ U{d_min..d_max}
otherwise, so that a meta-batch stacks without row padding; each dataset draws its family uniformly
from ``train_families``. Item ``j`` of the stream is step ``j``'s meta-batch, a pure function of
(seed, j) (``replicate.data.resumable``): a resumed run sees exactly the batches of an
uninterrupted one. Inputs are padded to ``d_max`` features by the model, not here.

MI prior (``mi_prior``, our meta-distribution; the paper's comes from bmi's task parameters): each
dataset's target MI is exactly 0 (an independent pair, same marginals) with probability ``zero``,
uniform on [0, ``low_max``] with probability ``low``, and uniform on [0, ``max``] otherwise. The
point mass and the low-MI component are what lets a regressor be right at and near independence:
a network trained on a uniform prior returns the posterior mean of a prior with no mass at 0,
which is well above 0 on independent data (0.05-0.15 nats in our runs).

Validation: ``val_batches`` meta-batches from a stream seeded independently of the run's seed
(the same for every run), in-meta-distribution families and the training prior.

The fixed test sets live in ``testsets.py`` (not imported by training: they can change without
retraining).
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import DataLoader

from replicate.data.resumable import BlockStream, ResumableDataLoader, ResumableDataModule
from replicate.papers.mist.families import parse_family, sample_dataset

TRAIN_FAMILIES = (
    "normal-dense-base", "normal-dense-halfcube", "normal-dense-asinh", "normal-sparse-wiggly",
    "normal-sparse-base", "normal-lvm-wiggly", "normal-lvm-base", "normal-2pair-base",
    "student-dense-base", "student-dense-wiggly", "student-sparse-halfcube", "student-sparse-base",
    "student-sparse-asinh", "student-2pair-asinh", "student-2pair-halfcube", "additive-noise-wiggly",
)
DEFAULT_PRIOR = {"zero": 0.15, "low": 0.25, "low_max": 0.3, "max": 2.0}
VAL_SEED = 1_000_003  # the validation stream's seed: independent of the run's seed


def draw_mi(rng: np.random.Generator, prior: dict) -> float:
    """A target MI from the meta-distribution's prior (module docstring)."""
    u = rng.uniform()
    if u < prior["zero"]:
        return 0.0
    top = prior["low_max"] if u < prior["zero"] + prior["low"] else prior["max"]
    return float(rng.uniform(0.0, top))


def draw_dims(rng: np.random.Generator, d_range, equal_dims: float) -> tuple[int, int]:
    dx = int(rng.integers(d_range[0], d_range[1] + 1))
    dy = dx if rng.uniform() < equal_dims else int(rng.integers(d_range[0], d_range[1] + 1))
    return dx, dy


def meta_batch(rng: np.random.Generator, families, n_range, d_range, datasets: int, mi_prior: dict,
               equal_dims: float = 0.5) -> dict[str, torch.Tensor]:
    """``datasets`` datasets with a shared (n, d_x, d_y): x (B, n, d_x), y (B, n, d_y) float32,
    mi (B,) float32."""
    n = int(rng.integers(n_range[0], n_range[1] + 1))
    dx, dy = draw_dims(rng, d_range, equal_dims)
    picks = rng.integers(0, len(families), datasets)
    xs, ys, mis = zip(*(sample_dataset(families[i], n, dx, dy, rng, draw_mi(rng, mi_prior)) for i in picks))
    as_t = lambda a: torch.from_numpy(np.stack(a)).float()
    return {"x": as_t(xs), "y": as_t(ys), "mi": torch.tensor(mis, dtype=torch.float32)}


class MetaBatchStream(BlockStream):
    """Item ``i`` is meta-batch ``offset + i`` of the seeded stream (one optimizer step)."""

    block_size = 1024

    def __init__(self, spec: dict, seed: int, length: int, offset: int = 0, stream: str = "mist-train"):
        super().__init__(seed, length, offset, stream)
        self.spec = spec

    def draw(self, generator: torch.Generator) -> torch.Tensor:
        return torch.randint(0, 2 ** 62, (self.block_size,), generator=generator)

    def sample(self, raw: torch.Tensor) -> dict[str, torch.Tensor]:
        return meta_batch(np.random.default_rng(int(raw)), **self.spec)


def first(items: list):
    """Collate a DataLoader batch of one meta-batch: the meta-batch itself."""
    return items[0]


def check_prior(prior: dict) -> dict:
    prior = {**DEFAULT_PRIOR, **(prior or {})}
    if set(prior) != set(DEFAULT_PRIOR):
        raise ValueError(f"mi_prior keys must be {sorted(DEFAULT_PRIOR)}, got {sorted(prior)}")
    if not (0 <= prior["zero"] and 0 <= prior["low"] and prior["zero"] + prior["low"] <= 1
            and 0 < prior["low_max"] <= prior["max"]):
        raise ValueError(f"mi_prior needs zero, low >= 0, zero + low <= 1, 0 < low_max <= max; got {prior}")
    return {k: float(v) for k, v in prior.items()}


def check_ranges(n_range, d_range, d_max: int) -> None:
    if not 2 <= n_range[0] <= n_range[1]:
        raise ValueError(f"n_range must satisfy 2 <= lo <= hi, got {list(n_range)}")
    if not 1 <= d_range[0] <= d_range[1] <= d_max:
        raise ValueError(f"d_range must satisfy 1 <= lo <= hi <= d_max={d_max}, got {list(d_range)}")


class MetaDataModule(ResumableDataModule):
    """Meta-batches ``{"x", "y": (B, n, d), "mi": (B,)}``; see the module docstring.

    ``batch_size`` is 1 for the resumable stream (one item = one step's meta-batch);
    ``datasets_per_step`` is the number of datasets in it (the paper's batch size).
    """

    batch_size = 1

    def __init__(self, train_families=TRAIN_FAMILIES, n_range=(10, 200), d_range=(1, 8), d_max: int = 8,
                 mi_prior: dict | None = None, equal_dims: float = 0.5, datasets_per_step: int = 64,
                 max_steps: int = 1000, seed: int = 0, val_batches: int = 8, num_workers: int = 0):
        super().__init__()
        check_ranges(n_range, d_range, d_max)
        for family in train_families:
            parse_family(family)
        if not 0 <= equal_dims <= 1:
            raise ValueError(f"equal_dims is a probability, got {equal_dims}")
        self.spec = {"families": tuple(train_families), "n_range": tuple(n_range), "d_range": tuple(d_range),
                     "datasets": int(datasets_per_step), "mi_prior": check_prior(mi_prior),
                     "equal_dims": float(equal_dims)}
        self.max_steps, self.seed, self.val_batches, self.num_workers = max_steps, seed, val_batches, num_workers

    @property
    def provenance(self) -> dict:
        return {"source": "synthetic meta-dataset (generated on the fly)", **{k: list(v) if isinstance(v, tuple)
                else v for k, v in self.spec.items()}}

    def setup(self, stage: str | None = None) -> None:
        """Nothing to load: every dataset is generated on the fly."""

    def train_stream(self, length: int, offset: int) -> MetaBatchStream:
        return MetaBatchStream(self.spec, self.seed, length, offset)

    def train_dataloader(self) -> DataLoader:
        return ResumableDataLoader(self.train_dataset(), batch_size=1, shuffle=False, collate_fn=first,
                                   num_workers=self.num_workers, persistent_workers=self.num_workers > 0)

    def val_dataloader(self) -> DataLoader:
        stream = MetaBatchStream(self.spec, VAL_SEED, self.val_batches, stream="mist-val")
        return DataLoader(stream, batch_size=1, shuffle=False, collate_fn=first)
