"""Datasets: embedded defaults that need no network, and real loaders selected by config."""

from replicate.data.bigram_backcopy import BigramBackcopyDataModule, BigramTable
from replicate.data.digits import DigitsDataModule
from replicate.data.text import Corpus, TextDataModule, load_corpus, stdlib_files

__all__ = ["BigramBackcopyDataModule", "BigramTable", "Corpus", "DigitsDataModule", "TextDataModule",
           "load_corpus", "stdlib_files"]
