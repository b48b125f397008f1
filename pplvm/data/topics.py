"""A synthetic corpus from the LDA generative process (``data.source = "synthetic_topics"``).

Each of ``topics`` topics is a distribution over a vocabulary of ``vocab`` words, drawn from a
symmetric Dirichlet(``word_concentration``); each document draws its topic proportions from a
symmetric Dirichlet(``topic_concentration``) and a length uniform in ``[min_length,
max_length]``, then each word's topic and the word itself. Returned as bag-of-words count rows
``(N, vocab)`` (``format = "counts"``, as ProdLDA reads documents), or as word ids padded into
sequences ``(N, T, 1)`` with lengths (``format = "words"``, as LDA with per-word topics reads them).
The truth (topics, proportions) goes to the dataset's info; the labels are each document's
largest topic.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
from pydantic import Field

from ..errors import DataError
from ..schema import Seed
from .base import Batch, DataConfig


class SyntheticTopicsConfig(DataConfig):
    source: Literal["synthetic_topics"] = "synthetic_topics"
    n: int = Field(1000, ge=1, description="number of documents")
    vocab: int = Field(100, ge=2, description="vocabulary size")
    topics: int = Field(5, ge=1, description="number of topics K")
    min_length: int = Field(40, ge=1, description="words per document: uniform in [min_length, max_length]")
    max_length: int = Field(80, ge=1, description="longest document, in words")
    topic_concentration: float = Field(0.2, gt=0, description="Dirichlet of each document's topic proportions")
    word_concentration: float = Field(0.1, gt=0, description="Dirichlet of each topic's word distribution")
    format: Literal["counts", "words"] = Field("counts", description="bag-of-words rows, or word-id sequences")
    seed: Seed = Field(0, description="seed of the draw: the topics and the documents")


def synthetic_topics(
    n: int,
    vocab: int,
    topics: int,
    min_length: int = 40,
    max_length: int = 80,
    topic_concentration: float = 0.2,
    word_concentration: float = 0.1,
    seed: int = 0,
):
    """Draw ``n`` documents: ``(words, lengths, truth)``, ``words`` ``(n, max_length)`` word ids
    padded with -1, truth holding ``topic_words`` ``(K, V)`` and ``doc_topics`` ``(n, K)``."""
    if min_length > max_length:
        raise DataError(f"data.min_length = {min_length} exceeds data.max_length = {max_length}")
    rng = np.random.default_rng(seed)
    topic_words = rng.dirichlet(np.full(vocab, word_concentration), size=topics)
    doc_topics = rng.dirichlet(np.full(topics, topic_concentration), size=n)
    lengths = rng.integers(min_length, max_length + 1, size=n)
    z = (doc_topics.cumsum(-1)[:, None, :] < rng.random((n, max_length, 1))).sum(-1).clip(max=topics - 1)
    cdf = topic_words.cumsum(-1)[z]  # (n, T, V)
    words = (cdf < rng.random((n, max_length, 1))).sum(-1).clip(max=vocab - 1)
    words = np.where(np.arange(max_length) < lengths[:, None], words, -1)
    return words, lengths, {"topic_words": topic_words, "doc_topics": doc_topics}


def counts(words: np.ndarray, vocab: int) -> np.ndarray:
    """Bag-of-words rows ``(n, vocab)`` of word ids padded with -1."""
    out = np.zeros((len(words), vocab))
    rows = np.repeat(np.arange(len(words)), words.shape[1])
    keep = words.reshape(-1) >= 0
    np.add.at(out, (rows[keep], words.reshape(-1)[keep]), 1.0)
    return out


def _load_synthetic_topics(cfg: SyntheticTopicsConfig):
    words, lengths, truth = synthetic_topics(
        cfg.n,
        cfg.vocab,
        cfg.topics,
        cfg.min_length,
        cfg.max_length,
        cfg.topic_concentration,
        cfg.word_concentration,
        cfg.seed,
    )
    labels = truth["doc_topics"].argmax(-1)
    if cfg.format == "counts":
        return counts(words, cfg.vocab), labels, {"truth": truth}
    x = torch.as_tensor(np.maximum(words, 0)[..., None], dtype=torch.get_default_dtype())
    return Batch(x=x, lengths=torch.as_tensor(lengths)), labels, {"truth": truth}
