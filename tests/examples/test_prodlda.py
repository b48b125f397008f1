"""examples/pyro_classics/prodlda: ProdLDA as Pyro's tutorial writes it (BatchNorm and dropout in
encoder and decoder, its own guide) on the synthetic LDA corpus; the corpus follows its
generative process (both formats), the CLI round works, and guide and objective swap by one
field. (Its held-out log-likelihood does not beat the closed-form unigram model on this corpus:
see the examples' README; no test claims it does.)"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

import pplvm
from pplvm.cli import main
from pplvm.data.topics import counts, synthetic_topics

CARD = Path("examples/pyro_classics/prodlda.toml")
QUICK = ["training.epochs=2", "data.n=200", "evaluation.samples=8", "evaluation.max_rows=40"]


def test_the_corpus_follows_the_lda_process():
    """2000 documents: each count row sums to its length, the word-id format gives the same
    counts, and the corpus' word frequencies match Σ_d |d| θ_d β within 3% of the words (the
    draws' multinomial noise: ≈ 1% measured)."""
    words, lengths, truth = synthetic_topics(2000, 30, 4, 20, 40, seed=3)
    rows = counts(words, 30)
    np.testing.assert_array_equal(rows.sum(-1), lengths)
    assert ((words >= 0).sum(-1) == lengths).all()
    expected = (lengths[:, None] * truth["doc_topics"] @ truth["topic_words"]).sum(0)
    assert np.abs(rows.sum(0) - expected).sum() / lengths.sum() < 0.03


def test_fits_through_the_cli_and_answers(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["fit", str(CARD), "--out", str(out), "--quiet", *[a for s in QUICK for a in ("--set", s)]]) == 0
    capsys.readouterr()
    assert main(["evaluate", str(out), "--json"]) == 0
    held_out = json.loads(capsys.readouterr().out)
    assert held_out["likelihood"] == "estimate" and math.isfinite(held_out["log_likelihood_mean"])
    assert main(["summary", str(out)]) == 0
    assert main(["render", str(out / "card.toml"), "--out", str(tmp_path / "graph.png")]) == 0
    assert (tmp_path / "graph.png").is_file()


@pytest.mark.parametrize("swap", ["guide.kind=amortized", "objective.name=iwae"])
def test_guide_and_objective_swap_by_one_field(swap):
    run = pplvm.fit(CARD, overrides=[*QUICK, swap, "training.progress=false"])
    assert all(math.isfinite(h["train_loss"]) for h in run.history)


def test_both_formats_hold_the_same_documents():
    """format = "words" (padded word-id sequences) counts back to format = "counts" row by row."""
    from pplvm.config import card_from_dict
    from pplvm.data import load_dataset

    def load(fmt):
        data = {"source": "synthetic_topics", "n": 30, "vocab": 12, "format": fmt, "valid_fraction": 0.0}
        return load_dataset(card_from_dict({"model": {"family": "gmm"}, "data": data}).data)

    rows, seqs = load("counts").train, load("words").train
    assert seqs.x.shape[-1] == 1 and torch.equal(seqs.lengths, rows.sum(-1).long())
    ids = torch.where(torch.arange(seqs.x.shape[1]) < seqs.lengths[:, None], seqs.x[..., 0], -1).long().numpy()
    np.testing.assert_array_equal(counts(ids, 12), rows.numpy())
