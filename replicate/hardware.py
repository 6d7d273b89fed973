"""Turn a hardware config (configs/hardware/*.yaml) into process settings and Trainer arguments."""

from __future__ import annotations

from typing import Any

import torch
from omegaconf import DictConfig


def configure_process(hw: DictConfig) -> None:
    """Thread count and float32 matmul precision for this process."""
    if hw.accelerator == "cpu":
        torch.set_num_threads(hw.threads_per_job)
    torch.set_float32_matmul_precision(hw.matmul_precision)


def trainer_kwargs(hw: DictConfig) -> dict[str, Any]:
    """Lightning ``Trainer`` arguments: accelerator, devices, precision, determinism."""
    if hw.accelerator == "gpu" and not torch.cuda.is_available():
        raise RuntimeError("hardware=gpu but torch.cuda.is_available() is False: use hardware=cpu or auto")
    return {
        "accelerator": hw.accelerator,
        "devices": hw.devices,
        "precision": hw.precision,
        "deterministic": hw.deterministic,
    }
