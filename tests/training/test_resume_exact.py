"""Resume is exact with the default checkpoint policy: a fit interrupted inside its first
checkpoint interval (by time, ``checkpoint_seconds``: only the epoch-0 checkpoint is on disk)
and resumed equals the uninterrupted fit bit for bit — every parameter, every metric — for
every kind of family (exact, bound, avoid; enumerated, amortized, two optimisers).

The interruptions are those a user meets: SIGTERM or Ctrl-C in the middle of a step (raised by
the command line's handlers where the signal lands) and a hard stop (SIGKILL, a crash) that
leaves the files as they were. In-process, a hard stop is an exception no clean-up turns into
a checkpoint; the real signals are sent to a child process in the slow test at the end.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import pplvm
from pplvm import _signals
from pplvm.training.checkpoint import load_checkpoint

TRAINING = {"epochs": 3, "progress": False}  # checkpoint_every unset: by time (30 s), the default
EVAL = {"draws": 4, "chains": 2, "max_rows": 50}
CARDS = {
    "gmm": {
        "model": {"family": "gmm", "components": 2},
        "guide": {"kind": "meanfield"},
        "objective": {"name": "enum"},
        "data": {"source": "synthetic_gmm", "n": 60, "dim": 2, "components": 2},
        "training": {**TRAINING, "batch_size": 20, "lr": 0.05, "patience": 50},
    },
    "hmm": {
        "model": {"family": "hmm", "states": 2, "sample_length": 6},
        "guide": {"kind": "meanfield"},
        "objective": {"name": "enum"},
        "data": {"source": "synthetic_hmm", "n": 8, "min_length": 4, "max_length": 6, "states": 2, "dim": 2},
        "training": {**TRAINING, "batch_size": 3, "lr": 0.05},
    },
    "vae": {  # dynamic binarization: the trainer's augment generator is restored too
        "model": {"family": "vae", "latent_dim": 2, "hidden": [8]},
        "guide": {"kind": "amortized"},
        "objective": {"name": "elbo"},
        "data": {"source": "digits", "binarize": "dynamic", "valid_fraction": 0.05, "test_fraction": 0.05},
        "training": {**TRAINING, "batch_size": 512, "lr": 0.01},
    },
    "diffusion": {
        "model": {"family": "diffusion", "steps": 4, "hidden": [8], "embed_dim": 4},
        "guide": {"kind": "forward"},
        "objective": {"name": "diffusion"},
        "data": {"source": "moons", "n": 90, "standardize": True},
        "training": {**TRAINING, "batch_size": 30, "lr": 0.01},
    },
    "flow": {
        "model": {"family": "flow", "transforms": ["affine_coupling", "permute"], "repeat": 1, "hidden": [8]},
        "guide": {"kind": "none"},
        "objective": {"name": "elbo"},
        "data": {"source": "moons", "n": 90, "standardize": True},
        "training": {**TRAINING, "batch_size": 30},
    },
    "gan": {
        "model": {
            "family": "gan",
            "latent_dim": 2,
            "hidden": [8],
            "discriminator_hidden": [8],
            "likelihood": "gaussian",
        },
        "guide": {"kind": "none"},
        "objective": {"name": "gan"},
        "data": {"source": "moons", "n": 90, "standardize": True},
        "training": {**TRAINING, "batch_size": 30, "lr": 0.001},
    },
}


def card(family: str) -> dict:
    return {"name": family, **CARDS[family], "evaluation": EVAL}


def params(run) -> dict[str, torch.Tensor]:
    return {f"{k}.{n}": v for k, m in (("model", run.model), ("guide", run.guide)) for n, v in m.state_dict().items()}


def flat(tree, prefix: str = "") -> dict[str, object]:
    if isinstance(tree, dict):
        return {k: v for key, sub in tree.items() for k, v in flat(sub, f"{prefix}{key}.").items()}
    if isinstance(tree, (list, tuple)):
        return {k: v for i, sub in enumerate(tree) for k, v in flat(sub, f"{prefix}{i}.").items()}
    return {prefix: tree}


def assert_identical(resumed, full) -> None:
    """Parameters, the update rule's state (optimiser moments, schedules, step counts) and
    every logged metric: bit for bit, no tolerance."""
    a, b = flat(params(resumed)), flat(params(full))
    a.update(flat(resumed.rule.state_dict(), "rule.")), b.update(flat(full.rule.state_dict(), "rule."))
    assert a.keys() == b.keys()
    same = [torch.equal(a[k], b[k]) if torch.is_tensor(a[k]) else a[k] == b[k] for k in a]
    assert [k for k, ok in zip(a, same) if not ok] == []
    assert resumed.history == full.history


class HardStop(BaseException):
    """Nothing after it is written, as after SIGKILL (not an Exception: no handler catches it)."""


@pytest.fixture(autouse=True)
def sigint_not_ignored():
    """A process started in the background by a non-interactive shell inherits SIGINT ignored,
    which pplvm keeps (as a user's ``nohup pplvm fit ... &`` wants); these tests send a Ctrl-C
    to themselves, so they run with Python's own SIGINT handler, then give back what they found."""
    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, before)


def interrupt(run, at_step: int, how: str) -> None:
    """Make ``run``'s ``at_step``-th training step end the fit: a SIGTERM or SIGINT delivered
    to this process under the command line's handlers (it raises where it lands, inside the
    step), or a hard stop before the step."""
    step, count = run.rule.step, [0]

    def stepping(*args, **kwargs):
        count[0] += 1
        if count[0] == at_step:
            if how == "kill":
                raise HardStop
            os.kill(os.getpid(), signal.SIGTERM if how == "term" else signal.SIGINT)
            time.sleep(5)  # the handler raises in here
        return step(*args, **kwargs)

    run.rule.step = stepping


def fit_interrupted(family: str, out: Path, at_step: int, how: str) -> None:
    run = pplvm.Run.from_card(card(family))
    interrupt(run, at_step, how)
    with _signals.handling(), pytest.raises(HardStop if how == "kill" else KeyboardInterrupt):
        run.fit(out)
    assert load_checkpoint(out / "checkpoint.pt")["trainer"]["epoch"] == 0  # the first interval's only one


@pytest.mark.parametrize("family", list(CARDS))
def test_resume_inside_the_first_checkpoint_interval_is_exact(tmp_path, family):
    """SIGTERM in the second epoch (one epoch of metrics logged, no checkpoint after epoch 0)."""
    full = pplvm.Run.from_card(card(family)).fit()
    steps = full.trainer.state.step // TRAINING["epochs"]
    fit_interrupted(family, tmp_path / "run", steps + 1, "term")
    assert_identical(pplvm.Run.resume(tmp_path / "run"), full)


def test_resume_after_a_hard_stop_is_exact(tmp_path):
    """A hard stop after the first epoch: the run resumes from its epoch-0 checkpoint."""
    full = pplvm.Run.from_card(card("gmm")).fit()
    fit_interrupted("gmm", tmp_path / "run", 5, "kill")
    assert_identical(pplvm.Run.resume(tmp_path / "run"), full)


def test_a_ctrl_c_in_the_first_epoch_leaves_no_run_and_a_new_fit_is_the_same(tmp_path):
    """Before its first epoch is done a new run is not yet in place: Ctrl-C leaves no directory,
    and fitting again gives the uninterrupted run."""
    full = pplvm.Run.from_card(card("gmm")).fit()
    run = pplvm.Run.from_card(card("gmm"))
    interrupt(run, 1, "int")
    with _signals.handling(), pytest.raises(KeyboardInterrupt):
        run.fit(tmp_path / "run")
    assert not (tmp_path / "run").exists()
    assert_identical(pplvm.Run.from_card(card("gmm")).fit(tmp_path / "run"), full)


def test_the_compiled_step_counts_the_fits_steps_across_a_resume(tmp_path):
    """``compile = "auto"`` switches to the traced graph after a number of steps of the fit,
    not of the process: the count travels in the checkpoint."""
    spec = {**card("diffusion"), "training": {**CARDS["diffusion"]["training"], "checkpoint_every": 1}}
    run = pplvm.Run.from_card(spec)
    interrupt(run, 5, "kill")  # epoch 1's checkpoint (3 steps) is the last
    with pytest.raises(HardStop):
        run.fit(tmp_path / "run")
    resumed = pplvm.Run.resume(tmp_path / "run")
    assert resumed.rule.state_dict()["steps"] == resumed.trainer.state.step == 9


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGKILL, signal.SIGTERM, signal.SIGINT], ids=["KILL", "TERM", "INT"])
def test_a_command_line_fit_stopped_by_a_signal_resumes_exactly(tmp_path, signum):
    """The real signals, sent to ``pplvm fit`` in a child process after its first epoch."""
    spec = {**card("gmm"), "training": {**CARDS["gmm"]["training"], "epochs": 300}}
    full = pplvm.Run.from_card(spec).fit()
    pplvm.config.dump_card(pplvm.config.card_from_dict(spec), tmp_path / "card.toml")
    out = tmp_path / "run"
    repo = Path(__file__).resolve().parents[2]
    with subprocess.Popen(
        [sys.executable, "-m", "pplvm.cli", "fit", str(tmp_path / "card.toml"), "--out", str(out)],
        stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(repo)},
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),  # (see tests/test_faults.py)
    ) as proc:
        try:
            deadline = time.monotonic() + 120
            while not (out / "metrics.jsonl").is_file() or not (out / "metrics.jsonl").read_text():
                assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
                time.sleep(0.02)
            proc.send_signal(signum)
            proc.communicate(timeout=60)
        finally:
            proc.kill()
    assert proc.returncode != 0
    assert load_checkpoint(out / "checkpoint.pt")["trainer"]["epoch"] == 0
    assert_identical(pplvm.Run.resume(out), full)
