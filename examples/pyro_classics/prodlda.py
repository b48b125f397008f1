"""ProdLDA (Srivastava & Sutton 2017), as Pyro's tutorial "prodlda" writes it.

A document is a bag-of-words count row ``x_n`` ``(V,)``. Its topic proportions are logistic
normal, and the words come from a product of experts (a softmax over weighted topic logits)::

    logθ_n ~ N(0, I_K),   θ_n = softmax(logθ_n)
    x_n | θ_n ~ Multinomial(|x_n|, softmax(BatchNorm(β θ_n)))         β: (V, K), dropout on θ

The guide is the tutorial's encoder: two softplus layers with dropout, BatchNorm'd heads for
the location and log-variance of ``logθ_n``. Unlike the tutorial, the networks are attributes
of one module (no ``pyro.module``: pplvm keeps parameters in modules), the decoder folds
importance samples into its batch (for BatchNorm1d), and pplvm's trainer,
held-out evaluation and ``.train()`` / ``.eval()`` switching replace its training loop. The
card: ``examples/pyro_classics/prodlda.toml``; the corpus: ``data.source = "synthetic_topics"``.
"""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch
import torch.nn.functional as F
from torch import nn


class Encoder(nn.Module):
    """``(B, V)`` counts -> location and scale of ``logθ`` ``(B, K)``."""

    def __init__(self, vocab_size: int, num_topics: int, hidden: int, dropout: float):
        super().__init__()
        self.drop = nn.Dropout(dropout)
        self.fc1 = nn.Linear(vocab_size, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.fcmu = nn.Linear(hidden, num_topics)
        self.fclv = nn.Linear(hidden, num_topics)
        self.bnmu = nn.BatchNorm1d(num_topics, affine=False)  # the tutorial's: to avoid component collapse
        self.bnlv = nn.BatchNorm1d(num_topics, affine=False)

    def forward(self, inputs):
        h = F.softplus(self.fc1(inputs))
        h = F.softplus(self.fc2(h))
        h = self.drop(h)
        logtheta_loc = self.bnmu(self.fcmu(h))
        logtheta_logvar = self.bnlv(self.fclv(h))
        logtheta_scale = (0.5 * logtheta_logvar).exp()
        return logtheta_loc, logtheta_scale


class Decoder(nn.Module):
    """``θ`` ``(B, K)`` -> word probabilities ``(B, V)``."""

    def __init__(self, vocab_size: int, num_topics: int, dropout: float):
        super().__init__()
        self.beta = nn.Linear(num_topics, vocab_size, bias=False)
        self.bn = nn.BatchNorm1d(vocab_size, affine=False)
        self.drop = nn.Dropout(dropout)

    def forward(self, inputs):
        inputs = self.drop(inputs)
        # importance samples come as (S, B, K): folded into the batch for BatchNorm1d (in .eval()
        # it normalises each row by its running statistics, so the fold changes nothing)
        logits = self.bn(self.beta(inputs.reshape(-1, inputs.shape[-1])))
        return F.softmax(logits, dim=-1).reshape(*inputs.shape[:-1], -1)  # the product of experts


class ProdLDA(nn.Module):
    """``model(docs)`` / ``guide(docs)`` over ``docs`` ``(B, V)`` word counts."""

    def __init__(self, vocab_size: int, num_topics: int = 5, hidden: int = 100, dropout: float = 0.2):
        super().__init__()
        self.vocab_size, self.num_topics = vocab_size, num_topics
        self.encoder = Encoder(vocab_size, num_topics, hidden, dropout)
        self.decoder = Decoder(vocab_size, num_topics, dropout)

    def forward(self, docs):  # the model
        with pyro.plate("documents", docs.shape[0]):
            logtheta_loc = docs.new_zeros((docs.shape[0], self.num_topics))
            logtheta_scale = docs.new_ones((docs.shape[0], self.num_topics))
            logtheta = pyro.sample("logtheta", dist.Normal(logtheta_loc, logtheta_scale).to_event(1))
            theta = F.softmax(logtheta, -1)
            count_param = self.decoder(theta)
            # Multinomial's log_prob counts the words each document has: the bound is its support
            total_count = int(docs.sum(-1).max())
            pyro.sample("obs", dist.Multinomial(total_count, count_param), obs=docs)

    def guide(self, docs):
        with pyro.plate("documents", docs.shape[0]):
            logtheta_loc, logtheta_scale = self.encoder(docs)
            pyro.sample("logtheta", dist.Normal(logtheta_loc, logtheta_scale).to_event(1))

    def beta(self):
        """The topics' word weights ``(K, V)``, as the tutorial reads them off the decoder."""
        return self.decoder.beta.weight.cpu().detach().T


def multinomial_coefficient(docs: torch.Tensor) -> torch.Tensor:
    """``log (|x|! / Π_v x_v!)`` per document: what a count row's log-probability adds to its words'."""
    return torch.lgamma(docs.sum(-1) + 1) - torch.lgamma(docs + 1).sum(-1)


def unigram_log_likelihood(train: torch.Tensor, docs: torch.Tensor) -> torch.Tensor:
    """The baseline: every word of every document from one distribution, the training counts'
    frequencies (add-one smoothed), in closed form; ``log Multinomial(x_n | |x_n|, p)`` per document."""
    p = (train.sum(0) + 1) / (train.sum() + train.shape[-1])
    return multinomial_coefficient(docs) + (docs * p.log()).sum(-1)


def perplexity(log_likelihood: torch.Tensor, docs: torch.Tensor) -> float:
    """``exp(-Σ_n log p(w_n) / Σ_n |x_n|)``, ``log p(w_n)`` the document's words in order (its
    count row's log-probability less the multinomial coefficient)."""
    words = log_likelihood - multinomial_coefficient(docs)
    return float(torch.exp(-words.sum() / docs.sum()))
