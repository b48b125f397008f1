"""Training recipes as card options: initialisation, the decoder's data-dependent output bias,
the encoder's scale, Adam's ε and β, and the IWAE paper's learning-rate schedule. Each is
checked against its definition in the papers (closed forms) or an independent reference (torch's
own Adam on the per-datum loss)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from pplvm import Run
from pplvm.config import TrainingConfig, card_from_dict
from pplvm.decoders import NetworkConfig, make_decoder, make_encoder
from pplvm.errors import CardError
from pplvm.training.rules import make_lr_scheduler, make_optimizer


def linear_layers(module):
    return [m for m in module.modules() if isinstance(m, torch.nn.Linear)]


def test_glorot_weights_have_the_uniform_bound_and_variance_and_zero_biases():
    torch.manual_seed(0)
    decoder = make_decoder(NetworkConfig(latent_dim=50, hidden=[400, 400]), 784)
    for layer in linear_layers(decoder):
        fan_out, fan_in = layer.weight.shape
        bound = math.sqrt(6 / (fan_in + fan_out))  # Glorot & Bengio (2010), eq. 16
        w = layer.weight.detach()
        assert w.abs().max() <= bound
        # Var U(-b, b) = b² / 3 = 2 / (fan_in + fan_out); over >= 20,000 weights the sample
        # variance is within 3% of it (its relative sd is sqrt(0.8 / n) < 0.7%)
        assert w.var().item() == pytest.approx(2 / (fan_in + fan_out), rel=0.03)
    # every bias is zero except the output layer's, which starts at the data (default data_mean,
    # set by the family from the training data, not by make_decoder)
    assert all(torch.count_nonzero(layer.bias) == 0 for layer in linear_layers(decoder))


def test_kaiming_and_torch_inits():
    torch.manual_seed(0)
    kaiming = make_decoder(NetworkConfig(latent_dim=50, hidden=[400, 400], init="kaiming"), 784)
    for layer in linear_layers(kaiming):
        fan_in = layer.weight.shape[1]
        assert layer.weight.var().item() == pytest.approx(2 / fan_in, rel=0.05)  # He et al. (2015)
    torch.manual_seed(0)
    plain = make_decoder(NetworkConfig(latent_dim=50, hidden=[400, 400], init="torch"), 784)
    for layer in linear_layers(plain):  # PyTorch's default: U(±1/sqrt(fan_in)) weights and biases
        bound = 1 / math.sqrt(layer.weight.shape[1])
        assert layer.weight.abs().max() <= bound and layer.bias.abs().max() <= bound
        assert torch.count_nonzero(layer.bias) == layer.bias.numel()
    encoder = make_encoder(NetworkConfig(latent_dim=5, hidden=[30], init="glorot"), 20)
    assert all(torch.count_nonzero(layer.bias) == 0 for layer in linear_layers(encoder))


def test_the_output_bias_starts_the_decoded_mean_at_the_data_mean():
    x = (torch.rand(300, 12, generator=torch.Generator().manual_seed(0)) < torch.linspace(0, 0.9, 12)).float()
    x[:, 0] = 0  # a pixel that is never on still gets a finite logit
    decoder = make_decoder(NetworkConfig(latent_dim=3, hidden=[8]), 12)
    assert decoder.start_at_mean(x)
    out = linear_layers(decoder)[-1]
    torch.nn.init.zeros_(out.weight)  # the bias alone decides the output
    mean = decoder(torch.randn(5, 3)).mean
    expected = (x.sum(0) + 0.5) / (len(x) + 1)  # the Krichevsky–Trofimov estimate
    torch.testing.assert_close(mean, expected.expand(5, 12), rtol=1e-5, atol=1e-7)
    assert torch.isfinite(out.bias).all() and out.bias[0].item() == pytest.approx(math.log(0.5 / 300.5), rel=1e-5)

    y = torch.randn(200, 6) * 3 + torch.arange(6.0)
    for scale in ("learned", "amortized", "fixed"):
        gauss = make_decoder(NetworkConfig(latent_dim=3, hidden=[8], likelihood="gaussian", scale=scale), 6)
        assert gauss.start_at_mean(y)
        torch.nn.init.zeros_(linear_layers(gauss)[-1].weight)
        torch.testing.assert_close(gauss(torch.randn(4, 3)).mean, y.mean(0).expand(4, 6))
    conv = make_decoder(NetworkConfig(latent_dim=3, architecture="conv", channels=2), 64)
    assert not conv.start_at_mean(torch.rand(10, 64).round())  # a per-channel bias: left as built


def test_a_fit_starts_from_the_training_splits_mean_unless_told_zero():
    rng = np.random.default_rng(0)
    data = (rng.random((120, 16)) < np.linspace(0.05, 0.95, 16)).astype(np.float32)
    card = {
        "model": {"family": "vae", "latent_dim": 2, "hidden": [8]},
        "guide": {"kind": "amortized"},
        "objective": {"name": "meanfield"},
        "data": {"source": "file", "path": "unused.npy", "valid_fraction": 0.25},
        "training": {"epochs": 1, "progress": False},
    }
    run = Run.from_card(card, data=data)
    train = run.dataset.train
    assert len(train) == 90  # the held-out quarter does not enter the start
    expected = ((train.sum(0) + 0.5) / (len(train) + 1)).logit()
    torch.testing.assert_close(run.model.decoder.network[-1].bias.detach(), expected)
    zero = Run.from_card({**card, "model": {**card["model"], "output_bias": "zero"}}, data=data)
    assert torch.count_nonzero(zero.model.decoder.network[-1].bias) == 0


def test_the_exp_encoder_scale_is_the_floor_plus_exp_of_the_raw_output():
    torch.manual_seed(0)
    cfg = NetworkConfig(latent_dim=4, hidden=[10], encoder_scale="exp", min_scale=1e-3)
    encoder = make_encoder(cfg, 6)
    x = torch.randn(7, 6)
    raw = encoder.head(x)[..., 4:]
    _, scale = encoder(x)
    torch.testing.assert_close(scale, 1e-3 + raw.exp())


def test_adam_eps_is_per_datum_the_steps_equal_adam_on_the_mean_loss():
    """pplvm's losses are full-data estimates (N times a per-datum loss). With ``loss_scale = N``
    its Adam takes exactly the steps torch's Adam takes on the per-datum loss with the card's ε
    and β: the reference a paper's recipe is written for."""
    torch.manual_seed(0)
    target = torch.randn(50, 3)
    start = torch.randn(3)
    n = 10_000
    config = TrainingConfig(lr=0.05, eps=1e-2, betas=[0.5, 0.9])  # a large ε, so that its scale matters
    ours = start.clone().requires_grad_(True)
    ref = start.clone().requires_grad_(True)
    opt_ours = make_optimizer([ours], config, loss_scale=n)
    opt_ref = torch.optim.Adam([ref], lr=0.05, eps=1e-2, betas=(0.5, 0.9))
    unscaled = start.clone().requires_grad_(True)
    opt_unscaled = make_optimizer([unscaled], config)  # ε applied to the full-data gradient: differs
    for _ in range(20):
        for p, opt, scale in ((ours, opt_ours, n), (ref, opt_ref, 1), (unscaled, opt_unscaled, n)):
            opt.zero_grad()
            (scale * (p - target).square().sum(-1).mean()).backward()
            opt.step()
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-6)
    assert (unscaled - ref).abs().max() > 1e-3


def test_the_iwae_schedule_is_3_to_the_i_epochs_at_lr_times_10_to_the_minus_i_over_7():
    # Burda et al. 2016, section 5: "for 3^i epochs with learning rate 0.001 * 10^(-i/7), for i = 0..7"
    expected = [0.001 * 10 ** (-i / 7) for i in range(8) for _ in range(3**i)]
    assert len(expected) == 3280
    param = torch.zeros(1, requires_grad=True)
    config = TrainingConfig(lr=0.001, lr_schedule="iwae", epochs=3280)
    opt = make_optimizer([param], config)
    sched = make_lr_scheduler(opt, config)
    seen = []
    for _ in range(3290):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()  # an epoch's steps, then the epoch's schedule step (as the trainer does)
        sched.step()
    np.testing.assert_allclose(seen[:3280], expected, rtol=1e-12)
    assert seen[3280:] == [seen[3279]] * 10  # past the schedule: its last rate


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("training.betas", [0.9], "training.betas: List should have at least 2 items"),
        ("training.betas", [0.9, 1.0], "training.betas.1: expected less than 1"),
        ("training.eps", 0, "training.eps: expected greater than 0"),
        ("model.init", "xavier", "model.init: expected 'glorot', 'kaiming' or 'torch'"),
        ("model.output_bias", "mean", "model.output_bias: expected 'data_mean' or 'zero'"),
    ],
)
def test_recipe_fields_are_checked_by_name(key, value, message):
    card = {"model": {"family": "vae"}, "data": {"source": "digits"}}
    with pytest.raises(CardError, match=message.replace("(", r"\(").replace(")", r"\)")):
        card_from_dict(card, {key: value})
