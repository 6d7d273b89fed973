"""Training batches for several seeds at once, for ``module.HypernetMIP(seeds=[...])``.

``SeedStackedDigits`` is ``replicate.data.digits.DigitsDataModule`` (same sources, splits,
validation set and MNIST loader, whose behaviour it does not change) whose training batch ``j``
is ``(x (S, B, C, H, W), y (S, B))``: row ``s`` is exactly batch ``j`` that
``DigitsDataModule(seed=seeds[s])`` would give (the same resumable sample stream, read a batch
at a time with vector indexing instead of sample by sample). Batch ``j`` is a pure function of
(seeds, j), and the loader starts at the restored trainer's step, so a resumed run sees the
batches an uninterrupted one would have. Validation batches are plain ``(x (B, ...), y (B,))``,
shared by every seed (the same fixed images for every run), and come as ONE batch holding the
whole validation set (``val_batches * batch_size`` images at most), so that each validation
predicts each seed's θ(γ) once per γ rather than once per batch.
"""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader, Dataset

from replicate.data.digits import DigitsDataModule, TrainSamples
from replicate.data.resumable import (attached_trainer, block_generator, consumed_samples,
                                      total_train_samples)


def stream_indices(stream: TrainSamples, start: int, n: int, cache: dict) -> torch.Tensor:
    """Raw draws (image indices) ``start .. start + n - 1`` of ``stream`` (its offset included),
    equal to ``[stream.raw(i) for i in range(start, start + n)]``; ``cache`` keeps its last block."""
    bs = stream.block_size
    j, end, parts = stream.offset + start, stream.offset + start + n, []
    while j < end:
        block, lo = divmod(j, bs)
        if cache.get("block") != block:
            cache["block"] = block
            cache["draws"] = stream.draw(block_generator(stream.seed, block, stream.stream))
        take = min(end - j, bs - lo)
        parts.append(cache["draws"][lo:lo + take])
        j += take
    return torch.cat(parts)


class SeedBatches(Dataset):
    """Item ``j`` = training batch ``offset_batches + j`` for every seed, stacked."""

    def __init__(self, streams: list[TrainSamples], batch_size: int, n_batches: int):
        self.streams, self.batch_size, self.n_batches = streams, int(batch_size), int(n_batches)
        self.seeds = [s.seed for s in streams]
        self._caches = [{} for _ in streams]

    def __len__(self) -> int:
        return self.n_batches

    def __getitem__(self, j: int):
        xs, ys = [], []
        for stream, cache in zip(self.streams, self._caches):
            idx = stream_indices(stream, j * self.batch_size, self.batch_size, cache)
            xs.append(stream.x[idx])
            ys.append(stream.y[idx])
        return torch.stack(xs), torch.stack(ys)


class SeedBatchLoader(DataLoader):
    """Its position needs no saved state (the dataset starts at the restored step); the state
    refuses a checkpoint written with other seeds or another batch size."""

    def state_dict(self) -> dict:
        return {"seeds": [int(s) for s in self.dataset.seeds], "batch_size": int(self.dataset.batch_size)}

    def load_state_dict(self, state_dict: dict) -> None:
        if state_dict and state_dict != self.state_dict():
            raise ValueError(f"checkpoint data stream {state_dict} differs from this run's {self.state_dict()}")


class SeedStackedDigits(DigitsDataModule):
    def __init__(self, seeds: list[int] | None = None, **kwargs):
        super().__init__(**kwargs)
        self.seeds = [int(s) for s in (seeds if seeds is not None else [self.seed])]

    def train_dataloader(self) -> DataLoader:
        self.setup()
        trainer = attached_trainer(self)
        offset = consumed_samples(trainer, self.batch_size)
        total = total_train_samples(trainer, self.max_steps, self.batch_size)
        streams = [TrainSamples(self.data.train_x, self.data.train_y, s, total - offset, offset,
                                stream=f"{self.source}-train") for s in self.seeds]
        return SeedBatchLoader(SeedBatches(streams, self.batch_size, (total - offset) // self.batch_size),
                               batch_size=None, shuffle=False, num_workers=0)

    def val_dataloader(self) -> DataLoader:
        data = self.val_dataset()
        return DataLoader(data, batch_size=max(1, len(data)), shuffle=False, num_workers=0)
