"""Bigram-Backcopy: the synthetic task of Guo et al. 2024, "Active-Dormant Attention Heads:
Mechanistically Demystifying Extreme-Token Phenomena in LLMs" (arXiv 2410.13835; their code:
GuoTianYu2000/Active-Dormant-Attention, ``BBM/data.py``, class ``bbm``).

Data-generating process (ours follows theirs; vocabulary = 256 bytes + BOS = 256):

* a bigram transition table P(next | current) and unigram marginal estimated from byte pairs of
  a text (here the embedded stdlib corpus of ``replicate.data.text``; they used Tiny Shakespeare
  characters). Rows of bytes never seen as a predecessor fall back to the marginal;
* the ``n_triggers`` (3) most frequent tokens are the triggers (on stdlib source: space, 'e', 't');
* a sequence is BOS, then a first token from the marginal with triggers removed, then for each
  next position: if the current token is a trigger, the next token COPIES the token before the
  trigger ("backcopy"), otherwise it is drawn from the bigram row of the current token.
  (So two triggers are never adjacent, and the copied token is never BOS.)

A sample is ``seq_len + 1`` tokens; the model input is the first ``seq_len`` (BOS at position 0),
the target the last ``seq_len``. ``trigger_mask(inputs)`` marks query positions holding a
trigger, i.e. those whose next token is a copy: probes split attention statistics by it.

Loss: Guo et al. train on the cross-entropy of all positions (``train_main.py``:
``F.cross_entropy(pred.flatten(0, 1), y.flatten(0, 1))``), and so do we; the copy positions are
deterministic, the others carry the bigram's irreducible entropy (``bigram_entropy``).

Sampling is vectorised and deterministic by (seed, sample index): sample i uses the uniforms of
row ``i % BLOCK`` of a block drawn from a generator seeded by sha256(seed, i // BLOCK), and the
next token is the inverse CDF of the bigram row at that uniform. The DataModule follows the
contract of ``TextDataModule`` (resume-aware offset, fixed validation set for every seed).
"""

from __future__ import annotations

import hashlib

import torch
from torch.utils.data import DataLoader

from replicate.data.resumable import BlockStream, ResumableDataModule
from replicate.data.text import load_corpus
from replicate.nn.transformer import BOS

VOCAB = 257
BLOCK = 1024  # sequences drawn per seeded generator block


class BigramTable:
    """Bigram statistics of a byte string, with BOS = 256 in a 257-token vocabulary."""

    def __init__(self, data: torch.Tensor, n_triggers: int = 3):
        data = data.long()
        counts = torch.bincount(data[:-1] * VOCAB + data[1:], minlength=VOCAB * VOCAB)
        counts = counts.view(VOCAB, VOCAB).double()
        unigram = torch.bincount(data, minlength=VOCAB).double()
        self.marginal = unigram / unigram.sum()
        rows = counts.sum(1, keepdim=True)
        self.cond = torch.where(rows > 0, counts / rows.clamp_min(1), self.marginal.expand(VOCAB, VOCAB))
        self.triggers = self.marginal.argsort(descending=True)[:n_triggers].sort().values
        first = self.marginal.clone()
        first[self.triggers] = 0
        self.first = first / first.sum()
        self._cdf = self.cond.cumsum(1)
        self._cdf[:, -1] = 1.0
        self._first_cdf = self.first.cumsum(0)
        self._first_cdf[-1] = 1.0
        self.sha256 = hashlib.sha256(counts.numpy().tobytes()).hexdigest()

    def is_trigger(self, tokens: torch.Tensor) -> torch.Tensor:
        return torch.isin(tokens, self.triggers)

    def sample(self, uniforms: torch.Tensor) -> torch.Tensor:
        """Sequences (n, L + 1) from uniforms (n, L): BOS, then L tokens by the backcopy rule."""
        n, length = uniforms.shape
        seq = torch.empty(n, length + 1, dtype=torch.long)
        seq[:, 0] = BOS
        seq[:, 1] = torch.searchsorted(self._first_cdf, uniforms[:, 0].contiguous(), right=True)
        for t in range(2, length + 1):
            cur = seq[:, t - 1]
            markov = torch.searchsorted(self._cdf[cur], uniforms[:, t - 1 : t].contiguous(), right=True)[:, 0]
            seq[:, t] = torch.where(self.is_trigger(cur), seq[:, t - 2], markov)
        return seq.clamp_(max=VOCAB - 1)

    def entropy(self) -> float:
        """Entropy (nats) of the bigram rows, weighted by the marginal over non-trigger tokens:
        the loss floor at non-trigger positions (copy positions have loss floor 0)."""
        p = self.cond
        h = -(p * p.clamp_min(1e-300).log()).sum(1)
        return float((self.first * h).sum())


class BackcopySequences(BlockStream):
    """Sample i = sequence ``offset + i`` of the stream ``(stream, seed)``: (input, target)."""

    block_size = BLOCK

    def __init__(self, table: BigramTable, seq_len: int, seed: int, length: int, offset: int = 0,
                 stream: str = "bbm-train"):
        super().__init__(seed, length, offset, stream)
        self.table, self.seq_len = table, seq_len

    def draw(self, generator: torch.Generator) -> torch.Tensor:
        uniforms = torch.rand(self.block_size, self.seq_len, generator=generator, dtype=torch.float64)
        return self.table.sample(uniforms)

    def sample(self, raw: torch.Tensor):
        return raw[:-1], raw[1:]


class BigramBackcopyDataModule(ResumableDataModule):
    """Bigram-Backcopy batches (input, target), int64 (batch_size, seq_len), input[:, 0] == BOS.

    ``table`` holds the bigram statistics and ``triggers``; ``trigger_mask(inputs)`` gives the
    positions whose next token is a copy. The bigram table is estimated from the stdlib corpus
    (``max_bytes`` of it; ``path``/``cache_dir`` as in ``load_corpus``).
    """

    def __init__(self, seq_len: int = 64, batch_size: int = 64, max_steps: int = 500,
                 seed: int = 0, val_batches: int = 4, n_triggers: int = 3,
                 max_bytes: int | None = 4_000_000, path: str | None = None,
                 cache_dir: str | None = None, num_workers: int = 0):
        super().__init__()
        self.seq_len, self.batch_size, self.max_steps = seq_len, batch_size, max_steps
        self.seed, self.val_batches, self.n_triggers = seed, val_batches, n_triggers
        self.max_bytes, self.path, self.cache_dir = max_bytes, path, cache_dir
        self.num_workers = num_workers
        self.table: BigramTable | None = None

    def prepare_data(self) -> None:
        load_corpus("stdlib", self.max_bytes, path=self.path, cache_dir=self.cache_dir)

    def setup(self, stage: str | None = None) -> None:
        if self.table is None:
            corpus = load_corpus("stdlib", self.max_bytes, path=self.path, cache_dir=self.cache_dir)
            self.table = BigramTable(corpus.train, self.n_triggers)
            self.corpus_meta = {k: v for k, v in corpus.meta.items() if not k.endswith("_docs")}

    @property
    def triggers(self) -> list[int]:
        self.setup()
        return self.table.triggers.tolist()

    def trigger_mask(self, inputs: torch.Tensor) -> torch.Tensor:
        """True at query positions holding a trigger (the next token copies the one before)."""
        self.setup()
        return self.table.is_trigger(inputs)

    @property
    def provenance(self) -> dict:
        self.setup()
        return {"task": "bigram_backcopy", "triggers": self.triggers,
                "bigram_sha256": self.table.sha256, "bigram_entropy": self.table.entropy(),
                "corpus": self.corpus_meta}

    def train_stream(self, length: int, offset: int) -> BackcopySequences:
        return BackcopySequences(self.table, self.seq_len, self.seed, length, offset)

    def val_dataset(self) -> BackcopySequences:
        self.setup()
        # one fixed validation stream for every seed, disjoint from training streams by name
        return BackcopySequences(self.table, self.seq_len, 0, self.val_batches * self.batch_size,
                                 stream="bbm-val")

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_dataset(), batch_size=self.batch_size, shuffle=False)
