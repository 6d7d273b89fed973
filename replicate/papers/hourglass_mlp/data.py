"""Images for the Hourglass MLP tasks: clean images, a validation/test split, on-the-fly
augmentation, the two degradations (Gaussian noise, downsampling) and PSNR.

Data (``RestorationData``, on top of :class:`replicate.data.digits.DigitsDataModule`):

* ``source="digits"`` (default, embedded): scikit-learn's 8×8 digits in [0, 1]; the suite's fixed
  split holds out ``val_fraction`` of the images, which are cut in two halves by their order in
  that split: the first half is *validation* (used to pick each shape's learning rate), the
  second half is *test* (the PSNR every figure reports). With ``val_fraction=0.3``: 1258 train,
  270 validation, 269 test images.
* ``source="mnist"`` (full scale): the 60k training images; the 10k test file is cut the same way
  (5k validation, 5k test).

Enlarging 1.3k training images (the feasibility probe found super-resolution overfitting-limited
on them): ``random_affine`` warps every image of a training batch (rotation, isotropic zoom,
translation; bilinear or nearest resampling, zero padding), drawn from a generator seeded by
(run seed, step), so a run's batches stay a pure function of its seed and resume exactly.
Validation and test images are never warped. The default configs leave it OFF: at the default
budget (1000 steps) warps cost 1-3 dB of test PSNR on the centred, sharp test digits (measured,
see configs/training/hourglass_mlp/digits_restoration.yaml), more than the overfitting they
prevent; the figures report the train-minus-test gap instead. Not the paper's (it trained on
MNIST and ImageNet-32 and mentions no augmentation).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from replicate.data.digits import DigitsDataModule

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
