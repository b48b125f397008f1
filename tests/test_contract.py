"""The contract every family passes, parametrised over the cards in tests/cases.py.

No per-family code here: a family joins by adding a case. Checks: the card round-trips,
model and guide agree on their sites, every log-prob is finite, sampling and log-likelihood
shapes (over batches of parameter draws (), (5,), (2, 4)), fit/save/load round-trip, arviz
export, and a clear error for non-finite data.
"""

from __future__ import annotations

import math

import pytest
import torch
from cases import CASES
from pyro import poutine
from pyro.poutine.util import site_is_subsample

import pplvm
from pplvm.config import card_from_dict, card_to_dict, dump_card, load_card
from pplvm.data import values
from pplvm.evaluation.arviz import groups
from pplvm.run import _fit_input


@pytest.fixture(params=CASES)
def run(request):
    return pplvm.Run.from_card(request.param)


def seen(run, n=None, training=True):
    """The first ``n`` training data as the model sees them (after any per-batch augmentation,
    e.g. a dynamic binarization draw); ``training``: as the trainer feeds them (numbered rows
    for a guide with per-datum parameters), else as the family takes data."""
    d = run.dataset
    x = _fit_input(run.traits, d.train) if training else d.train
    x = x if n is None else x[:n]
    return x if d.augment is None else d.augment(x, torch.Generator().manual_seed(0))


def test_card_round_trips(run, tmp_path):
    dump_card(run.card, tmp_path / "card.toml")
    assert load_card(tmp_path / "card.toml") == run.card
    assert card_from_dict(card_to_dict(run.card)) == run.card


def test_model_and_guide_agree_and_are_finite(run):
    x = seen(run, 16)
    guide_tr = poutine.trace(run.guide).get_trace(x, num_data=len(run.dataset.train))
    model_tr = poutine.trace(poutine.replay(run.model, trace=guide_tr)).get_trace(x, num_data=len(run.dataset.train))
    guide_sites = {n for n, s in guide_tr.nodes.items() if _latent(s)}
    model_latents = {n for n, s in model_tr.nodes.items() if _latent(s)}
    assert set(run.model.global_sites) <= guide_sites
    assert guide_sites <= model_latents
    assert model_latents - guide_sites <= set(run.model.local_sites)  # only locals may be left to enumeration
    model_tr.compute_log_prob()
    for name, site in model_tr.nodes.items():
        implicit = name == run.model.observed_site and run.model.likelihood == "none"  # a point mass at G(z)
        if site["type"] == "sample" and not site_is_subsample(site) and not implicit:
            assert torch.isfinite(site["log_prob"]).all(), name
    assert model_tr.nodes[run.model.observed_site]["is_observed"]


def _latent(site) -> bool:
    return (
        site["type"] == "sample"
        and not site["is_observed"]
        and not site_is_subsample(site)
        and not site["infer"].get("is_auxiliary")
    )


def test_update_rule_step_is_finite_and_moves_the_parameters(run):
    """One step of the card's update rule on the training data: a finite loss, and the
    parameters it updates change and stay finite."""
    x = seen(run)
    run.rule.setup(x, len(x))
    before = [p.detach().clone() for p in run.rule.parameters()]
    loss = run.rule.step(x, len(x), 0.0)
    assert loss.dim() == 0 and math.isfinite(float(loss))
    after = list(run.rule.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(before, after))
    assert all(torch.isfinite(p).all() for p in after)


@pytest.mark.parametrize("batch_shape", [(), (5,), (2, 4)])
def test_log_likelihood_shapes_and_batching(run, batch_shape):
    """``log_likelihood(x, params)`` is ``(*S, N)`` for parameters batched as ``S``; a family
    without global latents has no parameter batch and gives ``(N,)``. Estimates (non-exact
    families) are compared under the same seed."""
    x = seen(run, 10, training=False)
    n = len(x)
    if run.model.likelihood == "none":  # an implicit density refuses, in one line that says why
        with pytest.raises(pplvm.IncompatibleError, match="implicit density"):
            run._model_log_likelihood(x, run.draws(1))
        return
    num = max(1, math.prod(batch_shape))
    flat = run.draws(num, seed=1)
    params = {k: v.reshape((*batch_shape, *v.shape[1:])) for k, v in flat.items()}  # scalar sites too
    with poutine.seed(rng_seed=0):
        ll = run._model_log_likelihood(x, params)
    s = batch_shape if run.model.global_sites else ()
    assert ll.shape == (*s, n)
    assert torch.isfinite(ll).all()
    # each batch element equals the unbatched call with that element's parameters
    ll_flat = ll.reshape(-1, n)
    for i in (0, num - 1):
        with poutine.seed(rng_seed=0):
            one = run._model_log_likelihood(x, {k: v[i] for k, v in flat.items()})
        torch.testing.assert_close(ll_flat[i if s else 0], one, rtol=1e-5, atol=1e-5)


def test_sample_shapes(run):
    new = run.sample(7, seed=3)
    assert len(new) == 7
    assert values(new).shape[-1] == run.model.dim
    assert torch.isfinite(values(new)).all()
    again = run.sample(7, seed=3)
    torch.testing.assert_close(values(new), values(again))  # explicit seeds reproduce


def test_fit_save_load_round_trip(run, tmp_path):
    run.fit(tmp_path / "run")
    for name in (
        "card.toml",
        "checkpoint.pt",
        "metrics.jsonl",
        "inference_data.nc",
        "loss.png",
        "model.png",
        "summary.txt",
    ):
        assert (tmp_path / "run" / name).is_file(), name
    loaded = pplvm.load(tmp_path / "run")
    x = run.transform.inverse(run.dataset.valid if run.dataset.valid is not None else run.dataset.train)
    torch.testing.assert_close(values(loaded.sample(5, seed=1)), values(run.sample(5, seed=1)))
    idata = loaded.to_arviz(posterior_predictive=False)
    if run.model.global_sites:  # a family without global latents has no posterior group
        assert set(run.model.global_sites) <= set(idata.posterior.data_vars)
    if run.model.likelihood == "none":  # an implicit density: no log-likelihood, no such group
        assert "log_likelihood" not in groups(idata)  # arviz 0.x and 1.x
        with pytest.raises(pplvm.IncompatibleError, match="implicit density"):
            loaded.log_likelihood(x)
        return
    torch.testing.assert_close(loaded.log_likelihood(x), run.log_likelihood(x))
    # a guide that declares its globals a point estimate exports one draw of one chain
    ev = run.card.evaluation
    assert idata.log_likelihood["obs"].shape[:2] == ((1, 1) if run.traits.point_estimate else (ev.chains, ev.draws))


def test_non_finite_data_is_refused(run):
    x = values(run.transform.inverse(run.dataset.train[:5])).clone()
    x.view(-1)[0] = float("nan")
    with pytest.raises(pplvm.DataError, match="NaN"):
        run.log_likelihood(
            x if not isinstance(run.dataset.train, pplvm.data.Batch) else run.dataset.train[:5].replace(x=x)
        )


def test_model_graph_matches_the_declared_sites(run):
    """Pyro's model inspection, which ``model.png`` draws, sees what the family declares: its
    observed site observed and in the data plate, its global sites outside the plate, its
    local sample sites inside (collapsed latents are no sample sites), and the figure has a node
    per site."""
    from pplvm.evaluation.graph import model_relations

    rel = model_relations(run.model, seen(run, 8, training=False))
    in_plate = set(rel["plate_sample"].get(run.model.plate_name, []))
    assert rel["observed"] == [run.model.observed_site] and run.model.observed_site in in_plate
    assert set(run.model.global_sites) <= set(rel["sample_dist"]) - in_plate
    if not run.model.collapsed:
        assert set(run.model.local_sites) <= in_plate
    fig = run.model_graph()
    labels = {t.get_text() for t in fig.axes[0].texts}
    assert set(rel["sample_dist"]) <= labels
