"""Guides of the global latents: Pyro's autoguides on the model with every site but the
globals hidden (enumerated local latents stay in the model, where TraceEnum_ELBO sums them out).

Every autoguide of ``pyro.infer.autoguide`` that can be built from the model alone is a guide
kind by its class name (``AutoNormal``, ``AutoDelta``, ``AutoMultivariateNormal``,
``AutoLowRankMultivariateNormal``, ``AutoIAFNormal``, ``AutoLaplaceApproximation``,
``AutoStructured``, ...), its constructor's keyword arguments in ``guide.options``. The same
classes guide the globals of the local guides (``guide.globals``, :mod:`.amortized`).
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
from pydantic import Field
from pyro import poutine
from pyro.infer import autoguide
from pyro.infer.autoguide import AutoDelta, AutoGuide
from pyro.infer.autoguide.initialization import init_to_median, init_to_value

from .._registry import foreign_doc
from .._targets import first_line
from ..errors import CardError, IncompatibleError
from ..families.base import ContinuousLatentModel
from .base import Guide, GuideTraits, InitScale

#: autoguides that do not guide continuous globals from a model alone: abstract bases, containers
#: and wrappers of other guides, and the guide of discrete sites
_NOT_ALONE = (autoguide.AutoGuideList, autoguide.AutoCallable, autoguide.AutoDiscreteParallel)
_BASES = (autoguide.AutoGuide, autoguide.AutoContinuous)


def continuous_locals(model: Any) -> tuple[str, ...]:
    """The model's local latents that a guide must sample (neither enumerated nor implicit)."""
    if isinstance(model, ContinuousLatentModel):
        return (model.latent_site,)
    if model.enumerated or model.likelihood == "none":
        return ()
    return tuple(model.local_sites)


def sites_text(sites: tuple[str, ...]) -> str:
    return ", ".join(sites) if len(sites) <= 3 else f"{sites[0]} … {sites[-1]}"


def globals_only(model: Any, what: str) -> str | None:
    """Why a guide of the globals alone (``what``) cannot serve ``model``, or None."""
    local = continuous_locals(model)
    if local:
        return (
            f"{what} guides the global latents only, and the continuous local latent(s) {sites_text(local)} "
            "need a guide of their own (guide.kind = 'amortized', 'exact' or 'meanfield', with guide.globals "
            "naming the globals' guide)"
        )
    if not model.global_sites:
        return f"{what} guides global latents, and this model has none"
    return None


def start(model: Any, x: Any, generator: torch.Generator | None) -> Any:
    """``init_loc_fn`` of the globals: the family's data-driven starting values (computed on
    the host, placed with the model), else the prior median."""
    generator = generator if generator is not None else torch.Generator().manual_seed(0)
    values = {k: v.to(model.device) for k, v in model.init_values(x, generator).items()}
    return init_to_value(values=values, fallback=init_to_median)


def build_autoguide(
    cls: type, model: Any, init: Any, init_scale: float | None, options: dict[str, Any], key: str = "guide.options"
) -> torch.nn.Module:
    """``cls`` on the model with only its global sites exposed, started at ``init`` (and
    ``init_scale`` where it takes one); ``options``: the card's keyword arguments."""
    params = inspect.signature(cls.__init__).parameters
    kw: dict[str, Any] = {}
    if "init_loc_fn" in params and not issubclass(cls, autoguide.AutoNormalizingFlow):  # flows: deprecated, unused
        kw["init_loc_fn"] = init
    if "init_scale" in params and init_scale is not None:
        kw["init_scale"] = init_scale
    clash = sorted(set(kw) & set(options))
    if clash:
        raise CardError(f"{key}: {', '.join(clash)} is set by pplvm (guide.init_scale, the family's starting values)")
    try:
        return cls(poutine.block(model, expose=list(model.global_sites)), **kw, **options)
    except (TypeError, ValueError) as err:
        raise CardError(f"{key}: building {cls.__name__} failed: {first_line(err)}") from None


class AutoguideConfig(InitScale):
    options: dict[str, Any] = Field({}, description="keyword arguments of the autoguide (e.g. rank, hidden_dim)")


class PyroAutoguide(Guide):
    """A Pyro autoguide by class name, over the global latents (the base of the generic plugins).

    **q** is the autoguide's own distribution over the global latents θ, in their
    unconstrained space, built on the model with every other site hidden and started at the
    family's data-driven values; its constructor's keyword arguments are ``guide.options``.

    **Needs** global latents and no continuous local ones (those need a guide of their own:
    ``amortized``, ``exact`` or ``meanfield`` with ``guide.globals`` naming the autoguide);
    enumerated locals stay in the model, summed out by ``enum``. **Offers** no local proposal;
    ``AutoDelta`` offers a point estimate (which ``em`` writes in place).
    """

    Config = AutoguideConfig
    pyro_class: type = AutoGuide

    def refusal(self, model: Any) -> str | None:
        return globals_only(model, self.pyro_class.__name__)

    def traits(self, model: Any) -> GuideTraits:
        return GuideTraits(point_estimate=issubclass(self.pyro_class, AutoDelta))

    def build(self, model: Any, x: Any, *, generator=None, num_data=None) -> torch.nn.Module:
        init = start(model, x, generator)
        return build_autoguide(self.pyro_class, model, init, self.config.init_scale, self.config.options)


def _alone(cls: type) -> bool:
    if inspect.isabstract(cls) or cls in _BASES or issubclass(cls, _NOT_ALONE) or cls.__module__.startswith("pplvm"):
        return False
    params = list(inspect.signature(cls.__init__).parameters.values())[2:]  # self, model
    return all(p.default is not inspect.Parameter.empty or p.kind in (p.VAR_KEYWORD, p.VAR_POSITIONAL) for p in params)


@torch.no_grad()
def _median_of_draws(self, *args: Any, **kwargs: Any) -> dict[str, torch.Tensor]:
    """The elementwise median of 101 draws (seeded; the global RNG is left as it was)."""
    with poutine.seed(rng_seed=0):
        draws = [self(*args, **kwargs) for _ in range(101)]
    return {k: torch.stack([d[k] for d in draws]).median(0).values for k in draws[0]}


def _with_median(cls: type) -> type:
    """``cls``, or, where Pyro gives it no closed-form median (no ``_loc_scale``: AutoIAFNormal,
    AutoLaplaceApproximation), a subclass whose median is that of draws: pplvm reads the
    globals' point estimate from ``median()``."""
    if issubclass(cls, autoguide.AutoContinuous) and cls._loc_scale is autoguide.AutoContinuous._loc_scale:
        return type(cls.__name__, (cls,), {"median": _median_of_draws, "__module__": __name__})
    return cls


def _register(cls: type, register: bool = True) -> type[PyroAutoguide]:
    doc = " ".join(((cls.__doc__ or cls.__name__).strip().split("\n\n")[0]).split()).split(". ")[0].rstrip(".")
    doc = foreign_doc(doc)
    shared = inspect.cleandoc(PyroAutoguide.__doc__ or "").split("\n\n", 1)[1]  # what every autoguide needs, offers
    here = f"Here ``pyro.infer.autoguide.{cls.__name__}`` guides the global latents only."
    attrs = {"__doc__": f"Pyro's {cls.__name__}: {doc}.\n\n{here}\n\n{shared}"}
    attrs["__module__"] = __name__
    return type(
        cls.__name__,
        (PyroAutoguide,),
        {**attrs, "names": (cls.__name__,) if register else (), "pyro_class": _with_median(cls)},
    )


#: Pyro's autoguides by class name (filled by :func:`register_autoguides`)
AUTOGUIDES: dict[str, type[PyroAutoguide]] = {}


def register_autoguides() -> None:
    """Register every autoguide of ``pyro.infer.autoguide`` built from a model alone (after
    pplvm's own kinds, so that listings show those first)."""
    for name in autoguide.__all__:
        cls = getattr(autoguide, name)
        if isinstance(cls, type) and issubclass(cls, AutoGuide) and _alone(cls) and name not in AUTOGUIDES:
            AUTOGUIDES[name] = _register(cls)


def globals_guide(model: Any, name: str, init: Any, init_scale: float, options: dict[str, Any]) -> Any:
    """The guide of ``model``'s globals that a local guide holds (None without global latents)."""
    if not model.global_sites:
        return None
    if name not in AUTOGUIDES:
        raise IncompatibleError(f"guide.globals = {name!r}: expected one of: {', '.join(AUTOGUIDES)}")
    return build_autoguide(AUTOGUIDES[name].pyro_class, model, init, init_scale, options, "guide.globals_options")
