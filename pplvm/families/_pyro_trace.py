"""Reading a user's Pyro model (:mod:`.pyro_model`): trace it once on placeholder batches of two
sizes and classify its sites (:class:`Structure`), and the two handlers the family runs it in: a
minibatch scale on the data plate and a holder that keeps the user's site names."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import pyro
import torch
from pyro import poutine
from pyro.distributions import constraints
from pyro.poutine.messenger import Messenger
from pyro.poutine.util import site_is_subsample

from .._modes import evaluating
from .._targets import first_line
from ..errors import CardError

#: placeholder batch sizes the model is traced at; the data plate is the one that follows them
_PROBE_ROWS = (3, 5)


@dataclass(frozen=True)
class Structure:
    """What tracing the model found.

    :ivar plate: name of the data plate; ``plate_dim`` its dim.
    :ivar observed: the observed site (inside the data plate).
    :ivar global_sites: latent sites outside the data plate, with their shapes in ``global_shapes``.
    :ivar discrete: local latent sites with a finite support (enumerated).
    :ivar continuous: local latent sites with real support; ``continuous_shapes`` their event shapes.
    :ivar max_plate_nesting: deepest plate dim of the model.
    """

    plate: str
    plate_dim: int
    observed: str
    global_sites: tuple[str, ...]
    global_shapes: dict[str, tuple[int, ...]]
    discrete: tuple[str, ...]
    continuous: tuple[str, ...]
    continuous_shapes: dict[str, tuple[int, ...]]
    max_plate_nesting: int
    #: why the amortized encoder cannot serve the continuous locals ('' when it can)
    not_amortizable: str = ""
    notes: list[str] = field(default_factory=list)


def trace_structure(model: Callable, dim: int, name: str, example: Callable[[int], Any] | None = None) -> Structure:
    """Trace ``model`` on zero batches of two sizes and classify its sites (see :class:`Structure`);
    a CardError naming ``name`` (the target) for a model pplvm cannot use. ``example(rows)``
    makes the placeholder batch (default: ``(rows, dim)`` zeros)."""
    traces = [_probe(model, rows, dim, name, example) for rows in _PROBE_ROWS]
    first, second = traces
    # a module's PyroParams are its own; a function's pyro.param would go to the global store
    if not isinstance(model, torch.nn.Module) and any(s["type"] == "param" for s in first.nodes.values()):
        raise CardError(
            f"model {name}: uses pyro.param; pplvm keeps parameters in modules: write a "
            "PyroModule with PyroParam attributes (or give the parameter a prior)"
        )
    observed = [n for n, s in first.nodes.items() if _is_sample(s) and s["is_observed"]]
    if not observed:
        raise CardError(f"model {name}: has no observed site; observe the data with pyro.sample(..., obs=x)")
    if len(observed) > 1:
        raise CardError(
            f"model {name}: has {len(observed)} observed sites ({', '.join(observed)}); "
            "pplvm needs the data observed at one site"
        )
    obs = observed[0]
    if obs not in second.nodes:
        raise CardError(f"model {name}: the observed site {obs!r} does not appear in every call")
    sizes = {f.name: f.size for f in second.nodes[obs]["cond_indep_stack"] if f.vectorized}
    plates = [
        f
        for f in first.nodes[obs]["cond_indep_stack"]
        if f.vectorized and f.size == _PROBE_ROWS[0] and sizes.get(f.name) == _PROBE_ROWS[1]
    ]
    if len(plates) != 1:
        raise CardError(
            f"model {name}: no data plate: the observed site {obs!r} must sit inside "
            "pyro.plate(name, len(x)), a plate whose size is the number of rows of x"
        )
    plate = plates[0]
    dims = [f.dim for s in first.nodes.values() if _is_sample(s) for f in s["cond_indep_stack"] if f.vectorized]
    globals_, shapes, discrete, continuous, cshapes, reasons = [], {}, [], [], {}, []
    for site_name, site in first.nodes.items():
        if not _is_sample(site) or site["is_observed"]:
            continue
        fn = site["fn"]
        local = any(f.name == plate.name for f in site["cond_indep_stack"])
        if not local:
            if fn.support.is_discrete:
                raise CardError(
                    f"model {name}: site {site_name!r} is a discrete latent outside the data plate; "
                    "pplvm's guides over global latents need them continuous"
                )
            if site_name in second.nodes and second.nodes[site_name]["value"].shape != site["value"].shape:
                raise CardError(
                    f"model {name}: site {site_name!r} changes shape with the batch but is outside "
                    f"the data plate {plate.name!r}; put it inside the plate"
                )
            globals_.append(site_name)
            shapes[site_name] = tuple(site["value"].shape)
        elif fn.support.is_discrete:
            if not fn.has_enumerate_support:
                raise CardError(
                    f"model {name}: site {site_name!r} is discrete with an unbounded support "
                    f"({type(fn).__name__}); pplvm can sum out only finite discrete latents"
                )
            discrete.append(site_name)
        else:
            if not fn.has_rsample:
                raise CardError(
                    f"model {name}: site {site_name!r} is continuous but not reparameterisable "
                    f"({type(fn).__name__}); pplvm cannot classify it"
                )
            continuous.append(site_name)
            cshapes[site_name] = tuple(fn.event_shape)
            value_shape = tuple(site["value"].shape)
            if _base_support(fn) is not constraints.real:
                reasons.append(f"site {site_name!r} has support {_base_support(fn)}, not the real line")
            elif len(fn.event_shape) != 1 or value_shape != (_PROBE_ROWS[0], *fn.event_shape) or plate.dim != -1:
                reasons.append(f"site {site_name!r} has shape {value_shape}, not (rows, L) in a data plate at dim -1")
    if len(continuous) > 1:
        reasons.append(f"it has {len(continuous)} continuous local sites; the encoder serves one")
    return Structure(
        plate=plate.name,
        plate_dim=plate.dim,
        observed=obs,
        global_sites=tuple(globals_),
        global_shapes=shapes,
        discrete=tuple(discrete),
        continuous=tuple(continuous),
        continuous_shapes=cshapes,
        max_plate_nesting=-min(dims) if dims else 1,
        not_amortizable="; ".join(reasons),
    )


def _probe(
    model: Callable, rows: int, dim: int, name: str, example: Callable[[int], Any] | None = None
) -> poutine.Trace:
    x = example(rows) if example is not None else torch.zeros(rows, dim)
    return _trace_once(
        model,
        x,
        uses_param=f"model {name}: uses pyro.param; pplvm keeps parameters in modules: "
        "write a PyroModule with PyroParam attributes (or give the parameter a prior)",
        failed=f"model {name}: calling it on a ({rows}, {dim}) batch failed",
    )


def _trace_once(fn: Callable, x: Any, *, uses_param: str, failed: str) -> poutine.Trace:
    """One trace of the user's ``fn(x)`` (no gradients, no validation, networks in ``.eval()``,
    seeded, hidden from any outer handler); whatever it raises becomes one CardError:
    ``uses_param`` where Pyro refuses a ``pyro.param`` inside a module, else ``failed`` and the
    error's first line."""
    try:
        with torch.no_grad(), evaluating(fn), pyro.validation_enabled(False), poutine.block(), poutine.seed(rng_seed=0):
            return poutine.trace(fn).get_trace(x)
    except NotImplementedError as err:
        if "pyro.param" in str(err):
            raise CardError(uses_param) from None
        raise CardError(f"{failed}: {first_line(err)}") from None
    except Exception as err:  # the user's code: report what it raised, in one line
        raise CardError(f"{failed}: {type(err).__name__}: {first_line(err)}") from None


def _is_sample(site) -> bool:
    return site["type"] == "sample" and not site_is_subsample(site)


def _base_support(fn) -> Any:
    support = fn.support
    while isinstance(support, constraints.independent):
        support = support.base_constraint
    return support


class _ScaleDataPlate(Messenger):
    """Scale every sample site inside the plate ``name`` by ``factor`` (``N / B`` for a minibatch
    of B out of N rows, as a subsampled plate would)."""

    def __init__(self, name: str, factor: float):
        super().__init__()
        self.name, self.factor = name, factor

    def _process_message(self, msg) -> None:
        if msg["type"] == "sample" and any(f.name == self.name for f in msg["cond_indep_stack"]):
            msg["scale"] = msg["scale"] * self.factor


class _Holder(torch.nn.Module):
    """Holds the user's module out of sight of PyroModule naming, so that its sites keep the
    names the user gave them (a PyroModule attribute would prefix them)."""

    def __init__(self, module: torch.nn.Module):
        super().__init__()
        self.module = module
