"""Training streams that resume exactly, shared by every datamodule.

Sample ``j`` of a run's training stream is a pure function of ``(stream, seed, j)``: samples are
drawn ``block_size`` at a time from a generator seeded by sha256(stream, seed, j // block_size).
A :class:`BlockStream` starting at ``offset`` therefore yields exactly what an uninterrupted
run would have seen from sample ``offset`` on. :class:`ResumableDataModule` starts its training
stream at the samples a restored trainer has consumed (Lightning restores a checkpoint before
it asks for the dataloader) and keeps the stream the length of the whole run, so Lightning's
restored batch counter and the dataloader agree on where the epoch ends.
"""

from __future__ import annotations

import hashlib

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset


def block_generator(seed: int, block: int, stream: str = "train") -> torch.Generator:
    """A CPU generator seeded by sha256(stream, seed, block)."""
    digest = hashlib.sha256(f"{stream}:{int(seed)}:{int(block)}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "big") >> 1)


class BlockStream(Dataset):
    """Sample ``i`` (0..length-1) is item ``offset + i`` of the seeded stream.

    Subclasses define ``draw(generator)``, returning one block of ``block_size`` raw draws
    (indices, window starts, whole sequences), and ``sample(raw)``, turning one draw into a sample.
    """

    block_size = 4096

    def __init__(self, seed: int, length: int, offset: int = 0, stream: str = "train"):
        self.seed, self.length, self.offset, self.stream = int(seed), int(length), int(offset), stream
        self._block, self._draws = None, None

    def draw(self, generator: torch.Generator) -> torch.Tensor:
        raise NotImplementedError

    def sample(self, raw: torch.Tensor):
        raise NotImplementedError

    def raw(self, i: int) -> torch.Tensor:
        """Draw ``offset + i`` of the stream (one block is drawn and cached at a time)."""
        j = self.offset + i
        block = j // self.block_size
        if block != self._block:
            self._block, self._draws = block, self.draw(block_generator(self.seed, block, self.stream))
        return self._draws[j % self.block_size]

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int):
        return self.sample(self.raw(i))


class ResumableDataLoader(DataLoader):
    """A DataLoader over a :class:`BlockStream`.

    Its position needs no saved state: the dataset already starts at the samples the restored
    trainer consumed. ``state_dict``/``load_state_dict`` exist so Lightning knows a mid-epoch
    resume is exact, and to refuse a checkpoint written with another seed or batch size.
    """

    def state_dict(self) -> dict:
        return {"seed": int(self.dataset.seed), "batch_size": int(self.batch_size)}

    def load_state_dict(self, state_dict: dict) -> None:
        mine = self.state_dict()
        if state_dict and state_dict != mine:
            raise ValueError(f"checkpoint data stream {state_dict} differs from this run's {mine}")


def consumed_samples(trainer, batch_size: int) -> int:
    """Training samples a (restored) trainer has already consumed; 0 without a trainer."""
    if trainer is None:
        return 0
    accumulate = getattr(trainer, "accumulate_grad_batches", 1) or 1
    world = getattr(trainer, "world_size", 1) or 1
    return int(trainer.global_step) * int(accumulate) * int(batch_size) * int(world)


def total_train_samples(trainer, max_steps: int, batch_size: int) -> int:
    """Samples in the whole run: the trainer's max_steps when attached, else ``max_steps``."""
    steps = max_steps
    if trainer is not None and getattr(trainer, "max_steps", -1) and trainer.max_steps > 0:
        steps = trainer.max_steps
    accumulate = getattr(trainer, "accumulate_grad_batches", 1) if trainer is not None else 1
    world = getattr(trainer, "world_size", 1) if trainer is not None else 1
    return int(steps) * int(batch_size) * int(accumulate or 1) * int(world or 1)


def attached_trainer(dm: L.LightningDataModule):
    try:
        return dm.trainer
    except (AttributeError, RuntimeError):
        return None


class ResumableDataModule(L.LightningDataModule):
    """A datamodule whose training stream resumes exactly.

    Subclasses set ``batch_size``, ``max_steps`` and ``num_workers`` and define
    ``train_stream(length, offset) -> BlockStream``.
    """

    def train_stream(self, length: int, offset: int) -> BlockStream:
        raise NotImplementedError

    def train_dataset(self, offset: int | None = None) -> BlockStream:
        self.setup()
        trainer = attached_trainer(self)
        if offset is None:
            offset = consumed_samples(trainer, self.batch_size)
        return self.train_stream(total_train_samples(trainer, self.max_steps, self.batch_size), offset)

    def train_dataloader(self) -> DataLoader:
        return ResumableDataLoader(self.train_dataset(), batch_size=self.batch_size, shuffle=False,
                                   drop_last=True, num_workers=self.num_workers,
                                   persistent_workers=self.num_workers > 0)
