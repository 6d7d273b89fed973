"""Text corpora and windows: the stdlib default, the real loaders on a local fixture, the offline
error, determinism and the resume contract (also through a real Lightning checkpoint)."""

import importlib.util
import shutil
from pathlib import Path

import lightning as L
import pytest
import torch

from replicate.config import ConfigError
from replicate.data.bigram_backcopy import BigramBackcopyDataModule, BigramTable
from replicate.data.text import (DOC_SEP, TextDataModule, is_val, load_corpus, stdlib_files,
                                 stdlib_root)
from replicate.nn.transformer import BOS

FIXTURES = Path(__file__).parent / "fixtures"
HAS_DATASETS = importlib.util.find_spec("datasets") is not None


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


# --------------------------------------------------------------------------- stdlib corpus


def test_stdlib_listing_skips_tests_site_packages_and_build_files(tmp_path):
    root = tmp_path / "lib"
    shutil.copytree(FIXTURES / "pylib", root)
    (root / "pkg" / "__pycache__").mkdir()
    (root / "pkg" / "__pycache__" / "junk.py").write_text("x = 1\n")
    files = stdlib_files(root)
    assert files == sorted(files)
    assert "pkg/util.py" in files and "mod_0.py" in files
    assert not [f for f in files if "test/" in f or "site-packages" in f or "__pycache__" in f
                or "_sysconfigdata" in f]
    assert len(files) == 24 + 2


def test_real_stdlib_listing_has_no_test_dirs():
    files = stdlib_files()
    assert len(files) > 300
    parts = {p for f in files for p in f.split("/")[:-1]}
    assert not parts & {"test", "tests", "idle_test", "site-packages", "__pycache__"}
    assert "os.py" in files and (stdlib_root() / "os.py").exists()


def test_stdlib_split_is_by_file_deterministic_and_cached(tmp_path):
    kw = dict(source="stdlib", max_bytes=None, val_fraction=0.25, path=FIXTURES / "pylib")
    a = load_corpus(**kw, cache_dir=tmp_path / "c1")
    b = load_corpus(**kw, cache_dir=tmp_path / "c2")
    assert a.meta["sha256"] == b.meta["sha256"] and torch.equal(a.train, b.train)
    train, val = set(a.meta["train_docs"]), set(a.meta["val_docs"])
    assert train and val and not train & val
    assert train | val == set(stdlib_files(FIXTURES / "pylib"))
    assert all(is_val(f, 0.25) for f in val) and not any(is_val(f, 0.25) for f in train)
    # every file's bytes sit whole inside its own split
    for f in val:
        text = (FIXTURES / "pylib" / f).read_bytes()
        assert text in bytes(a.val.tolist()) and text + DOC_SEP not in bytes(a.train.tolist())
    assert a.meta["n_documents"] == 26 and a.meta["n_train_docs"] + a.meta["n_val_docs"] == 26
    assert a.train.dtype == torch.uint8
    # second call hits the cache
    cached = list((tmp_path / "c1" / "text").glob("stdlib-py*.pt"))
    assert len(cached) == 1
    assert load_corpus(**kw, cache_dir=tmp_path / "c1").meta == a.meta


def test_stdlib_cap_and_provenance(cache):
    c = load_corpus("stdlib", max_bytes=300_000, cache_dir=cache)
    assert c.meta["train_bytes"] + c.meta["val_bytes"] == 300_000
    assert c.meta["train_bytes"] == 285_000
    assert len(c.meta["sha256"]) == 64 and c.meta["python"].count(".") == 2
    assert not set(c.meta["train_docs"]) & set(c.meta["val_docs"])


# --------------------------------------------------------------------------- real loaders


def test_tinystories_from_a_local_jsonl_without_datasets(tmp_path):
    c = load_corpus("tinystories", max_bytes=None, val_fraction=0.2,
                    path=FIXTURES / "tinystories" / "tiny.jsonl", cache_dir=tmp_path)
    text = bytes(c.train.tolist()) + bytes(c.val.tolist())
    assert b"Once upon a time" in text and b'"text"' not in text  # the field, not raw JSON
    assert c.meta["n_train_docs"] > 0 and c.meta["n_val_docs"] > 0
    # the directory form reads the same records
    d = load_corpus("tinystories", max_bytes=None, val_fraction=0.2,
                    path=FIXTURES / "tinystories", cache_dir=tmp_path)
    assert d.meta["sha256"] == c.meta["sha256"]
    dm = TextDataModule("tinystories", seq_len=32, batch_size=4, max_steps=3, val_batches=2,
                        max_bytes=None, path=str(FIXTURES / "tinystories"), cache_dir=str(tmp_path),
                        val_fraction=0.2)
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (4, 32) and (x[:, 0] == BOS).all()
    assert len(list(dm.val_dataloader())) == 2


@pytest.mark.parametrize("source", ["tinystories", "fineweb_edu"])
def test_real_source_without_local_copy_fails_with_a_clear_message(source, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(ConfigError) as err:
        load_corpus(source, max_bytes=10_000, cache_dir=tmp_path)
    assert str(err.value) == f"dataset '{source}' needs network or a local copy: set data.path=..."


@pytest.mark.skipif(not HAS_DATASETS, reason="Hugging Face `datasets` is not installed (optional extra 'hf')")
def test_saved_hf_dataset_directory(tmp_path):
    import datasets

    records = [{"text": f"story number {i} about a dog."} for i in range(30)]
    datasets.Dataset.from_list(records).save_to_disk(str(tmp_path / "saved"))
    c = load_corpus("tinystories", max_bytes=None, val_fraction=0.2, path=tmp_path / "saved",
                    cache_dir=tmp_path)
    assert b"about a dog" in bytes(c.train.tolist())


def test_unknown_source_and_missing_path(tmp_path):
    with pytest.raises(ValueError, match="unknown text source"):
        load_corpus("shakespeare", cache_dir=tmp_path)
    with pytest.raises(ConfigError, match=r"data.path=.*nope.jsonl does not exist: expected .jsonl/.json/.txt/.parquet"):
        load_corpus("tinystories", path=tmp_path / "nope.jsonl", cache_dir=tmp_path)


# --------------------------------------------------------------------------- windows


def _batches(dm, n):
    it = iter(dm.train_dataloader())
    return [next(it) for _ in range(n)]


def test_windows_bos_shift_and_determinism(cache):
    kw = dict(seq_len=16, batch_size=4, max_steps=50, max_bytes=300_000, cache_dir=str(cache))
    a = _batches(TextDataModule(seed=3, **kw), 3)
    b = _batches(TextDataModule(seed=3, **kw), 3)
    c = _batches(TextDataModule(seed=4, **kw), 3)
    for (xa, ya), (xb, yb) in zip(a, b):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    assert not torch.equal(a[0][0], c[0][0])
    x, y = a[0]
    assert (x[:, 0] == BOS).all() and torch.equal(x[:, 1:], y[:, :-1])
    assert x.dtype == torch.long and y.max() < 256


def test_resumed_offset_yields_identical_later_batches(cache):
    kw = dict(seq_len=16, batch_size=4, max_steps=5000, max_bytes=300_000, cache_dir=str(cache))
    dm = TextDataModule(seed=0, **kw)
    full = dm.train_dataset()
    k = 1023  # crosses the generator's block boundary (4096 samples) below
    resumed = dm.train_dataset(offset=k * 4)
    for i in (0, 1, 5, 4096 - k * 4 % 4096, 4200):
        assert torch.equal(resumed[i][0], full[k * 4 + i][0])
    assert len(resumed) == len(full) == 5000 * 4


def test_validation_windows_are_fixed_and_seed_independent(cache):
    kw = dict(seq_len=16, batch_size=4, val_batches=3, max_bytes=300_000, cache_dir=str(cache))
    va = list(TextDataModule(seed=0, **kw).val_dataloader())
    vb = list(TextDataModule(seed=9, **kw).val_dataloader())
    assert len(va) == 3 and all(torch.equal(p[0], q[0]) for p, q in zip(va, vb))


class _Tiny(L.LightningModule):
    """Records the batches it trains on."""

    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Embedding(257, 4)
        self.seen = []

    def training_step(self, batch, batch_idx):
        self.seen.append(batch[0].clone())
        return self.lin(batch[0]).pow(2).mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _trainer(tmp_path, max_steps, **kw):
    return L.Trainer(max_steps=max_steps, max_epochs=-1, logger=False, enable_progress_bar=False,
                     enable_model_summary=False, limit_val_batches=0, num_sanity_val_steps=0,
                     default_root_dir=tmp_path, accelerator="cpu", **kw)


@pytest.mark.parametrize("make_dm, accumulate", [
    (lambda c: TextDataModule(seq_len=8, batch_size=2, max_steps=6, max_bytes=300_000, cache_dir=c), 1),
    (lambda c: TextDataModule(seq_len=8, batch_size=2, max_steps=6, max_bytes=300_000, cache_dir=c), 2),
    (lambda c: BigramBackcopyDataModule(seq_len=8, batch_size=2, max_steps=6, max_bytes=300_000, cache_dir=c), 1),
], ids=["text", "text_accumulate2", "bigram_backcopy"])
def test_lightning_resume_sees_exactly_the_uninterrupted_batches(make_dm, accumulate, cache, tmp_path):
    c = str(cache)
    full = _Tiny()
    _trainer(tmp_path / "a", 6, accumulate_grad_batches=accumulate).fit(full, datamodule=make_dm(c))

    first = _Tiny()
    ckpt = L.pytorch.callbacks.ModelCheckpoint(dirpath=tmp_path / "ck", save_top_k=-1,
                                               every_n_train_steps=2, save_last=True)
    _trainer(tmp_path / "b", 2, callbacks=[ckpt], accumulate_grad_batches=accumulate).fit(
        first, datamodule=make_dm(c))
    second = _Tiny()
    _trainer(tmp_path / "b", 6, accumulate_grad_batches=accumulate).fit(
        second, datamodule=make_dm(c), ckpt_path=tmp_path / "ck" / "last.ckpt")

    seen = first.seen + second.seen
    assert len(full.seen) == 6 * accumulate and len(seen) == 6 * accumulate
    for a, b in zip(full.seen, seen):
        assert torch.equal(a, b)


def test_checkpoint_from_another_seed_is_refused(cache):
    loader = TextDataModule(seq_len=8, batch_size=2, seed=1, max_bytes=300_000,
                            cache_dir=str(cache)).train_dataloader()
    loader.load_state_dict(loader.state_dict())
    with pytest.raises(ValueError, match="differs"):
        loader.load_state_dict({"seed": 2, "batch_size": 2})


# --------------------------------------------------------------------------- Bigram-Backcopy


@pytest.fixture(scope="module")
def bbm(cache):
    dm = BigramBackcopyDataModule(seq_len=64, batch_size=32, max_steps=100, seed=0,
                                  max_bytes=300_000, cache_dir=str(cache))
    dm.setup()
    return dm


def test_triggers_are_the_three_most_frequent_bytes(bbm):
    table = bbm.table
    top = table.marginal.argsort(descending=True)[:3]
    assert sorted(top.tolist()) == bbm.triggers
    assert torch.allclose(table.cond[:256].sum(1), torch.ones(256, dtype=torch.float64))
    assert table.marginal[BOS] == 0


def test_every_trigger_is_followed_by_a_copy_of_the_token_before_it(bbm):
    x, y = next(iter(bbm.train_dataloader()))
    assert x.shape == (32, 64) and (x[:, 0] == BOS).all() and torch.equal(x[:, 1:], y[:, :-1])
    trig = bbm.trigger_mask(x)
    assert trig.any() and not trig[:, :2].any()  # BOS and the first token are never triggers
    # the rule, at every trigger position t >= 1: next token == token before the trigger
    t_idx = trig.nonzero()
    assert torch.equal(y[t_idx[:, 0], t_idx[:, 1]], x[t_idx[:, 0], t_idx[:, 1] - 1])
    # consequences: triggers never adjacent, BOS never copied or emitted
    assert not (trig[:, 1:] & trig[:, :-1]).any()
    assert (y != BOS).all()
    # non-copy transitions are possible under the bigram table
    cur, nxt = x[:, 1:][~trig[:, 1:]], y[:, 1:][~trig[:, 1:]]
    assert (bbm.table.cond[cur, nxt] > 0).all()


def test_bigram_backcopy_is_deterministic_by_seed_and_index(bbm, cache):
    ds = bbm.train_dataset()
    again = BigramBackcopyDataModule(seq_len=64, batch_size=32, max_steps=100, seed=0,
                                     max_bytes=300_000, cache_dir=str(cache)).train_dataset()
    other = BigramBackcopyDataModule(seq_len=64, batch_size=32, max_steps=100, seed=1,
                                     max_bytes=300_000, cache_dir=str(cache)).train_dataset()
    for i in (0, 7, 1023, 1024, 3000):  # 1024 = a generator block boundary
        assert torch.equal(ds[i][0], again[i][0])
        assert torch.equal(bbm.train_dataset(offset=i)[0][0], ds[i][0])
    assert not torch.equal(ds[0][0], other[0][0])
    val = list(bbm.val_dataloader())
    assert len(val) == bbm.val_batches and not torch.equal(val[0][0], next(iter(bbm.train_dataloader()))[0])


def test_bigram_table_on_a_hand_built_string():
    data = torch.tensor(list(b"abababac"), dtype=torch.uint8)
    t = BigramTable(data, n_triggers=1)
    a, b, c = ord("a"), ord("b"), ord("c")
    assert t.triggers.tolist() == [a]
    assert t.cond[a, b].item() == pytest.approx(3 / 4) and t.cond[a, c].item() == pytest.approx(1 / 4)
    assert t.cond[b, a].item() == 1.0
    # first token from the marginal without triggers: b 3/4, c 1/4
    assert t.first[b].item() == pytest.approx(0.75) and t.first[a].item() == 0
    seq = t.sample(torch.rand(50, 20, generator=torch.Generator().manual_seed(0), dtype=torch.float64))
    for s in seq:
        for i in range(2, 21):
            if s[i - 1] == a:
                assert s[i] == s[i - 2]
