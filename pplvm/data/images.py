"""Image sources: scikit-learn's bundled 8x8 digits, user MNIST and CIFAR-10 files, uint8 arrays.

Images are rows of ``H W`` pixels in [0, 1] (row-major). ``binarize`` turns grey pixels into
binary data for Bernoulli decoders:

=========== ==============================================================================
none         grey values in [0, 1]
threshold    ``x > 0.5``
static       one Bernoulli(x) draw per pixel with ``binarize_seed``, fixed for the whole run
dynamic      a fresh Bernoulli(x) draw of every training batch, each epoch (the trainer
             applies :class:`Binarize` per batch); valid and test get one fixed draw
=========== ==============================================================================

File formats::

    .amat      binarized MNIST of Larochelle & Murray (2011): text, one image per line, 784
               values 0/1 separated by spaces (path = train, valid_path, test_path);
    .npz       arrays train and optionally valid, test, each (N, 784) of 0/1;
    IDX        LeCun's MNIST files (train-images-idx3-ubyte[.gz], labels idx1), plain or
               gzipped: images (N, H, W) uint8 scaled by 1/255, labels (N,);
    CIFAR-10   the binary batches (data_batch_*.bin, test_batch.bin): records of one
               label byte and 3 x 32 x 32 pixel bytes (channel-first), read without pickle;
    .npy       uint8 images (N, H, W), (N, H, W, C) or (N, C, H, W) (data.layout),
               rows (N, C H W) channel-first.
"""

from __future__ import annotations

import gzip
import struct
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from pydantic import Field

from ..errors import DataError
from ..schema import Seed
from ._npy import existing, read_npy
from .base import Batch, DataConfig

MNIST_PIXELS = 28 * 28
#: the most channels an axis of an image array is taken to hold without data.layout (RGBA)
MAX_CHANNELS = 4
Binarization = Literal["none", "threshold", "static", "dynamic"]


class ImageConfig(DataConfig):
    """Options every image source accepts."""

    binarize: Binarization = Field("none", description="none, threshold, static or dynamic (see pplvm.data.images)")
    binarize_seed: Seed = Field(0, description="seed of the static Bernoulli draw")


@dataclass(frozen=True)
class Binarize:
    """``x -> Bernoulli(x)`` per pixel: the dynamic binarization the trainer applies to each
    training batch (``(B, D)`` tensor or :class:`Batch`), drawing from ``generator``."""

    def __call__(self, data, generator: torch.Generator):
        if isinstance(data, Batch):
            return data.replace(x=self(data.x, generator))
        return torch.bernoulli(data, generator=generator)


def binarized(x: np.ndarray, how: Binarization, seed: int = 0) -> np.ndarray:
    """Apply a load-time binarization (``dynamic`` is left to the trainer: returns ``x``)."""
    if how == "threshold":
        return (x > 0.5).astype(x.dtype)
    if how == "static":
        return (np.random.default_rng(seed).random(x.shape) < x).astype(x.dtype)
    return x


def _augment(cfg: ImageConfig):
    return Binarize() if cfg.binarize == "dynamic" else None


# ---------------------------------------------------------------------------- digits
class DigitsConfig(ImageConfig):
    source: Literal["digits"] = "digits"


def _load_digits(cfg: DigitsConfig):
    import sklearn.datasets

    bunch = sklearn.datasets.load_digits()
    x = bunch.data / 16.0  # pixels are 0..16
    return binarized(x, cfg.binarize, cfg.binarize_seed), bunch.target, {"image_shape": [8, 8]}


# ------------------------------------------------------------------- binarized MNIST
class BinarizedMnistConfig(DataConfig):
    source: Literal["binarized_mnist"] = "binarized_mnist"
    path: str = Field(description=".amat (training images) or .npz with train / valid / test arrays")
    valid_path: str | None = Field(None, description=".amat of validation images")
    test_path: str | None = Field(None, description=".amat of test images")


def read_amat(path: str | Path, field: str = "data.path", pixels: int = MNIST_PIXELS) -> np.ndarray:
    """Read a ``.amat`` file: one image per line, ``pixels`` values 0/1. Returns ``(N, pixels)``."""
    path = existing(path, field)
    rows = []
    for i, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = [float(v) for v in line.split()]
        except ValueError as err:
            raise DataError(f"{field} {str(path)!r} line {i}: not numbers ({err})") from None
        if len(row) != pixels:
            raise DataError(
                f"{field} {str(path)!r} line {i}: expected {pixels} values (a 28 x 28 image), got {len(row)}"
            )
        rows.append(row)
    if not rows:
        raise DataError(f"{field} {str(path)!r}: no images in the file")
    return _check_binary(np.asarray(rows), f"{field} {str(path)!r}")


def write_amat(path: str | Path, x: np.ndarray) -> None:
    """Write ``(N, D)`` binary images as ``.amat`` text (the inverse of :func:`read_amat`)."""
    np.savetxt(path, np.asarray(x), fmt="%d", delimiter=" ")


def read_npz(path: str | Path, field: str = "data.path", pixels: int = MNIST_PIXELS) -> dict[str, np.ndarray]:
    """Read ``train`` and any ``valid`` / ``test`` arrays ``(N, pixels)`` of 0/1 from ``.npz``."""
    path = existing(path, field)
    try:  # the file handle is ours to close: numpy leaks its own when the archive is damaged
        with open(path, "rb") as fh, np.load(fh, allow_pickle=False) as f:
            arrays = {k: f[k] for k in ("train", "valid", "test") if k in f.files}
            names = f.files
    except (ValueError, OSError, EOFError, AttributeError, zipfile.BadZipFile, zlib.error) as err:
        # AttributeError: a single .npy array (no .files) given the .npz name
        raise DataError(f"{field} {str(path)!r}: not a readable .npz of plain arrays ({err})") from None
    if "train" not in arrays:
        raise DataError(
            f"{field} {str(path)!r}: expected an array named 'train' (and optionally 'valid', "
            f"'test'); the file holds {names}"
        )
    for k, a in arrays.items():
        if a.ndim != 2 or a.shape[1] != pixels:
            raise DataError(
                f"{field} {str(path)!r}: array {k!r} has shape {a.shape}; expected (N, {pixels}), "
                "one 28 x 28 image per row"
            )
        _check_binary(a, f"{field} {str(path)!r} array {k!r}")
    return arrays


def _load_binarized_mnist(cfg: BinarizedMnistConfig):
    if Path(cfg.path).suffix.lower() == ".npz":
        if cfg.valid_path or cfg.test_path:
            raise DataError("data.valid_path / data.test_path: an .npz file holds its own splits; drop these keys")
        parts = read_npz(cfg.path)
    else:
        parts = {"train": read_amat(cfg.path)}
        for key, field in (("valid", "valid_path"), ("test", "test_path")):
            if getattr(cfg, field) is not None:
                parts[key] = read_amat(getattr(cfg, field), f"data.{field}")
    return parts, None, {"image_shape": [28, 28], "path": cfg.path}


# ------------------------------------------------------------------------- MNIST IDX
class MnistIdxConfig(ImageConfig):
    source: Literal["mnist_idx"] = "mnist_idx"
    images: str = Field(description="IDX images, e.g. train-images-idx3-ubyte.gz")
    labels: str | None = Field(None, description="IDX labels, e.g. train-labels-idx1-ubyte.gz")
    test_images: str | None = Field(None, description="IDX test images (t10k-images-idx3-ubyte.gz)")
    test_labels: str | None = Field(None, description="IDX test labels (t10k-labels-idx1-ubyte.gz)")


_IDX_TYPES = {
    0x08: np.uint8,
    0x09: np.int8,
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def read_idx(path: str | Path, field: str = "data.images") -> np.ndarray:
    """Read an IDX file (LeCun's format; gzipped if it ends in ``.gz``) into an array."""
    path = existing(path, field)
    raw = path.read_bytes()
    if path.suffix == ".gz":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as err:
            raise DataError(f"{field} {str(path)!r}: not a gzip file ({err})") from None
    if len(raw) < 4 or raw[:2] != b"\0\0" or raw[2] not in _IDX_TYPES:
        raise DataError(f"{field} {str(path)!r}: not an IDX file (bad magic number)")
    ndim = raw[3]
    if len(raw) < 4 + 4 * ndim:
        raise DataError(f"{field} {str(path)!r}: truncated IDX header")
    shape = struct.unpack(f">{ndim}I", raw[4 : 4 + 4 * ndim])
    dtype = np.dtype(_IDX_TYPES[raw[2]])
    body = raw[4 + 4 * ndim :]
    if len(body) != int(np.prod(shape)) * dtype.itemsize:
        raise DataError(
            f"{field} {str(path)!r}: header says shape {shape} but the file holds {len(body)} bytes of data"
        )
    return np.frombuffer(body, dtype=dtype).reshape(shape)


def write_idx(path: str | Path, a: np.ndarray) -> None:
    """Write ``a`` (uint8) as IDX, gzipped if ``path`` ends in ``.gz`` (inverse of :func:`read_idx`)."""
    a = np.ascontiguousarray(a, dtype=np.uint8)
    data = bytes([0, 0, 0x08, a.ndim]) + struct.pack(f">{a.ndim}I", *a.shape) + a.tobytes()
    Path(path).write_bytes(gzip.compress(data) if str(path).endswith(".gz") else data)


def _idx_split(images: str, labels: str | None, which: str):
    x = read_idx(images, f"data.{which}images")
    if x.ndim != 3:
        raise DataError(f"data.{which}images {images!r}: expected images of shape (N, H, W), got {x.shape}")
    y = None
    if labels is not None:
        y = read_idx(labels, f"data.{which}labels")
        if y.ndim != 1 or len(y) != len(x):
            raise DataError(
                f"data.{which}labels {labels!r}: expected {len(x)} labels (one per image), got shape {y.shape}"
            )
        y = y.astype(np.int64)
    return x.reshape(len(x), -1).astype(np.float64) / 255.0, y, list(x.shape[1:])


def _load_mnist_idx(cfg: MnistIdxConfig):
    if (cfg.test_labels is not None) != (cfg.test_images is not None and cfg.labels is not None):
        raise DataError("data.test_labels: give test labels exactly when there are test_images and labels")
    x, y, shape = _idx_split(cfg.images, cfg.labels, "")
    parts, labels = {"train": binarized(x, cfg.binarize, cfg.binarize_seed)}, {"train": y}
    if cfg.test_images is not None:
        xt, yt, test_shape = _idx_split(cfg.test_images, cfg.test_labels, "test_")
        if test_shape != shape:
            raise DataError(
                f"data.test_images: images are {test_shape[0]} x {test_shape[1]} but the training "
                f"images are {shape[0]} x {shape[1]}"
            )
        parts["test"], labels["test"] = binarized(xt, cfg.binarize, cfg.binarize_seed + 1), yt
    return parts, labels if y is not None else None, {"image_shape": shape, "path": cfg.images}


# ------------------------------------------------------------ CIFAR-10, uint8 arrays
CIFAR_RECORD = 1 + 3 * 32 * 32


class Cifar10Config(ImageConfig):
    source: Literal["cifar10"] = "cifar10"
    paths: list[str] = Field(description="CIFAR-10 binary batches (data_batch_*.bin): the training images")
    test_paths: list[str] = Field([], description="binary batches of test images (test_batch.bin)")


def read_cifar10(path: str | Path, field: str = "data.paths") -> tuple[np.ndarray, np.ndarray]:
    """Read one CIFAR-10 binary batch (records of 1 label byte + 3072 pixel bytes, channel-first
    32 x 32): ``(images (N, 3, 32, 32) uint8, labels (N,) int64)``. No pickle is involved."""
    path = existing(path, field)
    raw = np.frombuffer(path.read_bytes(), dtype=np.uint8)
    if len(raw) == 0 or len(raw) % CIFAR_RECORD:
        raise DataError(
            f"{field} {str(path)!r}: not a CIFAR-10 binary batch ({len(raw)} bytes is not a "
            f"multiple of the {CIFAR_RECORD}-byte record)"
        )
    rec = raw.reshape(-1, CIFAR_RECORD)
    if rec[:, 0].max() > 9:
        raise DataError(f"{field} {str(path)!r}: label byte {int(rec[:, 0].max())} is not a CIFAR-10 class 0..9")
    return rec[:, 1:].reshape(-1, 3, 32, 32), rec[:, 0].astype(np.int64)


def _load_cifar10(cfg: Cifar10Config):
    def read(paths, field):
        if not paths:
            raise DataError(f"{field}: expected at least one binary batch file")
        pairs = [read_cifar10(p, field) for p in paths]
        x = np.concatenate([p[0] for p in pairs])
        return x.reshape(len(x), -1).astype(np.float64) / 255.0, np.concatenate([p[1] for p in pairs])

    x, y = read(cfg.paths, "data.paths")
    parts, labels = {"train": binarized(x, cfg.binarize, cfg.binarize_seed)}, {"train": y}
    if cfg.test_paths:
        xt, yt = read(cfg.test_paths, "data.test_paths")
        parts["test"], labels["test"] = binarized(xt, cfg.binarize, cfg.binarize_seed + 1), yt
    return parts, labels, {"image_shape": [3, 32, 32]}


class ImageArrayConfig(ImageConfig):
    source: Literal["image_npy"] = "image_npy"
    path: str = Field(description=".npy of uint8 images (N, H, W), (N, H, W, C) or (N, C, H, W)")
    layout: Literal["NHWC", "NCHW"] | None = Field(
        None,
        description="4-d arrays: NHWC (channels last) or NCHW (channels first); "
        "unset: channels last when only the last axis can be channels (at most 4 of them)",
    )


def read_image_npy(
    path: str | Path, field: str = "data.path", layout: Literal["NHWC", "NCHW"] | None = None
) -> tuple[np.ndarray, list[int]]:
    """Read uint8 images ``(N, H, W)`` or ``(N, H, W, C)`` / ``(N, C, H, W)`` (as ``layout``
    says) from ``.npy`` as rows ``(N, C H W)`` (channel-first, like CIFAR-10's batches) in
    [0, 1] on 256 levels; returns ``(rows, [C, H, W])``. A 4-d array without ``layout`` is
    read channels-last only when its last axis alone can hold channels (at most 4); any other
    is ambiguous, and refused."""
    a = read_npy(path, field)
    where = f"{field} {str(path)!r}"
    if a.dtype != np.uint8:
        raise DataError(f"{where}: expected uint8 pixels 0..255, got dtype {a.dtype}")
    if a.ndim not in (3, 4) or len(a) == 0:
        raise DataError(f"{where}: expected images of shape (N, H, W), (N, H, W, C) or (N, C, H, W), got {a.shape}")
    if a.ndim == 3:
        a = a[:, None]
    elif layout is None and not a.shape[3] <= MAX_CHANNELS < a.shape[1]:
        n, s1, s2, s3 = a.shape
        raise DataError(
            f"{where}: the layout of images {a.shape} is ambiguous: {s1} x {s2} images of {s3} channels "
            f'(NHWC) or {s2} x {s3} images of {s1} (NCHW); set data.layout = "NHWC" or "NCHW"'
        )
    elif layout != "NCHW":
        a = a.transpose(0, 3, 1, 2)
    return a.reshape(len(a), -1).astype(np.float64) / 255.0, list(a.shape[1:])


def _load_image_npy(cfg: ImageArrayConfig):
    x, shape = read_image_npy(cfg.path, layout=cfg.layout)
    return binarized(x, cfg.binarize, cfg.binarize_seed), None, {"image_shape": shape, "path": cfg.path}


# ---------------------------------------------------------------------------- helpers
def check_image_shape(model_shape, data_shape, where: str) -> None:
    """Refuse data whose images (``data_shape``, ``[C, H, W]`` or ``[H, W]``, as the source read
    them) are not the images a model reads (``model_shape``: its ``image_shape``, ``(H, W)`` or
    ``(C, H, W)``; None when it reads no images), naming both. ``where``: the data's name."""
    if model_shape is None or data_shape is None:
        return
    model, data = _chw(model_shape), _chw(data_shape)
    if model != data:
        suggest = list(data) if data[0] > 1 else list(data[1:])
        raise DataError(
            f"model.image_shape: the model reads {' x '.join(map(str, model))} images (C x H x W) but "
            f"{where} holds {' x '.join(map(str, data))} images; set model.image_shape = {suggest}"
        )


def _chw(shape) -> tuple[int, ...]:
    shape = tuple(int(v) for v in shape)
    return (1, *shape) if len(shape) == 2 else shape


def _check_binary(x: np.ndarray, where: str) -> np.ndarray:
    bad = ~np.isin(x, (0, 1))
    if bad.any():
        row = int(np.argwhere(bad)[0][0])
        raise DataError(
            f"{where}: binarized MNIST must hold only 0 and 1, but row {row} holds {float(x[row][bad[row]][0]):g}"
        )
    return x


__all__ = [
    "Binarize",
    "BinarizedMnistConfig",
    "Cifar10Config",
    "DigitsConfig",
    "ImageArrayConfig",
    "ImageConfig",
    "MnistIdxConfig",
    "binarized",
    "check_image_shape",
    "read_amat",
    "read_cifar10",
    "read_idx",
    "read_image_npy",
    "read_npz",
    "write_amat",
    "write_idx",
]
