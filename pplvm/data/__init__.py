"""Data sources. Each is registered under the name a card's ``data.source`` uses."""

from __future__ import annotations

import torch

from .._registry import Registry
from ..errors import DataError
from .arrays import ArraysConfig, _load_arrays, read_arrays
from .base import Batch, DataConfig, Dataset, Source, Standardize, as_matrix, indexed, split, split_given, values
from .images import (
    Binarize,
    BinarizedMnistConfig,
    Cifar10Config,
    DigitsConfig,
    ImageArrayConfig,
    MnistIdxConfig,
    _augment,
    _load_binarized_mnist,
    _load_cifar10,
    _load_digits,
    _load_image_npy,
    _load_mnist_idx,
)
from .sequences import (
    NileConfig,
    SequenceFileConfig,
    SunspotsConfig,
    SyntheticHMMConfig,
    _load_sequence_file,
    _load_synthetic_hmm,
    _statsmodels_series,
    as_sequences,
    read_sequences,
    synthetic_hmm,
)
from .tabular import (
    FileConfig,
    IrisConfig,
    MoonsConfig,
    SyntheticMixtureConfig,
    WineConfig,
    _load_file,
    _load_moons,
    _load_synthetic,
    _sklearn_loader,
    read_matrix,
    synthetic_mixture,
)
from .topics import SyntheticTopicsConfig, _load_synthetic_topics, synthetic_topics

SOURCES: Registry[Source] = Registry("data source")
SOURCES.register("synthetic_gmm")(Source(SyntheticMixtureConfig, _load_synthetic, "random Gaussian mixture"))
SOURCES.register("moons")(Source(MoonsConfig, _load_moons, "scikit-learn two moons (2-D toy)"))
SOURCES.register("iris")(Source(IrisConfig, _sklearn_loader("iris"), "scikit-learn iris, 150 x 4"))
SOURCES.register("wine")(Source(WineConfig, _sklearn_loader("wine"), "scikit-learn wine, 178 x 13"))
SOURCES.register("file")(Source(FileConfig, _load_file, "a user .npy or .csv file (N, D)"))
SOURCES.register("arrays")(
    Source(ArraysConfig, _load_arrays, "a user .npz of named arrays: the data x, labels y, lengths, named inputs")
)
SOURCES.register("digits")(Source(DigitsConfig, _load_digits, "scikit-learn 8x8 digits, 1797 x 64 in [0, 1]", _augment))
SOURCES.register("binarized_mnist")(
    Source(BinarizedMnistConfig, _load_binarized_mnist, "binarized MNIST .amat / .npz files (N, 784), own splits")
)
SOURCES.register("mnist_idx")(Source(MnistIdxConfig, _load_mnist_idx, "MNIST IDX files (.gz), labels", _augment))
SOURCES.register("cifar10")(
    Source(
        Cifar10Config,
        _load_cifar10,
        "CIFAR-10 binary batches (data_batch_*.bin), (N, 3072) channel-first in [0, 1], labels",
        _augment,
    )
)
SOURCES.register("image_npy")(
    Source(ImageArrayConfig, _load_image_npy, "a .npy of uint8 images (N, H, W[, C])", _augment)
)
SOURCES.register("synthetic_hmm")(Source(SyntheticHMMConfig, _load_synthetic_hmm, "sequences from a random HMM"))
SOURCES.register("synthetic_topics")(
    Source(SyntheticTopicsConfig, _load_synthetic_topics, "a corpus from LDA's generative process: word counts")
)
SOURCES.register("sunspots")(
    Source(
        SunspotsConfig,
        _statsmodels_series("sunspots", "SUNACTIVITY"),
        "statsmodels yearly sunspots 1700-2008, cut into sequences",
    )
)
SOURCES.register("nile")(
    Source(NileConfig, _statsmodels_series("nile", "volume"), "statsmodels Nile flow 1871-1970, cut into sequences")
)
SOURCES.register("sequence_file")(
    Source(SequenceFileConfig, _load_sequence_file, "a user .npz of sequences (train, train_lengths, valid, ...)")
)


def load_dataset(cfg: DataConfig) -> Dataset:
    """Load, check and split the data a card describes.

    A source returns ``(x, labels, info)``: ``x`` one array split by the card's fractions, or a
    dict of its own splits (``train``, and ``valid`` / ``test`` if it has them, ``labels`` a
    dict alike), used as given. A source with an ``augment`` hook (e.g. dynamic binarization)
    keeps ``train`` as drawn from, and gives valid and test one fixed draw (``split_seed``)."""
    source = SOURCES[cfg.source]
    augment = source.augment(cfg) if source.augment is not None else None
    if augment is not None and cfg.standardize:
        raise DataError(
            "data.standardize = true cannot be combined with a per-batch augmentation "
            f"({type(augment).__name__}), which draws from the raw values"
        )
    x, labels, info = source.load(cfg)

    def check(x, name):  # sources of sequences or labelled data return a checked Batch
        return x if isinstance(x, Batch) else as_matrix(x, f"{name} ({cfg.source})")

    dataset = split_given(x, labels, cfg, check) if isinstance(x, dict) else split(check(x, "data"), labels, cfg)
    dataset.info.update(info)
    dataset.augment = augment
    if cfg.valid_rows is not None and dataset.valid is not None and len(dataset.valid) > cfg.valid_rows:
        keep = torch.randperm(len(dataset.valid), generator=torch.Generator().manual_seed(cfg.split_seed))
        keep = keep[: cfg.valid_rows].sort().values
        dataset.valid = dataset.valid[keep]
        if dataset.labels.get("valid") is not None:
            dataset.labels["valid"] = dataset.labels["valid"][keep]
    if augment is not None:
        fixed = torch.Generator().manual_seed(cfg.split_seed)
        dataset.valid, dataset.test = (
            dataset.augment(v, fixed) if v is not None else None for v in (dataset.valid, dataset.test)
        )
    return dataset


__all__ = [
    "SOURCES",
    "Batch",
    "Binarize",
    "indexed",
    "values",
    "DataConfig",
    "Dataset",
    "Standardize",
    "as_matrix",
    "as_sequences",
    "read_arrays",
    "read_sequences",
    "synthetic_hmm",
    "synthetic_topics",
    "load_dataset",
    "read_matrix",
    "synthetic_mixture",
]
