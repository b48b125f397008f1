"""``pplvm sweep``: the issue's bar (a 6-trial sweep on gmm_iris finishes, prunes, and resumes
after a kill without repeating finished trials), the pruner's decisions checked against the
median rule they follow, the outputs read back (trial.json, metrics.jsonl, best.toml), an
interrupted trial run again, and bad input refused in one line."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import statistics
import subprocess
import sys
import time
from pathlib import Path

import optuna  # the sweep extra (make setup installs it)
import pytest

import pplvm
from pplvm.cli import main
from pplvm.config import card_to_dict, load_card
from pplvm.errors import PplvmError
from pplvm.workflows.sweep import objective_metric, run_sweep

ROOT = Path(pplvm.__file__).parent.parent
CARD = ROOT / "models" / "gmm_iris.toml"
#: 3 epochs, no arviz export (each trial ~0.3 s of fitting); lr over three decades: lr near 1 is terrible
FIXED = ["training.epochs=3", "evaluation.export=false", "training.progress=false"]
SPACE = ["training.lr=loguniform(1e-3,1)"]
ARGS = ["--param", SPACE[0], *(a for f in FIXED for a in ("--set", f))]


def _states(db: Path) -> list[tuple[int, str]]:
    with sqlite3.connect(db, timeout=30) as con:
        return con.execute("SELECT number, state FROM trials ORDER BY number").fetchall()


def _sweep(out: Path, trials: int, **kw):
    return run_sweep(CARD, SPACE, trials=trials, out=out, overrides=FIXED, heartbeat=1, **kw)


def _trials(out: Path) -> dict[int, optuna.trial.FrozenTrial]:
    storage = optuna.storages.RDBStorage(f"sqlite:///{out}/study.db")
    try:
        return {t.number: t for t in optuna.load_study(study_name="gmm_iris", storage=storage).trials}
    finally:
        storage.engine.dispose()


def _age_heartbeats(out: Path) -> None:
    """As if the process that ran them had died an hour ago: its trials' last heartbeats."""
    with sqlite3.connect(out / "study.db") as con:
        con.execute("UPDATE trial_heartbeats SET heartbeat = datetime(heartbeat, '-1 hour')")
    con.close()


def test_sweep_prunes_resumes_after_a_kill_and_writes_the_best_card(tmp_path):
    out = tmp_path / "sweep"

    def killed_in_trial_3(line):  # a kill inside trial 3: nothing more of this sweep runs, it stays RUNNING
        if line.startswith("trial 3:"):
            raise SystemExit(137)  # (Optuna marks a trial failed on Exception or KeyboardInterrupt, not on this)

    with pytest.raises(SystemExit):
        _sweep(out, 6, report=killed_in_trial_3)
    before = _trials(out)
    assert [t.state.name for t in before.values()][3:] == ["RUNNING"] and before[3].params
    _age_heartbeats(out)

    sweep = _sweep(out, 6)

    after = _trials(out)
    ended = [t for t in after.values() if t.state.name in ("COMPLETE", "PRUNED")]
    assert len(ended) == 6 and len(sweep.trials) == len(after) == 7
    for n, t in before.items():  # finished trials are kept as they were, and none runs twice
        if n < 3:
            assert (after[n].state, after[n].params, after[n].value) == (t.state, t.params, t.value)
    lrs = [t.params["training.lr"] for t in ended]
    assert len(set(lrs)) == len(lrs)
    # the killed trial failed (its heartbeat went stale) and ran again first, with its lr, as trial 4
    assert after[3].state.name == "FAIL"
    assert after[4].system_attrs.get("failed_trial") == 3 and after[4].params == before[3].params

    # pruning: at least one trial; each trial pruned at the first epoch before its last (3) where its
    # best value so far is below the median of the trials completed before it (once 2 have)
    pruned = [t for t in ended if t.state.name == "PRUNED"]
    assert pruned
    for t in ended:
        earlier = [c for c in ended if c.state.name == "COMPLETE" and c.number < t.number]
        values = [v for _, v in sorted(t.intermediate_values.items())]
        for epoch, value in enumerate(values, 1):
            median = statistics.median(c.intermediate_values[epoch] for c in earlier) if len(earlier) >= 2 else None
            stop = t.state.name == "PRUNED" and epoch == t.last_step
            rule = median is not None and epoch < 3 and max(values[:epoch]) < median
            assert rule == stop, (t.number, epoch, value, median)
    for t in pruned:
        run_dir = out / f"trial-{t.number:04d}"
        record = json.loads((run_dir / "trial.json").read_text())
        assert record["state"] == "pruned" and record["pruned_at_epoch"] == t.last_step < 3
        last = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()][-1]
        assert last["epoch"] == t.last_step and last["stopped"].startswith("pruned by the sweep")
        assert "stopped: pruned by the sweep" in (run_dir / "summary.txt").read_text()

    # the value of a complete trial is its run's held-out log-likelihood at the kept (best) epoch
    best = max((t for t in ended if t.state.name == "COMPLETE"), key=lambda t: t.value)
    history = [
        json.loads(line) for line in (out / f"trial-{best.number:04d}" / "metrics.jsonl").read_text().splitlines()
    ]
    assert best.value == max(h["valid_log_likelihood"] for h in history)
    assert sweep.best["trial"] == best.number
    tuned = card_to_dict(load_card(out / "best.toml"))  # what pplvm fit reads first
    trial_card = card_to_dict(load_card(out / f"trial-{best.number:04d}" / "card.toml"))
    assert tuned["training"]["lr"] == best.params["training.lr"] == trial_card["training"]["lr"]
    assert tuned["model"] == {**trial_card["model"], "init": tuned["model"]["init"]}
    assert (out / "study.png").read_bytes()[:4] == b"\x89PNG"

    # run again with every trial done: nothing runs, the same table comes back
    again = _sweep(out, 6)
    assert [r["trial"] for r in again.trials] == [r["trial"] for r in sweep.trials]


def test_an_interrupted_trial_runs_again_with_its_values(tmp_path):
    def interrupted_in_trial_0(line):
        if line.startswith("trial 0:"):  # inside trial 0 (its fit is done, its value not yet told)
            raise KeyboardInterrupt  # what pplvm makes of Ctrl-C and SIGTERM

    with pytest.raises(KeyboardInterrupt):
        _sweep(tmp_path, 1, report=interrupted_in_trial_0)
    sweep = _sweep(tmp_path, 1)
    assert [r["state"] for r in sweep.trials][0] == "failed" and sweep.trials[1]["state"] == "complete"
    assert sweep.trials[1]["params"] == sweep.trials[0]["params"]
    assert (tmp_path / "trial-0000" / "checkpoint.pt").is_file()  # the stopped trial's directory is left


def test_objective_follows_the_familys_likelihood_kind():
    assert objective_metric(load_card(CARD)) == "valid_log_likelihood"
    assert objective_metric(load_card(CARD, ["training.ema=0.9"])) == "valid_log_likelihood_ema"
    # a GAN declares no likelihood: its held-out loss, at the EMA weights its card keeps
    assert objective_metric(load_card(ROOT / "models" / "gan_digits.toml")) == "valid_loss_ema"


@pytest.mark.parametrize(
    "param, expected",
    [
        ("training.lr=loguniform(0,1e-2)", "expected loguniform(a, b): two numbers with 0 < a < b; got a = 0"),
        ("training.lr=loguniform1e-4,1e-2)", "expected KEY.PATH=KIND(ARGS) with KIND one of: uniform(a, b)"),
        ("training.lr=normal(0,1)", "unknown kind 'normal'"),
        ("model.components=int(2.5,4)", "expected int(a, b): two integers with a < b; got 2.5, 4"),
        ("model.components=choice(3)", "got 1 value (a fixed value is --set KEY=VALUE)"),
        ("model.latent_dim=choice(8,16,32)", "model.latent_dim: unknown key; expected one of: components,"),
        ("model.components=uniform(2,5)", "model.components: expected a valid integer (got 2.0)"),
    ],
)
def test_a_bad_param_is_refused_in_one_line_before_any_trial(tmp_path, capsys, param, expected):
    out = tmp_path / "sweep"
    assert main(["sweep", str(CARD), "--param", param, "--trials", "2", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"pplvm: error: --param '{param}'") and expected in err
    assert not out.exists()


def test_other_refusals(tmp_path, capsys, monkeypatch):
    (tmp_path / "notes.txt").write_text("mine")
    assert main(["sweep", str(CARD), *ARGS, "--trials", "2", "--out", str(tmp_path)]) == 2
    assert "holds files that are not a sweep's (notes.txt)" in capsys.readouterr().err
    for args, expected in [
        (["--set", "training.lr=0.1"], "training.lr is also fixed by --set"),
        (["--param", "training.lr=uniform(0.1,0.2)"], "training.lr is swept twice"),
        (["--pruner", "hyperband"], "--pruner 'hyperband': expected one of: median, none"),
    ]:
        assert main(["sweep", str(CARD), "--param", SPACE[0], *args, "--trials", "2", "--out", "x"]) == 2
        assert expected in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "optuna", None)  # as if the extra were not installed
    with pytest.raises(PplvmError, match=r"pplvm sweep needs Optuna: pip install 'pplvm\[sweep\]'"):
        _sweep(tmp_path / "new", 2)


@pytest.mark.slow
def test_two_processes_share_a_study_and_a_sigkill_loses_no_finished_trial(tmp_path):
    """The real thing behind the fast test above: two ``pplvm sweep`` processes on one --out, one
    killed with SIGKILL, then the same command again."""
    out = tmp_path / "sweep"
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    cmd = [sys.executable, "-m", "pplvm", "sweep", str(CARD), *ARGS, "--trials", "6", "--out", str(out)]
    procs = [
        subprocess.Popen([*cmd, "--heartbeat", "1", "--quiet", "--seed", str(i)], env=env, stderr=subprocess.DEVNULL)
        for i in range(2)
    ]
    try:
        deadline = time.monotonic() + 600  # a guard against a hang, not a timing assertion
        while time.monotonic() < deadline and procs[0].poll() is None:
            states = _states(out / "study.db") if (out / "study.db").is_file() else []
            if sum(s in ("COMPLETE", "PRUNED") for _, s in states) >= 2:
                break
            time.sleep(0.05)
        procs[0].send_signal(signal.SIGKILL)
    finally:
        for p in procs:
            p.wait()
    before = _trials(out)
    assert procs[1].returncode == 0
    time.sleep(2.5)  # every heartbeat of the killed process is then older than its grace period (2 x 1 s)
    assert subprocess.run([*cmd, "--heartbeat", "1", "--quiet"], env=env, capture_output=True).returncode == 0
    after = _trials(out)
    ended = [t for t in after.values() if t.state.name in ("COMPLETE", "PRUNED")]
    assert 6 <= len(ended) <= 7  # the survivor may start one trial while the other ends the sixth
    for n, t in before.items():
        if t.state.name in ("COMPLETE", "PRUNED"):
            assert (after[n].state, after[n].params, after[n].value) == (t.state, t.params, t.value)
    assert sorted(p.name for p in out.glob("trial-*")) == sorted(
        {f"trial-{n:04d}" for n in after} & {p.name for p in out.glob("trial-*")}
    )
    assert all((out / f"trial-{t.number:04d}" / "trial.json").is_file() for t in ended)
