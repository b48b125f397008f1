"""Sequence data: checking, a synthetic HMM, bundled statsmodels series, user ``.npz`` files.

A set of sequences is a :class:`~pplvm.data.Batch` with ``x`` padded ``(N, T, D)`` (zeros
beyond each length) and ``lengths`` ``(N,)``. A user file (``source = "sequence_file"``) is an
``.npz`` holding, per split, the steps of all its sequences stacked along time and the length
of each sequence::

    train        (L_1 + … + L_N, D) or (L_1 + … + L_N,)      required
    train_lengths (N,)                                          required unless train is 3-D
    valid, valid_lengths, test, test_lengths                    optional

A 3-D ``train`` ``(N, T, D)`` holds N sequences of equal length T. A file with ``valid`` or
``test`` keeps its own splits (``data.valid_fraction`` / ``test_fraction`` are not used); a
file with only ``train`` is split at random by sequence like any other source.
"""

from __future__ import annotations

import zipfile
import zlib
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import Field

from ..errors import DataError
from ..schema import Seed
from ._npz import open_npz
from .base import Batch, DataConfig, check_magnitude, numeric

SPLITS = ("train", "valid", "test")


def step_mask(batch: Batch) -> torch.Tensor:
    """``(N, T)`` bool, True on the observed steps of each padded sequence."""
    steps = torch.arange(batch.x.shape[1], device=batch.x.device)
    return steps < batch.lengths.unsqueeze(-1)


def _numeric(x: Any, name: str) -> torch.Tensor:
    try:
        ragged = not torch.is_tensor(x) and np.asarray(x).dtype == object
    except ValueError:  # numpy >= 1.24 refuses inhomogeneous nested lists outright
        ragged = True
    if ragged:
        raise DataError(
            f"{name}: ragged sequences given as one array; pass a list of (T_i, D) arrays, "
            "or the steps stacked along time with per-sequence lengths"
        )
    t = numeric(x, name)
    check_magnitude(t, name)
    return t.to(torch.get_default_dtype())


def _check_lengths(
    lengths: Any, name: str, n: int | None = None, longest: int | None = None, total: int | None = None
) -> torch.Tensor:
    arr = np.asarray(lengths.cpu() if torch.is_tensor(lengths) else lengths)
    if arr.ndim != 1 or (n is not None and len(arr) != n) or len(arr) == 0:
        expected = f"({n},)" if n is not None else "(N,), N >= 1"
        raise DataError(f"{name}: expected one length per sequence, shape {expected}, got shape {arr.shape}")
    if arr.dtype.kind not in "iuf" or (arr.dtype.kind == "f" and np.any(arr != np.round(arr))):
        raise DataError(f"{name}: lengths must be integers, got dtype {arr.dtype}")
    arr = arr.astype(np.int64)
    if np.any(arr < 1):
        raise DataError(f"{name}: every length must be at least 1; sequence {int(np.argmin(arr))} has {arr.min()}")
    if longest is not None and arr.max() > longest:
        raise DataError(
            f"{name}: sequence {int(np.argmax(arr))} has length {arr.max()} but the padded data "
            f"has only {longest} steps"
        )
    if total is not None and arr.sum() != total:
        raise DataError(f"{name}: the lengths sum to {arr.sum()} but the data has {total} steps")
    return torch.as_tensor(arr)


def _steps(seq: Any, name: str) -> torch.Tensor:
    """One sequence ``(T, D)`` (a 1-D array is T steps of one feature)."""
    t = _numeric(seq, name)
    if t.dim() == 1:
        t = t[:, None]
    if t.dim() != 2 or t.shape[0] == 0:
        raise DataError(f"{name}: expected a non-empty sequence of shape (T, D) or (T,), got {tuple(t.shape)}")
    return t


def from_stacked(steps: Any, lengths: Any, name: str = "data", lengths_name: str = "lengths") -> Batch:
    """Cut steps stacked along time ``(L_1 + … + L_N, D)`` into a padded Batch."""
    flat = _steps(steps, name)
    lengths = _check_lengths(lengths, lengths_name, total=len(flat))
    return _pad(list(flat.split(lengths.tolist())), name)


def _pad(seqs: list[torch.Tensor], name: str) -> Batch:
    dims = {s.shape[1] for s in seqs}
    if len(dims) > 1:
        first = next(i for i, s in enumerate(seqs) if s.shape[1] != seqs[0].shape[1])
        raise DataError(
            f"{name}: sequence {first} has {seqs[first].shape[1]} features but sequence 0 has {seqs[0].shape[1]}"
        )
    lengths = torch.tensor([len(s) for s in seqs])
    x = torch.zeros(len(seqs), int(lengths.max()), seqs[0].shape[1], dtype=seqs[0].dtype)
    for i, s in enumerate(seqs):
        x[i, : len(s)] = s
    return Batch(x=x, lengths=lengths)


def as_sequences(data: Any, name: str = "data", dim: int | None = None) -> Batch:
    """Check sequences and return them as a Batch, padding zeroed: a Batch (``lengths`` None
    means full length), a list of ``(T_i, D)`` arrays, an ``(N, T, D)`` array of equal-length
    sequences, or one sequence ``(T, D)`` / ``(T,)``. Raises DataError naming ``name``."""
    if isinstance(data, Batch):
        x = _numeric(data.x, name)
        if x.dim() != 3:
            raise DataError(f"{name}: expected padded sequences of shape (N, T, D), got {tuple(x.shape)}")
        lengths = (
            torch.full((len(x),), x.shape[1])
            if data.lengths is None
            else _check_lengths(data.lengths, f"{name} lengths", len(x), longest=x.shape[1])
        )
        batch = data.replace(x=x, lengths=lengths)
    elif isinstance(data, (list, tuple)):
        if not data:
            raise DataError(f"{name}: no sequences (an empty list)")
        batch = _pad([_steps(s, f"{name}[{i}]") for i, s in enumerate(data)], name)
    else:
        x = _numeric(data, name)
        if x.dim() == 3:
            batch = Batch(x=x, lengths=torch.full((len(x),), x.shape[1]))
        else:
            batch = _pad([_steps(x, name)], name)
    if len(batch) == 0 or batch.x.shape[1] == 0:
        raise DataError(f"{name}: no sequences (shape {tuple(batch.x.shape)})")
    mask = step_mask(batch)
    bad = (~torch.isfinite(batch.x)).any(-1) & mask
    if bad.any():
        seq, step = (int(i) for i in bad.nonzero()[0])
        raise DataError(f"{name}: {int(bad.sum())} step(s) contain NaN or inf (first: sequence {seq}, step {step})")
    if dim is not None and batch.x.shape[-1] != dim:
        raise DataError(f"{name}: expected {dim} features per step (the model's dimension), got {batch.x.shape[-1]}")
    return batch.replace(x=batch.x * mask.unsqueeze(-1))


# ---------------------------------------------------------------- synthetic HMM
class SyntheticHMMConfig(DataConfig):
    source: Literal["synthetic_hmm"] = "synthetic_hmm"
    n: int = Field(40, ge=1, description="number of sequences")
    min_length: int = Field(50, ge=1, description="shortest sequence")
    max_length: int = Field(100, ge=1, description="lengths are uniform in [min_length, max_length]")
    states: int = Field(3, ge=1, description="number of hidden states")
    dim: int = Field(2, ge=1, description="features per time step")
    emission: Literal["gaussian", "categorical", "bernoulli"] = Field(
        "gaussian", description="what each state emits per feature"
    )
    categories: int = Field(4, ge=2, description="categorical: symbols per feature")
    self_transition: float = Field(0.8, ge=0, lt=1, description="mean probability of staying in a state")
    separation: float = Field(3.0, gt=0, description="gaussian: scale of the distance between state means")
    seed: Seed = Field(0, description="seed of the draw: the HMM and its sequences")


def synthetic_hmm(
    n: int,
    min_length: int,
    max_length: int,
    states: int,
    dim: int,
    emission: str = "gaussian",
    categories: int = 4,
    self_transition: float = 0.8,
    separation: float = 3.0,
    seed: int = 0,
):
    """Draw ``n`` sequences from a random HMM.

    Returns ``(Batch, paths (N, T) padded with -1, truth)``, truth holding ``initial``,
    ``transition`` and the emission parameters (``locs``, ``scales`` | ``emission_probs``)."""
    if min_length > max_length:
        raise DataError(f"data.min_length = {min_length} exceeds data.max_length = {max_length}")
    rng = np.random.default_rng(seed)
    K = states
    initial = rng.dirichlet(5.0 * np.ones(K))
    transition = self_transition * np.eye(K) + (1 - self_transition) * rng.dirichlet(np.ones(K), size=K)
    truth: dict[str, np.ndarray] = {"initial": initial, "transition": transition}
    lengths = rng.integers(min_length, max_length + 1, size=n)
    T = int(lengths.max())
    z = np.empty((n, T), dtype=np.int64)
    z[:, 0] = (initial.cumsum() < rng.random((n, 1))).sum(-1)
    for t in range(1, T):
        z[:, t] = (transition[z[:, t - 1]].cumsum(-1) < rng.random((n, 1))).sum(-1)
    z = np.minimum(z, K - 1)  # guards the cumsum's rounding at 1
    if emission == "gaussian":
        truth["locs"] = rng.normal(0.0, separation, size=(K, dim))
        truth["scales"] = rng.uniform(0.5, 1.0, size=(K, dim))
        x = truth["locs"][z] + truth["scales"][z] * rng.standard_normal((n, T, dim))
    elif emission == "categorical":
        truth["emission_probs"] = rng.dirichlet(0.5 * np.ones(categories), size=(K, dim))
        cdf = truth["emission_probs"][z].cumsum(-1)  # (n, T, dim, C)
        x = np.minimum((cdf < rng.random((n, T, dim, 1))).sum(-1), categories - 1).astype(np.float64)
    else:
        truth["emission_probs"] = rng.beta(0.5, 0.5, size=(K, dim))
        x = (rng.random((n, T, dim)) < truth["emission_probs"][z]).astype(np.float64)
    mask = np.arange(T) < lengths[:, None]
    paths = np.where(mask, z, -1)
    batch = Batch(
        x=torch.as_tensor(x * mask[..., None], dtype=torch.get_default_dtype()), lengths=torch.as_tensor(lengths)
    )
    return batch, paths, truth


def _load_synthetic_hmm(cfg: SyntheticHMMConfig):
    batch, paths, truth = synthetic_hmm(
        cfg.n,
        cfg.min_length,
        cfg.max_length,
        cfg.states,
        cfg.dim,
        cfg.emission,
        cfg.categories,
        cfg.self_transition,
        cfg.separation,
        cfg.seed,
    )
    return batch, paths, {"truth": truth}


# ------------------------------------------------------- bundled statsmodels series
class SunspotsConfig(DataConfig):
    source: Literal["sunspots"] = "sunspots"
    length: int = Field(30, ge=1, description="steps per sequence; the last one may be shorter")


class NileConfig(DataConfig):
    source: Literal["nile"] = "nile"
    length: int = Field(20, ge=1, description="steps per sequence; the last one may be shorter")


def _statsmodels_series(name: str, column: str):
    """Loader of a statsmodels dataset (shipped in its wheel, read offline), cut into
    consecutive sequences of ``cfg.length`` years."""

    def load(cfg):
        import statsmodels.api as sm

        series = getattr(sm.datasets, name).load_pandas().data[column].to_numpy(np.float64)
        pieces = [series[i : i + cfg.length] for i in range(0, len(series), cfg.length)]
        return (
            _pad([torch.tensor(p[:, None], dtype=torch.get_default_dtype()) for p in pieces], name),
            None,
            {"series": name, "column": column, "steps": len(series)},
        )

    return load


# ------------------------------------------------------------------ user files
class SequenceFileConfig(DataConfig):
    source: Literal["sequence_file"] = "sequence_file"
    path: str = Field(description=".npz with train (+ train_lengths), optionally valid/test")


def read_sequences(path: str | Path, name: str = "data.path") -> dict[str, Batch]:
    """Read the splits of an ``.npz`` sequence file (format in the module docstring); errors
    name the file as ``name`` (the card key or command-line option it came from)."""
    where = f"{name} {str(path)!r}"
    fh, archive = open_npz(path, name)
    with fh, archive:
        allowed = {k for s in SPLITS for k in (s, f"{s}_lengths")}
        unknown = sorted(set(archive.files) - allowed)
        if unknown:
            raise DataError(f"{where}: unknown key(s) {', '.join(unknown)}; expected: {', '.join(sorted(allowed))}")
        if "train" not in archive.files:
            raise DataError(f"{where}: no 'train' array; expected keys train and train_lengths (valid/test optional)")
        out = {}
        for split in SPLITS:
            lengths_key = f"{split}_lengths"
            if split not in archive.files:
                if lengths_key in archive.files:
                    raise DataError(f"{where}: key {lengths_key!r} is given but {split!r} is missing")
                continue
            field = f"{where} key {split!r}"
            try:
                steps = archive[split]
                lengths = archive[lengths_key] if lengths_key in archive.files else None
            except (OSError, EOFError, zipfile.BadZipFile, zlib.error) as err:  # a damaged member
                raise DataError(f"{field}: the archive is damaged ({err})") from None
            except ValueError as err:  # object (ragged) arrays cannot be read without pickle
                raise DataError(
                    f"{field}: ragged or object array ({err}); store the steps stacked along time "
                    f"with per-sequence lengths in {lengths_key!r}"
                ) from None
            if steps.ndim == 3:
                full = Batch(x=torch.as_tensor(steps), lengths=None if lengths is None else torch.as_tensor(lengths))
                out[split] = as_sequences(full, field)
            elif lengths is None:
                raise DataError(
                    f"{field}: steps of shape {steps.shape} stacked along time need per-sequence "
                    f"lengths in {lengths_key!r} (for one sequence: [{len(steps)}])"
                )
            else:
                out[split] = as_sequences(from_stacked(steps, lengths, field, f"{where} key {lengths_key!r}"), field)
        return out


def _load_sequence_file(cfg: SequenceFileConfig):
    splits = read_sequences(cfg.path)
    data = splits if len(splits) > 1 else splits["train"]
    return data, None, {"path": cfg.path, "fixed_splits": len(splits) > 1}
