"""Byte-level text corpora and a resumable LightningDataModule of (input, target) windows.

Sources (``source=``):

* ``"stdlib"`` (default, no network): the running Python's standard-library ``.py`` files
  (``sysconfig.get_paths()["stdlib"]``), excluding test directories (``test``, ``tests``,
  ``idle_test``), ``site-packages``/``dist-packages``, ``__pycache__``, ``lib-dynload``, the
  build-specific ``config-*`` directories and ``_sysconfigdata*`` files. ``path=`` may point at
  another directory of ``.py`` files instead.
* ``"tinystories"`` (roneneldan/TinyStories) and ``"fineweb_edu"`` (HuggingFaceFW/fineweb-edu,
  config sample-10BT): from ``path=`` (a ``.jsonl``/``.json`` file of records with a ``"text"``
  field, a ``.txt`` file, a ``.parquet`` file when pyarrow is installed, a directory of those, or
  a directory written by ``datasets.save_to_disk``), otherwise through Hugging Face ``datasets``
  (streamed; imported only then). These sources are read until both splits hold 4x their share
  of ``max_bytes`` (so the hash ordering has documents to choose from), not necessarily to the end. Without a local copy and without network this raises
  ``ConfigError("dataset 'tinystories' needs network or a local copy: set data.path=...")``:
  there is no silent fallback to another corpus.

Documents are the unit of the train/val split: a file (stdlib) or a record (text datasets). A
document goes to validation when the first 32 bits of sha256(its key) / 2^32 < ``val_fraction``,
key = relative path for files, the text itself for records — deterministic and independent of
listing order. Documents are then ordered by that hash (a fixed pseudo-shuffle, so a byte cap
takes a spread of files rather than the alphabetically first ones), joined with ``DOC_SEP`` and
cut at ``max_bytes`` in total: ``(1 - val_fraction) * max_bytes`` for train, the rest for val.

The built corpus (uint8 tensors + provenance: sha256 of each split, file/document counts, Python
version) is cached in ``cache_dir`` (default ``$REPLICATE_CACHE`` or ``~/.cache/replicate``)
under a key of the source, Python version, the listing (names and sizes) and the settings.

Windows: a training sample ``i`` is the window of ``seq_len`` bytes starting at a position drawn
from a generator seeded by sha256(seed, i // 4096): a pure function of (seed, sample index)
(``replicate.data.resumable``).
The model input is BOS followed by the first ``seq_len - 1`` bytes, the target the ``seq_len``
bytes (so BOS is always at position 0, and position t predicts byte t). ``train_dataloader``
starts at sample ``trainer.global_step * accumulate_grad_batches * batch_size * world_size``:
Lightning restores a checkpoint before it asks for the dataloader, so a resumed run sees exactly
the batches an uninterrupted run would have seen. Validation uses fixed, evenly spaced windows of
the val split (the same for every seed).
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import sysconfig
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

import torch
from torch.utils.data import DataLoader, Dataset

from replicate.config import ConfigError
from replicate.data.resumable import BlockStream, ResumableDataModule
from replicate.nn.transformer import BOS

DOC_SEP = b"\n\n"
CACHE_VERSION = 1
SOURCES = ("stdlib", "tinystories", "fineweb_edu")
HF_IDS = {"tinystories": ("roneneldan/TinyStories", None),
          "fineweb_edu": ("HuggingFaceFW/fineweb-edu", "sample-10BT")}
_EXCLUDED_DIRS = {"test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__",
                  "lib-dynload"}


# --------------------------------------------------------------------------- corpus


@dataclass
class Corpus:
    train: torch.Tensor  # uint8
    val: torch.Tensor  # uint8
    meta: dict = field(default_factory=dict)


def default_cache_dir() -> Path:
    return Path(os.environ.get("REPLICATE_CACHE", Path.home() / ".cache" / "replicate"))


def offline_error(source: str) -> ConfigError:
    return ConfigError(f"dataset {source!r} needs network or a local copy: set data.path=...")


def hash_unit(key: str) -> float:
    """Deterministic number in [0, 1) from a string."""
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:4], "big") / 2**32


def is_val(key: str, val_fraction: float) -> bool:
    return hash_unit(key) < val_fraction


def stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def stdlib_files(root: str | Path | None = None) -> list[str]:
    """Sorted relative paths of the .py files under root (the stdlib by default)."""
    root = Path(root) if root is not None else stdlib_root()
    files = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames
                             if d not in _EXCLUDED_DIRS and not d.startswith("config-"))
        for name in filenames:
            if name.endswith(".py") and not name.startswith("_sysconfigdata"):
                files.append((Path(dirpath) / name).relative_to(root).as_posix())
    return sorted(files)


def _assemble(docs: Iterable[tuple[str, bytes]], max_bytes: int | None, val_fraction: float,
              presorted: bool = False) -> tuple[bytes, bytes, list[str], list[str]]:
    """Split (key, bytes) documents by hash of key, order by hash, join and cap."""
    train_cap = None if max_bytes is None else int(round(max_bytes * (1 - val_fraction)))
    val_cap = None if max_bytes is None else int(max_bytes) - train_cap
    splits = {"train": [], "val": []}
    for key, data in docs:
        splits["val" if is_val(key, val_fraction) else "train"].append((hash_unit(key), key, data))
    out, names = {}, {}
    for split, cap in (("train", train_cap), ("val", val_cap)):
        items = splits[split] if presorted else sorted(splits[split])
        buf, used, total = [], [], 0
        for _, key, data in items:
            if cap is not None and total >= cap:
                break
            chunk = data + DOC_SEP
            if cap is not None:
                chunk = chunk[: cap - total]
            buf.append(chunk)
            used.append(key)
            total += len(chunk)
        out[split], names[split] = b"".join(buf), used
    return out["train"], out["val"], names["train"], names["val"]


def _read_records(path: Path) -> Iterator[tuple[str, str]]:
    """(document key, text) from a local file or directory (jsonl / json / txt / parquet)."""
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    files = [f for f in files if f.suffix in (".jsonl", ".json", ".txt", ".parquet")]
    if not files:
        raise FileNotFoundError(f"no .jsonl/.json/.txt/.parquet files at {path}")
    for f in files:
        if f.suffix in (".jsonl", ".json"):
            with open(f, encoding="utf-8") as fh:
                first = fh.read(1)
                fh.seek(0)
                if f.suffix == ".json" and first == "[":
                    records = json.load(fh)
                else:
                    records = (json.loads(line) for line in fh if line.strip())
                for rec in records:
                    if "text" not in rec:
                        raise KeyError(f"{f}: record without a 'text' field: keys {sorted(rec)}")
                    yield rec["text"], rec["text"]
        elif f.suffix == ".txt":
            yield (f.relative_to(path).as_posix() if path.is_dir() else f.name), f.read_text(encoding="utf-8")
        else:
            try:
                import pyarrow.parquet as pq
            except ImportError as e:
                raise RuntimeError(f"reading {f} needs pyarrow: pip install pyarrow") from e
            for text in pq.read_table(f, columns=["text"]).column("text").to_pylist():
                yield text, text


def _is_saved_hf_dataset(path: Path) -> bool:
    return path.is_dir() and any((path / n).exists() for n in ("dataset_dict.json", "state.json"))


def _hf_records(source: str, path: Path | None) -> Iterator[tuple[str, str]]:
    try:
        import datasets
    except ImportError as e:
        raise offline_error(source) from e
    try:
        if path is not None:  # a datasets.save_to_disk directory
            ds = datasets.load_from_disk(str(path))
            if isinstance(ds, datasets.DatasetDict):
                ds = ds["train"]
        else:
            hf_id, name = HF_IDS[source]
            ds = datasets.load_dataset(hf_id, name=name, split="train", streaming=True)
        for rec in ds:
            yield rec["text"], rec["text"]
    except Exception as e:  # offline, missing, or unreadable: the cause stays chained
        raise offline_error(source) from e


def _text_docs(source: str, path: Path | None, max_bytes: int | None,
               val_fraction: float) -> Iterator[tuple[str, bytes]]:
    if path is not None and not _is_saved_hf_dataset(path):
        records = _read_records(path)
    else:
        records = _hf_records(source, path)
    # streaming sources are unbounded: stop once both splits could be full
    budget = None if max_bytes is None else {"train": max_bytes * (1 - val_fraction),
                                             "val": max_bytes * val_fraction}
    seen = {"train": 0, "val": 0}
    for key, text in records:
        data = text.encode("utf-8")
        yield key, data
        if budget is not None:
            seen["val" if is_val(key, val_fraction) else "train"] += len(data) + len(DOC_SEP)
            if all(seen[s] >= budget[s] * 4 for s in seen):  # 4x: room for the hash ordering
                return


def _listing_signature(source: str, path: Path | None) -> dict:
    if source == "stdlib":
        root = path if path is not None else stdlib_root()
        files = stdlib_files(root)
        sizes = [(root / f).stat().st_size for f in files]
        return {"root_is_stdlib": path is None, "files": files, "sizes": sizes,
                "python": platform.python_version()}
    if path is not None:
        entries = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        return {"files": [(p.name, p.stat().st_size) for p in entries]}
    return {"hf": HF_IDS[source]}


def load_corpus(source: str = "stdlib", max_bytes: int | None = 4_000_000,
                val_fraction: float = 0.05, path: str | Path | None = None,
                cache_dir: str | Path | None = None, use_cache: bool = True) -> Corpus:
    """Build (or read from the cache) the byte corpus of ``source``; see the module docstring."""
    if source not in SOURCES:
        raise ValueError(f"unknown text source {source!r}; expected one of {SOURCES}")
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    path = Path(path).expanduser() if path is not None else None
    if path is not None and not path.exists():
        raise ConfigError(f"data.path={path} does not exist: expected .jsonl/.json/.txt/.parquet files of "
                          "records with a 'text' field, a folder of them, or a datasets.save_to_disk folder")
    signature = {"v": CACHE_VERSION, "source": source, "max_bytes": max_bytes,
                 "val_fraction": val_fraction, "listing": _listing_signature(source, path)}
    key = hashlib.sha256(json.dumps(signature, sort_keys=True).encode()).hexdigest()[:16]
    tag = f"py{platform.python_version()}-" if source == "stdlib" else ""
    cache_file = Path(cache_dir or default_cache_dir()) / "text" / f"{source}-{tag}{key}.pt"
    if use_cache and cache_file.exists():
        saved = torch.load(cache_file, weights_only=True)
        return Corpus(saved["train"], saved["val"], saved["meta"])

    if source == "stdlib":
        root = path if path is not None else stdlib_root()
        files = signature["listing"]["files"]
        docs = ((f, (root / f).read_bytes()) for f in files)
        n_docs = len(files)
    else:
        docs = _text_docs(source, path, max_bytes, val_fraction)
        n_docs = None
    docs = list(docs)
    n_docs = len(docs) if n_docs is None else n_docs
    train, val, train_keys, val_keys = _assemble(docs, max_bytes, val_fraction)
    if not train or not val:
        raise ValueError(f"corpus {source!r} at {path}: empty {'train' if not train else 'val'} "
                         f"split ({n_docs} documents, val_fraction={val_fraction})")
    name = (lambda k: k) if source == "stdlib" else (lambda k: hashlib.sha1(k.encode()).hexdigest()[:12])
    meta = {
        "source": source, "path": str(path) if path is not None else None,
        "python": platform.python_version(), "max_bytes": max_bytes, "val_fraction": val_fraction,
        "n_documents": n_docs, "n_train_docs": len(train_keys), "n_val_docs": len(val_keys),
        "train_bytes": len(train), "val_bytes": len(val),
        "sha256": hashlib.sha256(train + b"\0" + val).hexdigest(),
        "train_sha256": hashlib.sha256(train).hexdigest(),
        "val_sha256": hashlib.sha256(val).hexdigest(),
        "train_docs": [name(k) for k in train_keys], "val_docs": [name(k) for k in val_keys],
    }
    corpus = Corpus(torch.frombuffer(bytearray(train), dtype=torch.uint8),
                    torch.frombuffer(bytearray(val), dtype=torch.uint8), meta)
    if use_cache:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache_file.with_suffix(f".tmp{os.getpid()}")
        torch.save({"train": corpus.train, "val": corpus.val, "meta": meta}, tmp)
        os.replace(tmp, cache_file)  # atomic: parallel jobs never see half a file
    return corpus


# --------------------------------------------------------------------------- windows


def make_window(data: torch.Tensor, start: int, seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(input, target): input = BOS + data[start : start+seq_len-1], target = data[start : start+seq_len]."""
    w = data[start : start + seq_len].long()
    return torch.cat([torch.tensor([BOS]), w[:-1]]), w


class TrainWindows(BlockStream):
    """Sample i (i = 0..length-1) is window ``offset + i`` of the seeded stream of start positions."""

    def __init__(self, data: torch.Tensor, seq_len: int, seed: int, length: int, offset: int = 0):
        if len(data) < seq_len + 1:
            raise ValueError(f"training split has {len(data)} bytes < seq_len + 1 = {seq_len + 1}")
        super().__init__(seed, length, offset, stream="train")
        self.data, self.seq_len = data, seq_len

    def draw(self, generator: torch.Generator) -> torch.Tensor:
        return torch.randint(0, len(self.data) - self.seq_len + 1, (self.block_size,), generator=generator)

    def sample(self, raw: torch.Tensor):
        return make_window(self.data, int(raw), self.seq_len)


class FixedWindows(Dataset):
    def __init__(self, data: torch.Tensor, starts: torch.Tensor, seq_len: int):
        self.data, self.starts, self.seq_len = data, starts, seq_len

    def __len__(self) -> int:
        return len(self.starts)

    def __getitem__(self, i: int):
        return make_window(self.data, int(self.starts[i]), self.seq_len)


class TextDataModule(ResumableDataModule):
    """Byte-level LM windows from a text corpus; see the module docstring for the contract.

    Batches are tuples (input, target) of int64 tensors (batch_size, seq_len), input[:, 0] == BOS.
    """

    def __init__(self, source: str = "stdlib", seq_len: int = 128, batch_size: int = 32,
                 max_steps: int = 1000, seed: int = 0, val_batches: int = 8,
                 max_bytes: int | None = 4_000_000, path: str | None = None,
                 cache_dir: str | None = None, val_fraction: float = 0.05, num_workers: int = 0):
        super().__init__()
        self.source, self.seq_len, self.batch_size = source, seq_len, batch_size
        self.max_steps, self.seed, self.val_batches = max_steps, seed, val_batches
        self.max_bytes, self.path, self.cache_dir = max_bytes, path, cache_dir
        self.val_fraction, self.num_workers = val_fraction, num_workers
        self.corpus: Corpus | None = None

    def prepare_data(self) -> None:
        load_corpus(self.source, self.max_bytes, self.val_fraction, self.path, self.cache_dir)

    def setup(self, stage: str | None = None) -> None:
        if self.corpus is None:
            self.corpus = load_corpus(self.source, self.max_bytes, self.val_fraction, self.path,
                                      self.cache_dir)

    @property
    def provenance(self) -> dict:
        self.setup()
        return {k: v for k, v in self.corpus.meta.items() if k not in ("train_docs", "val_docs")}

    def train_stream(self, length: int, offset: int) -> TrainWindows:
        return TrainWindows(self.corpus.train, self.seq_len, self.seed, length, offset)

    def val_dataset(self) -> FixedWindows:
        self.setup()
        n = self.val_batches * self.batch_size
        last = len(self.corpus.val) - self.seq_len
        if last < 0:
            raise ValueError(f"val split has {len(self.corpus.val)} bytes < seq_len {self.seq_len}")
        starts = torch.linspace(0, last, n).long()
        return FixedWindows(self.corpus.val, starts, self.seq_len)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_dataset(), batch_size=self.batch_size, shuffle=False,
                          num_workers=0)
