"""Named arrays from a file: the data beside their inputs (``data.source = "arrays"``).

An ``.npz`` archive of arrays sharing their first dimension (one entry per datum)::

    x          (N, D) rows, (N,) one column, or (N, T, D) padded sequences   the data (key: data.key)
    y          (N,) labels, -1 where missing (or (N, C) floats, NaN)           optional
    lengths    (N,) each sequence's length (x is then (N, T, D) padded)        optional
    <name>     (N, ...) a named input: covariates (floats), a group index      any other key
               (integers), side information

is read into a :class:`~pplvm.data.Batch` (``inputs`` holding the named inputs), split at random
by datum like every source; a user's Pyro model takes each input as the keyword argument of its
name, a graph card as a node of kind ``input``. The same reader serves ``pplvm evaluate --data
file.npz`` (and every command with ``--data``), so held-out data carry their inputs too.
"""

from __future__ import annotations

import zipfile
import zlib
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from pydantic import Field

from ..errors import DataError
from ._npz import open_npz
from .base import Batch, DataConfig, as_matrix, from_dict
from .sequences import as_sequences

#: the keys with a meaning of their own; every other key is a named input
RESERVED = ("y", "lengths")


def npz_keys(path: str | Path, name: str = "--data") -> list[str]:
    """The names of the arrays an ``.npz`` holds (DataError for a missing or unreadable file)."""
    fh, archive = open_npz(path, name)
    with fh, archive:
        return list(archive.files)


def read_arrays(path: str | Path, key: str = "x", name: str = "data.path") -> Batch:
    """The named arrays of an ``.npz`` (format in the module docstring) as a Batch: the data
    under ``key``, labels ``y``, sequence ``lengths``, every other array a named input. A
    DataError in one line naming the file and key for a missing data key, an object or string
    array, a damaged member or arrays whose first dimensions differ."""
    fh, archive = open_npz(path, name)
    where = f"{name} {str(path)!r}"
    with fh, archive:
        if key not in archive.files:
            held = ", ".join(archive.files) or "nothing"
            raise DataError(f"{where}: no array {key!r} (the data, data.key); the file holds {held}")
        arrays: dict[str, np.ndarray] = {}
        for k in archive.files:
            try:
                a = archive[k]
            except (OSError, EOFError, zipfile.BadZipFile, zlib.error) as err:
                raise DataError(f"{where} key {k!r}: the archive is damaged ({err})") from None
            except ValueError as err:  # object arrays need pickle, which is never allowed
                raise DataError(f"{where} key {k!r}: an object array ({err}); store numbers") from None
            if a.dtype.kind not in "biuf":
                raise DataError(f"{where} key {k!r}: expected numbers, got dtype {a.dtype}")
            if a.ndim == 0:
                raise DataError(f"{where} key {k!r}: a scalar; expected one entry per datum")
            arrays[k] = a
    n = len(arrays[key])
    for k, a in arrays.items():
        if len(a) != n:
            raise DataError(
                f"{where} key {k!r}: {len(a)} entries but {key!r} has {n}; every array needs one entry per datum"
            )
    if key != "x" and "x" in arrays:
        raise DataError(f"{where}: key 'x' is a named input beside the data {key!r}; rename it")
    data = {"x": arrays.pop(key), **arrays}
    x = data["x"]
    if "lengths" in data:
        data["x"] = x[..., None] if x.ndim == 2 else x  # (N, T): one feature per step
    elif x.ndim == 1:
        data["x"] = x[:, None]
    batch = from_dict(data, where)
    if batch.lengths is not None or batch.x.dim() == 3:
        checked = as_sequences(batch.replace(y=None, inputs={}), f"{where} key {key!r}")
        return checked.replace(y=batch.y, inputs=batch.inputs)
    return batch.replace(x=as_matrix(batch.x, f"{where} key {key!r}"))


class ArraysConfig(DataConfig):
    source: Literal["arrays"] = "arrays"
    path: str = Field(description=".npz of named arrays sharing their first dimension (pplvm.data.arrays)")
    key: str = Field("x", description="the array holding the data; y, lengths and the others are inputs beside it")


def _load_arrays(cfg: ArraysConfig):
    batch = read_arrays(cfg.path, cfg.key)
    info = {"path": cfg.path, "inputs": sorted(batch.inputs)}
    labels = batch.y
    rest = batch.replace(y=None)
    plain = rest.lengths is None and not rest.inputs
    return (rest.x if plain else rest), labels, info


def as_input(values: np.ndarray, index: bool, name: str) -> torch.Tensor:
    """A named input from table columns: one column as a group index (integers), else floats."""
    if not index:
        return torch.as_tensor(values, dtype=torch.get_default_dtype())
    if np.any(np.isnan(values)) or np.any(values != np.round(values)):
        raise DataError(f"{name}: a single column is a group index and needs integers (-1 for missing)")
    return torch.as_tensor(values.astype(np.int64))
