"""``training.restarts``: the kept fit is the best of the separate fits with the restarts' seeds
(the oracle: those fits, one by one), the batched EM pass gives each restart what its own fit
gives, the kept run resumes like any run, and bad settings are refused in one line."""

from __future__ import annotations

import logging

import pytest
import torch

import pplvm
from pplvm.config import card_from_dict
from pplvm.errors import CardError
from pplvm.facade import restarts
from pplvm.facade.build import _fit_input

EVAL = {"draws": 4, "chains": 1, "max_rows": 20}


def gmm_card(seed: int = 0, restarts: int = 1, **training) -> dict:
    """Four overlapping clusters and random starts: the seeds 0, 1, 2 end in different optima
    after 8 EM iterations (final train_loss 2.739, 2.710, 2.917: seed 1 is the best)."""
    return {
        "model": {"family": "gmm", "components": 4, "init": "random", "covariance": "full"},
        "guide": {"kind": "map"},
        "objective": {"name": "em", "em_estimate": "ml"},
        "data": {
            "source": "synthetic_gmm",
            "n": 80,
            "dim": 2,
            "components": 4,
            "separation": 2.0,
            "valid_fraction": 0.2,
        },
        "training": {"epochs": 8, "progress": False, "seed": seed, "restarts": restarts, **training},
        "evaluation": EVAL,
    }


def hmm_card(restarts: int, estimate: str, **objective) -> dict:
    return {
        "model": {"family": "hmm", "states": 3, "init": "random"},
        "guide": {"kind": "map"},
        "objective": {"name": "em", "em_estimate": estimate, **objective},
        "data": {"source": "synthetic_hmm", "n": 10, "min_length": 5, "max_length": 12, "states": 3, "dim": 2},
        "training": {"epochs": 12, "progress": False, "restarts": restarts},
        "evaluation": EVAL,
    }


def test_the_kept_fit_is_the_best_of_the_separate_fits_with_its_seeds(caplog):
    separate = [pplvm.Run.from_card(gmm_card(seed)).fit() for seed in range(3)]
    losses = [run.history[-1]["train_loss"] for run in separate]
    best = min(range(3), key=losses.__getitem__)
    assert best != 0  # the kept restart is not the card's own seed: the run takes another start
    with caplog.at_level(logging.INFO, logger="pplvm"):
        kept = pplvm.Run.from_card(gmm_card(restarts=3)).fit()
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("training.restarts")]
    assert len(lines) == 3 and [("(kept)" in line) for line in lines] == [i == best for i in range(3)]
    assert all(f"training.seed = {i}" in line for i, line in enumerate(lines))
    assert kept.seed == best and kept.card.training.seed == 0  # card.toml keeps the card as written
    # the kept run is the winning seed's own fit: its steps read off the batched pass, whose float32
    # sums run in another order (restarts batched, rows unshuffled): equal to ~1e-6 relative
    assert_same_fit(kept, separate[best], rel=1e-5)


def assert_same_fit(run, other, rel: float) -> None:
    """Every epoch's metrics and the final parameters of two runs, to ``rel``."""
    assert [m.keys() for m in run.history] == [m.keys() for m in other.history]
    for mine, theirs in zip(run.history, other.history):
        assert mine == pytest.approx(theirs, rel=rel)
    for name, value in other.params().items():
        assert torch.allclose(run.params()[name], value, rtol=rel, atol=rel)


def test_restarts_from_the_default_start_explore_and_the_best_is_kept(caplog):
    """``model.init`` left at ``"auto"``: one fit starts from k-means, restarts from k-means++
    seeding, which the seed moves (every restart's starting means differ) and which ends in
    different optima; the kept run is the lowest final loss, the same fit as that seed's own
    with ``model.init = "kmeans++"`` (the oracle, fitted separately)."""
    card = gmm_card(restarts=4)
    del card["model"]["init"]
    assert pplvm.Run.from_card(gmm_card()).model.config.init == "random"  # (as written: no "auto")
    single = {**card, "training": {**card["training"], "restarts": 1}}
    assert pplvm.Run.from_card(single).model.config.init == "kmeans"
    run = pplvm.Run.from_card(card)
    assert run.model.config.init == "kmeans++" and run.card.model.init == "auto"  # the card stays as written
    train = _fit_input(run.traits, run.dataset.train)
    starts = run.rule.restarts(train, range(4), run.card.training, own=0).starts["locs"]  # (4, K, D)
    assert all(not torch.allclose(starts[i], starts[j]) for i in range(4) for j in range(i))
    with caplog.at_level(logging.INFO, logger="pplvm"):
        kept = run.fit()
    losses = [
        float(r.getMessage().split("train_loss ")[1].split()[0]) for r in caplog.records if "restart " in r.getMessage()
    ]
    assert len(losses) == 4 and len(set(round(v, 3) for v in losses)) > 1  # different optima
    best = min(range(4), key=losses.__getitem__)
    alone = {
        **card,
        "model": {**card["model"], "init": "kmeans++"},
        "training": {**card["training"], "restarts": 1, "seed": best},
    }
    assert kept.seed == best
    assert_same_fit(kept, pplvm.Run.from_card(alone).fit(), rel=1e-5)


def test_restarts_that_cannot_be_batched_run_one_after_another(caplog):
    """Early stopping follows held-out data restart by restart (``training.patience``): each
    restart is a fit of its own, and the kept one is fitted again; the oracle is the same fits
    made separately, which the kept run equals exactly."""
    separate = [pplvm.Run.from_card(gmm_card(seed, patience=50)).fit() for seed in range(2)]
    losses = [run.history[-1]["train_loss"] for run in separate]
    with caplog.at_level(logging.INFO, logger="pplvm"):
        kept = pplvm.Run.from_card(gmm_card(restarts=2, patience=50)).fit()
    assert caplog.text.count("one after another") == 2
    best = min(range(2), key=losses.__getitem__)
    assert kept.seed == best and kept.history == separate[best].history
    for name, value in separate[best].params().items():
        assert torch.equal(kept.params()[name], value)


@pytest.mark.parametrize(
    "card",
    [gmm_card(restarts=3), hmm_card(3, "map"), hmm_card(4, "ml", em_tol=1e-3)],
    ids=["gmm-full-ml", "hmm-map", "hmm-ml-converging"],
)
def test_the_batched_pass_gives_each_restart_what_its_own_fit_gives(card):
    """The batched pass and the restarts' own fits, one after another, on the same seeds."""
    run = pplvm.Run.from_card(card)
    train = _fit_input(run.traits, run.dataset.train)
    seeds = list(range(card["training"]["restarts"]))
    batched, _ = restarts._batched(run, train, seeds)  # (None: full-batch EM of a mixture / an HMM runs batched)
    one_by_one = restarts._one_by_one(run, train, seeds)
    # float32 sums in another order (the batched pass and a fit's shuffled rows) over a few
    # EM iterations: agreement to ~1e-6 relative
    assert batched == pytest.approx(one_by_one, rel=1e-5)
    assert len(set(round(v, 3) for v in one_by_one)) > 1  # the restarts really differ


def test_em_tol_stops_where_the_loss_first_improves_by_less():
    """Oracle: the fit without em_tol, whose history shows where each iteration's improvement falls below it."""
    full = pplvm.Run.from_card(hmm_card(1, "ml")).fit().history
    drops = [a["train_loss"] - b["train_loss"] for a, b in zip(full, full[1:])]
    tol = sorted(drops)[len(drops) // 2]  # a tolerance met somewhere inside the run
    stop = next(i for i, d in enumerate(drops) if d < tol) + 2  # epochs run, the converged one included
    short = pplvm.Run.from_card(hmm_card(1, "ml", em_tol=tol)).fit()
    assert len(short.history) == stop < len(full)
    assert [m["train_loss"] for m in short.history] == [m["train_loss"] for m in full[:stop]]
    assert short.trainer.state.stopped.startswith("converged")


class HardStop(BaseException):
    """Nothing after it is written, as after SIGKILL."""


def test_the_kept_run_resumes_as_it_would_have_gone_on(tmp_path):
    spec = gmm_card(restarts=2, checkpoint_every=1)
    full = pplvm.Run.from_card(spec).fit()

    def stop(trainer, metrics):
        if metrics["epoch"] == 4:
            raise HardStop

    with pytest.raises(HardStop):
        pplvm.Run.from_card(spec).fit(tmp_path / "run", callbacks=[stop])
    resumed = pplvm.Run.resume(tmp_path / "run")  # from epoch 4's checkpoint, by EM steps of its own
    assert_same_fit(resumed, full, rel=1e-5)
    assert torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)["trainer"]["epoch"] == 8


@pytest.mark.parametrize(
    "override, words",
    [
        ({"training.restarts": 0}, "training.restarts"),
        ({"training.restarts": 2.5}, "training.restarts"),
    ],
)
def test_a_bad_restarts_value_is_one_line_naming_it(override, words):
    with pytest.raises(CardError) as err:
        card_from_dict(gmm_card(), override)
    assert words in str(err.value) and "\n" not in str(err.value)


def test_restarts_of_a_deterministic_start_are_refused_in_one_line():
    card = {
        "model": {"family": "ppca", "latent_dim": 1},
        "guide": {"kind": "exact"},
        "objective": {"name": "elbo"},
        "data": {"source": "synthetic_gmm", "n": 30, "dim": 3},
        "training": {"epochs": 1, "progress": False, "restarts": 2},
    }
    with pytest.raises(CardError, match=r"^training.restarts = 2: model.init = 'pca' starts every restart") as err:
        pplvm.Run.from_card(card).fit()
    assert "\n" not in str(err.value)
