"""Bad input and faults, as a new user meets them: each case must end in one line naming the
input and what was expected (exit status 2 from the CLI, a PplvmError from Python), with no
traceback, and must leave everything already on disk as it was (the run directory is hashed
before and after).

Classes of cases: data files and arrays, cards, run directories (existing, foreign, locked),
checkpoints (edited card, another family, checkpoints without fingerprint), disk faults
(read-only, full: injected ENOSPC / EROFS at the write layer, since tests run as root and
chmod does not stop root), signals (SIGINT / SIGTERM during a fit), numerics (huge values,
inf / nan card values). Non-finite parameters during training belong to the trainer's tests.
"""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import pplvm
from pplvm import rundir
from pplvm.cli import main
from pplvm.errors import ArgumentError, CardError, PplvmError, RunDirError, StorageError

CARD = """
name = "faults"
[model]
family = "gmm"
components = 2
[objective]
name = "enum"
[data]
source = "synthetic_gmm"
n = 150
components = 2
[training]
epochs = 4
progress = false
[evaluation]
draws = 10
chains = 2
"""
FILE_CARD = CARD.replace('source = "synthetic_gmm"\nn = 150\ncomponents = 2', 'source = "file"\npath = "x.npy"')
HMM_CARD = {
    "name": "hmm",
    "model": {"family": "hmm", "states": 2, "sample_length": 8},
    "objective": {"name": "enum"},
    "data": {"source": "synthetic_hmm", "n": 8, "min_length": 5, "max_length": 8, "states": 2, "dim": 2},
    "training": {"epochs": 2, "progress": False},
    "evaluation": {"draws": 5, "chains": 2, "max_rows": 50},
}
REPO = Path(__file__).resolve().parents[1]
SUBPROCESS_ENV = {**os.environ, "PYTHONPATH": str(REPO), "OMP_WAIT_POLICY": "PASSIVE"}


def tree(path: Path) -> dict[str, str]:
    """Every file under ``path`` (hidden ones too) -> sha256 of its bytes."""
    return {
        str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(path.rglob("*"))
        if p.is_file()
    }


def cli(capsys, *args) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line(code: int, err: str, *needles: str) -> None:
    """Exit status 2, exactly one line on stderr, starting ``pplvm: error:``, naming each needle."""
    lines = err.strip().splitlines()
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("pplvm: error: "), err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


def one_line(err: Exception, *needles: str) -> None:
    """A Python-side error: a PplvmError whose message is one line naming each needle."""
    assert isinstance(err, PplvmError), repr(err)
    assert "\n" not in str(err), str(err)
    for needle in needles:
        assert needle in str(err), (needle, str(err))


@pytest.fixture
def card(tmp_path):
    path = tmp_path / "card.toml"
    path.write_text(CARD)
    return path


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    """A finished run directory, fitted once; tests copy it before touching it."""
    root = tmp_path_factory.mktemp("fitted")
    (root / "card.toml").write_text(CARD)
    pplvm.fit(root / "card.toml", out=root / "run")
    return root / "run"


@pytest.fixture
def run_dir(fitted, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(fitted, out)
    return out


# ---------------------------------------------------------------------- data
def file_card(tmp_path, name: str) -> Path:
    path = tmp_path / "file_card.toml"
    path.write_text(FILE_CARD.replace("x.npy", str(tmp_path / name)))
    return path


def rows(n=60, d=2):
    return np.random.default_rng(0).normal(size=(n, d))


@pytest.mark.parametrize(
    "name, make, needle",
    [
        ("empty.npy", lambda p: p.write_bytes(b""), "not a plain numeric .npy array"),
        ("truncated.npy", lambda p: p.write_bytes(_npy_bytes(rows())[:100]), "not a plain numeric .npy array"),
        ("complex.npy", lambda p: np.save(p, rows() + 1j), "expected real numbers, got complex"),
        ("big.npy", lambda p: np.save(p, _with(rows(), 3, 1e30)), "magnitude above 1e+15"),
        ("huge.csv", lambda p: np.savetxt(p, _with(rows(), 5, -1e300), delimiter=","), "magnitude above 1e+15"),
        ("nan.csv", lambda p: np.savetxt(p, _with(rows(), 7, np.nan), delimiter=","), "NaN or inf (rows 7)"),
        ("latin1.csv", lambda p: p.write_bytes(b"caf\xe9,1\n1,2\n"), "not a UTF-8 text CSV"),
        ("ragged.csv", lambda p: p.write_text("1,2\n3\n"), "could not parse as numeric CSV"),
    ],
)
def test_bad_data_files_are_one_line(tmp_path, capsys, name, make, needle):
    make(tmp_path / name)
    code, _, err = cli(capsys, "fit", file_card(tmp_path, name), "--out", tmp_path / "run", "--quiet")
    assert_one_line(code, err, needle)
    assert not (tmp_path / "run").exists()  # a refused fit leaves nothing behind


def _npy_bytes(x):
    import io

    buf = io.BytesIO()
    np.save(buf, x)
    return buf.getvalue()


def _with(x, row, value):
    x = x.copy()
    x[row, 0] = value
    return x


def test_huge_value_is_not_called_nan(tmp_path, capsys):
    np.savetxt(tmp_path / "huge.csv", _with(rows(), 3, 1e300), delimiter=",")
    code, _, err = cli(capsys, "fit", file_card(tmp_path, "huge.csv"), "--out", tmp_path / "run", "--quiet")
    assert_one_line(code, err, "1e+300", "row 3")
    assert "NaN" not in err


@pytest.mark.parametrize(
    "content, needle",
    [
        (b"", "not a readable .npz archive"),
        (b"PK\x03\x04garbage", "not a readable .npz archive"),
        (_npy_bytes(rows()), "single .npy array"),
    ],
)
def test_bad_sequence_archives(tmp_path, capsys, run_dir, content, needle):
    (tmp_path / "bad.npz").write_bytes(content)
    before = tree(run_dir)
    code, _, err = cli(capsys, "evaluate", run_dir, "--data", tmp_path / "bad.npz")
    assert_one_line(code, err, "bad.npz", needle)
    card = {**HMM_CARD, "data": {"source": "sequence_file", "path": str(tmp_path / "bad.npz")}}
    with pytest.raises(PplvmError) as info:
        pplvm.Run.from_card(card)
    one_line(info.value, "bad.npz", needle)
    assert tree(run_dir) == before


def test_evaluate_bad_npy(tmp_path, capsys, run_dir):
    (tmp_path / "empty.npy").write_bytes(b"")
    before = tree(run_dir)
    code, _, err = cli(capsys, "evaluate", run_dir, "--data", tmp_path / "empty.npy")
    assert_one_line(code, err, "empty.npy")
    assert tree(run_dir) == before


@pytest.mark.parametrize(
    "bad, needle",
    [
        (np.array([[1 + 1j, 2.0]] * 10), "complex"),
        (torch.ones(10, 2, dtype=torch.complex64), "complex"),
        ([[1.0, 2.0], [3.0]], "numeric array"),
        (np.array([["a", "b"]] * 10), "numeric array"),
        (_with(rows(), 2, 1e30), "magnitude above"),
        (torch.tensor(_with(rows(), 2, 1e20)), "magnitude above"),
    ],
)
def test_bad_arrays_from_python(card, bad, needle):
    with pytest.raises(PplvmError) as info:
        pplvm.Run.from_card(pplvm.load_card(card), data=bad)
    one_line(info.value, "data", needle)


def test_tensor_that_requires_grad_is_used_as_data(card):
    """A tensor with requires_grad=True is data like any other: detached, never modified,
    and the fit equals the one on the same values without a graph."""
    x = torch.tensor(rows(80), dtype=torch.float32, requires_grad=True)
    run = pplvm.Run.from_card(pplvm.load_card(card), data=x).fit()
    plain = pplvm.Run.from_card(pplvm.load_card(card), data=x.detach().clone()).fit()
    assert x.grad is None and x.requires_grad
    torch.testing.assert_close(run.log_likelihood(x), plain.log_likelihood(x.detach()))
    run.to_arviz(x)  # the export converts to numpy: no "requires grad" error


@pytest.mark.parametrize("n", [0, -3, 2.5, True, "4"])
def test_sample_needs_a_positive_integer(run_dir, n):
    run = pplvm.load(run_dir)
    with pytest.raises(ArgumentError) as info:
        run.sample(n)
    one_line(info.value, "n: expected a positive integer")


@pytest.mark.parametrize("seed", [-1, 2**32, 2.0])
def test_seeds_outside_the_range_are_named(run_dir, seed):
    run = pplvm.load(run_dir)
    with pytest.raises(ArgumentError) as info:
        run.sample(3, seed=seed)
    one_line(info.value, "seed", "0..4294967295")
    with pytest.raises(ArgumentError):
        run.draws(3, seed=seed)


@pytest.mark.parametrize(
    "args, needle",
    [
        (["sample", "{run}", "-n", "3", "--out", "{tmp}/s.npy", "--seed", "-1"], "--seed"),
        (["sample", "{run}", "-n", "3", "--out", "{tmp}/s.npy", "--seed", str(2**32)], "--seed"),
        (["fit", "{card}", "--out", "{tmp}/new", "--set", "training.seed=-1"], "training.seed"),
        (["fit", "{card}", "--out", "{tmp}/new", "--set", f"data.split_seed={2**32}"], "data.split_seed"),
        (["sbc", "{card}", "--sims", "2", "--seed", "-4"], "--seed"),
    ],
)
def test_cli_seeds(capsys, tmp_path, card, run_dir, args, needle):
    before = tree(run_dir)
    args = [a.format(run=run_dir, tmp=tmp_path, card=card) for a in args]
    code, _, err = cli(capsys, *args)
    assert code == 2 and needle in err and "Traceback" not in err
    assert tree(run_dir) == before and not (tmp_path / "new").exists() and not (tmp_path / "s.npy").exists()


# --------------------------------------------------------------------- cards
def test_non_utf8_card(tmp_path, capsys):
    path = tmp_path / "latin1.toml"
    path.write_bytes(CARD.replace('"faults"', '"caf\xe9"').encode("latin-1"))
    code, _, err = cli(capsys, "fit", path, "--out", tmp_path / "run")
    assert_one_line(code, err, "latin1.toml", "not UTF-8", "0xe9")


def test_card_that_is_a_directory(tmp_path, capsys):
    code, _, err = cli(capsys, "fit", tmp_path, "--out", tmp_path / "run")
    assert_one_line(code, err, str(tmp_path), "is a directory")


@pytest.mark.parametrize("overrides", ["a=b", "training.lr=0.1", b"x=1", 3])
def test_overrides_must_be_a_list_or_dict(card, overrides):
    with pytest.raises(CardError) as info:
        pplvm.load_card(card, overrides)
    one_line(info.value, "overrides", "expected a list")


@pytest.mark.parametrize(
    "key",
    [
        "training.lr",
        "training.min_delta",
        "training.weight_decay",
        "guide.init_scale",
        "objective.kl_weight",
        "data.valid_fraction",
        "data.separation",
        "training.clip_norm",
    ],
)
@pytest.mark.parametrize("value", ["inf", "-inf", "nan"])
def test_inf_and_nan_are_refused_in_every_float_field(card, key, value):
    with pytest.raises(CardError) as info:
        pplvm.load_card(card, [f"{key}={value}"])
    assert f"{key}: expected a finite number" in str(info.value)


def test_lr_inf_from_the_cli(card, tmp_path, capsys):
    code, _, err = cli(capsys, "fit", card, "--out", tmp_path / "run", "--set", "training.lr=inf")
    assert code == 2 and "training.lr: expected a finite number (got inf)" in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()


# ------------------------------------------------------------ run directories
def test_fit_onto_an_existing_run_is_refused(card, run_dir, capsys):
    before = tree(run_dir)
    code, _, err = cli(capsys, "fit", card, "--out", run_dir, "--set", "model.components=3")
    assert_one_line(code, err, str(run_dir), "already holds a run", "--overwrite")
    assert tree(run_dir) == before
    with pytest.raises(RunDirError):
        pplvm.fit(card, out=run_dir)
    assert tree(run_dir) == before


def test_overwrite_replaces_the_whole_run(card, run_dir, capsys):
    (run_dir / "reconstructions.png").write_bytes(b"a plot of the old run")
    (run_dir / ".checkpoint.pt.123.tmp").write_bytes(b"a temporary file of a crashed write")
    code, _, err = cli(
        capsys,
        "fit",
        card,
        "--out",
        run_dir,
        "--overwrite",
        "--quiet",
        "--set",
        "model.components=3",
        "--set",
        "training.epochs=2",
    )
    assert code == 0, err
    names = {p.name for p in run_dir.iterdir()}
    assert "reconstructions.png" not in names and ".checkpoint.pt.123.tmp" not in names  # nothing mixed in
    assert pplvm.load_card(run_dir / "card.toml").model.components == 3
    assert len((run_dir / "metrics.jsonl").read_text().splitlines()) == 2
    assert pplvm.load(run_dir).params()["locs"].shape[0] == 3


def test_foreign_files_are_never_deleted(card, tmp_path, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "thesis.tex").write_text("years of work")
    (out / "card.toml").write_text("not a run's card")
    before = tree(out)
    for extra in ([], ["--overwrite"]):
        code, _, err = cli(capsys, "fit", card, "--out", out, *extra)
        assert_one_line(code, err, "thesis.tex", "not a pplvm run")
    assert tree(out) == before


def test_an_empty_directory_is_used(card, tmp_path):
    (tmp_path / "empty").mkdir()
    pplvm.fit(card, out=tmp_path / "empty")
    assert (tmp_path / "empty" / "checkpoint.pt").is_file()


@pytest.mark.parametrize("where", ["file", "under_file"])
def test_out_that_cannot_be_a_directory(card, tmp_path, capsys, where):
    target = card if where == "file" else card / "run"
    before = card.read_bytes()
    code, _, err = cli(capsys, "fit", card, "--out", target)
    assert_one_line(code, err, str(target))
    assert card.read_bytes() == before


def _hold_lock(path: Path) -> subprocess.Popen:
    """Another process that holds ``path``'s run lock until its stdin closes."""
    code = (
        "import sys; from pplvm import rundir\n"
        f"with rundir.locked({str(path)!r}):\n"
        "    print('locked', flush=True); sys.stdin.read()\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=SUBPROCESS_ENV, text=True
    )
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_a_locked_run_is_refused_to_a_second_writer(card, run_dir, capsys):
    before = tree(run_dir)
    holder = _hold_lock(run_dir)
    try:
        code, _, err = cli(capsys, "fit", card, "--out", run_dir, "--overwrite")
        assert_one_line(code, err, str(run_dir), "another pplvm process is writing")
        code, _, err = cli(capsys, "resume", run_dir, "--epochs", 6)
        assert_one_line(code, err, "another pplvm process is writing")
    finally:
        holder.communicate("")
    assert tree(run_dir) == before
    code, _, err = cli(capsys, "resume", run_dir, "--epochs", 5)  # released: the next writer proceeds
    assert code == 0, err


@pytest.mark.slow  # two whole fits in subprocesses; the lock itself is tested across processes above
def test_two_concurrent_fits_into_one_directory(card, tmp_path):
    """Two real `pplvm fit` processes started together: one writes the run, the other is refused
    in one line (the lock, or the run the first has written); metrics are not interleaved."""
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "pplvm.cli", "fit", str(card), "--out", str(out), "--quiet"]
    procs = [
        subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=SUBPROCESS_ENV, text=True)
        for _ in range(2)
    ]
    results = [(p.wait(timeout=300), *p.communicate()) for p in procs]
    codes = sorted(code for code, _, _ in results)
    assert codes == [0, 2], results
    err = next(e for code, _, e in results if code == 2)
    assert err.count("\n") == 1 and "Traceback" not in err
    assert "another pplvm process is writing" in err or "already holds a run" in err
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 4
    pplvm.load(out)


# ---------------------------------------------------------------- checkpoints
@pytest.mark.parametrize(
    "old, new, key",
    [
        ("components = 2", "components = 3", "model.components"),
        ('covariance = "diag"', 'covariance = "full"', "model.covariance"),
        ('kind = "meanfield"', 'kind = "exact"', "guide.kind"),  # a section of the same keys: the card still reads
    ],
)
def test_card_edited_after_training(run_dir, capsys, old, new, key):
    path = run_dir / "card.toml"
    assert old in path.read_text()
    path.write_text(path.read_text().replace(old, new, 1))
    before = tree(run_dir)
    for args in (
        ["evaluate", run_dir],
        ["summary", run_dir],
        ["resume", run_dir, "--epochs", 6],
        ["sample", run_dir, "-n", 2, "--out", run_dir.parent / "s.npy"],
    ):
        if args[0] == "summary":
            (run_dir / "summary.txt").unlink()  # else summary prints the stored text
            before = tree(run_dir)
        code, _, err = cli(capsys, *args)
        assert_one_line(code, err, "card.toml does not match checkpoint.pt", key)
    assert tree(run_dir) == before


def test_checkpoint_from_another_family(run_dir, tmp_path, capsys):
    other = pplvm.fit(HMM_CARD, out=tmp_path / "hmm").run_dir
    shutil.copy(other / "checkpoint.pt", run_dir / "checkpoint.pt")
    before = tree(run_dir)
    for args in (["evaluate", run_dir], ["resume", run_dir, "--epochs", 6]):
        code, _, err = cli(capsys, *args)
        assert_one_line(code, err, "model.family = 'gmm' in card.toml, 'hmm' in the checkpoint")
    assert tree(run_dir) == before


def _strip_fingerprint(path: Path) -> None:
    """Rewrite a checkpoint as one written before fingerprints existed."""
    state = torch.load(path, weights_only=True)
    for key in ("card", "training_card", "data"):
        del state["extras"][key]
    torch.save(state, path)


def test_checkpoint_without_fingerprint_is_still_named(run_dir, capsys):
    _strip_fingerprint(run_dir / "checkpoint.pt")
    pplvm.load(run_dir)  # an unedited old run loads as before
    path = run_dir / "card.toml"
    path.write_text(path.read_text().replace("components = 2", "components = 3", 1))
    before = tree(run_dir)
    for args in (["evaluate", run_dir], ["resume", run_dir, "--epochs", 6]):
        code, _, err = cli(capsys, *args)
        assert_one_line(code, err, "checkpoint.pt does not fit the model card.toml describes")
    assert tree(run_dir) == before


def test_truncated_checkpoint(run_dir, capsys):
    path = run_dir / "checkpoint.pt"
    path.write_bytes(path.read_bytes()[:500])
    before = tree(run_dir)
    code, _, err = cli(capsys, "evaluate", run_dir)
    assert_one_line(code, err, "checkpoint.pt", "not a readable pplvm checkpoint")
    assert tree(run_dir) == before


@pytest.mark.parametrize(
    "epochs, needle", [(2, "fewer than the 4 epochs"), (0, "positive integer"), (-1, "positive integer")]
)
def test_resume_validates_epochs_before_writing(run_dir, capsys, epochs, needle):
    before = tree(run_dir)
    code, _, err = cli(capsys, "resume", run_dir, "--epochs", epochs)
    assert_one_line(code, err, "epochs", needle)
    assert tree(run_dir) == before
    with pytest.raises(ArgumentError):
        pplvm.Run.resume(run_dir, epochs=2.5)
    assert tree(run_dir) == before


def test_resume_to_the_same_budget_trains_nothing(run_dir, capsys):
    code, _, err = cli(capsys, "resume", run_dir, "--epochs", 4)
    assert code == 0, err
    assert len((run_dir / "metrics.jsonl").read_text().splitlines()) == 4


# ------------------------------------------------------------------------ disk
def _enospc(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def test_disk_full_while_writing_inference_data(card, tmp_path, monkeypatch, capsys):
    """The netCDF writer fails half-way (after writing part of its file): one line, the
    temporary file is gone, and the checkpoint written before it is intact."""
    from pplvm.evaluation.arviz import arviz

    cls = type(pplvm.Run.from_card(pplvm.load_card(card)).to_arviz(posterior_predictive=False))

    def half_written(self, path, *args, **kwargs):
        Path(path).write_bytes(b"\x89HDF half a file")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(cls, "to_netcdf", half_written)
    arviz()  # imported before the patch took effect
    out = tmp_path / "run"
    code, _, err = cli(capsys, "fit", card, "--out", out, "--quiet")
    assert_one_line(code, err, str(out), "the disk is full")
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]
    assert not (out / "inference_data.nc").exists()
    assert pplvm.load(out).history[-1]["epoch"] == 4


def test_disk_full_while_checkpointing_a_resume(run_dir, monkeypatch, capsys):
    before = tree(run_dir)
    monkeypatch.setattr(rundir.os, "fsync", _enospc)  # the one writer's flush to disk
    code, _, err = cli(capsys, "resume", run_dir, "--epochs", 6)
    assert_one_line(code, err, str(run_dir), "the disk is full")
    monkeypatch.undo()
    after = tree(run_dir)
    assert after == before  # the old checkpoint, card and metrics stand; no temporary file is left


def test_too_little_free_space_is_refused_up_front(card, tmp_path, monkeypatch, capsys):
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(rundir.shutil, "disk_usage", lambda p: usage._replace(free=2**20))
    out = tmp_path / "run"
    code, _, err = cli(capsys, "fit", card, "--out", out)
    # sized from the model: a run of a few hundred kB asks for a few MiB (it asked for 33)
    assert_one_line(code, err, str(out), "only 1 MiB free on its disk; this run needs about 3 MiB")
    assert not out.exists()


def test_read_only_directory(card, run_dir, tmp_path, monkeypatch, capsys):
    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    before = tree(run_dir)
    monkeypatch.setattr(rundir.tempfile, "mkstemp", read_only)
    out = tmp_path / "ro"
    code, _, err = cli(capsys, "fit", card, "--out", out)
    assert_one_line(code, err, str(out), "read-only")
    assert not out.exists()
    code, _, err = cli(capsys, "resume", run_dir, "--epochs", 6)
    assert_one_line(code, err, str(run_dir), "read-only")
    assert tree(run_dir) == before


def test_samples_under_a_file(run_dir, tmp_path, capsys):
    (tmp_path / "f").write_text("x")
    code, _, err = cli(capsys, "sample", run_dir, "-n", 3, "--out", tmp_path / "f" / "s.npy")
    assert_one_line(code, err, "s.npy", "not a directory")


def test_write_atomic_cleans_up():
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "a.txt"
        path.write_text("old")

        def fails(tmp):
            tmp.write_text("half")
            raise OSError(errno.ENOSPC, "No space left on device")

        with pytest.raises(StorageError, match="the disk is full"):
            rundir.write_atomic(path, fails)
        assert path.read_text() == "old" and sorted(os.listdir(d)) == ["a.txt"]
        with pytest.raises(KeyboardInterrupt):
            rundir.write_atomic(path, lambda tmp: (tmp.write_text("half"), _raise(KeyboardInterrupt())))
        assert path.read_text() == "old" and sorted(os.listdir(d)) == ["a.txt"]


def test_write_atomic_is_the_one_writer(tmp_path, monkeypatch):
    """Bytes, text or a writer function: each lands whole, flushed to disk (the file, then its
    folder) before the rename; a crash at the rename leaves the last good file and no temporary
    file. Checkpoints, cards and figures all go through it."""
    import pplvm.config
    import pplvm.evaluation.plots
    import pplvm.training.checkpoint

    synced = []
    fsync = os.fsync
    monkeypatch.setattr(rundir.os, "fsync", lambda fd: (synced.append(fd), fsync(fd)))
    path = tmp_path / "sub" / "a.bin"
    rundir.write_atomic(path, b"\x00bytes")
    assert path.read_bytes() == b"\x00bytes" and len(synced) == 2  # the file and its folder
    rundir.write_atomic(path, "text ✓")
    assert path.read_text("utf-8") == "text ✓"
    rundir.write_atomic(path, lambda tmp: tmp.write_bytes(b"by a writer"))
    assert path.read_bytes() == b"by a writer" and len(synced) == 6
    monkeypatch.setattr(rundir.os, "replace", lambda *a: _raise(OSError(errno.EIO, "I/O error")))
    with pytest.raises(StorageError, match="a.bin: cannot write"):
        rundir.write_atomic(path, b"new")
    assert path.read_bytes() == b"by a writer" and os.listdir(path.parent) == ["a.bin"]
    for module in (pplvm.config, pplvm.evaluation.plots, pplvm.training.checkpoint):
        assert module.write_atomic is rundir.write_atomic


def _raise(err):
    raise err


# --------------------------------------------------------------------- signals
def test_an_interrupt_something_swallowed_still_stops_the_fit_at_the_next_step(tmp_path):
    """Python drops an exception raised inside a ``__del__`` or a weakref callback, which is where
    a Ctrl-C can land; under the command line's handlers the loop raises it again at its next
    step, so the fit stops (with the usual clean-up) instead of running on."""
    from pplvm import _signals

    (tmp_path / "card.toml").write_text(CARD.replace("epochs = 4", "epochs = 1000\ncheckpoint_every = 1"))
    run = pplvm.Run.from_card(tmp_path / "card.toml")

    def swallow(trainer, metrics):
        if trainer.state.epoch == 2:
            try:  # (SIGTERM: a test run in the background inherits SIGINT ignored)
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(5)  # the handler raises in here
            except KeyboardInterrupt:
                pass  # as a __del__ (or a careless `except BaseException`) would

    with _signals.handling(), pytest.raises(KeyboardInterrupt):
        run.fit(tmp_path / "run", callbacks=[swallow])
    assert run.trainer.state.epoch == 2  # stopped within the third epoch's first step
    assert pplvm.load(tmp_path / "run").history[-1]["epoch"] == 2  # the last checkpoint is whole
    _signals.check()  # leaving handling() forgets the signal: nothing is raised later


@pytest.mark.parametrize(
    "signum, status, word", [(signal.SIGINT, 130, "interrupted"), (signal.SIGTERM, 143, "terminated")]
)
def test_signal_during_fit_keeps_the_last_checkpoint(tmp_path, signum, status, word):
    (tmp_path / "card.toml").write_text(CARD.replace("epochs = 4", "epochs = 100000\ncheckpoint_every = 1"))
    out = tmp_path / "run"
    # SIGINT at its default in the child, however this test was started (a background job or a
    # test worker inherits it ignored, and a process started ignoring it keeps ignoring it)
    with subprocess.Popen(
        [sys.executable, "-m", "pplvm.cli", "fit", str(tmp_path / "card.toml"), "--out", str(out)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=SUBPROCESS_ENV,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    ) as proc:
        try:
            deadline = time.monotonic() + 240
            while not (out / "metrics.jsonl").is_file() or len((out / "metrics.jsonl").read_text().splitlines()) < 3:
                assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
                time.sleep(0.2)
            proc.send_signal(signum)
            _, err = proc.communicate(timeout=120)
        finally:
            proc.kill()  # (a no-op once it has exited)
    assert proc.returncode == status, err
    *before, last = err.strip().splitlines()
    assert last == f"pplvm: {word}; the last checkpoint is kept in {out} — continue with: pplvm resume {out}"
    assert all(line.startswith("pplvm: ") and "error" not in line for line in before), before  # log lines only
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]
    run = pplvm.load(out)  # the checkpoint is whole
    # three metric lines were seen, so epoch 2's checkpoint was complete (epoch 3's may not be)
    assert run.history[-1]["epoch"] >= 2
    with rundir.locked(out):  # the lock was released with the process
        pass
