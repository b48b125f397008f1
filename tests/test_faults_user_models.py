"""A user's model with a fault, met on the command line: ``pplvm fit`` and ``pplvm render`` end
in one line naming the fault (exit status 2, no traceback), and nothing is left on disk — no run
directory (no image), and an existing run replaced with ``--overwrite`` stays byte for byte as
it was. The models are in ``tests/user_faulty_models.py``; modules that fail at import are
written here."""

from __future__ import annotations

import hashlib
import uuid
from pathlib import Path

import numpy as np
import pytest

import pplvm
from pplvm.cli import main

CARD = """
name = "faulty"
[model]
family = "pyro"
target = "{target}"
[guide]
kind = "AutoNormal"
[objective]
name = "elbo"
[data]
source = "file"
path = "x.npy"
[training]
epochs = 2
progress = false
[evaluation]
draws = 5
chains = 2
"""

#: a module's source -> what the one line names (besides model.target)
MODULES = {
    "syntax_error": ("def model(x:\n    pass\n", ["has a syntax error at", ".py:1", "was never closed"]),
    "raises_at_import": ("import os\nraise RuntimeError('no GPU')\n", ["raised RuntimeError: no GPU", ".py:2"]),
    "exits_at_import": ("import sys\nsys.exit(0)\n", ["called sys.exit(0)", ".py:2"]),
}
#: a model in user_faulty_models -> what the one line names
MODELS = {
    "too_wide": ["observed site 'obs'", "has shape (3, 3) but the data it observes have shape (3, 2)"],
    "poisson_on_reals": ["the data lie outside the support of its Poisson"],
    "NaNScale": ["the log-density of the data is NaN"],
    "fails_on_full_batches": ["ValueError: this model cannot take more than 8 rows", "user_faulty_models.py:43"],
    "covariates_from_x": ["site 'obs' depends on the values of x outside the observation"],
}


def tree(path: Path) -> dict[str, str]:
    return {
        str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest() for p in path.rglob("*") if p.is_file()
    }


def one_line(capsys, code: int, *needles: str) -> str:
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("pplvm: error: "), err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


@pytest.fixture
def here(tmp_path, monkeypatch):
    """A working directory with the data (60 real rows, 2 columns) and a card writer."""
    monkeypatch.chdir(tmp_path)
    np.save(tmp_path / "x.npy", np.random.default_rng(0).normal(size=(60, 2)))

    def card(target: str) -> Path:
        path = tmp_path / "card.toml"
        path.write_text(CARD.format(target=target))
        return path

    return card


def _cases():
    for name, (source, needles) in MODULES.items():
        yield pytest.param("module", source, needles, id=name)
    for name, needles in MODELS.items():
        yield pytest.param("model", name, needles, id=name)


@pytest.mark.parametrize("kind, what, needles", list(_cases()))
def test_a_faulty_model_is_one_line_in_fit_and_render_and_leaves_nothing(here, tmp_path, capsys, kind, what, needles):
    if kind == "module":  # a module of the working directory, as a user's own file
        name = f"faulty_{uuid.uuid4().hex[:8]}"
        (tmp_path / f"{name}.py").write_text(what)
        target = f"{name}:model"
        needles = [f"model.target = {target!r}", *needles]
    else:
        target = f"user_faulty_models:{what}"
    card = here(target)
    one_line(capsys, main(["fit", str(card), "--out", "run"]), *needles)
    assert not (tmp_path / "run").exists()
    one_line(capsys, main(["render", str(card), "--out", "model.png"]), *needles)
    assert not (tmp_path / "model.png").exists()


def test_a_fit_failing_in_its_first_epoch_leaves_no_directory_and_an_old_run_untouched(here, tmp_path, capsys):
    """The model passes every probe and the guide's first call (no gradients) and raises in the
    first training step, after the new run's card and checkpoint were written (into the hidden
    folder of the run directory): the fit ends in one line naming the error and where the user's
    code raised it; a new directory is gone, and an old run replaced with --overwrite is as it was."""
    bad = here("user_faulty_models:fails_in_training")
    needles = ["training failed in its first epoch", "RuntimeError: CUDA out of memory", "user_faulty_models.py:"]
    one_line(capsys, main(["fit", str(bad), "--out", "run"]), *needles)
    assert not (tmp_path / "run").exists()

    good = tmp_path / "good.toml"
    good.write_text(CARD.format(target="user_models:normal_mean"))
    assert main(["fit", str(good), "--out", "old", "--quiet"]) == 0
    before = tree(tmp_path / "old")
    one_line(capsys, main(["fit", str(bad), "--out", "old", "--overwrite"]), *needles)
    assert tree(tmp_path / "old") == before
    assert pplvm.load(tmp_path / "old").history[-1]["epoch"] == 2

    with pytest.raises(pplvm.TrainingError, match="first epoch") as info:  # Python keeps the cause
        pplvm.fit(bad, out=tmp_path / "py")
    assert isinstance(info.value.__cause__, RuntimeError) and not (tmp_path / "py").exists()
