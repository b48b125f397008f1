"""Data plumbing shared by every source: validation, splits and the standardising transform."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Callable, ClassVar

import numpy as np
import torch
from pydantic import Field

from ..errors import DataError
from ..schema import Section, Seed


class DataConfig(Section):
    """Options every source accepts; a source's ``Config`` adds its own."""

    source: str
    valid_fraction: float = Field(0.2, ge=0, lt=1, description="held-out fraction for validation")
    test_fraction: float = Field(0.0, ge=0, lt=1, description="held-out fraction for testing")
    valid_rows: int | None = Field(
        None,
        ge=1,
        description="keep at most this many validation rows, a fixed random subset (split_seed): the held-out "
        "checks during training score only these (for a bound that costs many network calls a row, on a "
        "large validation split); none = all",
    )
    split_seed: Seed = Field(0, description="seed of the random split of the rows into train / valid / test")
    standardize: bool = Field(
        False, description="standardise each column by the training split's mean and standard deviation"
    )
    label_fraction: float = Field(
        1.0,
        gt=0,
        le=1,
        description="fraction of each split's rows whose label a model taking labels sees (the rest are "
        "missing, -1): semi-supervised training; the true labels stay in the run's dataset for scoring",
    )


#: the largest magnitude accepted in data: pplvm computes in float32, where squares of larger
#: values (k-means distances, variances) overflow to inf
MAX_ABS = 1e15


def numeric(x: Any, name: str) -> torch.Tensor:
    """``x`` as a detached real tensor (float64 for arrays, its own dtype for tensors), not yet
    cast to pplvm's float32; refuses complex values, strings and objects, naming ``name``."""
    if isinstance(x, Batch):  # (numpy would read it as an array of zero columns)
        what = f"{len(x)} sequences" if x.lengths is not None else f"{len(x)} data with side inputs"
        raise DataError(f"{name}: expected a table of rows (N, D), got {what} (this model takes rows)")
    if torch.is_tensor(x):
        t = x.detach()  # data never carry an autograd graph into pplvm
    else:
        try:
            arr = np.asarray(x)
        except (TypeError, ValueError) as err:  # e.g. ragged nested lists
            raise DataError(f"{name}: expected a numeric array; {err}") from None
        if np.iscomplexobj(arr):
            raise DataError(f"{name}: expected real numbers, got complex values (dtype {arr.dtype})")
        try:
            t = torch.as_tensor(arr.astype(np.float64))
        except (TypeError, ValueError) as err:  # strings, objects
            raise DataError(f"{name}: expected a numeric array; {err}") from None
    if t.is_complex():
        raise DataError(f"{name}: expected real numbers, got complex values (dtype {t.dtype})")
    if not (t.dtype.is_floating_point or t.dtype in (torch.int32, torch.int64, torch.uint8, torch.bool)):
        raise DataError(f"{name}: expected numbers, got dtype {t.dtype}")
    return t


def check_magnitude(t: torch.Tensor, name: str) -> None:
    """Refuse finite values beyond :data:`MAX_ABS` (before the cast to float32, where 1e300
    would become inf and 1e30 would overflow when squared)."""
    if not t.dtype.is_floating_point and t.dtype != torch.int64:
        return
    big = torch.isfinite(t) & (t.abs() > MAX_ABS)
    if big.any():
        where = big.nonzero()[0].tolist()
        value = float(t[tuple(where)])
        at = f"row {where[0]}" if len(where) <= 2 else f"index {tuple(where)}"
        raise DataError(
            f"{name}: {int(big.sum())} value(s) of magnitude above {MAX_ABS:.0e} (first: {value:.3g} at {at}); "
            "pplvm computes in float32, where their squares overflow: rescale the data (e.g. its units)"
        )


def as_matrix(x: Any, name: str = "data", dim: int | None = None) -> torch.Tensor:
    """Check that ``x`` is a finite, non-empty, real ``(N, D)`` array and return it as float32.

    Raises :class:`DataError` naming ``name``, the offending rows, or the expected dimension.
    """
    t = numeric(x, name)
    if t.dim() == 1 and dim == 1:
        t = t[:, None]
    if t.dim() != 2:
        raise DataError(f"{name}: expected a 2-D array of shape (N, D), got shape {tuple(t.shape)}")
    if t.shape[0] == 0:
        raise DataError(f"{name}: is empty (0 rows); expected at least one row")
    bad = (~torch.isfinite(t)).any(-1).nonzero().flatten() if t.dtype.is_floating_point else []
    if len(bad):
        rows = ", ".join(str(int(i)) for i in bad[:5]) + (", ..." if len(bad) > 5 else "")
        raise DataError(f"{name}: {len(bad)} row(s) contain NaN or inf (rows {rows})")
    check_magnitude(t, name)
    t = t.to(torch.get_default_dtype())
    if dim is not None and t.shape[1] != dim:
        raise DataError(f"{name}: expected {dim} columns (the model's dimension), got {t.shape[1]}")
    return t


@dataclass(frozen=True)
class Batch:
    """Named tensors sharing their leading (datum) dimension; indexing selects data.

    Families whose datum is more than one row of a matrix take a Batch: sequences
    (``x``: padded ``(N, T, D)``, ``lengths``: ``(N,)``) or data with side information
    (``x``: ``(N, D)``, ``y``: ``(N,)`` labels or ``(N, C)`` covariates). Matrix families take a
    plain ``(N, D)`` tensor. Both support ``len(b)`` and ``b[index]``, all the trainer needs.
    ``index`` (``(N,)``, optional) holds each datum's row in the training set, for guides with
    free parameters per training datum; the data plate then subsamples those rows.
    ``inputs`` holds further named arrays ``(N, ...)`` beside the data (covariates, group
    indices, masks), which a user's model takes as keyword arguments of the same names.
    """

    x: torch.Tensor
    lengths: torch.Tensor | None = None
    y: torch.Tensor | None = None
    index: torch.Tensor | None = None
    inputs: dict[str, torch.Tensor] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, index) -> "Batch":
        return self.map(lambda v: v[index])

    def fields(self) -> dict[str, torch.Tensor | None]:
        """The four fields by name (``x``, ``lengths``, ``y``, ``index``; None where unset), without the inputs."""
        return {"x": self.x, "lengths": self.lengths, "y": self.y, "index": self.index}

    def tensors(self) -> dict[str, torch.Tensor]:
        """Every tensor, flat: the fields by name and each input as ``inputs.<name>``
        (:meth:`from_tensors` inverts it; checkpoints and traced steps keep batches so)."""
        flat = {k: v for k, v in self.fields().items() if v is not None}
        return flat | {f"inputs.{k}": v for k, v in self.inputs.items()}

    @classmethod
    def from_tensors(cls, flat: dict[str, torch.Tensor]) -> "Batch":
        """The batch :meth:`tensors` flattened."""
        inputs = {k.split(".", 1)[1]: v for k, v in flat.items() if k.startswith("inputs.")}
        return cls(**{k: v for k, v in flat.items() if not k.startswith("inputs.")}, inputs=inputs)

    def map(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> "Batch":
        """The batch with ``fn`` applied to each of its tensors."""
        return Batch.from_tensors({k: fn(v) for k, v in self.tensors().items()})

    def replace(self, **changes) -> "Batch":
        """A copy with the named fields (``x``, ``lengths``, ``y``, ``index``, ``inputs``) replaced."""
        return Batch(**{**self.fields(), "inputs": self.inputs, **changes})

    def to(self, device: torch.device | str, non_blocking: bool = False) -> "Batch":
        """Every tensor moved to ``device``, as :meth:`torch.Tensor.to`."""
        return self.map(lambda v: v.to(device, non_blocking=non_blocking))

    def pin_memory(self) -> "Batch":
        """Every tensor in page-locked memory (faster copies to a GPU)."""
        return self.map(lambda v: v.pin_memory())


def from_dict(data: dict[str, Any], name: str = "data") -> Batch:
    """A dict of arrays sharing their first dimension as a Batch: the data under ``"x"``,
    sequence lengths under ``"lengths"``, labels under ``"y"``, the rest named inputs."""
    if "x" not in data:
        raise DataError(f"{name}: a dict of arrays needs the data under 'x'; got keys {', '.join(map(str, data))}")
    lengths = data.get("lengths")
    return Batch(
        x=numeric(data["x"], f"{name}['x']").to(torch.get_default_dtype()),
        lengths=None if lengths is None else torch.as_tensor(np.asarray(lengths)),
        y=None if data.get("y") is None else _input(data["y"]),
        inputs={k: _input(v) for k, v in data.items() if k not in ("x", "y", "lengths")},
    )


def _input(value: Any) -> torch.Tensor:
    """A named array as pplvm keeps it: floats in the default dtype, integers and booleans as long."""
    t = torch.as_tensor(np.asarray(value)) if not torch.is_tensor(value) else value
    return t.to(torch.get_default_dtype()) if t.is_floating_point() else t.long()


def indexed(data: "torch.Tensor | Batch") -> Batch:
    """``data`` as a Batch whose ``index`` numbers its rows ``0 .. N-1``."""
    batch = data if isinstance(data, Batch) else Batch(x=data)
    return batch.replace(index=torch.arange(len(batch)))


def values(data: "torch.Tensor | Batch") -> torch.Tensor:
    """The observed values of a batch: the tensor itself, or ``Batch.x``."""
    return data.x if isinstance(data, Batch) else data


@dataclass(frozen=True)
class Standardize:
    """``y = (x - loc) / scale``; log-densities of ``x`` gain ``-sum(log scale)``."""

    loc: torch.Tensor
    scale: torch.Tensor

    @classmethod
    def fit(cls, data: "torch.Tensor | Batch") -> "Standardize":
        """The transform to mean 0 and standard deviation 1 per column of ``data`` (a sequence
        batch: over the steps within each sequence's length)."""
        x = values(data).reshape(-1, values(data).shape[-1])  # sequences: pool every step
        if isinstance(data, Batch) and data.lengths is not None:
            mask = torch.arange(values(data).shape[1]) < data.lengths[:, None]
            x = values(data)[mask]
        scale = x.std(0).clamp_min(1e-8) if len(x) > 1 else torch.ones(x.shape[1])
        return cls(x.mean(0), scale)

    @classmethod
    def identity(cls, dim: int) -> "Standardize":
        """The transform that leaves ``dim`` columns as they are."""
        return cls(torch.zeros(dim), torch.ones(dim))

    def __call__(self, data):
        if isinstance(data, Batch):
            return data.replace(x=self(data.x))
        return (data - self.loc) / self.scale

    def inverse(self, data):
        """``x = y * scale + loc``: transformed data (a tensor or Batch) back in the data's own units."""
        if isinstance(data, Batch):
            return data.replace(x=self.inverse(data.x))
        return data * self.scale + self.loc

    def log_abs_det_jacobian(self, data=None) -> torch.Tensor:
        """``log |dy/dx|`` per datum (per observed row; times the length of each sequence), to be
        added to log p(y) to get log p(x)."""
        per_row = -self.scale.log().sum()
        if isinstance(data, Batch) and data.lengths is not None:
            return per_row * data.lengths.to(per_row.dtype)
        return per_row

    def state_dict(self) -> dict[str, torch.Tensor]:
        """``loc`` and ``scale``, as a checkpoint keeps them."""
        return {"loc": self.loc, "scale": self.scale}


@dataclass
class Dataset:
    """Splits of one data source, already transformed; ``raw_*`` are before the transform."""

    train: torch.Tensor
    valid: torch.Tensor | None
    test: torch.Tensor | None
    transform: Standardize
    labels: dict[str, torch.Tensor | None]
    info: dict[str, Any]
    #: optional ``augment(batch, generator) -> batch`` the trainer applies to each training batch
    #: (e.g. dynamic binarization); ``train`` holds what it draws from, valid and test one fixed draw
    augment: Callable[[Any, torch.Generator], Any] | None = None

    @property
    def dim(self) -> int:
        """The number of columns D of each datum (of each time step, for sequences)."""
        return values(self.train).shape[-1]

    def with_labels(self, who: str | None, fraction: float = 1.0, seed: int = 0) -> "Dataset":
        """Each split as ``Batch(x, y=labels)``, for families that take labels as input;
        ``who`` names the family in the error raised when the source has no labels (None: labels
        are optional, the splits stay as they are without them). With ``fraction < 1`` only that
        fraction of each split's rows (drawn with ``seed``) keeps its label; the rest get ``-1``."""
        if isinstance(self.train, Batch) and self.train.y is not None:
            return self
        if self.labels.get("train") is None:
            if who is None:
                return self
            raise DataError(
                f"{who} needs labels (Batch.y) but the data source gives none; use a labelled "
                "source (e.g. digits, mnist_idx with labels, file with data.label_column)"
            )
        generator = torch.Generator().manual_seed(seed)
        parts = {}
        for k, x in (("train", self.train), ("valid", self.valid), ("test", self.test)):
            if x is None:
                parts[k] = None
                continue
            y = self.labels[k]
            if fraction < 1 and y is not None:
                hidden = torch.rand(len(y), generator=generator) >= fraction
                y = torch.as_tensor(y)  # missing: -1 for integer labels, NaN for float ones
                fill = torch.nan if y.is_floating_point() else -1
                y = torch.where(hidden.reshape(-1, *[1] * (y.dim() - 1)), fill, y)
            parts[k] = (x if isinstance(x, Batch) else Batch(x)).replace(y=y)
        return replace(self, **parts)


@dataclass(frozen=True)
class Source:
    """A registered data source: its config schema and a loader returning ``(x, labels, info)``."""

    Config: type[DataConfig]
    load: Callable[[Any], tuple[Any, Any, dict]]
    doc: str
    #: optional ``augment(cfg)``: the per-batch training transform the config asks for, or None
    augment: Callable[[Any], Callable[[Any, torch.Generator], Any] | None] | None = None
    kind: ClassVar[str] = "data source"


def split(x: "torch.Tensor | Batch", labels, cfg: DataConfig) -> Dataset:
    """Split ``x`` at random by datum (``cfg.valid_fraction`` / ``test_fraction``); the
    standardising transform is fitted on the training split. Splits a source fixes itself go
    through :func:`split_given`."""
    n = len(x)
    n_valid, n_test = int(round(cfg.valid_fraction * n)), int(round(cfg.test_fraction * n))
    if n - n_valid - n_test < 1:
        raise DataError(
            f"data: {n} rows leave no training rows after valid_fraction={cfg.valid_fraction} "
            f"and test_fraction={cfg.test_fraction}"
        )
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(cfg.split_seed))
    parts = perm[n_valid + n_test :], perm[:n_valid], perm[n_valid : n_valid + n_test]
    transform = Standardize.fit(x[parts[0]]) if cfg.standardize else Standardize.identity(values(x).shape[-1])
    xs = [transform(x[p]) if len(p) else None for p in parts]
    lab = torch.as_tensor(labels) if labels is not None else None
    ls = {k: (lab[p] if lab is not None and len(p) else None) for k, p in zip(("train", "valid", "test"), parts)}
    return Dataset(xs[0], xs[1], xs[2], transform, ls, {})


SPLITS = ("train", "valid", "test")


def split_given(
    parts: dict[str, Any], labels: dict[str, Any] | None, cfg: DataConfig, check: Callable[[Any, str], torch.Tensor]
) -> Dataset:
    """Splits a source provides itself (``parts``: ``train`` and any of ``valid``, ``test``).

    Given splits are used as they are; a missing one is carved out of ``train`` by its
    fraction, as :func:`split` does. ``check(x, name)`` validates each part (e.g. ``as_matrix``).
    """
    unknown = set(parts) - set(SPLITS)
    if "train" not in parts or unknown:
        raise ValueError(f"a source's splits must include 'train' and be among {SPLITS}, got {sorted(parts)}")
    labels = labels or {}
    fractions = {f"{k}_fraction": 0.0 for k in ("valid", "test") if parts.get(k) is not None}
    dataset = split(check(parts["train"], "data (train)"), labels.get("train"), cfg.model_copy(update=fractions))
    for k in ("valid", "test"):
        if parts.get(k) is None:
            continue
        part = check(parts[k], f"data ({k})")
        if values(part).shape[-1] != dataset.dim:
            raise DataError(f"data ({k}): {values(part).shape[-1]} columns but the training split has {dataset.dim}")
        setattr(dataset, k, dataset.transform(part))
        dataset.labels[k] = torch.as_tensor(labels[k]) if labels.get(k) is not None else None
    return dataset
