"""Bad input, round three (see tests/test_faults.py for the rules: exit status 2, one line
naming the input, no traceback, nothing written): image arrays whose shape or layout the card
contradicts or leaves open, and ``.npy`` files that are not arrays, under every source."""

from __future__ import annotations

import math
import os
import pickle
import re
import shutil
import stat
import time
from pathlib import Path

import numpy as np
import pytest
from test_faults import CARD, FILE_CARD, assert_one_line, cli, tree

import pplvm

IMAGE_CARD = """
name = "images"
[model]
family = "diffusion"
steps = 4
denoiser = "unet"
channels = 4
channel_mult = [1, 2]
embed_dim = 8
{image_shape}
[guide]
kind = "forward"
[objective]
name = "diffusion"
[data]
source = "image_npy"
path = "{path}"
{layout}
[training]
epochs = 1
progress = false
"""


def image_card(tmp_path, array, image_shape=None, layout=None):
    np.save(tmp_path / "x.npy", array)
    text = IMAGE_CARD.format(
        path=tmp_path / "x.npy",
        image_shape=f"image_shape = {image_shape}" if image_shape else "",
        layout=f'layout = "{layout}"' if layout else "",
    )
    (tmp_path / "card.toml").write_text(text)
    return tmp_path / "card.toml"


def pixels(shape):
    return np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)


@pytest.mark.parametrize(
    "image_shape, model",
    [([16, 16], "1 x 16 x 16"), (None, "1 x 16 x 16"), ([1, 8, 32], "1 x 8 x 32"), ([4, 8, 8], None)],
)
def test_a_card_whose_image_shape_disagrees_with_the_data_is_refused(tmp_path, capsys, image_shape, model):
    """(60, 8, 8, 4) RGBA images: 256 values a row, which a 16 x 16 grey image also has."""
    card = image_card(tmp_path, pixels((60, 8, 8, 4)), image_shape)
    if model is None:  # the data's own shape, stated
        assert pplvm.Run.from_card(card).model.image_shape == (4, 8, 8)
        return
    code, _, err = cli(capsys, "fit", card, "--out", tmp_path / "run", "--quiet")
    assert_one_line(code, err, f"the model reads {model} images", "x.npy' holds 4 x 8 x 8 images", "[4, 8, 8]")
    assert not (tmp_path / "run").exists()


def test_an_ambiguous_image_layout_is_refused_until_the_card_says_it(tmp_path, capsys):
    """(60, 3, 8, 8) channel-first images were read as 3 x 8 images of 8 channels."""
    card = image_card(tmp_path, pixels((60, 3, 8, 8)))
    code, _, err = cli(capsys, "fit", card, "--out", tmp_path / "run", "--quiet")
    assert_one_line(code, err, "x.npy", "(60, 3, 8, 8) is ambiguous", 'data.layout = "NHWC" or "NCHW"')
    assert not (tmp_path / "run").exists()
    card = image_card(tmp_path, pixels((60, 3, 8, 8)), [3, 8, 8], layout="NCHW")
    assert pplvm.Run.from_card(card).model.image_shape == (3, 8, 8)


class Thing:  # (pickled below)
    pass


@pytest.mark.parametrize(
    "make, needle",
    [
        (lambda p: p.write_bytes(b""), "the file is empty: 0 bytes"),
        (lambda p: p.write_text("1,2\n3,4\n"), "it is a text file; a CSV table is read from a .csv file"),
        (lambda p: p.write_bytes(pickle.dumps(Thing())), "it has no .npy header"),
        (lambda p: np.savez(p.with_suffix(".npz"), train=np.zeros(3)) or p.with_suffix(".npz").rename(p), "zip"),
        (lambda p: np.save(p, np.array([Thing()], dtype=object), allow_pickle=True), "never unpickled"),
        (lambda p: p.write_bytes(np.lib.format.magic(1, 0) + b"\x10\x00{'descr': '|u1'"), "damaged or truncated"),
    ],
)
@pytest.mark.parametrize("source", ["file", "image_npy"])
def test_a_npy_that_is_not_an_array_is_one_line_under_every_source(tmp_path, capsys, make, needle, source):
    make(tmp_path / "x.npy")
    card = tmp_path / "card.toml"
    card.write_text(FILE_CARD.replace("x.npy", str(tmp_path / "x.npy")).replace('"file"', f'"{source}"'))
    code, _, err = cli(capsys, "fit", card, "--out", tmp_path / "run", "--quiet")
    assert_one_line(code, err, "data.path", "x.npy", "not a plain numeric .npy array", needle)
    assert "allow_pickle" not in err
    assert not (tmp_path / "run").exists()


@pytest.fixture(scope="module")
def gmm_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("gmm")
    (root / "card.toml").write_text(CARD)
    pplvm.fit(root / "card.toml", out=root / "run")
    return root / "run"


def test_two_sample_with_a_huge_n_is_refused_before_drawing(gmm_run, capsys):
    """-n 10^8 asked for a 80 PB kernel after minutes of sampling; the bound is
    evaluation.memory_mb (512 MiB: float64 distances, squares and kernel, 24 bytes a pair)."""
    before = tree(gmm_run)
    start = time.monotonic()
    code, _, err = cli(capsys, "two-sample", gmm_run, "-n", 10**8)
    assert time.monotonic() - start < 10
    most = math.isqrt(512 * 2**20 // 24) - 30  # the 30 rows of the test split beside the samples
    assert_one_line(code, err, "n = 100000000", "evaluation.memory_mb = 512", f"at most n = {most} fit")
    assert tree(gmm_run) == before


def test_a_unet_with_a_level_of_zero_channels_is_a_card_error(tmp_path, capsys):
    card = image_card(tmp_path, pixels((60, 8, 8)), None).read_text().replace("[1, 2]", "[0]")
    (tmp_path / "card.toml").write_text(card)
    code, _, err = cli(capsys, "fit", tmp_path / "card.toml", "--out", tmp_path / "run", "--quiet")
    assert_one_line(code, err, "model.channel_mult.0", "greater than or equal to 1", "got 0")
    assert not (tmp_path / "run").exists()


def test_a_sequence_file_given_to_a_model_of_rows_says_so(tmp_path, capsys):
    """It reported "expected 2 columns, got 0"."""
    np.savez(tmp_path / "seq.npz", train=np.zeros((40, 2)), train_lengths=np.array([10, 10, 20]))
    text = CARD.replace(
        'source = "synthetic_gmm"\nn = 150\ncomponents = 2',
        f'source = "sequence_file"\npath = "{tmp_path / "seq.npz"}"',
    )
    (tmp_path / "card.toml").write_text(text)
    code, _, err = cli(capsys, "fit", tmp_path / "card.toml", "--out", tmp_path / "run", "--quiet")
    assert_one_line(code, err, "data (training split): expected a table of rows (N, D), got", "sequences")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    "args, option",
    [
        (["sample", "{run}", "-n", 4, "--out", "{tmp}/s.npy", "--grid", "{tmp}/grid.jpg"], "--grid"),
        (["evaluate", "{run}", "--plot", "{tmp}/terms.pdf"], "--plot"),
        (["render", "{card}", "--out", "{tmp}/model.svg"], "--out"),
        (["compare", "{run}", "{run}", "--plot", "{tmp}/c"], "--plot"),
    ],
)
def test_a_plot_file_not_named_png_is_refused_before_anything_is_written(gmm_run, tmp_path, capsys, args, option):
    """Plots are PNG bytes; they were written under any suffix."""
    (tmp_path / "card.toml").write_text(CARD)
    fill = {"run": str(gmm_run), "tmp": str(tmp_path), "card": str(tmp_path / "card.toml")}
    before = tree(gmm_run)
    code, _, err = cli(capsys, *[a.format(**fill) if isinstance(a, str) else a for a in args])
    assert_one_line(code, err, option, "plots are written as PNG; give a file name ending in .png")
    assert tree(gmm_run) == before and sorted(p.name for p in tmp_path.iterdir()) == ["card.toml"]


def test_sample_grid_of_a_model_without_images_writes_nothing(gmm_run, tmp_path, capsys):
    """It wrote --out, then refused the grid."""
    code, _, err = cli(capsys, "sample", gmm_run, "-n", 4, "--out", tmp_path / "s.npy", "--grid", tmp_path / "g.png")
    assert_one_line(code, err, "--grid: model.family = 'gmm'", "has no image shape")
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------ resume, tampered with
@pytest.fixture(scope="module")
def file_runs(tmp_path_factory):
    """Two runs on x.npy that differ only in their seed."""
    root = tmp_path_factory.mktemp("file_runs")
    np.save(root / "x.npy", np.random.default_rng(0).normal(size=(60, 2)))
    (root / "card.toml").write_text(FILE_CARD.replace("x.npy", str(root / "x.npy")))
    for seed in (0, 1):
        pplvm.fit(root / "card.toml", out=root / f"seed{seed}", overrides=[f"training.seed={seed}"])
    return root


@pytest.mark.parametrize(
    "edit, needle",
    [
        ((r"(?m)^lr = .*$", "lr = 0.5"), "training.lr = 0.5 in card.toml, 0.01 in the checkpoint"),
        ((r"(?m)^seed = 0$", "seed = 7"), "training.seed = 7 in card.toml, 0 in the checkpoint"),
        ((r"x\.npy", "y.npy"), "y.npy' in card.toml"),
    ],
)
def test_resume_refuses_a_card_edited_since_training(file_runs, tmp_path, capsys, edit, needle):
    run = tmp_path / "run"
    shutil.copytree(file_runs / "seed0", run)
    shutil.copy(file_runs / "x.npy", file_runs / "y.npy")  # the same data under another name
    text = (run / "card.toml").read_text()
    (run / "card.toml").write_text(re.sub(edit[0], edit[1], text, count=1))
    before = tree(run)
    code, _, err = cli(capsys, "resume", run, "--epochs", 6)
    assert_one_line(code, err, "card.toml differs from the card checkpoint.pt was trained with", needle)
    assert tree(run) == before


def test_resume_refuses_the_checkpoint_of_a_run_with_another_seed(file_runs, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(file_runs / "seed0", run)
    shutil.copy(file_runs / "seed1" / "checkpoint.pt", run / "checkpoint.pt")
    before = tree(run)
    code, _, err = cli(capsys, "resume", run, "--epochs", 6)
    assert_one_line(code, err, "training.seed = 0 in card.toml, 1 in the checkpoint")
    assert tree(run) == before


@pytest.mark.parametrize(
    "change, now",
    [
        (lambda x: x[::-1], "48 rows of shape (2,)"),  # the same rows, another order: another split
        (lambda x: np.concatenate([x, x]), "96 rows of shape (2,)"),
        (lambda x: np.concatenate([x, x], 1), "48 rows of shape (4,)"),
    ],
)
def test_resume_refuses_other_data_at_the_same_path(file_runs, tmp_path, capsys, change, now):
    run = tmp_path / "run"
    shutil.copytree(file_runs / "seed0", run)
    np.save(tmp_path / "x.npy", change(np.load(file_runs / "x.npy")))
    (run / "card.toml").write_text((run / "card.toml").read_text().replace(str(file_runs), str(tmp_path)))
    # (data.path is part of the card: the fingerprint it is checked against is the run's own)
    from pplvm.training.checkpoint import load_checkpoint, save_checkpoint

    ckpt = load_checkpoint(run / "checkpoint.pt")
    ckpt["extras"]["training_card"]["data.path"] = str(tmp_path / "x.npy")
    save_checkpoint(run / "checkpoint.pt", ckpt)
    before = tree(run)
    code, _, err = cli(capsys, "resume", run, "--epochs", 6)
    assert_one_line(code, err, "the training data are not those the run was trained on (48 rows of shape (2,)", now)
    assert tree(run) == before


@pytest.mark.parametrize(
    "override, line",
    [
        ("model.transforms=[]", "model.transforms: expected at least one transform"),
        ("model.dequantize='none'", "model.levels (discrete values per dimension) is set exactly when"),
        ("model.hidden=[]", "model.hidden: List should have at least 1 item"),
    ],
)
def test_a_flow_card_error_names_the_key_not_the_whole_section(tmp_path, capsys, override, line):
    card = Path(pplvm.__file__).parents[1] / "models" / "flow_digits.toml"
    code, _, err = cli(capsys, "fit", card, "--out", tmp_path / "run", "--quiet", "--set", override)
    assert_one_line(code, err, f"invalid card: {line}")
    assert "'family'" not in err and "Value error" not in err
    assert not (tmp_path / "run").exists()


# ------------------------------------------------------------ a damaged run directory
@pytest.mark.parametrize(
    "damage, line",
    [
        (lambda t: t.replace("}\n", "}\n\x00\xff garbage\n", 1), "line 2"),
        (lambda t: t[: len(t) // 2], "line 2"),  # cut in the middle of a record
        (lambda t: "", "has 0 epochs of metrics but the checkpoint has 4"),
    ],
)
def test_a_damaged_metric_history_costs_only_itself(gmm_run, tmp_path, capsys, damage, line):
    """evaluate and sample need no history: they work; resume says what is damaged and what is not."""
    run = tmp_path / "run"
    shutil.copytree(gmm_run, run)
    path = run / "metrics.jsonl"
    path.write_bytes(damage(path.read_text()).encode("utf-8", "surrogateescape"))
    before = tree(run)
    assert cli(capsys, "evaluate", run)[0] == 0
    assert cli(capsys, "sample", run, "-n", 3, "--out", tmp_path / "s.npy")[0] == 0
    code, _, err = cli(capsys, "resume", run, "--epochs", 6)
    assert_one_line(code, err, "metrics.jsonl", line, "not its checkpoint, so evaluate and sample still work")
    assert tree(run) == before


def test_summary_notices_a_truncated_checkpoint(gmm_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(gmm_run, run)
    (run / "checkpoint.pt").write_bytes((run / "checkpoint.pt").read_bytes()[:500])
    code, _, err = cli(capsys, "summary", run)
    assert_one_line(code, err, "checkpoint.pt", "not a readable pplvm checkpoint")


def test_run_files_follow_the_umask(tmp_path):
    """Every file of a run is created as open() would create it (mode 0o666 less the umask):
    they were 0600 beside 0644 files."""
    (tmp_path / "card.toml").write_text(CARD)
    old = os.umask(0o027)
    try:
        pplvm.fit(tmp_path / "card.toml", out=tmp_path / "run", overrides=["training.epochs=1"])
    finally:
        os.umask(old)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in (tmp_path / "run").iterdir()}
    assert {"card.toml", "checkpoint.pt", "metrics.jsonl", "summary.txt"} <= set(modes)
    assert set(modes.values()) == {0o640}, modes


@pytest.mark.parametrize("rank, lines", [("0", 1), ("1", 0)])
def test_under_torchrun_rank_0_alone_reports_bad_input(tmp_path, capsys, monkeypatch, rank, lines):
    """Every process meets the same bad card; the line was printed once per process."""
    monkeypatch.setenv("RANK", rank)
    (tmp_path / "card.toml").write_text(CARD.replace("components = 2", "components = 0", 1))
    code, _, err = cli(capsys, "fit", tmp_path / "card.toml", "--out", tmp_path / "run", "--quiet")
    assert code == 2 and len(err.strip().splitlines()) == lines and "Traceback" not in err
    assert not (tmp_path / "run").exists()
