"""Every ``pplvm`` command README.md and the documentation's pages (docs/) show, README's Python,
and every card shipped in models/ run exactly as written — the words a shell would pass, no
``--quiet`` — in a fresh directory, with exit status 0 and no traceback. ``PPLVM_MAX_EPOCHS``
(honoured by every fit and resume) keeps the epochs short; files a command names as placeholders
(``my.npy``) or a card needs from the user (the MNIST IDX files, a binarized MNIST .npz) are
generated first, at the paths written.

A plain ``pplvm ...`` line runs in this process through :func:`pplvm.cli.main`, with the argv
the shell would build (``shlex``: quotes, comments) — the same code path as the console script
less the interpreter's start-up (torch's import, seconds a command). A line that needs a shell
(pipes, redirections, variables) runs through ``bash``. The process boundary itself (exit codes,
signals, locks, the console script) is tested in test_cli.py and test_faults.py."""

from __future__ import annotations

import contextlib
import io
import os
import re
import shlex
import shutil
import stat
import subprocess
import sys
import traceback
import warnings
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
CARDS = sorted((ROOT / "models").glob("*.toml"))
EPOCHS = "2"


#: what a user reads: README.md and the documentation's pages (not the generated build)
PAGES = [ROOT / "README.md", *sorted(p for p in (ROOT / "docs").rglob("*.md") if "_build" not in p.parts)]


def readme_commands() -> list[str]:
    """The ``pplvm ...`` lines of the bash blocks of README.md and of every page under docs/, in
    order (comments kept: the shell drops them)."""
    blocks = [b for page in PAGES for b in re.findall(r"```bash\n(.*?)```", page.read_text(), flags=re.S)]
    lines = [line.strip() for block in blocks for line in re.sub(r"\\\n\s*", "", block).splitlines()]
    return [line for line in lines if line.startswith("pplvm ")]


def mnist_idx_files(where: Path) -> None:
    """Small stand-ins for the MNIST IDX files at the paths models/vae_mnist_iwae.toml names:
    60 training and 20 test 28 x 28 images of random strokes, with labels."""
    from pplvm.data.images import write_idx

    rng = np.random.default_rng(0)
    (where / "data" / "mnist").mkdir(parents=True, exist_ok=True)
    for prefix, n in (("train", 60), ("t10k", 20)):
        images = (rng.random((n, 28, 28)) < 0.15).astype(np.uint8) * 255
        write_idx(where / "data" / "mnist" / f"{prefix}-images-idx3-ubyte.gz", images)
        write_idx(where / "data" / "mnist" / f"{prefix}-labels-idx1-ubyte.gz", rng.integers(0, 10, n).astype(np.uint8))


def binarized_mnist_file(where: Path) -> None:
    """A small stand-in for the binarized MNIST .npz that models/*_binarized_mnist.toml name:
    60 training and 20 validation images of random strokes."""
    rng = np.random.default_rng(0)
    (where / "data" / "binarized_mnist").mkdir(parents=True, exist_ok=True)
    np.savez(
        where / "data" / "binarized_mnist" / "train_valid.npz",
        train=(rng.random((60, 784)) < 0.15).astype(np.uint8),
        valid=(rng.random((20, 784)) < 0.15).astype(np.uint8),
    )


def cifar10_files(where: Path) -> None:
    """Small stand-ins for the CIFAR-10 binary batches models/*_cifar10.toml name: 5 training
    batches of 8 random 3 x 32 x 32 images and a test batch of 4 (one label byte a record)."""
    rng = np.random.default_rng(0)
    folder = where / "data" / "cifar-10-batches-bin"
    folder.mkdir(parents=True, exist_ok=True)
    for name, n in [(f"data_batch_{i}.bin", 8) for i in range(1, 6)] + [("test_batch.bin", 4)]:
        records = np.concatenate([rng.integers(0, 10, (n, 1)), rng.integers(0, 256, (n, 3072))], axis=1)
        (folder / name).write_bytes(records.astype(np.uint8).tobytes())


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A fresh directory holding models/ (as a user's checkout does), the placeholder files,
    and a ``pplvm`` on PATH that runs this interpreter's pplvm."""
    where = tmp_path_factory.mktemp("user")
    shutil.copytree(ROOT / "models", where / "models")
    np.save(where / "my.npy", np.random.default_rng(1).normal(size=(12, 4)) + 5.0)  # 4 iris-like columns
    mnist_idx_files(where)
    binarized_mnist_file(where)
    cifar10_files(where)
    bin_dir = where / "bin"
    bin_dir.mkdir()
    shim = bin_dir / "pplvm"
    shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m pplvm.cli "$@"\n')
    shim.chmod(shim.stat().st_mode | stat.S_IEXEC)
    return where


#: words after which a line is no longer one plain command
SHELL_SYNTAX = re.compile(r"[|&;<>$`(){}]")


def run_as_user(command: str, where: Path) -> subprocess.CompletedProcess:
    """Run a README line in ``where``: in process when it is one plain ``pplvm`` command, else
    through bash. Warnings behave as in a user's process (shown once), RuntimeWarnings fail."""
    words = shlex.split(command, comments=True)
    plain = words[:1] == ["pplvm"] and not SHELL_SYNTAX.search(command.split("#", 1)[0])
    return in_process(words[1:], where) if plain else in_shell(command, where)


def in_process(argv: list[str], where: Path) -> subprocess.CompletedProcess:
    from pplvm import cli

    out, err = io.StringIO(), io.StringIO()
    env = {"PPLVM_MAX_EPOCHS": EPOCHS}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        with contextlib.chdir(where), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            with warnings.catch_warnings():
                warnings.simplefilter("default")
                warnings.filterwarnings("error", category=RuntimeWarning)
                try:
                    code = cli.main(argv)
                except SystemExit as stop:  # argparse
                    code = stop.code if isinstance(stop.code, int) else 2
                except Exception:  # what a user would see: a traceback
                    traceback.print_exc(file=err)
                    code = 1
    finally:
        for k, v in saved.items():
            os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)
    return subprocess.CompletedProcess(["pplvm", *argv], code, out.getvalue(), err.getvalue())


def in_shell(command: str, where: Path) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "PATH": f"{where / 'bin'}{os.pathsep}{os.environ['PATH']}",
        "PPLVM_MAX_EPOCHS": EPOCHS,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
        "PYTHONWARNINGS": "error::RuntimeWarning",
    }
    return subprocess.run(["bash", "-c", command], cwd=where, env=env, capture_output=True, text=True, timeout=900)


def check(proc: subprocess.CompletedProcess, command: str) -> None:
    assert proc.returncode == 0, f"{command}\n{proc.stderr[-3000:]}"
    assert "Traceback" not in proc.stderr + proc.stdout, f"{command}\n{proc.stderr[-3000:]}"
    assert proc.stdout.strip(), command  # every command says what it did


def test_readme_python_runs_as_written(workdir, tmp_path):
    """README's Python blocks, in one fresh interpreter in a copy of the user's directory."""
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)
    assert blocks
    where = tmp_path / "user"
    shutil.copytree(workdir, where, ignore=shutil.ignore_patterns("runs"))
    (where / "taste.py").write_text("\n\n".join(blocks))
    proc = in_shell(f"{shlex.quote(sys.executable)} taste.py", where)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr[-3000:]


def test_readme_shows_commands():
    commands = readme_commands()
    assert any(c.startswith("pplvm fit models/ppca_bayes_wine.toml --out runs/ppca3") for c in commands)
    assert len(commands) >= 10


def command_groups() -> dict[str, list[str]]:
    """README's commands in independent groups, each in README order: commands that name the same
    run directory (``runs/...``, linked through ``pplvm compare``) share a group, so a fit runs
    before the commands that read its run. The groups run apart (on any test worker)."""
    parent: dict[str, str] = {}

    def root(key: str) -> str:
        while parent.setdefault(key, key) != key:
            key = parent[key]
        return key

    keys = []
    for i, command in enumerate(readme_commands()):
        runs = re.findall(r"\bruns/[\w.-]+", command.split("#", 1)[0]) or [f"{command.split()[1]}#{i}"]
        for other in runs[1:]:
            parent[root(other)] = root(runs[0])
        keys.append(runs[0])
    groups: dict[str, list[str]] = {}
    for key, command in zip(keys, readme_commands()):
        groups.setdefault(root(key), []).append(command)
    return {key.removeprefix("runs/").split("#")[0] + f"-{n}": cmds for n, (key, cmds) in enumerate(groups.items())}


def test_readme_groups_keep_every_command_once():
    flat = [c for cmds in command_groups().values() for c in cmds]
    assert sorted(flat) == sorted(readme_commands())
    assert len(command_groups()) >= 5  # independent enough to spread over workers


def files_written(command: str) -> list[str]:
    """The files a command says it writes (``--out x.npy``, ``--plot x.png``, ``--grid x.png``)."""
    return re.findall(r"--(?:out|plot|grid) (\S+\.(?:npy|csv|png))", command.split("#", 1)[0])


@pytest.mark.parametrize("group", list(command_groups()))
def test_every_readme_command_runs_as_written(group, workdir, tmp_path):
    """Each group in a fresh copy of the user's directory, in README order."""
    where = tmp_path / "user"
    shutil.copytree(workdir, where, ignore=shutil.ignore_patterns("runs"))  # no other test's runs
    for command in command_groups()[group]:
        check(run_as_user(command, where), command)
        if plain := PLAIN_FIT.match(command.split("#", 1)[0].strip()):  # a shipped card as written
            check_card_run(ROOT / "models" / f"{plain[1]}.toml", where / plain[2])
        for name in files_written(command):
            assert (where / name).stat().st_size > 0, f"{command}: wrote no {name}"
        if command.startswith("pplvm sbc "):
            card = Path(shlex.split(command)[2]).stem
            assert (where / f"sbc_{card}.png").stat().st_size > 0
    if (where / "samples.npy").exists():
        assert np.load(where / "samples.npy").shape == (1000, 4)


#: ``pplvm fit models/CARD.toml --out DIR`` with nothing else: a shipped card fitted as written
PLAIN_FIT = re.compile(r"^pplvm fit models/([\w-]+)\.toml --out (\S+)$")


def cards_fitted_by_readme() -> dict[str, str]:
    """The shipped cards README fits as written (card stem -> its command): their test is the
    README command's, so each card is fitted once."""
    plain = (PLAIN_FIT.match(c.split("#", 1)[0].strip()) for c in readme_commands())
    return {m[1]: m[0] for m in plain if m}


def check_card_run(card: Path, run_dir: Path) -> None:
    """A card fitted as written left a complete run directory that this Python's arviz reads
    (a card with ``evaluation.export = false``: no arviz file, as it asks)."""
    from pplvm import load_card
    from pplvm.evaluation.arviz import groups, read_inference_data
    from pplvm.families import FAMILIES

    for name in ("card.toml", "checkpoint.pt", "metrics.jsonl", "loss.png", "summary.txt"):
        assert (run_dir / name).is_file(), name
    if not load_card(card).evaluation.export:
        assert not (run_dir / "inference_data.nc").exists()
    else:
        idata = read_inference_data(run_dir / "inference_data.nc")  # readable by this Python's arviz
        assert "observed_data" in groups(idata)
        if FAMILIES[load_card(card).model.family].likelihood == "none":  # an implicit density: no such group
            assert "log_likelihood" not in groups(idata)
        else:
            assert idata.log_likelihood["obs"].shape[-1] == idata.observed_data["obs"].shape[0]
    assert len((run_dir / "metrics.jsonl").read_text().splitlines()) <= int(EPOCHS)


def test_every_shipped_card_is_fitted_by_one_test():
    by_readme = cards_fitted_by_readme()
    assert by_readme and set(by_readme) <= {c.stem for c in CARDS}
    assert {c.stem for c in CARDS} == set(by_readme) | {c.stem for c in CARDS_LEFT}


CARDS_LEFT = [c for c in CARDS if c.stem not in cards_fitted_by_readme()]


@pytest.mark.parametrize("card", CARDS_LEFT, ids=lambda p: p.stem)
def test_every_shipped_card_fits_as_written(card, workdir):
    """The cards README does not fit as written (the others are checked where README fits them)."""
    command = f"pplvm fit models/{card.name} --out runs/card_{card.stem}"
    check(run_as_user(command, workdir), command)
    check_card_run(card, workdir / "runs" / f"card_{card.stem}")


def test_max_epochs_caps_each_fit_and_resume(tmp_path, monkeypatch):
    import pplvm

    card = {
        "model": {"family": "gmm", "components": 2},
        "objective": {"name": "enum"},
        "data": {"source": "synthetic_gmm", "n": 60, "components": 2},
        "training": {"epochs": 10, "progress": False},
        "evaluation": {"draws": 5, "chains": 2},
    }
    monkeypatch.setenv("PPLVM_MAX_EPOCHS", "3")
    run = pplvm.fit(card, tmp_path / "r")
    assert len(run.history) == 3 and pplvm.load_card(tmp_path / "r" / "card.toml").training.epochs == 3
    resumed = pplvm.Run.resume(tmp_path / "r", epochs=10)  # three more
    assert len(resumed.history) == 6 and resumed.card.training.epochs == 6
    monkeypatch.setenv("PPLVM_MAX_EPOCHS", "two")
    with pytest.raises(pplvm.CardError, match="PPLVM_MAX_EPOCHS='two': expected a positive integer"):
        pplvm.fit(card)
