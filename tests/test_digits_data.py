"""Image data for the hypernetwork experiments: scikit-learn digits (embedded), MNIST from
torchvision's on-disk layout (a tiny made-up fixture), and the resumable training stream."""

import gzip
import shutil
import sys
from pathlib import Path

import lightning as L
import pytest
import torch

from replicate.config import ConfigError
from replicate.data.digits import DigitsDataModule, TrainSamples, load_digits, load_mnist, read_idx

FIXTURE = Path(__file__).parent / "fixtures" / "mnist_tiny"


@pytest.fixture(autouse=True)
def cache(tmp_path_factory, monkeypatch):
    path = tmp_path_factory.getbasetemp() / "replicate-cache"
    monkeypatch.setenv("REPLICATE_CACHE", str(path))
    return path


def batches(dm, n):
    dm.setup()
    out = []
    for i, batch in enumerate(dm.train_dataloader()):
        if i == n:
            break
        out.append(batch)
    return out


# --------------------------------------------------------------------------- digits


def test_digits_are_scaled_split_and_cached(cache):
    a = load_digits()
    assert a.train_x.shape[1:] == (1, 8, 8) and a.train_x.dtype == torch.float32
    assert len(a.train_y) + len(a.val_y) == 1797 and len(a.val_y) == 359
    assert a.train_x.min() == 0 and a.train_x.max() == 1 and set(a.val_y.tolist()) == set(range(10))
    assert list(cache.glob("digits/digits-sklearn*.pt"))  # later jobs skip importing sklearn
    b = load_digits()  # from the cache
    assert a.meta["sha256"] == b.meta["sha256"] and torch.equal(a.val_x, b.val_x)
    assert a.meta["source"] == "digits" and a.meta["sklearn"]
    assert load_digits(0.25).meta["n_val"] == 449  # round(0.25 * 1797)


def test_training_batches_are_a_pure_function_of_seed_and_index():
    kw = dict(batch_size=16, max_steps=20)
    a, b = batches(DigitsDataModule(seed=1, **kw), 3), batches(DigitsDataModule(seed=1, **kw), 3)
    c = batches(DigitsDataModule(seed=2, **kw), 3)
    for (xa, ya), (xb, yb) in zip(a, b):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    assert not torch.equal(a[0][0], c[0][0])
    x, y = a[0]
    assert x.shape == (16, 1, 8, 8) and y.dtype == torch.int64


def test_resumed_offset_yields_identical_later_samples():
    dm = DigitsDataModule(batch_size=8, max_steps=2000, seed=0)
    dm.setup()
    full = dm.train_dataset()
    k = 500 * 8  # crosses the generator's block boundary below
    resumed = dm.train_dataset(offset=k)
    block = TrainSamples.block_size
    for i in (0, 1, block - k, block - k + 3, 9000):
        assert torch.equal(resumed[i][0], full[k + i][0]) and resumed[i][1] == full[k + i][1]
    assert len(full) == len(resumed) == 2000 * 8


def test_validation_is_fixed_and_seed_independent():
    va = list(DigitsDataModule(seed=0, batch_size=128, val_batches=3).val_dataloader())
    vb = list(DigitsDataModule(seed=5, batch_size=128, val_batches=3).val_dataloader())
    assert [len(v[1]) for v in va] == [128, 128, 103]  # capped at the 359 validation digits
    assert all(torch.equal(p[0], q[0]) for p, q in zip(va, vb))


class _Tiny(L.LightningModule):
    """Records the batches it trains on."""

    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(64, 1)
        self.seen = []

    def training_step(self, batch, batch_idx):
        self.seen.append(batch[1].clone())
        return self.lin(batch[0].flatten(1)).pow(2).mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _trainer(root, max_steps, **kw):
    return L.Trainer(max_steps=max_steps, max_epochs=-1, logger=False, enable_progress_bar=False,
                     enable_model_summary=False, limit_val_batches=0, num_sanity_val_steps=0,
                     default_root_dir=root, accelerator="cpu", **kw)


def test_lightning_resume_sees_exactly_the_uninterrupted_batches(tmp_path):
    make = lambda: DigitsDataModule(batch_size=4, max_steps=6, seed=3)  # noqa: E731
    full = _Tiny()
    _trainer(tmp_path / "a", 6).fit(full, datamodule=make())
    first = _Tiny()
    ckpt = L.pytorch.callbacks.ModelCheckpoint(dirpath=tmp_path / "ck", save_top_k=-1,
                                               every_n_train_steps=2, save_last=True)
    _trainer(tmp_path / "b", 2, callbacks=[ckpt]).fit(first, datamodule=make())
    second = _Tiny()
    _trainer(tmp_path / "b", 6).fit(second, datamodule=make(), ckpt_path=tmp_path / "ck" / "last.ckpt")
    seen = first.seen + second.seen
    assert len(full.seen) == len(seen) == 6
    assert all(torch.equal(a, b) for a, b in zip(full.seen, seen))


# --------------------------------------------------------------------------- MNIST


def test_mnist_reads_torchvision_layout_without_torchvision():
    assert "torchvision" not in sys.modules
    dm = DigitsDataModule(source="mnist", path=str(FIXTURE), batch_size=4, max_steps=3, val_batches=1)
    x, y = batches(dm, 1)[0]
    assert x.shape == (4, 1, 28, 28) and x.min() >= 0 and x.max() <= 1
    d = dm.data
    assert len(d.train_y) == 20 and len(d.val_y) == 10 and torch.equal(d.train_y, torch.arange(20) % 10)
    label = int(d.train_y[7])
    assert torch.all(d.train_x[7, 0, 3 + 2 * label, 4:24] == 1.0)  # the fixture's bar
    assert dm.provenance["source"] == "mnist" and dm.image_shape == (1, 28, 28)
    assert "torchvision" not in sys.modules


def test_mnist_gzipped_files_and_raw_folder_path(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    for f in (FIXTURE / "MNIST" / "raw").iterdir():
        (raw / (f.name + ".gz")).write_bytes(gzip.compress(f.read_bytes()))
    a, b = load_mnist(raw), load_mnist(FIXTURE)
    assert a.meta["sha256"] == b.meta["sha256"]


def test_missing_mnist_is_one_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="not found under .*data.path"):
        load_mnist(tmp_path)
    if "torchvision" not in sys.modules:
        with pytest.raises(ConfigError, match="needs torchvision, which is not installed"):
            load_mnist(tmp_path, download=True)


def test_idx_reader_checks_the_header(tmp_path):
    bad = tmp_path / "bad-idx1-ubyte"
    bad.write_bytes(b"\x01\x02\x08\x01" + b"\x00" * 8)
    with pytest.raises(ValueError, match="not an IDX file"):
        read_idx(bad)
    short = tmp_path / "short"
    shutil.copy(FIXTURE / "MNIST" / "raw" / "t10k-images-idx3-ubyte", short)
    short.write_bytes(short.read_bytes()[:-5])
    with pytest.raises(ValueError, match="header says"):
        read_idx(short)
    wide = tmp_path / "wide"
    wide.write_bytes(b"\x00\x00\x0c\x01" + (2).to_bytes(4, "big") + (1).to_bytes(4, "big") + (258).to_bytes(4, "big"))
    assert read_idx(wide).tolist() == [1, 258]  # big-endian int32


def test_unknown_source_fails():
    with pytest.raises(ValueError, match="unknown image source"):
        DigitsDataModule(source="cifar")
