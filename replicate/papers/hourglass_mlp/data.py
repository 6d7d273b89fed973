"""Images for the Hourglass MLP tasks: clean images with a validation/test split, the two
degradations (Gaussian noise, downsampling) and PSNR.

Sources (selected by ``data._target_`` and ``data.source`` in the configs):

* :class:`PatchData`, ``source="skimage"`` (the default scale's embedded data): grey 16×16
  patches cut from the photographs that ship inside the scikit-image wheel (``skimage/data/*.png``
  / ``*.jpg``, read from the installed package's folder with Pillow: no pooch, no network; a
  missing file is a one-line error naming it). Whole photos are split three ways (``photos.train``,
  ``photos.val``, ``photos.test`` in the config), so validation and test patches come from photos
  the networks never saw. Training patches are cut on the fly (photo uniform, position uniform:
  effectively unlimited samples); validation and test patches are a fixed draw (a generator
  seeded by sha256 of the split's name, the same for every run seed), an equal number per photo.
  Colour photos are converted to grey with the ITU-R 709 luma weights
  ``0.2125 R + 0.7154 G + 0.0721 B`` (those of ``skimage.color.rgb2gray``); pixels in [0, 1].
  ``provenance`` names the package, its version, the photos of each split and their sha256.
* :class:`PatchData`, ``source="imagenet32"`` (full scale): the downsampled ImageNet 32×32 of
  Chrabaszcz, Loshchilov & Hutter (2017) from a local folder ``path`` holding the unzipped npz
  release (``train_data_batch_1.npz`` ... ``train_data_batch_10.npz``, ``val_data.npz``; each with
  ``data`` (N, 3072) uint8, channel-major). Whole RGB images (3×32×32); the official validation set
  is cut in two halves (validation, test). Missing files stop with a one-line ``ConfigError``
  naming them; nothing is downloaded.
* :class:`PatchData`, ``source="digits"`` (a small option: scikit-learn's 8×8 digits) or
  ``source="mnist"`` (full scale, 28×28, from a local folder in torchvision's layout,
  ``download: false``; missing files are a one-line error naming them), both read by the shared
  loader :func:`replicate.data.digits.load_images` (unchanged). Its fixed split holds out
  ``val_fraction`` of the images (MNIST: the 10k test file), cut in two halves by their order in
  that split: the first half is validation, the second test. :class:`RestorationData` (the
  previous datamodule, on :class:`~replicate.data.digits.DigitsDataModule`) gives the same splits.

Every datamodule gives the module ``held_out("val" | "test")`` (clean images, fixed order) and
``train_sample(n)`` (clean training images for the train-vs-test gap). ``random_affine``
(optional warps of training batches, off by default) is kept for the digits option.
"""

from __future__ import annotations

import hashlib
import math
from importlib import metadata, resources
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from replicate.config import ConfigError
from replicate.data.digits import DigitsDataModule, load_images
from replicate.data.resumable import BlockStream, ResumableDataModule

TASKS = ("denoise", "superres")


class RestorationData(DigitsDataModule):
    """Clean image batches ``(images (B, 1, H, W), labels)``; the module degrades them."""

    def held_out(self, split: str) -> torch.Tensor:
        """The clean ``"val"`` or ``"test"`` images (N, 1, H, W) in a fixed order."""
        self.setup()
        images = self.data.val_x
        half = (len(images) + 1) // 2
        if split == "val":
            return images[:half]
        if split == "test":
            return images[half:]
        raise ValueError(f"split={split!r}; expected 'val' or 'test'")

    def train_sample(self, n: int) -> torch.Tensor:
        """The first ``n`` clean training images (for the train-vs-test gap, never warped)."""
        self.setup()
        return self.data.train_x[:n]

    def val_dataset(self) -> TensorDataset:
        images = self.held_out("val")
        n = min(len(images), self.val_batches * self.batch_size)
        return TensorDataset(images[:n])

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_dataset(), batch_size=self.batch_size, shuffle=False, num_workers=0)

    @property
    def provenance(self) -> dict:
        meta = dict(super().provenance)
        meta.update(n_val_selection=len(self.held_out("val")), n_test=len(self.held_out("test")))
        return meta


# --------------------------------------------------------------------------- photo patches
LUMA = (0.2125, 0.7154, 0.0721)  # ITU-R 709, as skimage.color.rgb2gray
IMAGENET32_TRAIN = [f"train_data_batch_{i}.npz" for i in range(1, 11)]
IMAGENET32_VAL = "val_data.npz"
PATCH_SOURCES = ("skimage", "imagenet32", "digits", "mnist")


def skimage_data_dir() -> Path:
    """The ``data`` folder inside the installed scikit-image package (the files its wheel ships)."""
    return Path(str(resources.files("skimage") / "data"))


def _sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def read_photo(path: Path) -> torch.Tensor:
    """A photo as a grey float tensor (1, H, W) in [0, 1] (colour: ITU-R 709 luma; alpha dropped)."""
    from PIL import Image

    with Image.open(path) as img:
        a = np.asarray(img)
    a = a.astype(np.float64) / (65535.0 if a.dtype == np.uint16 else 255.0)
    if a.ndim == 3:
        a = a[..., :3] @ np.asarray(LUMA)
    return torch.from_numpy(a.astype(np.float32)).unsqueeze(0)


def load_photos(names: list[str]) -> tuple[list[torch.Tensor], dict[str, str]]:
    """The named photos of the scikit-image wheel and their sha256; a missing one is a one-line
    ConfigError (they are read from the package folder, never fetched)."""
    root = skimage_data_dir()
    missing = [n for n in names if not (root / n).is_file()]
    if missing:
        raise ConfigError(f"scikit-image photos {', '.join(missing)} not found in {root} (the installed "
                          "scikit-image wheel does not ship them): choose data.photos among the files there")
    return [read_photo(root / n) for n in names], {n: _sha256_file(root / n) for n in names}


def _generator(name: str) -> torch.Generator:
    digest = hashlib.sha256(name.encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "big") >> 1)


def draw_patches(photos: list[torch.Tensor], n: int, patch: int, generator: torch.Generator,
                 balanced: bool = False) -> torch.Tensor:
    """(n, 3) int64 rows (photo, top, left): photo uniform (``balanced``: round-robin, an equal
    share per photo), then a uniform position of a ``patch``-square inside it."""
    if balanced:
        which = torch.arange(n) % len(photos)
    else:
        which = torch.randint(0, len(photos), (n,), generator=generator)
    u = torch.rand(n, 2, generator=generator, dtype=torch.float64)
    room = torch.tensor([[p.shape[-2] - patch + 1, p.shape[-1] - patch + 1] for p in photos], dtype=torch.float64)
    if (room < 1).any():
        raise ValueError(f"a photo is smaller than the {patch}x{patch} patch")
    pos = (u * room[which]).floor().long()
    return torch.cat([which.unsqueeze(1), pos], 1)


def cut(photos: list[torch.Tensor], where: torch.Tensor, patch: int) -> torch.Tensor:
    """The patches (N, C, patch, patch) at rows (photo, top, left)."""
    return torch.stack([photos[i][:, y:y + patch, x:x + patch] for i, y, x in where.tolist()])


def load_imagenet32(path: str | None) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """(train uint8 (N, 3, 32, 32), validation uint8, provenance) from the npz release."""
    root = Path(path).expanduser() if path else None
    train = [root / f for f in IMAGENET32_TRAIN if (root / f).is_file()] if root else []
    if root is None or not train or not (root / IMAGENET32_VAL).is_file():
        raise ConfigError(f"ImageNet-32 files {IMAGENET32_TRAIN[0]} ... {IMAGENET32_TRAIN[-1]}, {IMAGENET32_VAL} "
                          f"not found under {root}: set data.path to the folder of the unzipped npz release "
                          "(Imagenet32_train_npz, Imagenet32_val_npz); nothing is downloaded")

    def images(f: Path) -> np.ndarray:
        with np.load(f, allow_pickle=False) as z:
            data = z["data"]
        if data.ndim != 2 or data.shape[1] != 3072 or data.dtype != np.uint8:
            raise ValueError(f"{f}: 'data' is {data.dtype} {data.shape}, expected uint8 (N, 3072)")
        return data.reshape(-1, 3, 32, 32)

    tr = torch.from_numpy(np.concatenate([images(f) for f in train]))
    va = torch.from_numpy(images(root / IMAGENET32_VAL))
    files = [f.name for f in train] + [IMAGENET32_VAL]
    return tr, va, {"source": "imagenet32", "path": str(root), "files": files,
                    "sha256": {f: _sha256_file(root / f) for f in files}}


def as_float(x: torch.Tensor) -> torch.Tensor:
    """uint8 pixels to float in [0, 1]; float images unchanged."""
    return x.float().div_(255.0) if x.dtype == torch.uint8 else x


class PatchSamples(BlockStream):
    """Training sample i: a patch at a seeded (photo, top, left) draw, or a seeded image index."""

    def __init__(self, data: "PatchData", seed: int, length: int, offset: int = 0):
        super().__init__(seed, length, offset, stream=f"hourglass-{data.source}-train")
        self.data = data

    def draw(self, generator: torch.Generator) -> torch.Tensor:
        d = self.data
        if d.source == "skimage":
            return draw_patches(d.photos["train"], self.block_size, d.patch, generator)
        return torch.randint(0, len(d.train_images), (self.block_size,), generator=generator)

    def sample(self, raw: torch.Tensor):
        d = self.data
        if d.source == "skimage":
            i, y, x = raw.tolist()
            return (d.photos["train"][i][:, y:y + d.patch, x:x + d.patch],)
        return (as_float(d.train_images[int(raw)]),)


class PatchData(ResumableDataModule):
    """Clean image batches ``(images (B, C, patch, patch),)``; see the module docstring."""

    def __init__(self, source: str = "skimage", photos: dict | None = None, patch: int = 16,
                 n_val: int = 2048, n_test: int = 2048, batch_size: int = 64, max_steps: int = 1000,
                 seed: int = 0, val_batches: int = 2, path: str | None = None, download: bool = False,
                 val_fraction: float = 0.3, num_workers: int = 0):
        super().__init__()
        if source not in PATCH_SOURCES:
            raise ValueError(f"unknown patch source {source!r}; expected one of {PATCH_SOURCES}")
        if source == "skimage" and not (photos and all(photos.get(k) for k in ("train", "val", "test"))):
            raise ValueError("data.photos needs non-empty train, val and test lists of scikit-image photos")
        if source == "skimage":
            names = [n for k in ("train", "val", "test") for n in photos[k]]
            if len(set(names)) != len(names):
                raise ValueError("data.photos: a photo is listed in more than one split")
        self.source, self.photo_names = source, {k: list(v) for k, v in (photos or {}).items()}
        self.patch, self.n_val, self.n_test = int(patch), int(n_val), int(n_test)
        self.batch_size, self.max_steps, self.seed = batch_size, max_steps, seed
        self.val_batches, self.path, self.num_workers = val_batches, path, num_workers
        self.download, self.val_fraction = bool(download), float(val_fraction)
        self._ready = False

    def setup(self, stage: str | None = None) -> None:
        if self._ready:
            return
        if self.source == "skimage":
            self.photos, self.sha256 = {}, {}
            for split in ("train", "val", "test"):
                self.photos[split], sha = load_photos(self.photo_names[split])
                self.sha256.update(sha)
            self._held = {}
            self._photo_of = {}
            for split, n in (("val", self.n_val), ("test", self.n_test)):
                where = draw_patches(self.photos[split], n, self.patch, _generator(f"hourglass-patches:{split}"), balanced=True)
                self._held[split] = cut(self.photos[split], where, self.patch)
                self._photo_of[split] = where[:, 0].clone()
            where = draw_patches(self.photos["train"], 4096, self.patch, _generator("hourglass-patches:train-eval"))
            self._train_eval = cut(self.photos["train"], where, self.patch)
        else:  # whole images: the held-out split's first half validates, its second half tests
            if self.source == "imagenet32":
                self.train_images, val, self._meta = load_imagenet32(self.path)
            else:  # the shared digits / MNIST loader (replicate.data.digits), unchanged
                splits = load_images(self.source, self.val_fraction, self.path, self.download)
                self.train_images, val, self._meta = splits.train_x, splits.val_x, dict(splits.meta)
            half = (len(val) + 1) // 2
            self._held = {"val": as_float(val[:half][:self.n_val]), "test": as_float(val[half:][:self.n_test])}
            self._photo_of = {k: torch.zeros(len(v), dtype=torch.long) for k, v in self._held.items()}
            self._train_eval = as_float(self.train_images[:4096])
            self.patch = int(self._held["val"].shape[-1])
        self._ready = True

    def prepare_data(self) -> None:
        if self.source == "imagenet32":
            load_imagenet32(self.path)
        elif self.source == "mnist":
            load_images("mnist", self.val_fraction, self.path, self.download)

    def held_out(self, split: str) -> torch.Tensor:
        """The clean ``"val"`` or ``"test"`` images (N, C, patch, patch) in a fixed order."""
        self.setup()
        if split not in ("val", "test"):
            raise ValueError(f"split={split!r}; expected 'val' or 'test'")
        return self._held[split]

    def held_out_photos(self, split: str) -> torch.Tensor:
        """The photo (index into ``photos[split]``) each held-out patch of ``held_out(split)`` was
        cut from; whole-image sources are one group (all zeros)."""
        self.held_out(split)
        return self._photo_of[split]

    def photo_names_of(self, split: str) -> list[str]:
        """The held-out split's photo names in index order (one name for whole-image sources)."""
        return list(self.photo_names[split]) if self.source == "skimage" else [f"{self.source}:{split}"]

    def train_sample(self, n: int) -> torch.Tensor:
        """``n`` clean training patches of a fixed draw (the same for every run seed)."""
        self.setup()
        return self._train_eval[:n]

    def train_stream(self, length: int, offset: int) -> PatchSamples:
        return PatchSamples(self, self.seed, length, offset)

    def val_dataloader(self) -> DataLoader:
        images = self.held_out("val")
        n = min(len(images), self.val_batches * self.batch_size)
        return DataLoader(TensorDataset(images[:n]), batch_size=self.batch_size, shuffle=False, num_workers=0)

    @property
    def image_shape(self) -> tuple[int, ...]:
        self.setup()
        return tuple(self._held["val"].shape[1:])

    @property
    def provenance(self) -> dict:
        self.setup()
        if self.source == "skimage":
            meta = {"source": "skimage", "package": "scikit-image", "version": metadata.version("scikit-image"),
                    "folder": "skimage/data (inside the installed wheel)", "photos": self.photo_names,
                    "sha256": self.sha256, "patch": self.patch, "grey": "ITU-R 709 luma (as skimage.color.rgb2gray)",
                    "train_photo_pixels": int(sum(p[0].numel() for p in self.photos["train"]))}
        else:
            meta = dict(self._meta)
        meta.update(n_val_selection=len(self._held["val"]), n_test=len(self._held["test"]),
                    image_shape=list(self._held["val"].shape[1:]))
        return meta


def random_affine(x: torch.Tensor, generator: torch.Generator, rotate_deg: float, scale: float,
                  shift_px: float, resample: str = "bilinear") -> torch.Tensor:
    """Random affine warp per image: rotation ~ U(±rotate_deg), zoom ~ U(1 ± scale), translation
    ~ U(±shift_px) pixels on each axis; ``resample`` "bilinear" or "nearest", zero padding.
    Identity when all three are 0."""
    if rotate_deg == 0 and scale == 0 and shift_px == 0:
        return x
    n, _, h, w = x.shape
    u = torch.rand(n, 4, generator=generator).to(x.device, x.dtype) * 2 - 1
    angle = u[:, 0] * math.radians(rotate_deg)
    zoom = 1 + u[:, 1] * scale
    cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
    tx, ty = u[:, 2] * shift_px * 2 / w, u[:, 3] * shift_px * 2 / h  # pixels -> [-1, 1] coordinates
    theta = torch.stack([torch.stack([cos, -sin, tx], 1), torch.stack([sin, cos, ty], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode=resample, padding_mode="zeros", align_corners=False)


def degrade(x: torch.Tensor, task: str, generator: torch.Generator, sigma: float, factor: int) -> torch.Tensor:
    """The network's input for clean images ``x`` (B, 1, H, W), same shape as ``x``.

    ``denoise``: ``x + σ ε`` with ε ~ N(0, I) from ``generator`` (no clipping).
    ``superres``: ``factor × factor`` average pooling, then nearest-neighbour upsampling back to
    H × W, so input and target have the same dimension (our choice: it lets the conventional
    network without head keep its residual stream at the output dimension).
    """
    if task == "denoise":
        return x + sigma * torch.randn(x.shape, generator=generator).to(x.device, x.dtype)
    if task == "superres":
        h, w = x.shape[-2:]
        if h % factor or w % factor:
            raise ValueError(f"superres factor {factor} does not divide the image size {h}x{w}")
        return F.interpolate(F.avg_pool2d(x, factor), scale_factor=factor, mode="nearest")
    raise ValueError(f"task={task!r}; expected one of {TASKS}")


def psnr(prediction: torch.Tensor, target: torch.Tensor, peak: float = 1.0) -> torch.Tensor:
    """PSNR in dB per image, ``10 log10(peak² / MSE)``, after clamping the prediction to
    [0, peak] (pixels live in [0, 1]); images are the first dimension."""
    mse = (prediction.clamp(0, peak) - target).pow(2).flatten(1).mean(1)
    return 10 * torch.log10(peak ** 2 / mse)


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of images ``x`` (B, C, H, W) with standard deviation ``sigma``
    pixels: a kernel of radius ``ceil(3 sigma)`` normalised to sum 1, reflect padding (clamped to
    the image size), each image alone. ``sigma = 0`` returns ``x``."""
    if sigma <= 0:
        return x
    h, w = x.shape[-2:]
    radius = max(1, min(math.ceil(3 * sigma), h - 1, w - 1))
    t = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = k / k.sum()
    c = x.shape[1]
    y = F.pad(x, (radius, radius, radius, radius), mode="reflect")
    y = F.conv2d(y, k.view(1, 1, 1, -1).repeat(c, 1, 1, 1), groups=c)
    return F.conv2d(y, k.view(1, 1, -1, 1).repeat(c, 1, 1, 1), groups=c)


def bicubic_upsample(x: torch.Tensor, factor: int) -> torch.Tensor:
    """The classical super-resolution baseline: ``factor x factor`` average pooling of the clean
    images (the information the networks get), then bicubic interpolation back to H x W
    (``F.interpolate(mode="bicubic", align_corners=False)``, Keys' a = -0.75)."""
    return F.interpolate(F.avg_pool2d(x, factor), scale_factor=factor, mode="bicubic", align_corners=False)


def patch_mse(prediction: torch.Tensor, target: torch.Tensor, peak: float = 1.0) -> torch.Tensor:
    """Mean squared error per image after clamping the prediction to [0, peak] (the MSE inside
    :func:`psnr`)."""
    return (prediction.clamp(0, peak) - target).pow(2).flatten(1).mean(1)


MSE_FLOOR = 1e-6  # ~ the quantisation noise of 8-bit pixels (1 / (12 * 255^2) = 1.3e-6): PSNR <= 60 dB


def to_psnr(mse: torch.Tensor, peak: float = 1.0) -> torch.Tensor:
    """PSNR in dB of MSEs, each floored at :data:`MSE_FLOOR` (a flat patch restored exactly would
    otherwise score +inf and make a mean of per-image PSNRs infinite)."""
    return 10 * torch.log10(peak ** 2 / mse.double().clamp_min(MSE_FLOOR))


def group_psnr(mse: torch.Tensor, groups: torch.Tensor, n_groups: int, peak: float = 1.0) -> tuple[list[float], list[float]]:
    """Per group (photo) of per-image MSEs ``mse`` (N,): (mean per-image PSNR, PSNR of the mean
    MSE), both in dB (:func:`to_psnr`). The two conventions differ by Jensen's inequality: the
    first rewards near-perfect (flat) images, the second weighs every pixel error alike."""
    mse = mse.double()
    per_image = to_psnr(mse, peak)
    mean_psnr, mse_psnr = [], []
    for g in range(n_groups):
        sel = groups == g
        mean_psnr.append(float(per_image[sel].mean()))
        mse_psnr.append(float(to_psnr(mse[sel].mean(), peak)))
    return mean_psnr, mse_psnr
