"""Data-parallel training on 2 CPU processes (gloo), against a single process as the oracle.

With MAP globals and enumerated discrete latents the objective is deterministic, so a run on
2 processes must follow the single-process run on the same global batches exactly, up to
float32 rounding: each process's shard loss is summed in a different order and the gradients
are combined by an all-reduce. Relative errors are measured tensor-wise, ‖a - b‖ / ‖b‖, and
held to 1e-6 (observed: ~1e-7 after 16 Adam steps; float32 epsilon is 1.2e-7).

The processes are started with torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK,
MASTER_ADDR, MASTER_PORT): by torchrun itself for the command line, and by a small launcher
here where a test needs a hook into a process (tests/training/ddp_worker.py).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from cases import CASES, plugin_cards

import pplvm
from pplvm.errors import TrainingError
from pplvm.objectives import make_update_rule
from pplvm.training import distributed
from pplvm.training.checkpoint import load_checkpoint
from pplvm.training.trainer import Trainer

WORKER = Path(__file__).with_name("ddp_worker.py")
ROOT = Path(pplvm.__file__).resolve().parents[1]
#: a hung collective fails after this long instead of hanging the suite
TIMEOUT_S = 120
RTOL = 1e-6

# 160 training rows in batches of 45: shards of 23 and 22 rows, and a last batch of 25 (13 and
# 12), so the gradient weighting of unequal shards is exercised
CARD = {
    "name": "ddp",
    "model": {"family": "gmm", "components": 3},
    "guide": {"kind": "map"},
    "objective": {"name": "enum"},
    "data": {"source": "synthetic_gmm", "n": 200, "dim": 2, "components": 3},
    "training": {"epochs": 4, "batch_size": 45, "lr": 0.05, "progress": False, "checkpoint_every": 1},
    "evaluation": {"draws": 5, "chains": 2},
}


def _env(**extra) -> dict[str, str]:
    path = os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])
    return {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1", "PPLVM_DIST_TIMEOUT": str(TIMEOUT_S), **extra}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(args: list[str], world: int = 2) -> list[subprocess.CompletedProcess]:
    """Run ``python args...`` as ``world`` processes of one process group, as torchrun would."""
    port = str(_free_port())
    procs = [
        subprocess.Popen(
            [sys.executable, *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=_env(RANK=str(r), LOCAL_RANK=str(r), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1", MASTER_PORT=port),
        )
        for r in range(world)
    ]
    out = []
    for p in procs:
        stdout, stderr = p.communicate(timeout=3 * TIMEOUT_S)
        out.append(subprocess.CompletedProcess(p.args, p.returncode, stdout, stderr))
    return out


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def assert_params_close(a: dict, b: dict, rtol: float = RTOL, atol: float = 0.0) -> None:
    """‖a - b‖ ≤ rtol ‖b‖ + atol for every tensor."""
    assert a.keys() == b.keys()
    for k in a:
        x, y = a[k].detach().double(), b[k].detach().double()
        assert float((x - y).norm()) <= rtol * float(y.norm()) + atol, (k, rel_err(x, y))


def assert_curves_close(h2: list[dict], h1: list[dict]) -> None:
    assert [m["epoch"] for m in h2] == [m["epoch"] for m in h1]
    for m2, m1 in zip(h2, h1):
        assert m2.keys() == m1.keys()
        for k in m1:
            assert abs(m2[k] - m1[k]) <= RTOL * abs(m1[k]), (m1["epoch"], k, m2[k], m1[k])


def metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def torchrun(*args: str, ok: bool = True) -> subprocess.CompletedProcess:
    """``torchrun --standalone --nproc_per_node=2 -m pplvm args...``"""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "pplvm", *args]
    done = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=3 * TIMEOUT_S)
    assert (done.returncode == 0) == ok, done.stderr[-3000:]
    return done


def test_torchrun_fit_and_resume_equal_one_process(tmp_path):
    """``torchrun --nproc_per_node=2 -m pplvm fit``, then ``resume``: parameters and loss curves
    equal the single-process run's; only rank 0 writes and reports; the run evaluates on one
    process as a single-process run does."""
    card = tmp_path / "card.toml"
    pplvm.config.dump_card(pplvm.card_from_dict(CARD), card)
    two = tmp_path / "two"
    done = torchrun("fit", str(card), "--out", str(two), "--quiet")
    assert done.stdout.count(f"wrote {two}") == 1  # rank 0 alone reports

    one = pplvm.fit(CARD)
    c2 = load_checkpoint(two / "checkpoint.pt")
    state = one.trainer.state.to_checkpoint()  # the best held-out value: float sums in another order
    assert c2["trainer"]["best"] == pytest.approx(state.pop("best"), rel=RTOL)
    assert {k: v for k, v in c2["trainer"].items() if k != "best"} == state
    assert_params_close(c2["model"], one.model.state_dict())
    assert_params_close(c2["guide"], one.guide.state_dict())
    assert c2["rng"]["torch_ranks"].shape[0] == 2  # each process's RNG state, for an exact resume
    assert_curves_close(metrics(two), one.history)
    names = {p.name for p in two.iterdir()}
    assert {"card.toml", "checkpoint.pt", "metrics.jsonl", "inference_data.nc", "summary.txt"} <= names

    x = pplvm.load_dataset(pplvm.card_from_dict(CARD).data).valid
    e2, e1 = pplvm.load(two).evaluate(x), one.evaluate(x)
    assert abs(e2["log_likelihood_sum"] - e1["log_likelihood_sum"]) <= RTOL * abs(e1["log_likelihood_sum"])

    # a second fit into the run is refused by rank 0 (which alone locks and writes it) and the
    # other process stops with it; rank 0 alone says so, in one line; the run is left as it was
    before = {p.name: p.stat().st_mtime_ns for p in two.iterdir()}
    refused = launch(["-m", "pplvm", "fit", str(card), "--out", str(two), "--quiet"])  # torchrun's env, no launcher
    assert [r.returncode for r in refused] == [2, 2], [r.stderr[-3000:] for r in refused]
    stderr = "".join(r.stderr for r in refused)
    assert "pplvm: error: --out" in stderr and "already holds a run" in stderr, stderr[-3000:]
    assert stderr.count("pplvm: error:") == 1, stderr[-3000:]
    assert {p.name: p.stat().st_mtime_ns for p in two.iterdir()} == before

    torchrun("resume", str(two), "--epochs", "6", "--json")  # each process takes its RNG state back
    six = pplvm.fit(CARD, overrides=["training.epochs=6"])
    assert_params_close(load_checkpoint(two / "checkpoint.pt")["guide"], six.guide.state_dict())
    assert_curves_close(metrics(two), six.history)


def test_every_family_trains_on_two_processes(tmp_path):
    """Every contract case trains on 2 processes with its replicas equal (DDP keeps them in
    step: DDP, EM's all-reduced statistics, a GAN's and the compiled step's all-reduced
    gradients); the deterministic cases (MAP globals with enumerated locals, EM) equal a
    single process;
    all_reduce_sum adds up across processes."""
    results = launch([str(WORKER), "families", str(tmp_path)])
    for r in results:
        assert r.returncode == 0, r.stderr[-3000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    assert ranks[0]["all_reduce_sum"] == [3.0, 0.0, 2.0, 4.0]  # [1 + 2], 2 · arange(3)
    cases = {p.values[0]["name"]: p.values[0] for p in CASES}
    ppca = cases["ppca_ml"]  # traced gradients (linear-Gaussian models trace), all-reduced by the rule
    cases["ppca_traced"] = {**ppca, "training": {**ppca["training"], "compile": "trace"}}
    cases.update({c["name"]: c for c in plugin_cards()})  # plugins not pplvm's own train the same way
    assert set(ranks[0]) - {"all_reduce_sum"} == set(cases)
    for name, card in cases.items():
        a, b = ranks[0][name], ranks[1][name]
        for k in a["params"]:
            assert torch.equal(a["params"][k], b["params"][k]), (name, k)
            assert torch.isfinite(a["params"][k]).all(), (name, k)
        assert torch.equal(a["train_loss"], b["train_loss"]), name
        deterministic = card["guide"]["kind"] == "map" and card["objective"]["name"] in ("enum", "em")
        if deterministic:
            one = pplvm.fit(card, overrides=["training.epochs=2"])
            ref = {**dict(one.model.named_parameters()), **dict(one.guide.named_parameters())}
            # EM's M-step takes variances as differences of sums (E[x²] - E[x]²), which multiplies
            # float32's summation-order rounding by E[x²] / Var (observed 1.2e-6 on gmm_em), and
            # fa_em's loc is the mean of standardized data, zero up to rounding (~1e-7): there
            # an absolute 1e-6 on data of unit scale
            em = card["objective"]["name"] == "em"
            assert_params_close(a["params"], ref, rtol=1e-5 if em else RTOL, atol=1e-6 if em else 0.0)
            for l2, l1 in zip(a["train_loss"].tolist(), [h["train_loss"] for h in one.history]):
                assert abs(l2 - l1) <= RTOL * abs(l1), name


def test_killed_process_leaves_the_last_good_checkpoint(tmp_path):
    """Process 1 dies after epoch 3: process 0 stops at its next collective with one line that
    names the last good checkpoint (epoch 3), which resumes on one process to the result of an
    uninterrupted run."""
    card = tmp_path / "card.toml"
    pplvm.config.dump_card(pplvm.card_from_dict({**CARD, "training": {**CARD["training"], "epochs": 5}}), card)
    out = tmp_path / "run"
    rank0, rank1 = launch([str(WORKER), "kill", str(card), str(out)])
    assert rank1.returncode == 17
    assert rank0.returncode == 2, rank0.stderr[-3000:]
    message = json.loads(rank0.stderr.strip().splitlines()[-1])["error"]
    assert message.startswith("training stopped in epoch 4: process 0 of 2 lost contact with the others"), message
    assert f"the last good checkpoint (epoch 3) is kept at {out / 'checkpoint.pt'}" in message
    assert f"continue with: pplvm resume {out}" in message
    assert load_checkpoint(out / "checkpoint.pt")["trainer"]["epoch"] == 3
    assert len(metrics(out)) == 3

    resumed = pplvm.Run.resume(out)
    whole = pplvm.fit(card)
    assert_params_close(resumed.guide.state_dict(), whole.guide.state_dict())
    assert_curves_close(resumed.history, whole.history)


def test_batches_give_every_process_a_share():
    """A last batch with fewer rows than processes joins the one before; a batch size below
    the number of processes, or a world size without its process group, is refused in one line."""
    run = pplvm.Run.from_card(CARD)
    rule = make_update_rule(run.model, run.guide, run.card)
    trainer = Trainer(run.model, run.guide, rule, run.card.training, rank=0, world_size=3)
    sizes = [len(b) for b in trainer._batches(torch.arange(92))]  # 45 + 45 + 2 rows
    assert sizes == [45, 47]
    assert [len(b) for b in trainer._batches(torch.arange(93))] == [45, 45, 3]
    small = pplvm.card_from_dict({**CARD, "training": {**CARD["training"], "batch_size": 2}}).training
    with pytest.raises(pplvm.TrainingError, match=r"training.batch_size = 2 .* smaller than the 3 processes"):
        Trainer(run.model, run.guide, rule, small, world_size=3).setup(run.dataset.train)
    with pytest.raises(pplvm.TrainingError, match=r"world_size = 3 but this process is in a process group of 1"):
        trainer.setup(run.dataset.train)


@pytest.mark.parametrize("value", ["ten", "-5"])
def test_a_bad_dist_timeout_names_its_variable_not_the_rendezvous(monkeypatch, value):
    """Checked before joining: the error is the variable's, not "check MASTER_ADDR"."""
    for name, v in {"WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0", distributed.TIMEOUT_ENV: value}.items():
        monkeypatch.setenv(name, v)
    with pytest.raises(TrainingError) as info:
        distributed.init_from_env("cpu")
    assert str(info.value) == (
        f"environment variable PPLVM_DIST_TIMEOUT = {value!r}: expected a positive number of seconds"
    )
    assert not torch.distributed.is_initialized()


@pytest.mark.slow
def test_torchrun_budget_stop_inside_an_epoch_resumes_as_one_process(tmp_path):
    """``training.max_steps = 6`` stops 2 processes inside epoch 2 (4 global batches an epoch),
    with a checkpoint there (the epoch's running loss summed over the processes, every
    process's RNG state); ``resume --max-steps 100`` on 2 processes then equals one process's
    uninterrupted fit (parameters and loss curves to float32 rounding)."""
    card = tmp_path / "card.toml"
    pplvm.config.dump_card(pplvm.card_from_dict({**CARD, "training": {**CARD["training"], "max_steps": 6}}), card)
    two = tmp_path / "two"
    torchrun("fit", str(card), "--out", str(two), "--quiet")
    saved = load_checkpoint(two / "checkpoint.pt")
    assert (saved["trainer"]["step"], saved["trainer"]["position"]) == (6, 2)
    assert metrics(two)[-1]["partial"] and metrics(two)[-1]["stopped"] == "training.max_steps = 6 reached"
    torchrun("resume", str(two), "--max-steps", "100", "--json")
    one = pplvm.fit(CARD)
    c2 = load_checkpoint(two / "checkpoint.pt")
    assert c2["trainer"]["step"] == one.trainer.state.step == 16
    assert_params_close(c2["guide"], one.guide.state_dict())
    assert_curves_close(metrics(two), one.history)
