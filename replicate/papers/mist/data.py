"""MIST's meta-dataset as a resumable stream of meta-batches, plus the fixed test sets.

Training (Gritsai et al. 2025, Sec. 3): every optimizer step sees ``datasets_per_step`` fresh
datasets, generated on the fly (the paper stores 625k datasets; we never repeat one). One step's
datasets share one sample size n ~ U{n_min..n_max} and one dimension d ~ U{d_min..d_max} (drawn
per step) so that a meta-batch stacks without row padding; each dataset draws its family
uniformly from ``train_families``. Item ``j`` of the stream is step ``j``'s meta-batch, a pure
function of (seed, j) (``replicate.data.resumable``): a resumed run sees exactly the batches of an
uninterrupted one. Inputs are padded to ``d_max`` features by the model, not here.

Validation: ``val_batches`` meta-batches from a stream seeded independently of the run's seed
(the same for every run), in-meta-distribution families.

Test sets (``evaluation_sets``): for each family of a split, each n of ``n_grid`` and each d of
``d_grid``, ``per_cell`` datasets, seeded by sha256(split, family, n, d, rep): the same datasets
for every run, model and notebook. The in-meta-distribution split uses the training families;
the out-of-meta-distribution split uses family/transform combinations never seen in training
(the paper's held-out combinations, Sec. 5).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

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
OOD_FAMILIES = (
    "normal-dense-wiggly", "normal-sparse-normcdf", "normal-lvm-asinh", "normal-2pair-halfcube",
    "student-dense-normcdf", "student-2pair-base", "additive-noise-base",
)
VAL_SEED = 1_000_003  # the validation stream's seed: independent of the run's seed


@dataclass
class EvalDataset:
    x: np.ndarray
    y: np.ndarray
    mi: float
    family: str
    n: int
    d: int


def seeded_rng(*key) -> np.random.Generator:
    digest = hashlib.sha256(":".join(map(str, ("mist", *key))).encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "big"))


def meta_batch(rng: np.random.Generator, families, n_range, d_range, datasets: int,
               mi_max: float) -> dict[str, torch.Tensor]:
    """``datasets`` datasets with a shared (n, d): x, y (B, n, d) float32, mi (B,) float32."""
    n = int(rng.integers(n_range[0], n_range[1] + 1))
    d = int(rng.integers(d_range[0], d_range[1] + 1))
    picks = rng.integers(0, len(families), datasets)
    xs, ys, mis = zip(*(sample_dataset(families[i], n, d, rng, mi_max) for i in picks))
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

    def __init__(self, train_families=TRAIN_FAMILIES, n_range=(10, 200), d_range=(1, 4), d_max: int = 4,
                 mi_max: float = 2.0, datasets_per_step: int = 64, max_steps: int = 1000, seed: int = 0,
                 val_batches: int = 8, num_workers: int = 0):
        super().__init__()
        check_ranges(n_range, d_range, d_max)
        for family in train_families:
            parse_family(family)
        self.spec = {"families": tuple(train_families), "n_range": tuple(n_range), "d_range": tuple(d_range),
                     "datasets": int(datasets_per_step), "mi_max": float(mi_max)}
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


def evaluation_sets(split: str, n_grid, d_grid, per_cell: int, mi_max: float = 2.0,
              families=None) -> list[EvalDataset]:
    """The fixed test datasets of a split (``in`` or ``out`` of the meta-distribution)."""
    if families is None:
        if split not in ("in", "out"):
            raise ValueError(f"split must be 'in' or 'out', got {split!r}")
        families = TRAIN_FAMILIES if split == "in" else OOD_FAMILIES
    out = []
    for family in families:
        for n in n_grid:
            for d in d_grid:
                for rep in range(per_cell):
                    x, y, mi = sample_dataset(family, int(n), int(d), seeded_rng("eval", split, family, n, d, rep),
                                              mi_max)
                    out.append(EvalDataset(x, y, mi, family, int(n), int(d)))
    return out
