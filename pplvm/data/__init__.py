"""Data sources. Each is registered under the name a card's ``data.source`` uses."""

from __future__ import annotations

from .._registry import Registry
from .base import Batch, DataConfig, Dataset, Source, Standardize, as_matrix, split, values
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
    SyntheticMixtureConfig,
    WineConfig,
    _load_file,
    _load_synthetic,
    _sklearn_loader,
    read_matrix,
    synthetic_mixture,
)

SOURCES: Registry[Source] = Registry("data source")
SOURCES.register("synthetic_gmm")(Source(SyntheticMixtureConfig, _load_synthetic, "random Gaussian mixture"))
SOURCES.register("iris")(Source(IrisConfig, _sklearn_loader("iris"), "scikit-learn iris, 150 x 4"))
SOURCES.register("wine")(Source(WineConfig, _sklearn_loader("wine"), "scikit-learn wine, 178 x 13"))
SOURCES.register("file")(Source(FileConfig, _load_file, "a user .npy or .csv file (N, D)"))
SOURCES.register("synthetic_hmm")(Source(SyntheticHMMConfig, _load_synthetic_hmm, "sequences from a random HMM"))
SOURCES.register("sunspots")(Source(SunspotsConfig, _statsmodels_series("sunspots", "SUNACTIVITY"),
                                    "statsmodels yearly sunspots 1700-2008, cut into sequences"))
SOURCES.register("nile")(Source(NileConfig, _statsmodels_series("nile", "volume"),
                                "statsmodels Nile flow 1871-1970, cut into sequences"))
SOURCES.register("sequence_file")(Source(SequenceFileConfig, _load_sequence_file,
                                         "a user .npz of sequences (train, train_lengths, valid, ...)"))


def load_dataset(cfg: DataConfig) -> Dataset:
    """Load, check and split the data a card describes."""
    x, labels, info = SOURCES[cfg.source].load(cfg)
    # sources of sequences or labelled data return a checked Batch; a dict holds the source's
    # own splits {"train": ..., "valid": ..., "test": ...}
    if not isinstance(x, (Batch, dict)):
        x = as_matrix(x, f"data ({cfg.source})")
    dataset = split(x, labels, cfg)
    dataset.info.update(info)
    return dataset


__all__ = [
    "SOURCES",
    "Batch",
    "values",
    "DataConfig",
    "Dataset",
    "Standardize",
    "as_matrix",
    "as_sequences",
    "read_sequences",
    "synthetic_hmm",
    "load_dataset",
    "read_matrix",
    "synthetic_mixture",
]
