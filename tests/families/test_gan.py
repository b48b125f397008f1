"""The GAN family and its adversarial update rule: the three losses against hand computation
(the gradient penalty against central finite differences), an interrupted-then-resumed fit
equal to an uninterrupted one, likelihood refusals, and latent interpolation."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import pplvm
from pplvm.evaluation.arviz import groups
from pplvm.objectives import make_update_rule
from pplvm.training.checkpoint import load_checkpoint
from pplvm.workflows import latent

CARD = {
    "name": "gan",
    "model": {
        "family": "gan",
        "latent_dim": 2,
        "hidden": [8],
        "likelihood": "gaussian",
        "discriminator_hidden": [8],
        "discriminator_activation": "tanh",
    },
    "guide": {"kind": "none"},
    "objective": {"name": "gan"},
    "data": {"source": "iris", "standardize": True},
    "training": {"epochs": 4, "lr": 0.01, "batch_size": 32, "progress": False, "checkpoint_every": 1},
}


def _run(loss="gan", **model):
    card = {**CARD, "model": {**CARD["model"], **model}, "objective": {"name": loss}}
    return pplvm.Run.from_card(card)


@pytest.mark.parametrize("loss", ["gan", "gan_hinge", "wgan_gp"])
def test_losses_equal_their_formulas(loss):
    run = _run(loss, gradient_penalty=3.0)
    rule = make_update_rule(run.model, run.guide, run.card)
    real, fake = run.dataset.train[:6], torch.randn(6, 4, generator=torch.Generator().manual_seed(0))
    critic = run.model.critic
    torch.manual_seed(5)
    got = rule.discriminator_loss(real, fake).item()
    if loss == "gan":
        want = F.softplus(-critic(real)).mean() + F.softplus(critic(fake)).mean()
        g_want = F.softplus(-critic(fake)).mean()
    elif loss == "gan_hinge":
        want = F.relu(1 - critic(real)).mean() + F.relu(1 + critic(fake)).mean()
        g_want = -critic(fake).mean()
    else:
        torch.manual_seed(5)
        eps = torch.rand(6, 1)
        mixed = eps * real + (1 - eps) * fake
        h = 1e-3  # central differences of a float32 tanh network: error ~h² + round-off/h ≈ 1e-4
        grad = torch.stack([(critic(mixed + h * e) - critic(mixed - h * e)) / (2 * h) for e in torch.eye(4)], -1)
        want = critic(fake).mean() - critic(real).mean() + 3.0 * (grad.norm(dim=-1) - 1).square().mean()
        g_want = -critic(fake).mean()
    assert got == pytest.approx(want.item(), abs=2e-3 if loss == "wgan_gp" else 1e-6)
    assert rule.generator_loss(fake).item() == pytest.approx(g_want.item(), abs=1e-6)


def test_resumed_fit_equals_uninterrupted(tmp_path):
    """Two optimisers and the RNG travel in the checkpoint: 2 + 2 epochs give bit-identical
    losses and final parameters to 4 (a constant lr: a decaying schedule depends on the budget)."""
    card = {**CARD, "objective": {"name": "wgan_gp"}}
    full = pplvm.fit(card, tmp_path / "full")
    pplvm.fit({**card, "training": {**card["training"], "epochs": 2}}, tmp_path / "half")
    resumed = pplvm.Run.resume(tmp_path / "half", epochs=4)
    for key in ("discriminator_loss", "generator_loss", "valid_loss"):
        assert [h[key] for h in full.history] == [h[key] for h in resumed.history], key
    last = {name: load_checkpoint(tmp_path / name / "checkpoint.pt")["model"] for name in ("full", "half")}
    for name, value in last["full"].items():
        assert torch.equal(value, last["half"][name]), name


def test_likelihood_is_refused_and_samples_and_latent_paths_work(tmp_path):
    run = pplvm.fit(CARD, tmp_path / "run")
    x = run.transform.inverse(run.dataset.valid)
    with pytest.raises(pplvm.IncompatibleError, match="implicit density"):
        run.log_likelihood(x)
    with pytest.raises(pplvm.IncompatibleError, match="implicit density"):
        run.evaluate(x)
    assert all("valid_log_likelihood" not in h and "valid_loss" in h for h in run.history)  # MMD² to held-out data
    assert "log_likelihood" not in groups(pplvm.load(tmp_path / "run").to_arviz())  # arviz 0.x and 1.x
    z = torch.randn(2, 2, generator=torch.Generator().manual_seed(0))
    path = latent.interpolate_latent(run, z[0], z[1], steps=5)
    torch.testing.assert_close(path[0], latent.decode(run, z[:1])[0])
    torch.testing.assert_close(path[-1], latent.decode(run, z[1:])[0])
    row = latent.traverse_latent(run, z[0], dim=1, values=torch.linspace(-2, 2, 3))
    assert row.shape == (3, 4)


def test_shipped_card_fits(tmp_path):
    """models/gan_digits.toml runs end to end (one epoch): samples, a grid, a held-out MMD²."""
    from pathlib import Path

    card = Path(__file__).parents[2] / "models" / "gan_digits.toml"
    run = pplvm.fit(
        card,
        out=tmp_path / "run",
        overrides={"training.epochs": 1, "training.progress": False, "model.mmd_samples": 64, "evaluation.draws": 2},
    )
    assert (tmp_path / "run" / "samples.png").is_file()
    assert 0 <= run.history[-1]["valid_loss"] < 2  # MMD² with a Gaussian kernel lies in [0, 2] (up to noise)
    x = run.sample(8)
    assert x.shape == (8, 64) and float(x.min()) >= 0 and float(x.max()) <= 1
