"""Small image-classification data: scikit-learn's 8×8 digits (embedded, no download) and MNIST.

Sources (``source=``):

* ``"digits"`` (default): ``sklearn.datasets.load_digits`` — 1797 grey 8×8 images of the digits
  0-9, shipped inside scikit-learn (no network; cached as tensors under ``$REPLICATE_CACHE/digits``
  keyed by the scikit-learn version). Pixels 0..16 are scaled to [0, 1]. Split: a
  fixed pseudo-random permutation (a generator seeded by sha256 of ``"digits-split"``, independent
  of the run's seed) puts ``val_fraction`` of the images in validation.
* ``"mnist"``: the 28×28 MNIST train (60k) and test (10k) files in torchvision's on-disk layout,
  ``<path>/MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte`` (or ``.gz``; ``path`` may also be
  the ``raw`` folder itself). Pixels 0..255 are scaled to [0, 1]; the test file is the validation
  split. The IDX files are read here (a documented, trivial format), so reading needs no
  torchvision; ``download=True`` fetches missing files through ``torchvision.datasets.MNIST``
  (imported only then). Missing files without ``download``, or ``download`` without torchvision,
  raise a one-line ``ConfigError`` naming what is missing (the CLI prints it and exits 2): there
  is no silent fallback to digits.
  ``path`` defaults to ``$REPLICATE_CACHE/mnist`` (``~/.cache/replicate/mnist``).

Images are float32 tensors (N, 1, H, W); labels int64. ``provenance`` records the source, the
split sizes and the sha256 of the arrays (it lands in every run's metrics and claims json).

Training stream (resumable, like ``replicate.data.text``): sample ``i`` is the image at an index
drawn (uniformly, with replacement) from a generator seeded by sha256(stream, seed, i // 4096),
so a batch is a pure function of (seed, sample index). ``train_dataloader`` starts at sample
``trainer.global_step * accumulate_grad_batches * batch_size * world_size``: a resumed run sees
exactly the batches the uninterrupted run would have seen. Validation: the first
``val_batches * batch_size`` images of the validation split in a fixed order, capped at its size
(the same for every seed).
"""

from __future__ import annotations

import gzip
import hashlib
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset

from replicate.config import ConfigError
from replicate.data.resumable import BlockStream, ResumableDataModule
from replicate.data.text import default_cache_dir

SOURCES = ("digits", "mnist")
MNIST_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
               "val": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
_IDX_DTYPES = {0x08: "u1", 0x09: "i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


@dataclass
class ImageSplits:
    train_x: torch.Tensor  # (N, 1, H, W) float32 in [0, 1]
    train_y: torch.Tensor  # (N,) int64
    val_x: torch.Tensor
    val_y: torch.Tensor
    meta: dict = field(default_factory=dict)


def _sha256(*tensors: torch.Tensor) -> str:
    h = hashlib.sha256()
    for t in tensors:
        h.update(t.contiguous().numpy().tobytes())
    return h.hexdigest()


def _splits(train_x, train_y, val_x, val_y, **meta) -> ImageSplits:
    meta.update(n_train=len(train_y), n_val=len(val_y), image_shape=list(train_x.shape[1:]),
                sha256=_sha256(train_x, train_y, val_x, val_y))
    return ImageSplits(train_x, train_y, val_x, val_y, meta)


def _sklearn_digits() -> tuple[torch.Tensor, torch.Tensor, str]:
    """(images (1797, 1, 8, 8) in [0, 1], labels, sklearn version), cached as tensors in
    ``$REPLICATE_CACHE/digits`` under the sklearn version: importing sklearn.datasets costs a
    second per training job, reading the cache a few milliseconds."""
    from importlib.metadata import version

    sk_version = version("scikit-learn")
    cache = default_cache_dir() / "digits" / f"digits-sklearn{sk_version}.pt"
    if cache.is_file():
        saved = torch.load(cache, weights_only=True)
        return saved["x"], saved["y"], sk_version
    from sklearn.datasets import load_digits as sk_load_digits

    raw = sk_load_digits()
    x = torch.tensor(raw.images, dtype=torch.float32).div_(16.0).unsqueeze(1)
    y = torch.tensor(raw.target, dtype=torch.int64)
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_suffix(f".tmp{os.getpid()}")
    torch.save({"x": x, "y": y}, tmp)
    os.replace(tmp, cache)  # atomic: parallel jobs never read half a file
    return x, y, sk_version


def load_digits(val_fraction: float = 0.2) -> ImageSplits:
    """scikit-learn's 8×8 digits, scaled to [0, 1], split by a fixed permutation."""
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    x, y, sk_version = _sklearn_digits()
    digest = hashlib.sha256(b"digits-split").digest()
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(int.from_bytes(digest[:8], "big") >> 1))
    n_val = int(round(val_fraction * len(y)))
    val, train = perm[:n_val], perm[n_val:]
    return _splits(x[train], y[train], x[val], y[val], source="digits",
                   sklearn=sk_version, val_fraction=val_fraction)


# --------------------------------------------------------------------------- MNIST (IDX files)


def read_idx(path: str | Path) -> torch.Tensor:
    """An IDX file (the MNIST format: 2 zero bytes, a dtype code, the number of dimensions, the
    big-endian int32 sizes, then the data, big-endian), optionally gzip-compressed."""
    path = Path(path)
    data = (gzip.decompress if path.suffix == ".gz" else bytes)(path.read_bytes())
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES:
        raise ValueError(f"{path} is not an IDX file (bad magic number)")
    dtype, ndim = np.dtype(_IDX_DTYPES[data[2]]), data[3]
    dims = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    offset = 4 + 4 * ndim
    if len(data) != offset + math.prod(dims) * dtype.itemsize:
        raise ValueError(f"{path}: header says {dims} but the file has {len(data) - offset} data bytes")
    values = np.frombuffer(data, dtype=dtype, offset=offset).reshape(dims)
    return torch.from_numpy(values.astype(dtype.newbyteorder("="), copy=True))


def _find_idx(raw: Path, stem: str) -> Path | None:
    for name in (stem, stem + ".gz"):
        if (raw / name).is_file():
            return raw / name
    return None


def mnist_raw_dir(root: str | Path) -> Path:
    """torchvision's layout ``<root>/MNIST/raw``, or ``root`` itself when it holds the files."""
    root = Path(root).expanduser()
    return root if _find_idx(root, MNIST_FILES["train"][0]) else root / "MNIST" / "raw"


def _download_mnist(root: Path) -> None:
    try:
        from torchvision.datasets import MNIST
    except ImportError:
        raise ConfigError("data.download=true for MNIST needs torchvision, which is not installed: "
                           "pip install torchvision, or put the IDX files under "
                           f"{root / 'MNIST' / 'raw'}") from None
    for train in (True, False):
        MNIST(str(root), train=train, download=True)


def load_mnist(path: str | Path | None = None, download: bool = False) -> ImageSplits:
    """MNIST from torchvision's on-disk layout (see the module docstring)."""
    root = Path(path).expanduser() if path is not None else default_cache_dir() / "mnist"
    raw = mnist_raw_dir(root)
    missing = [s for pair in MNIST_FILES.values() for s in pair if _find_idx(raw, s) is None]
    if missing and download:
        _download_mnist(root)
        raw = mnist_raw_dir(root)
        missing = [s for pair in MNIST_FILES.values() for s in pair if _find_idx(raw, s) is None]
    if missing:
        raise ConfigError(f"MNIST files {', '.join(missing)} not found under {raw}: set "
                                "data.path to a folder in torchvision's layout (MNIST/raw/*-ubyte[.gz]) "
                                "or data.download=true (needs torchvision and network)")
    arrays = {}
    for split, (images, labels) in MNIST_FILES.items():
        x = read_idx(_find_idx(raw, images))
        y = read_idx(_find_idx(raw, labels))
        if x.ndim != 3 or y.ndim != 1 or len(x) != len(y):
            raise ValueError(f"{raw}: {split} images {tuple(x.shape)} and labels {tuple(y.shape)} do not match")
        arrays[split] = (x.to(torch.float32).div_(255.0).unsqueeze(1), y.to(torch.int64))
    return _splits(*arrays["train"], *arrays["val"], source="mnist", path=str(raw))


def load_images(source: str = "digits", val_fraction: float = 0.2, path: str | None = None,
                download: bool = False) -> ImageSplits:
    if source == "digits":
        return load_digits(val_fraction)
    if source == "mnist":
        return load_mnist(path, download)
    raise ValueError(f"unknown image source {source!r}; expected one of {SOURCES}")


# --------------------------------------------------------------------------- datasets


class TrainSamples(BlockStream):
    """Sample i (i = 0..length-1) is sample ``offset + i`` of the seeded stream over the images."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, seed: int, length: int, offset: int = 0,
                 stream: str = "digits-train"):
        if len(y) == 0:
            raise ValueError("empty training split")
        super().__init__(seed, length, offset, stream)
        self.x, self.y = x, y

    def draw(self, generator: torch.Generator) -> torch.Tensor:
        return torch.randint(0, len(self.y), (self.block_size,), generator=generator)

    def sample(self, raw: torch.Tensor):
        return self.x[int(raw)], self.y[int(raw)]


class DigitsDataModule(ResumableDataModule):
    """Batches ``(images (B, 1, H, W) float32 in [0, 1], labels (B,) int64)``; see the module
    docstring for sources, splits and the resumable training stream."""

    def __init__(self, source: str = "digits", batch_size: int = 128, max_steps: int = 1000,
                 seed: int = 0, val_batches: int = 4, val_fraction: float = 0.2,
                 path: str | None = None, download: bool = False, num_workers: int = 0):
        super().__init__()
        if source not in SOURCES:
            raise ValueError(f"unknown image source {source!r}; expected one of {SOURCES}")
        self.source, self.batch_size, self.max_steps, self.seed = source, batch_size, max_steps, seed
        self.val_batches, self.val_fraction = val_batches, val_fraction
        self.path, self.download, self.num_workers = path, download, num_workers
        self.data: ImageSplits | None = None

    def prepare_data(self) -> None:
        if self.source == "mnist":
            load_mnist(self.path, self.download)

    def setup(self, stage: str | None = None) -> None:
        if self.data is None:
            self.data = load_images(self.source, self.val_fraction, self.path, self.download)

    @property
    def provenance(self) -> dict:
        self.setup()
        return dict(self.data.meta)

    @property
    def image_shape(self) -> tuple[int, ...]:
        self.setup()
        return tuple(self.data.train_x.shape[1:])

    def train_stream(self, length: int, offset: int) -> TrainSamples:
        return TrainSamples(self.data.train_x, self.data.train_y, self.seed, length, offset,
                            stream=f"{self.source}-train")

    def val_dataset(self) -> TensorDataset:
        self.setup()
        n = min(len(self.data.val_y), self.val_batches * self.batch_size)
        return TensorDataset(self.data.val_x[:n], self.data.val_y[:n])

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_dataset(), batch_size=self.batch_size, shuffle=False, num_workers=0)
