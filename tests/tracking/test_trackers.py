"""TensorBoard and MLflow mirror a run: what they hold, read back with their own readers
(TensorBoard's EventAccumulator, MlflowClient), equals what the run directory holds
(``metrics.jsonl``, ``card.toml``), across a resume and a resume that repeats an epoch; the
trackers leave the fit as it is; only rank 0 mirrors; a missing package or an unknown name is one
line."""

from __future__ import annotations

import json
import shutil
import sys
import tomllib
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import tomli_w

import pplvm
from pplvm.cli import main
from pplvm.sections import TrainingConfig
from pplvm.tracking import TRACKERS, Tracking
from pplvm.training import _budget

#: a normalizing flow on 80 points of the two moons (64 to train on: four minibatches an epoch)
CARD = {
    "name": "mirrored",
    "model": {"family": "flow", "transforms": ["affine_coupling", "permute"], "repeat": 1, "hidden": [8]},
    "guide": {"kind": "none"},
    "data": {"source": "moons", "n": 80, "standardize": True},
    "training": {"epochs": 2, "lr": 0.01, "batch_size": 20, "progress": False},
    "evaluation": {"export": False},
}


def records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def numeric_keys(history: list[dict]) -> set[str]:
    return {k for r in history for k, v in r.items() if k != "step" and type(v) in (int, float)}


def flat(d: dict, prefix: str = "") -> dict[str, object]:
    out = {}
    for k, v in d.items():
        out.update(flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


@pytest.fixture(scope="module")
def mirrored(tmp_path_factory):
    """A fit with both loggers (2 epochs, through the CLI's --logger), a resume to 3 epochs, and
    a resume from the epoch-2 checkpoint again (as after a crash that lost epoch 3's checkpoint
    but not its mirrored records): the run directory, its card at fit time and its MLflow ids."""
    root = tmp_path_factory.mktemp("tracking")
    card, run = root / "card.toml", root / "runs" / "m"
    card.write_text(tomli_w.dumps(CARD))
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        fit = ["fit", str(card), "--out", str(run), "--quiet", "--logger", "tensorboard", "--logger", "mlflow"]
        assert main(fit) == 0
        first = json.loads((run / "mlflow.json").read_text())
        fitted_card = tomllib.loads((run / "card.toml").read_text())
        shutil.copy(run / "checkpoint.pt", root / "epoch2.pt")
        assert main(["resume", str(run), "--epochs", "3", "--json"]) == 0
        lost = records(run)[-1]
        shutil.copy(root / "epoch2.pt", run / "checkpoint.pt")
        assert main(["resume", str(run), "--epochs", "3", "--json"]) == 0
    return SimpleNamespace(run=run, first=first, card=fitted_card, lost=lost)


def test_tensorboard_scalars_are_the_records(mirrored):
    """Every numeric field of every record, at the record's step, as float32; the epoch the
    second resume repeated shows once (the earlier session's is purged); the card as text and
    the model's graph as an image."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    history = records(mirrored.run)
    assert [r["epoch"] for r in history] == [1, 2, 3] and [r["step"] for r in history] == [4, 8, 12]
    events = EventAccumulator(str(mirrored.run), size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    events.Reload()
    tags = events.Tags()
    assert set(tags["scalars"]) == numeric_keys(history) >= {"epoch", "train_loss", "valid_loss", "lr"}
    for key in tags["scalars"]:
        logged = [(e.step, e.value) for e in events.Scalars(key)]
        assert logged == [(r["step"], float(np.float32(r[key]))) for r in history if key in r], key
    assert "card/text_summary" in tags["tensors"]
    card_text = events.Tensors("card/text_summary")[0].tensor_proto.string_val[0].decode()
    assert 'name = "mirrored"' in card_text and "[training]" in card_text
    # the graph at the end of each session: the fit's (step 8) and the last resume's (12); the
    # first resume's went with the epoch it logged
    assert [e.step for e in events.Images("model")] == [8, 12]


def test_mlflow_run_holds_the_card_the_records_and_the_files(mirrored):
    """One MLflow run, continued by both resumes (the id mlflow.json keeps): its params are the
    card's fields as the fit wrote card.toml, its metrics the records (the repeated epoch twice,
    with equal values: a resume repeats an uninterrupted run), its artifacts the run's files."""
    from mlflow.tracking import MlflowClient

    run, history = mirrored.run, records(mirrored.run)
    assert json.loads((run / "mlflow.json").read_text()) == mirrored.first
    assert mirrored.first["tracking_uri"] == f"sqlite:///{(run.parent / 'mlflow.db').resolve()}"
    client = MlflowClient(tracking_uri=mirrored.first["tracking_uri"])
    experiment = client.get_experiment_by_name("mirrored")  # the card's name
    (found,) = client.search_runs([experiment.experiment_id])
    assert found.info.run_id == mirrored.first["run_id"] and found.info.status == "FINISHED"
    assert found.info.run_name == "m"
    expected = {k: v if isinstance(v, str) else json.dumps(v) for k, v in flat(mirrored.card).items()}
    assert found.data.params == expected
    assert (
        found.data.params["training.lr"] == "0.01"
        and found.data.params["logging.loggers"] == '["tensorboard", "mlflow"]'
    )
    for key in numeric_keys(history):
        logged = sorted((m.step, m.value) for m in client.get_metric_history(found.info.run_id, key))
        want = [(r["step"], float(r[key])) for r in history if key in r]
        assert logged == sorted(want + [(12, float(mirrored.lost[key]))]), key
        assert mirrored.lost[key] == history[-1][key]
    names = {a.path for a in client.list_artifacts(found.info.run_id)}
    assert {"card.toml", "metrics.jsonl", "model.png", "summary.txt", "checkpoint.pt", "mlflow.json"} <= names
    copy = Path(client.download_artifacts(found.info.run_id, "metrics.jsonl", str(run.parent)))
    assert copy.read_text() == (run / "metrics.jsonl").read_text()


def test_views_show_at_each_evaluation_and_leave_the_fit_as_it_is(tmp_path):
    """A diffusion on 8x8 digits, eval_every = 2 over 3 epochs: a grid of samples and the table
    of the bound's terms at epochs 2 and 3 (the last). The same fit without trackers, into the
    same directory (--overwrite: the mirror's files go with the old run), logs the same records
    bit for bit (the views' draws leave every RNG stream as it was)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    card = {
        "name": "views",
        "model": {"family": "diffusion", "steps": 4, "hidden": [8], "embed_dim": 4, "image_shape": [8, 8]},
        "guide": {"kind": "forward"},
        "objective": {"name": "diffusion"},
        "data": {"source": "digits", "valid_fraction": 0.05, "test_fraction": 0.85},
        "training": {"epochs": 3, "eval_every": 2, "batch_size": 256, "lr": 0.01, "progress": False},
        "evaluation": {"export": False},
    }
    out = tmp_path / "run"
    mirrored = records(pplvm.fit({**card, "logging": {"loggers": ["tensorboard"]}}, out).run_dir)
    steps = [r["step"] for r in mirrored]
    events = EventAccumulator(str(out), size_guidance={"images": 0, "tensors": 0})
    events.Reload()
    assert [e.step for e in events.Images("samples")] == steps[1:]
    terms = events.Tensors("likelihood_terms/text_summary")
    assert [e.step for e in terms] == steps[1:]
    table = terms[-1].tensor_proto.string_val[0].decode()
    assert "| L_0 |" in table and "| L_4 |" in table and "held-out rows" in table

    plain = pplvm.fit(card, out, overwrite=True)
    assert records(out) == plain.history == mirrored
    assert not list(out.glob("events.out.tfevents.*"))


def hooked_trainer(rank: int, where: Path, tracker=None) -> SimpleNamespace:
    """What the trainer's hook reads of a trainer, with a mirror of ``where`` (TensorBoard's)."""
    where.mkdir()
    tracker = tracker or TRACKERS["tensorboard"](TRACKERS["tensorboard"].Config())
    return SimpleNamespace(
        rank=rank,
        run_dir=where,
        config=TrainingConfig(epochs=3),
        state=SimpleNamespace(history=[]),
        tracking=Tracking([tracker], run_dir=where, name="hooked"),
    )


def test_only_rank_0_mirrors(tmp_path, monkeypatch):
    """The trainer's hook (where it writes metrics.jsonl) mirrors on rank 0 alone; and under
    torchrun the facade gives any other process no tracker at all."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    for rank in (0, 1):
        t = hooked_trainer(rank, tmp_path / f"rank{rank}")
        _budget.record(t, {"epoch": 1, "step": 4, "train_loss": 1.5})
        t.tracking.finish(t.run_dir, "FINISHED")
    assert not list((tmp_path / "rank1").iterdir())  # neither metrics.jsonl nor events
    events = EventAccumulator(str(tmp_path / "rank0"))
    events.Reload()
    assert [(e.step, e.value) for e in events.Scalars("train_loss")] == [(4, 1.5)]

    from pplvm.facade import tracking
    from pplvm.run import Run

    run = Run.from_card({**CARD, "logging": {"loggers": ["tensorboard"]}})
    assert tracking.tracking(run, tmp_path / "r")
    monkeypatch.setattr(tracking.distributed, "is_main", lambda: False)
    assert not tracking.tracking(run, tmp_path / "r")


def test_a_failing_tracker_is_dropped_with_one_warning_and_the_run_goes_on(mirrored, tmp_path, caplog):
    """Its MLflow run deleted while the fit trains (in the store of the fit above): the next
    records still reach metrics.jsonl; the tracker is dropped with one warning."""
    from mlflow.tracking import MlflowClient

    uri = mirrored.first["tracking_uri"]
    config = TRACKERS["mlflow"].Config(tracking_uri=uri, experiment="dropped")
    t = hooked_trainer(0, tmp_path / "run", TRACKERS["mlflow"](config))
    _budget.record(t, {"epoch": 1, "step": 4, "train_loss": 1.5})
    MlflowClient(uri).delete_run(json.loads((t.run_dir / "mlflow.json").read_text())["run_id"])
    _budget.record(t, {"epoch": 2, "step": 8, "train_loss": 1.25})
    _budget.record(t, {"epoch": 3, "step": 12, "train_loss": 1.0})
    assert [r["train_loss"] for r in records(t.run_dir)] == [1.5, 1.25, 1.0]
    assert not t.tracking
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING" and r.name == "pplvm"]
    assert len(warned) == 1 and warned[0].startswith("logger 'mlflow' stopped mirroring this run (log_metrics)")


@pytest.mark.parametrize("name", ["tensorboard", "mlflow"])
def test_a_missing_package_is_one_line_naming_the_extra(name, tmp_path, monkeypatch, capsys):
    """Before anything trains or is written: the run directory is not made."""
    monkeypatch.setitem(sys.modules, name, None)  # `import name` raises ImportError
    (tmp_path / "card.toml").write_text(tomli_w.dumps(CARD))
    assert main(["fit", str(tmp_path / "card.toml"), "--out", str(tmp_path / "r"), "--quiet", "--logger", name]) == 2
    assert capsys.readouterr().err.splitlines() == [
        f"pplvm: error: logging.loggers = {name!r} needs the {name!r} package: pip install 'pplvm[tracking]'"
    ]
    assert not (tmp_path / "r").exists()


def test_an_unknown_logger_is_one_line_naming_the_choices(tmp_path, capsys):
    (tmp_path / "card.toml").write_text(tomli_w.dumps(CARD))
    assert main(["fit", str(tmp_path / "card.toml"), "--out", str(tmp_path / "r"), "--logger", "wandb"]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line == "pplvm: error: invalid card: logging.loggers.0: expected 'mlflow' or 'tensorboard' (got 'wandb')"
