"""Image sources: digits, binarized MNIST (.amat, .npz) and MNIST IDX files written to tmp
dirs, their explicit splits, dynamic binarization, and clear errors on bad files."""

from __future__ import annotations

import gzip
import math

import numpy as np
import pytest
import torch

import pplvm
from pplvm.config import TrainingConfig
from pplvm.data import Batch, Binarize, load_dataset
from pplvm.data.images import (
    BinarizedMnistConfig,
    DigitsConfig,
    MnistIdxConfig,
    read_amat,
    read_cifar10,
    read_idx,
    read_image_npy,
    read_npz,
    write_amat,
    write_idx,
)
from pplvm.errors import DataError
from pplvm.training.rules import SVIStep
from pplvm.training.trainer import Trainer


def binary_images(n: int, seed: int = 0, pixels: int = 784) -> np.ndarray:
    return (np.random.default_rng(seed).random((n, pixels)) < 0.3).astype(np.float64)


# ---------------------------------------------------------------------- digits
def test_digits_are_grey_in_unit_interval_with_labels():
    d = load_dataset(DigitsConfig(valid_fraction=0.2, test_fraction=0.1))
    assert d.dim == 64 and len(d.train) + len(d.valid) + len(d.test) == 1797
    assert d.train.min() == 0 and d.train.max() == 1 and len(d.train.unique()) == 17  # 0/16 .. 16/16
    assert d.labels["train"].shape == (len(d.train),) and set(d.labels["train"].tolist()) == set(range(10))


@pytest.mark.parametrize("how", ["threshold", "static"])
def test_load_time_binarization_is_binary_and_fixed(how):
    a, b = load_dataset(DigitsConfig(binarize=how)), load_dataset(DigitsConfig(binarize=how))
    assert set(a.train.unique().tolist()) == {0.0, 1.0}
    assert torch.equal(a.train, b.train)
    grey = load_dataset(DigitsConfig())
    if how == "threshold":
        assert torch.equal(a.train, (grey.train > 0.5).float())
    else:  # a Bernoulli(x) draw: pixels at 0 and 1 are kept, the mean matches the grey mean
        assert torch.equal(a.train[grey.train == 0], grey.train[grey.train == 0])
        assert torch.equal(a.train[grey.train == 1], grey.train[grey.train == 1])
        assert abs(float(a.train.mean() - grey.train.mean())) < 4 * math.sqrt(0.25 / grey.train.numel())


# --------------------------------------------------------- dynamic binarization
def test_binarize_draws_fresh_bernoulli_samples_with_the_right_mean():
    p = torch.tensor([[0.0, 0.1, 0.5, 0.9, 1.0]]).expand(4000, 5)
    g = torch.Generator().manual_seed(0)
    a, b = Binarize()(p, g), Binarize()(p, g)
    assert set(a.unique().tolist()) == {0.0, 1.0} and not torch.equal(a, b)
    se = (p[0] * (1 - p[0]) / len(p)).sqrt()
    assert ((a.mean(0) - p[0]).abs() <= 4 * se + 1e-12).all()  # exact at p = 0 and 1
    batch = Binarize()(Batch(p[:3], y=torch.arange(3)), g)
    assert torch.equal(batch.y, torch.arange(3)) and set(batch.x.unique().tolist()) <= {0.0, 1.0}


def test_dynamic_binarization_keeps_train_grey_and_fixes_held_out_draws():
    d = load_dataset(DigitsConfig(binarize="dynamic", valid_fraction=0.2, test_fraction=0.1))
    assert isinstance(d.augment, Binarize)
    assert len(d.train.unique()) == 17  # grey: drawn from each batch
    again = load_dataset(DigitsConfig(binarize="dynamic", valid_fraction=0.2, test_fraction=0.1))
    for split in ("valid", "test"):
        assert set(getattr(d, split).unique().tolist()) == {0.0, 1.0}
        assert torch.equal(getattr(d, split), getattr(again, split))
    with pytest.raises(DataError, match=r"data.standardize = true cannot be combined with .*\(Binarize\)"):
        load_dataset(DigitsConfig(binarize="dynamic", standardize=True))


def test_trainer_redraws_every_batch_each_epoch():
    """The trainer feeds the objective augmented batches: every batch of every epoch is a new
    Bernoulli draw of the grey rows, from its own (checkpointed) generator."""
    x = torch.full((6, 3), 0.5)
    seen = []

    def loss_fn(model, guide, batch, num_data=None):
        seen.append(batch.clone())
        return (model.w * 0).sum() + batch.sum()

    class Objective:
        def __call__(self, model, guide):
            return _Loss(model, guide, loss_fn)

    model = torch.nn.Module()
    model.w = torch.nn.Parameter(torch.zeros(1))
    config = TrainingConfig(epochs=2, batch_size=3, progress=False)
    trainer = Trainer(model, _NoGuide(), SVIStep(model, _NoGuide(), Objective(), config), config, augment=Binarize())
    trainer.fit(x)
    assert len(seen) == 4 and all(set(s.unique().tolist()) <= {0.0, 1.0} for s in seen)
    assert len({tuple(s.flatten().tolist()) for s in seen}) == 4  # 4 distinct draws (2^9 outcomes each)
    assert "augment" in trainer.state_dict()["rng"]


class _Loss(torch.nn.Module):
    def __init__(self, model, guide, fn):
        super().__init__()
        self.model, self.guide, self.fn = model, guide, fn

    def forward(self, batch, num_data=None):
        return self.fn(self.model, self.guide, batch, num_data)


class _NoGuide(torch.nn.Module):
    def forward(self, *args, **kwargs):
        return None


# ------------------------------------------------------------------------ amat
def test_amat_round_trip_and_explicit_splits(tmp_path):
    train, valid, test = binary_images(7, 0), binary_images(3, 1), binary_images(2, 2)
    for name, a in (("train", train), ("valid", valid), ("test", test)):
        write_amat(tmp_path / f"{name}.amat", a)
    np.testing.assert_array_equal(read_amat(tmp_path / "train.amat"), train)
    cfg = BinarizedMnistConfig(
        path=str(tmp_path / "train.amat"),
        valid_path=str(tmp_path / "valid.amat"),
        test_path=str(tmp_path / "test.amat"),
        valid_fraction=0.5,
    )
    d = load_dataset(cfg)
    # given splits are used as they are: no rows move between files, valid_fraction is unused
    assert len(d.train) == 7 and torch.equal(d.valid, torch.as_tensor(valid, dtype=torch.float32))
    assert torch.equal(d.test, torch.as_tensor(test, dtype=torch.float32))
    assert sorted(map(tuple, d.train.tolist())) == sorted(map(tuple, train.tolist()))
    only_train = load_dataset(BinarizedMnistConfig(path=str(tmp_path / "train.amat"), valid_fraction=0.3))
    assert (len(only_train.train), len(only_train.valid), only_train.test) == (5, 2, None)


def test_amat_errors_name_the_field_and_line(tmp_path):
    rows = binary_images(3)
    path = tmp_path / "bad.amat"
    lines = [" ".join(str(int(v)) for v in r) for r in rows]
    path.write_text("\n".join([lines[0], " ".join(lines[1].split()[:780]), lines[2]]))
    with pytest.raises(DataError, match=r"data.path '.*bad.amat' line 2: expected 784 values .* got 780"):
        read_amat(path)
    path.write_text("\n".join([lines[0], lines[1].replace("0", "0.5", 1)]))
    with pytest.raises(DataError, match=r"data.path .* must hold only 0 and 1, but row 1 holds 0.5"):
        read_amat(path)
    path.write_text(lines[0].replace("0", "nan", 1))
    with pytest.raises(DataError, match="must hold only 0 and 1, but row 0 holds nan"):
        read_amat(path)
    write_amat(tmp_path / "good.amat", rows)
    with pytest.raises(DataError, match="data.valid_path '.*missing.amat': no such file"):
        load_dataset(BinarizedMnistConfig(path=str(tmp_path / "good.amat"), valid_path=str(tmp_path / "missing.amat")))


# ------------------------------------------------------------------------- npz
def test_npz_round_trip_and_explicit_splits(tmp_path):
    parts = {"train": binary_images(6, 0), "valid": binary_images(2, 1), "test": binary_images(3, 2)}
    np.savez(tmp_path / "mnist.npz", **parts)
    back = read_npz(tmp_path / "mnist.npz")
    assert sorted(back) == ["test", "train", "valid"]
    for k in parts:
        np.testing.assert_array_equal(back[k], parts[k])
    d = load_dataset(BinarizedMnistConfig(path=str(tmp_path / "mnist.npz")))
    assert (len(d.train), len(d.valid), len(d.test)) == (6, 2, 3)
    assert torch.equal(d.test, torch.as_tensor(parts["test"], dtype=torch.float32))


def test_npz_errors(tmp_path):
    np.savez(tmp_path / "a.npz", images=binary_images(2))
    with pytest.raises(DataError, match=r"expected an array named 'train' .* holds \['images'\]"):
        read_npz(tmp_path / "a.npz")
    np.savez(tmp_path / "b.npz", train=binary_images(2, pixels=64))
    with pytest.raises(DataError, match=r"array 'train' has shape \(2, 64\); expected \(N, 784\)"):
        read_npz(tmp_path / "b.npz")
    np.savez(tmp_path / "c.npz", train=np.full((2, 784), 0.5))
    with pytest.raises(DataError, match="array 'train': binarized MNIST must hold only 0 and 1"):
        read_npz(tmp_path / "c.npz")


# ------------------------------------------------------------------------- IDX
@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_idx_round_trip(tmp_path, suffix):
    images = np.random.default_rng(0).integers(0, 256, size=(5, 28, 28), dtype=np.uint8)
    labels = np.array([3, 1, 4, 1, 5], dtype=np.uint8)
    write_idx(tmp_path / f"images{suffix}", images)
    write_idx(tmp_path / f"labels{suffix}", labels)
    np.testing.assert_array_equal(read_idx(tmp_path / f"images{suffix}"), images)
    np.testing.assert_array_equal(read_idx(tmp_path / f"labels{suffix}"), labels)
    if suffix:  # really gzip: the header sits behind gzip's magic number
        assert (tmp_path / "images.gz").read_bytes()[:2] == b"\x1f\x8b"
        assert gzip.decompress((tmp_path / "images.gz").read_bytes())[:4] == bytes([0, 0, 8, 3])


def test_mnist_idx_source_scales_pixels_and_keeps_the_test_file_as_test(tmp_path):
    rng = np.random.default_rng(1)
    tr, te = rng.integers(0, 256, (10, 28, 28), dtype=np.uint8), rng.integers(0, 256, (4, 28, 28), dtype=np.uint8)
    files = {"tr-img.gz": tr, "tr-lab.gz": np.arange(10), "te-img.gz": te, "te-lab.gz": np.arange(4)}
    for name, a in files.items():
        write_idx(tmp_path / name, a)
    cfg = MnistIdxConfig(
        images=str(tmp_path / "tr-img.gz"),
        labels=str(tmp_path / "tr-lab.gz"),
        test_images=str(tmp_path / "te-img.gz"),
        test_labels=str(tmp_path / "te-lab.gz"),
        valid_fraction=0.2,
        test_fraction=0.5,
    )
    d = load_dataset(cfg)
    assert (len(d.train), len(d.valid), len(d.test)) == (8, 2, 4)  # test_fraction unused: the file is the test set
    torch.testing.assert_close(d.test, torch.as_tensor(te.reshape(4, -1) / 255.0, dtype=torch.float32))
    assert torch.equal(d.labels["test"], torch.arange(4))
    assert d.info["image_shape"] == [28, 28]
    dyn = load_dataset(cfg.model_copy(update={"binarize": "dynamic"}))
    assert isinstance(dyn.augment, Binarize) and set(dyn.test.unique().tolist()) == {0.0, 1.0}


def test_idx_errors_name_the_field(tmp_path):
    (tmp_path / "junk").write_bytes(b"\x01\x02\x03\x04rest")
    with pytest.raises(DataError, match="data.images '.*junk': not an IDX file"):
        load_dataset(MnistIdxConfig(images=str(tmp_path / "junk")))
    good = np.zeros((3, 28, 28), dtype=np.uint8)
    write_idx(tmp_path / "img", good)
    (tmp_path / "short").write_bytes((tmp_path / "img").read_bytes()[:-5])
    with pytest.raises(DataError, match=r"header says shape \(3, 28, 28\) but the file holds 2347 bytes"):
        read_idx(tmp_path / "short")
    write_idx(tmp_path / "lab", np.zeros(2, dtype=np.uint8))
    with pytest.raises(DataError, match=r"data.labels '.*lab': expected 3 labels \(one per image\)"):
        load_dataset(MnistIdxConfig(images=str(tmp_path / "img"), labels=str(tmp_path / "lab")))
    (tmp_path / "x.gz").write_bytes(b"not gzip")
    with pytest.raises(DataError, match="data.images '.*x.gz': not a gzip file"):
        read_idx(tmp_path / "x.gz")
    write_idx(tmp_path / "img16", np.zeros((3, 16, 16), dtype=np.uint8))
    with pytest.raises(DataError, match="data.test_images: images are 16 x 16 but the training images are 28 x 28"):
        load_dataset(MnistIdxConfig(images=str(tmp_path / "img"), test_images=str(tmp_path / "img16")))


def test_wrong_image_size_for_the_model_is_a_data_error(tmp_path):
    """A card fitted on 8x8 digits refuses 28x28 MNIST images, naming the argument."""
    card = {
        "model": {"family": "vae", "latent_dim": 2, "hidden": [8]},
        "guide": {"kind": "amortized"},
        "data": {"source": "digits", "binarize": "threshold"},
        "training": {"epochs": 1, "progress": False},
    }
    run = pplvm.Run.from_card(card)
    with pytest.raises(DataError, match="x: expected 64 columns .* got 784"):
        run.log_likelihood(binary_images(2))


# ------------------------------------------------------------ CIFAR-10 and uint8 arrays
def _cifar_batch(path, images, labels):
    """Write CIFAR-10's binary format: per record one label byte, then 3 x 32 x 32 pixel bytes."""
    rec = np.concatenate([labels[:, None].astype(np.uint8), images.reshape(len(images), -1)], axis=1)
    path.write_bytes(rec.astype(np.uint8).tobytes())


def test_cifar10_binary_batches_round_trip(tmp_path):
    """Pixels come back channel-first, scaled by 1/255, labels kept; test batches stay the test split."""
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, (7, 3, 32, 32), dtype=np.uint8)
    labels = rng.integers(0, 10, 7)
    _cifar_batch(tmp_path / "data_batch_1.bin", imgs[:4], labels[:4])
    _cifar_batch(tmp_path / "data_batch_2.bin", imgs[4:6], labels[4:6])
    _cifar_batch(tmp_path / "test_batch.bin", imgs[6:], labels[6:])
    cfg = pplvm.config.card_from_dict(
        {
            "model": {"family": "gmm"},
            "data": {
                "source": "cifar10",
                "paths": [str(tmp_path / "data_batch_1.bin"), str(tmp_path / "data_batch_2.bin")],
                "test_paths": [str(tmp_path / "test_batch.bin")],
                "valid_fraction": 0.0,
            },
        }
    ).data
    d = load_dataset(cfg)
    assert d.train.shape == (6, 3072) and d.test.shape == (1, 3072)
    np.testing.assert_allclose(d.test.numpy(), imgs[6:].reshape(1, -1) / 255.0, atol=1e-6)
    rows = {tuple(np.round(r * 255).astype(int)) for r in d.train.numpy()}
    assert rows == {tuple(r) for r in imgs[:6].reshape(6, -1).astype(int)}
    assert sorted(d.labels["train"].tolist()) == sorted(labels[:6].tolist())


def test_cifar10_errors_name_the_field(tmp_path):
    bad = tmp_path / "data_batch_1.bin"
    bad.write_bytes(b"\0" * 100)
    with pytest.raises(DataError, match=r"data.paths .*not a CIFAR-10 binary batch \(100 bytes"):
        read_cifar10(bad)
    rec = np.zeros(3073, dtype=np.uint8)
    rec[0] = 12
    bad.write_bytes(rec.tobytes())
    with pytest.raises(DataError, match="label byte 12"):
        read_cifar10(bad)


def test_uint8_image_npy_is_read_channel_first(tmp_path):
    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 256, (5, 6, 8, 3), dtype=np.uint8)
    np.save(tmp_path / "rgb.npy", rgb)
    x, shape = read_image_npy(tmp_path / "rgb.npy")
    assert shape == [3, 6, 8]
    np.testing.assert_allclose(x, rgb.transpose(0, 3, 1, 2).reshape(5, -1) / 255.0)
    grey = rng.integers(0, 256, (5, 4, 6), dtype=np.uint8)
    np.save(tmp_path / "grey.npy", grey)
    x, shape = read_image_npy(tmp_path / "grey.npy")
    assert shape == [1, 4, 6]
    np.testing.assert_allclose(x, grey.reshape(5, -1) / 255.0)
    np.save(tmp_path / "float.npy", grey / 255.0)
    with pytest.raises(DataError, match="expected uint8 pixels"):
        read_image_npy(tmp_path / "float.npy")
    np.save(tmp_path / "flat.npy", grey.reshape(5, -1))
    with pytest.raises(DataError, match=r"expected images of shape \(N, H, W\)"):
        read_image_npy(tmp_path / "flat.npy")


@pytest.mark.parametrize(
    "shape, layout, chw",
    [
        ((5, 4, 6, 3), "NHWC", (3, 4, 6)),
        ((5, 3, 4, 6), "NCHW", (3, 4, 6)),
        ((5, 8, 8, 8), "NHWC", (8, 8, 8)),  # eight channels: only the card can say so
        ((5, 2, 2, 2), "NCHW", (2, 2, 2)),
    ],
)
def test_image_npy_reads_the_layout_the_card_gives(tmp_path, shape, layout, chw):
    a = np.random.default_rng(2).integers(0, 256, shape, dtype=np.uint8)
    np.save(tmp_path / "a.npy", a)
    x, got = read_image_npy(tmp_path / "a.npy", layout=layout)
    assert got == list(chw)
    oracle = a.transpose(0, 3, 1, 2) if layout == "NHWC" else a  # rows are C x H x W
    np.testing.assert_array_equal(x, oracle.reshape(5, -1) / 255.0)


@pytest.mark.parametrize("shape", [(5, 3, 8, 8), (5, 8, 8, 8), (5, 4, 4, 3), (5, 1, 6, 1)])
def test_an_image_array_of_ambiguous_layout_is_refused_without_data_layout(tmp_path, shape):
    np.save(tmp_path / "a.npy", np.zeros(shape, dtype=np.uint8))
    with pytest.raises(DataError, match=r"ambiguous.*data.layout = \"NHWC\" or \"NCHW\"") as info:
        read_image_npy(tmp_path / "a.npy")
    assert f"{shape[1]} x {shape[2]} images of {shape[3]} channels" in str(info.value)
