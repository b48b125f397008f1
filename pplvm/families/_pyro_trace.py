"""Reading a user's Pyro model (:mod:`.pyro_model`): trace it once on placeholder batches of two
sizes and classify its sites (:class:`Structure`), and the two handlers the family runs it in: a
minibatch scale on the data plate and a holder that keeps the user's site names."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.distributions import constraints
from pyro.poutine.messenger import Messenger
from pyro.poutine.util import site_is_subsample

from .._modes import evaluating
from .._targets import described, first_line
from ..errors import CardError
from ..evaluation.sites import time_steps

#: placeholder batch sizes the model is traced at; the data plate is the one that follows them
_PROBE_ROWS = (3, 5)


@dataclass(frozen=True)
class Structure:
    """What tracing the model found.

    :ivar plate: name of the data plate; ``plate_dim`` its dim.
    :ivar observed: the observed sites (inside the data plate; ``pyro.factor`` terms and
        ``pyro.deterministic`` records are not observations).
    :ivar global_sites: latent sites outside the data plate, with their shapes in ``global_shapes``.
    :ivar discrete: local latent sites with a finite support (enumerated).
    :ivar continuous: local latent sites with real support; ``continuous_shapes`` their event shapes.
    :ivar max_plate_nesting: deepest plate dim of the model.
    """

    plate: str
    plate_dim: int
    observed: tuple[str, ...]
    global_sites: tuple[str, ...]
    global_shapes: dict[str, tuple[int, ...]]
    discrete: tuple[str, ...]
    continuous: tuple[str, ...]
    continuous_shapes: dict[str, tuple[int, ...]]
    max_plate_nesting: int
    #: why a guide of one continuous local site with an encoder cannot serve the model ('' when it can)
    not_amortizable: str = ""
    #: why an encoder cannot serve some continuous local site (its support or shape; '' when it can)
    site_reasons: str = ""
    notes: list[str] = field(default_factory=list)


def is_observation(site) -> bool:
    """An observed sample site that is data: not a ``pyro.factor`` term, not a ``deterministic``."""
    return _is_sample(site) and site["is_observed"] and not _auxiliary(site)


def _auxiliary(site) -> bool:
    return bool(site["infer"].get("is_auxiliary") or site["infer"].get("_deterministic"))


def trace_structure(
    call: Callable[[Any], Any], example: Callable[[int], Any], name: str, *, module: bool = False, checks: bool = True
) -> Structure:
    """Trace ``call(batch)`` (the model on a batch) on ``example(rows)`` batches of two sizes and
    classify its sites (see :class:`Structure`); a CardError naming ``name`` (the target) for a
    model pplvm cannot use. The example batches are the data's own first rows, so a model whose
    observations do not fit its data (shape, support, NaN) is refused here, before training.
    ``module``: the model is a module (its ``pyro.param`` would be a PyroParam). ``checks``:
    judge the observations against the example data (False for placeholder data)."""
    batches = [example(rows) for rows in _PROBE_ROWS]
    traces = [_probe(call, batch, name) for batch in batches]
    first, second = traces
    # a module's PyroParams are its own; a function's pyro.param would go to the global store
    if not module and any(s["type"] == "param" for s in first.nodes.values()):
        raise CardError(
            f"model {name}: uses pyro.param; pplvm keeps parameters in modules: write a "
            "PyroModule with PyroParam attributes (or give the parameter a prior)"
        )
    observed = [n for n, s in first.nodes.items() if is_observation(s)]
    if not observed:
        raise CardError(f"model {name}: has no observed site; observe the data with pyro.sample(..., obs=x)")
    gone = [n for n in observed if n not in second.nodes]
    if gone and not time_steps(observed):
        raise CardError(f"model {name}: the observed site {gone[0]!r} does not appear in every call")
    plate = _data_plate(first, second, observed, name)
    if checks:
        _check_observations(first, name)
        _check_reads(call, batches[0], first, name)
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
    site_reasons = "; ".join(reasons)
    if len(continuous) > 1:
        few = ", ".join(continuous) if len(continuous) <= 3 else f"{continuous[0]} … {continuous[-1]}"
        reasons.append(f"it has {len(continuous)} continuous local sites ({few}); this guide serves one")
    return Structure(
        plate=plate.name,
        plate_dim=plate.dim,
        observed=tuple(observed),
        global_sites=tuple(globals_),
        global_shapes=shapes,
        discrete=tuple(discrete),
        continuous=tuple(continuous),
        continuous_shapes=cshapes,
        max_plate_nesting=-min(dims) if dims else 1,
        not_amortizable="; ".join(reasons),
        site_reasons=site_reasons,
    )


def _data_plate(first: poutine.Trace, second: poutine.Trace, observed: list[str], name: str):
    """The one plate around every observation whose size follows the batch."""
    candidates = None
    for obs in observed:
        sizes = (
            {f.name: f.size for f in second.nodes[obs]["cond_indep_stack"] if f.vectorized}
            if obs in second.nodes
            else {}
        )
        here = {
            f.name: f
            for f in first.nodes[obs]["cond_indep_stack"]
            if f.vectorized and f.size == _PROBE_ROWS[0] and sizes.get(f.name, _PROBE_ROWS[1]) == _PROBE_ROWS[1]
        }
        if not here:
            raise CardError(
                f"model {name}: no data plate: the observed site {obs!r} must sit inside "
                "pyro.plate(name, len(x)), a plate whose size is the number of rows of x"
            )
        candidates = here if candidates is None else {k: v for k, v in candidates.items() if k in here}
    if len(candidates) != 1:
        raise CardError(
            f"model {name}: no data plate: the observed sites ({', '.join(observed)}) must all sit inside "
            "one pyro.plate(name, len(x)), a plate whose size is the number of rows of x"
        )
    return next(iter(candidates.values()))


def _check_observations(trace: poutine.Trace, name: str) -> None:
    """Each observation's distribution against the data it observes: its shape, its support,
    a finite log-density (one line naming the site, not the traceback of a later step)."""
    for site_name, site in trace.nodes.items():
        if not is_observation(site):
            continue
        fn, value, where = site["fn"], site["value"], f"model {name}: observed site {site_name!r}"
        shape = tuple(fn.batch_shape + fn.event_shape)
        try:
            wider = torch.broadcast_shapes(shape, tuple(value.shape)) != tuple(value.shape)
        except RuntimeError:
            wider = True
        if wider:
            raise CardError(
                f"{where}: its distribution has shape {shape} but the data it observes have shape {tuple(value.shape)}"
            )
        mask = site["mask"]
        inside = fn.support.check(value)
        inside = inside if mask is None or mask is True else inside | ~mask
        if not bool(inside.all()):
            raise CardError(f"{where}: the data lie outside the support of its {_named(fn)}")
        try:
            log_p = fn.log_prob(value)
        except Exception as err:  # the distribution refuses the data: name it
            raise CardError(f"{where}: {_named(fn)} refuses the data: {first_line(err)}") from None
        log_p = log_p if mask is None or mask is True else torch.where(mask, log_p, 0.0)
        try:  # some densities stay finite off their support (a Poisson at 0.5): ask the support itself
            outside = ~fn.support.check(value)
        except (NotImplementedError, ValueError):  # a support that depends on the parameters
            outside = torch.zeros((), dtype=torch.bool)
        # masked entries (poutine.mask, or a .mask() distribution: log-density exactly 0) hold no data
        outside = outside & (log_p != 0) if outside.shape == log_p.shape else outside
        outside = outside if mask is None or mask is True else outside & mask
        if outside.any():
            raise CardError(f"{where}: the data lie outside the support of its {_named(fn)}")
        if log_p.isnan().any():
            raise CardError(
                f"{where}: the log-density of the data is NaN (are the model's parameters NaN, or a scale zero?)"
            )
        if (log_p == -math.inf).any():
            raise CardError(f"{where}: the data have zero density under its {_named(fn)}")


def _check_reads(call: Callable, batch: Any, trace: poutine.Trace, name: str) -> None:
    """Refuse a model that reads x outside its observations (e.g. columns of x used as
    covariates): replayed on changed values of x, a latent site's or an observation's
    distribution must not change. Covariates are named inputs."""
    changed = batch.replace(x=batch.x * 0.5 + 0.25) if hasattr(batch, "replace") else batch * 0.5 + 0.25
    try:
        with torch.no_grad(), pyro.validation_enabled(False), poutine.block():
            again = poutine.trace(poutine.replay(call, trace=trace)).get_trace(changed)
    except Exception:  # noqa: BLE001 - a model that fails on other values is judged by its real data
        return
    for site_name, site in trace.nodes.items():
        if not _is_sample(site) or _auxiliary(site) or site_name not in again.nodes:
            continue
        other = again.nodes[site_name]["fn"]
        try:
            same = torch.allclose(site["fn"].log_prob(site["value"]), other.log_prob(site["value"]), equal_nan=True)
        except Exception:  # noqa: BLE001 - shapes changed with the values: it reads them
            same = False
        if not same:
            raise CardError(
                f"model {name}: site {site_name!r} depends on the values of x outside the observation; "
                "x is only observed (pyro.sample(..., obs=x)): give covariates as named inputs "
                "(data = {'x': ..., 'u': ...}, the model taking u=)"
            )


def _probe(call: Callable, batch: Any, name: str) -> poutine.Trace:
    rows = len(batch)
    return _trace_once(
        call,
        batch,
        uses_param=f"model {name}: uses pyro.param; pplvm keeps parameters in modules: "
        "write a PyroModule with PyroParam attributes (or give the parameter a prior)",
        failed=f"model {name}: calling it on {rows} rows of the data failed",
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
    except (Exception, SystemExit) as err:  # the user's code: what it raised, in one line, and where
        raise CardError(f"{failed}: {described(err)}") from None


def _is_sample(site) -> bool:
    return site["type"] == "sample" and not site_is_subsample(site)


def _named(fn) -> str:
    """A distribution as a reader knows it: the one under its Independent / expand / mask
    wrappers, and that one's support (``Poisson (support: IntegerGreaterThan(lower_bound=0))``)."""
    while isinstance(fn, (torch.distributions.Independent, dist.ExpandedDistribution, dist.MaskedDistribution)):
        fn = fn.base_dist
    return f"{type(fn).__name__} (support: {fn.support})"


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
