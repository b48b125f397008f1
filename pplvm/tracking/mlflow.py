"""MLflow: a run as an MLflow run, with the card's fields as params, the records as metrics and
the run directory's files as artifacts.

The store is local unless you say otherwise: ``logging.mlflow.tracking_uri``, else the
``MLFLOW_TRACKING_URI`` environment variable, else the SQLite file ``mlflow.db`` beside the run
directory (``runs/mlflow.db`` for ``--out runs/x``), so that every run under one folder lands in
one store; ``mlflow ui --backend-store-uri sqlite:///runs/mlflow.db`` shows them. The artifacts of
a SQLite store go beside its file, into ``mlartifacts/``. The experiment is
``logging.mlflow.experiment``, else the card's name; the MLflow run is named as the run directory.

Params are the card's fields as ``card.toml`` holds them, one per key path (``training.lr``),
strings as they are and other values as JSON (``0.01``, ``[0.9, 0.999]``, ``true``). Metrics are
each record's numbers at its optimiser ``step``. The run's id (and store) is kept in the run
directory's ``mlflow.json``, so ``pplvm resume`` continues the same MLflow run: its params keep the
values the run started with (MLflow does not change a param; the artifacts hold the new
``card.toml``), and epochs the resume repeats (those after the checkpoint) appear twice.

MLflow's usage telemetry is off (``MLFLOW_DISABLE_TELEMETRY=true`` unless set): pplvm reaches no
network on its own.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
import warnings
from pathlib import Path
from typing import Any, Iterator

from pydantic import Field

from ..rundir import write_atomic
from ..schema import Section
from .base import RunInfo, Status, Tracker, require

#: the file in the run directory that names the MLflow run it is mirrored to
RUN_FILE = "mlflow.json"
#: MLflow takes at most this many params per call
PARAMS_PER_CALL = 100


class MLflow(Tracker):
    """An ``mlflow.MlflowClient`` run (no global active run: two runs in one process are apart)."""

    name = "mlflow"
    needs = "mlflow"

    class Config(Section):
        tracking_uri: str | None = Field(
            None,
            min_length=1,
            description="the MLflow store (sqlite:///path.db, http://host:5000, ...); none = the MLFLOW_TRACKING_URI "
            "environment variable, else sqlite:///mlflow.db beside the run directory",
        )
        experiment: str | None = Field(None, min_length=1, description="the MLflow experiment; none = the card's name")

    def __init__(self, config: Any):
        super().__init__(config)
        os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
        require(type(self))  # a missing package is named before anything trains
        self.client = None
        self.run_id = ""

    def tracking_uri(self, run_dir: Path) -> str:
        """Where the run goes: the card's store, else ``MLFLOW_TRACKING_URI``, else a SQLite file
        beside ``run_dir``."""
        return (
            self.config.tracking_uri
            or os.environ.get("MLFLOW_TRACKING_URI")
            or f"sqlite:///{(Path(run_dir).parent / 'mlflow.db').resolve()}"
        )

    def start(self, run: RunInfo) -> bool:
        from mlflow.tracking import MlflowClient

        stored = _read(run.run_dir / RUN_FILE) if run.resumed_from is not None else {}
        uri = stored.get("tracking_uri") or self.tracking_uri(run.run_dir)
        with _store_warnings():
            self.client = MlflowClient(tracking_uri=uri)
            if stored.get("run_id") and self._reopen(stored["run_id"], run.card):
                return True
            experiment = self.config.experiment or run.name
            found = self.client.get_experiment_by_name(experiment)
            if found is not None:
                experiment_id = found.experiment_id
            else:
                experiment_id = self.client.create_experiment(experiment, artifact_location=_artifacts_beside(uri))
            created = self.client.create_run(
                experiment_id,
                run_name=run.run_dir.name,
                tags={"pplvm.run_dir": str(run.run_dir.resolve()), "pplvm.card": run.name},
            )
        self.run_id = created.info.run_id
        self._log_params(params(run.card))
        write_atomic(run.run_dir / RUN_FILE, json.dumps({"tracking_uri": uri, "run_id": self.run_id}) + "\n")
        return False

    def _reopen(self, run_id: str, card: dict[str, Any]) -> bool:
        """Continue the stored run (False: the store no longer has it)."""
        from mlflow.exceptions import MlflowException

        try:
            existing = self.client.get_run(run_id).data.params
        except MlflowException:
            return False
        self.run_id = run_id
        self.client.update_run(run_id, status="RUNNING")
        self._log_params({k: v for k, v in params(card).items() if k not in existing})  # keys new since
        return True

    def _log_params(self, values: dict[str, str]) -> None:
        from mlflow.entities import Param

        items = [Param(k, v) for k, v in values.items()]
        for i in range(0, len(items), PARAMS_PER_CALL):
            self.client.log_batch(self.run_id, params=items[i : i + PARAMS_PER_CALL])

    def log_metrics(self, step: int, metrics: dict[str, float]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, v, now, step) for k, v in metrics.items()])

    def log_figure(self, name: str, figure: Any, step: int) -> None:
        self.client.log_figure(self.run_id, figure, f"{name}/step_{step:08d}.png")

    def log_image(self, name: str, path: Path, step: int) -> None:
        self.client.log_artifact(self.run_id, str(path))

    def log_text(self, name: str, text: str, step: int) -> None:
        self.client.log_text(self.run_id, text, f"{name}/step_{step:08d}.md")

    def finish(self, run_dir: Path, status: Status) -> None:
        if self.client is None:
            return
        if status == "FINISHED":  # the run directory's files (hidden ones, the lock, left out)
            for path in sorted(Path(run_dir).iterdir()):
                if path.name.startswith("."):
                    continue
                if path.is_dir():
                    self.client.log_artifacts(self.run_id, str(path), path.name)
                else:
                    self.client.log_artifact(self.run_id, str(path))
        self.client.set_terminated(self.run_id, status)
        self.client = None


def params(card: dict[str, Any]) -> dict[str, str]:
    """The card's fields as MLflow params: ``{"training.lr": "0.01", "model.family": "gmm", ...}``."""
    from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH

    out = {}
    for key, value in _flat(card):
        text = value if isinstance(value, str) else json.dumps(value)
        out[key] = text if len(text) <= MAX_PARAM_VAL_LENGTH else text[: MAX_PARAM_VAL_LENGTH - 3] + "..."
    return out


def _flat(d: dict[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    for key, value in d.items():
        if isinstance(value, dict):
            yield from _flat(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def _read(path: Path) -> dict[str, str]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _artifacts_beside(uri: str) -> str | None:
    """A SQLite store's artifacts: ``mlartifacts/`` beside its file (MLflow's own default is the
    working directory's ``mlruns/``); other stores decide for themselves (None)."""
    prefix = "sqlite:///"
    if not uri.startswith(prefix):
        return None
    return (Path(uri[len(prefix) :]).parent / "mlartifacts").resolve().as_uri()


@contextlib.contextmanager
def _store_warnings() -> Iterator[None]:
    """MLflow's SQL store, first opened, trips SQLAlchemy 2.1's deprecation of its ``noload``
    loader: not the user's to act on."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"mlflow\.")
        yield
