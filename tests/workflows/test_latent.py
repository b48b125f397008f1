"""Latent tools on a VAE trained on a toy structured data set: four binary 4x4 prototypes
(3% of pixels flipped) whose top half determines the bottom half."""

from __future__ import annotations

import pyro
import pytest
import torch
from matplotlib.figure import Figure

import pplvm
from pplvm.workflows import latent

PROTOTYPES = torch.tensor(
    [
        [1, 1, 0, 0, 1, 1, 0, 0, 1, 1, 0, 0, 1, 1, 0, 0],
        [0, 0, 1, 1, 0, 0, 1, 1, 0, 0, 1, 1, 0, 0, 1, 1],
        [1, 1, 1, 1, 0, 0, 0, 0, 1, 1, 1, 1, 0, 0, 0, 0],
        [0, 1, 0, 1, 1, 0, 1, 0, 1, 0, 1, 0, 0, 1, 0, 1],
    ],
    dtype=torch.float32,
)


def toy(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(4, (n,), generator=g)
    flips = torch.rand(n, 16, generator=g) < 0.03
    return (PROTOTYPES[labels] + flips).remainder(2), labels


@pytest.fixture(scope="module")
def run():
    pyro.set_rng_seed(0)
    x, _ = toy(400, 0)
    card = {
        "model": {"family": "vae", "latent_dim": 2, "hidden": [32]},
        "guide": {"kind": "amortized"},
        "objective": {"name": "meanfield"},
        "data": {"source": "file", "path": "unused.npy", "valid_fraction": 0.0},
        "training": {"epochs": 250, "lr": 0.02, "progress": False, "seed": 0},
    }
    return pplvm.fit(card, data=x)


def test_inpainting_beats_mean_imputation(run):
    """Bottom halves hidden: the VAE's fill (iterated or conditioned on the observed pixels) is
    much closer to the truth than the column means of the observed data."""
    x, _ = toy(200, 1)
    observed = torch.ones_like(x, dtype=torch.bool)
    observed[:, 8:] = False
    truth = x[:, 8:]
    mean_fill = x[:, 8:].mean(0).expand_as(truth)  # mean imputation (given every row's bottom, generously)
    baseline = (mean_fill - truth).pow(2).mean()
    for method in ("iterate", "map"):
        filled = latent.impute(run, torch.where(observed, x, torch.nan), observed, method=method)
        assert torch.equal(filled[:, :8], x[:, :8])  # observed pixels come back untouched
        error = (filled[:, 8:] - truth).pow(2).mean()
        assert error < 0.25 * baseline, (method, float(error), float(baseline))


def test_interpolation_traversal_and_arithmetic_agree_with_reconstructions(run):
    x, _ = toy(3, 2)
    a, b, c = x[:1], x[1:2], x[2:3]
    recon = latent.reconstruct(run, x)
    path = latent.interpolate(run, a, b, steps=5)
    assert path.shape == (5, 16)
    torch.testing.assert_close(path[0], recon[0])
    torch.testing.assert_close(path[-1], recon[1])
    loc, scale = latent.encode(run, x)
    assert loc.shape == scale.shape == (3, 2) and (scale > 0).all()
    row = latent.traverse(run, a, dim=1, values=torch.stack([loc[0, 1] - 1, loc[0, 1], loc[0, 1] + 1]))
    torch.testing.assert_close(row[1], recon[0])
    torch.testing.assert_close(latent.arithmetic(run, a, a, c)[0], recon[2])  # z_a - z_a + z_c = z_c


def test_reconstructions_recover_the_prototype(run):
    x, labels = toy(100, 3)
    recon = latent.reconstruct(run, x)
    assert ((recon > 0.5).float() == PROTOTYPES[labels]).float().mean() > 0.95


def test_anomaly_scores(run):
    """-ELBO by the tool equals the mean-field ELBO per datum (within Monte-Carlo error), the
    importance-sampled -log p(x) is below it on average, and noise far from the prototypes
    scores above the data: ranked above them in at least 99% of (noise, datum) pairs (the
    AUROC; a datum whose flipped pixel the decoder is sure of can outscore the mildest noise
    row), and three times higher on average."""
    x, _ = toy(100, 4)
    elbo_score = latent.anomaly_score(run, x, num_samples=64)
    pyro.set_rng_seed(0)
    loss = pyro.infer.TraceMeanField_ELBO(num_particles=64, vectorize_particles=True, max_plate_nesting=1).loss(
        run.model, run.guide, x
    )
    assert float(elbo_score.mean()) == pytest.approx(loss / len(x), abs=0.05)
    nll = latent.anomaly_score(run, x, kind="nll")
    assert float(nll.mean()) < float(elbo_score.mean())
    noise = (torch.rand(50, 16, generator=torch.Generator().manual_seed(5)) < 0.5).float()
    noise_score = latent.anomaly_score(run, noise)
    far = torch.cdist(noise, PROTOTYPES, p=1).min(-1).values >= 4  # >= 4 pixels from every prototype
    auroc = (noise_score[far][:, None] > elbo_score[None, :]).float().mean()
    assert auroc >= 0.99
    assert noise_score.mean() > 3 * elbo_score.mean()


def test_latent_map_is_a_figure_with_one_point_per_datum(run):
    x, labels = toy(60, 6)
    fig = latent.latent_map(run, x, labels)
    assert isinstance(fig, Figure)
    (points,) = fig.axes[0].collections
    assert points.get_offsets().shape == (60, 2)


def test_conditional_model_tools_take_batches():
    from pplvm.data import Batch

    x, labels = toy(120, 7)
    card = {
        "model": {"family": "cvae", "classes": 4, "latent_dim": 2, "hidden": [16]},
        "guide": {"kind": "amortized"},
        "data": {"source": "file", "path": "unused.npy", "valid_fraction": 0.0},
        "training": {"epochs": 2, "progress": False},
    }
    run = pplvm.fit(card, data=Batch(x, y=labels))
    b = Batch(x[:4], y=labels[:4])
    assert latent.reconstruct(run, b).shape == (4, 16)
    assert latent.interpolate(run, b[:1], b[1:2], 3).shape == (3, 16)
    observed = torch.rand(4, 16, generator=torch.Generator().manual_seed(0)) < 0.5
    assert torch.equal(latent.impute(run, b, observed)[observed], x[:4][observed])
    assert latent.decode(run, torch.zeros(2, 2), y=[0, 3]).shape == (2, 16)
    with pytest.raises(pplvm.PplvmError, match="decode: this model conditions on y"):
        latent.decode(run, torch.zeros(2, 2))
