"""Decoders and encoders: log-likelihoods against torch.distributions by hand, shapes over batch
grids, the IWAE architecture, floors and input checks."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from pplvm.decoders import (
    BernoulliLikelihood,
    GaussianLikelihood,
    NetworkConfig,
    make_decoder,
    make_encoder,
)
from pplvm.errors import CardError, DataError

BATCH_SHAPES = [(), (5,), (2, 4)]


@pytest.mark.parametrize("batch", BATCH_SHAPES)
def test_bernoulli_log_prob_is_the_sum_of_pixel_log_probs(batch):
    raw = torch.randn(*batch, 6)
    x = torch.bernoulli(torch.full((*batch, 6), 0.5))
    p = torch.sigmoid(raw)
    by_hand = (x * p.log() + (1 - x) * (1 - p).log()).sum(-1)
    d = BernoulliLikelihood(6)(raw)
    assert d.batch_shape == batch and d.event_shape == (6,)
    torch.testing.assert_close(d.log_prob(x), by_hand, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(d.mean, p)


@pytest.mark.parametrize("batch", BATCH_SHAPES)
@pytest.mark.parametrize("kind", ["fixed", "learned", "amortized"])
def test_gaussian_log_prob_matches_torch_normal(batch, kind):
    dim, floor = 5, 1e-3
    head = GaussianLikelihood(dim, kind, fixed_scale=0.3, min_scale=floor)
    raw = torch.randn(*batch, head.num_outputs * dim)
    x = torch.randn(*batch, dim)
    if kind == "amortized":
        loc, scale = raw[..., :dim], floor + F.softplus(raw[..., dim:])
    elif kind == "learned":  # starts at σ = fixed_scale
        loc, scale = raw, torch.full_like(raw, 0.3)
    else:
        loc, scale = raw, torch.full_like(raw, 0.3)
    by_hand = torch.distributions.Normal(loc, scale).log_prob(x).sum(-1)
    d = head(raw)
    assert d.batch_shape == batch and d.event_shape == (dim,)
    torch.testing.assert_close(d.log_prob(x), by_hand, rtol=1e-5, atol=1e-5)


def test_learned_gaussian_scale_is_a_floored_softplus_parameter():
    head = GaussianLikelihood(3, "learned", fixed_scale=0.5, min_scale=0.01)
    assert [n for n, _ in head.named_parameters()] == ["raw_scale_unconstrained"]  # one σ per pixel, trained
    with torch.no_grad():
        head.raw_scale = torch.tensor([-50.0, 0.0, 50.0])
    scale = head(torch.zeros(3)).base_dist.scale
    torch.testing.assert_close(scale, torch.tensor([0.01, 0.01 + math.log(2.0), 50.01]), rtol=1e-5, atol=1e-6)


def test_bernoulli_head_rejects_non_binary_and_nan_data_naming_the_field():
    head = BernoulliLikelihood(3)
    head.check(torch.tensor([[0.0, 1.0, 1.0]]), "x")
    with pytest.raises(DataError, match=r"x: a Bernoulli likelihood needs binary data.*row 1 has 0.5"):
        head.check(torch.tensor([[0.0, 1.0, 1.0], [0.5, 1.0, 0.0]]), "x")
    with pytest.raises(DataError, match="x: a Bernoulli likelihood needs binary data.*row 0 has nan"):
        head.check(torch.tensor([[0.0, float("nan"), 1.0]]), "x")


@pytest.mark.parametrize(
    "arch,dim,shape",
    [("mlp", 64, None), ("conv", 64, None), ("conv", 784, None), ("mlp", 12, [3, 4]), ("conv", 128, [8, 16])],
)
@pytest.mark.parametrize("likelihood", ["bernoulli", "gaussian"])
def test_decoder_and_encoder_shapes(arch, dim, shape, likelihood):
    cfg = NetworkConfig(
        latent_dim=3,
        architecture=arch,
        hidden=[16, 8],
        image_shape=shape,
        channels=4,
        likelihood=likelihood,
        scale="amortized",
    )
    dec, enc = make_decoder(cfg, dim, side_dim=2), make_encoder(cfg, dim, side_dim=2)
    side = torch.randn(5, 2)
    for lead in [(), (7,)]:  # particles in front
        d = dec(torch.randn(*lead, 5, 3), side)
        assert d.batch_shape == (*lead, 5) and d.event_shape == (dim,)
    loc, scale = enc(torch.rand(5, dim), side)
    assert loc.shape == scale.shape == (5, 3) and (scale >= cfg.min_scale).all()


def test_default_network_is_the_iwae_papers():
    """784-200-200-50 with tanh and one stochastic layer (Burda et al. 2016, section 5.1)."""
    cfg = NetworkConfig()
    dec, enc = make_decoder(cfg, 784), make_encoder(cfg, 784)
    linear = [m for m in dec.network if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linear] == [(50, 200), (200, 200), (200, 784)]
    assert all(isinstance(m, torch.nn.Tanh) for m in dec.network if not isinstance(m, torch.nn.Linear))
    linear = [m for m in enc.head if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linear] == [(784, 200), (200, 200), (200, 100)]


def test_image_shape_errors_name_the_field():
    with pytest.raises(CardError, match="model.image_shape: .* 60 columns, which is not a square image"):
        make_decoder(NetworkConfig(architecture="conv"), 60)
    with pytest.raises(CardError, match="divisible by 4"):
        make_decoder(NetworkConfig(architecture="conv", image_shape=[6, 6]), 36)
    with pytest.raises(CardError, match="3 x 5"):
        make_encoder(NetworkConfig(architecture="conv", image_shape=[3, 5]), 16)
