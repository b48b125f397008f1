"""Tabular sources: a synthetic Gaussian mixture, two moons, scikit-learn's bundled sets, user files."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import Field

from ..errors import DataError
from ..schema import Seed
from ._npy import existing, read_npy
from .arrays import as_input
from .base import Batch, DataConfig, as_matrix


class SyntheticMixtureConfig(DataConfig):
    source: Literal["synthetic_gmm"] = "synthetic_gmm"
    n: int = Field(1000, ge=1, description="number of points")
    dim: int = Field(2, ge=1, description="dimension of each point")
    components: int = Field(3, ge=1, description="number of mixture components")
    separation: float = Field(4.0, gt=0, description="distance scale between component means")
    seed: Seed = Field(0, description="seed of the draw: the mixture and its points")


def synthetic_mixture(n: int, dim: int, components: int, separation: float = 4.0, seed: int = 0):
    """Draw ``n`` points from a random Gaussian mixture with full covariances.

    Returns ``(x, labels, truth)`` with ``truth = {"weights", "locs", "covariances"}``.
    """
    rng = np.random.default_rng(seed)
    weights = rng.dirichlet(5.0 * np.ones(components))
    locs = rng.normal(0.0, separation, size=(components, dim))
    a = rng.normal(0.0, 0.4, size=(components, dim, dim))
    covs = a @ a.transpose(0, 2, 1) + 0.3 * np.eye(dim)
    labels = rng.choice(components, size=n, p=weights)
    chol = np.linalg.cholesky(covs)
    x = locs[labels] + np.einsum("nij,nj->ni", chol[labels], rng.standard_normal((n, dim)))
    return x, labels, {"weights": weights, "locs": locs, "covariances": covs}


def _load_synthetic(cfg: SyntheticMixtureConfig):
    x, labels, truth = synthetic_mixture(cfg.n, cfg.dim, cfg.components, cfg.separation, cfg.seed)
    return x, labels, {"truth": truth}


class MoonsConfig(DataConfig):
    source: Literal["moons"] = "moons"
    n: int = Field(2000, ge=1, description="number of points")
    noise: float = Field(0.05, ge=0, description="standard deviation of the Gaussian noise added")
    seed: int = Field(0, description="random_state of scikit-learn's make_moons")


def _load_moons(cfg: MoonsConfig):
    import sklearn.datasets

    x, labels = sklearn.datasets.make_moons(cfg.n, noise=cfg.noise, random_state=cfg.seed)
    return x, labels, {}


class IrisConfig(DataConfig):
    source: Literal["iris"] = "iris"


class WineConfig(DataConfig):
    source: Literal["wine"] = "wine"


def _sklearn_loader(name: str):
    def load(cfg):
        import sklearn.datasets

        bunch = getattr(sklearn.datasets, f"load_{name}")()
        return bunch.data, bunch.target, {"feature_names": list(bunch.feature_names)}

    return load


class FileConfig(DataConfig):
    source: Literal["file"] = "file"
    path: str = Field(description=".npy or .csv file of shape (N, D)")
    label_column: int | None = Field(None, description="csv: a column holding labels, dropped from x")
    input_columns: dict[str, int | list[int]] = Field(
        {},
        description="named inputs taken out of x: name = column (a group index, integers) or name = [columns] "
        "(float covariates); a user's model takes them by name, a graph card as nodes of kind 'input'",
    )


def read_matrix(path: str | Path, label_column: int | None = None, name: str = "data.path"):
    """Read an ``(N, D)`` matrix from ``.npy`` or ``.csv`` (a header line is skipped); errors
    name the file as ``name`` (the card key or command-line option it came from)."""
    path = existing(path, name)
    suffix = path.suffix.lower()
    if suffix == ".npy":
        x = read_npy(path, name)
    elif suffix in (".csv", ".txt"):
        try:
            first = path.read_text().splitlines()[:1]
        except UnicodeDecodeError as err:
            raise DataError(
                f"data.path {str(path)!r}: not a UTF-8 text CSV file ({err.reason} at byte {err.start})"
            ) from None
        try:
            [float(v) for v in first[0].split(",")] if first else None
            skip = 0
        except ValueError:
            skip = 1
        try:
            x = np.loadtxt(path, delimiter=",", skiprows=skip, ndmin=2)
        except ValueError as err:
            raise DataError(f"{name} {str(path)!r}: could not parse as numeric CSV ({err})") from None
    else:
        raise DataError(f"{name} {str(path)!r}: expected a .npy or .csv file, got {suffix or 'no suffix'!r}")
    labels = None
    if label_column is not None:
        if x.ndim != 2 or not -x.shape[1] <= label_column < x.shape[1]:
            raise DataError(f"data.label_column: {label_column} is outside the file's columns")
        labels = x[:, label_column].astype(np.int64)
        x = np.delete(x, label_column, axis=1)
    return x, labels


def _load_file(cfg: FileConfig):
    if not cfg.input_columns:
        x, labels = read_matrix(cfg.path, cfg.label_column)
        return x, labels, {"path": cfg.path}
    x, _ = read_matrix(cfg.path)
    width = x.shape[1] if x.ndim == 2 else 0
    if cfg.label_column is not None and not -width <= cfg.label_column < width:
        raise DataError(f"data.label_column: {cfg.label_column} is outside the file's columns")
    taken = [] if cfg.label_column is None else [cfg.label_column % max(width, 1)]
    inputs = {}
    for name, cols in cfg.input_columns.items():
        field = f"data.input_columns.{name}"
        index = isinstance(cols, int)
        cols = [cols] if index else cols
        if not cols or any(not -width <= c < width for c in cols):
            raise DataError(f"{field}: columns {cols} are outside the file's {width} columns")
        cols = [c % width for c in cols]
        if set(cols) & set(taken):
            raise DataError(f"{field}: columns {cols} are already taken (by the labels or another input)")
        taken += cols
        inputs[name] = as_input(x[:, cols[0]] if index else x[:, cols], index, field)
    if len(taken) >= width:
        raise DataError("data.input_columns: no column is left for the data x")
    labels = None if cfg.label_column is None else x[:, cfg.label_column].astype(np.int64)
    rest = as_matrix(np.delete(x, taken, axis=1), f"data.path {cfg.path!r}")
    return Batch(rest, inputs=inputs), labels, {"path": cfg.path, "inputs": sorted(inputs)}
