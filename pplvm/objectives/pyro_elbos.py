"""Every ELBO of ``pyro.infer`` by its class name (``Trace_ELBO``, ``TraceGraph_ELBO``,
``RenyiELBO``, ``JitTrace_ELBO``, ...), registered generically: one plugin per class, whose card
section holds the class's constructor options that a card can give (numbers and booleans:
``num_particles``, ``vectorize_particles``, ``alpha``, ...), with Pyro's own defaults.

pplvm's SVI step differentiates the objective's loss (Pyro's ``ELBOModule``). A class that has
no ``differentiable_loss`` but forms a surrogate loss (``TraceGraph_ELBO``) gets one that has the
loss's value and the surrogate's gradient; ``RenyiELBO`` runs as :class:`~.renyi.RenyiBound`
(the same bound with a differentiable loss, correct under minibatches); a class with neither
is refused with that reason. Enumerating classes (``TraceEnum_ELBO``) sum out discrete local
latents and need them, as ``enum`` does; the others need none.
"""

from __future__ import annotations

import inspect
import re
from typing import Any

import pyro.infer
import torch
from pydantic import Field, create_model
from pyro.infer import ELBO, RenyiELBO, TraceEnum_ELBO, TraceMeanField_ELBO, TraceTailAdaptive_ELBO, TraceTMC_ELBO

from .._registry import foreign_doc
from .renyi import RenyiBound
from .svi import SVIConfig, SVIObjective

#: constructor options pplvm passes itself (or that a card cannot write)
_PASSED = {"self", "max_plate_nesting", "max_iarange_nesting", "strict_enumeration_warning", "jit_options"}
#: what Pyro documents a class needs beyond its signature's defaults
_NEEDS = {TraceTailAdaptive_ELBO: {"num_particles": 2, "vectorize_particles": True}}
#: classes that compile over Pyro's global param store, where pplvm's modules keep no parameters
#: (module-local params); pplvm's own compiled step (training.compile) is their counterpart
_PARAM_STORE = tuple(getattr(pyro.infer, n) for n in pyro.infer.__all__ if n.startswith("Jit"))
#: classes whose loss is a gradient surrogate without a value (Pyro: "not an estimate of the ELBO"),
#: where pplvm's loop reads the loss (progress, non-finite checks, early stopping)
_NO_VALUE = (TraceTailAdaptive_ELBO,)
#: pplvm's differentiable version of a class that lacks one
_DIFFERENTIABLE = {RenyiELBO: RenyiBound}


def _surrogate_loss(self, model, guide, *args, **kwargs):
    """The loss's value with the surrogate loss's gradient."""
    elbo, surrogate = self._loss_and_surrogate_loss(model, guide, args, kwargs)  # (the ELBO, the surrogate loss)
    loss = -(elbo if isinstance(elbo, torch.Tensor) else surrogate.new_tensor(elbo))
    return surrogate + (loss.detach() - surrogate.detach())


def _trainable(cls: type[ELBO]) -> type[ELBO] | None:
    """``cls``, or a version of it with a differentiable loss, or None."""
    if cls in _DIFFERENTIABLE:
        return _DIFFERENTIABLE[cls]
    if any("differentiable_loss" in vars(c) for c in cls.__mro__ if c is not ELBO):
        return cls
    if hasattr(cls, "_loss_and_surrogate_loss"):
        return type(cls.__name__, (cls,), {"differentiable_loss": _surrogate_loss, "__module__": __name__})
    return None


class PyroELBO(SVIObjective):
    """A Pyro ELBO class by name (the base of the generic plugins).

    **Estimator**: the class's own, trained by pplvm's SVI step, which differentiates its
    loss: a class with only a surrogate loss gets the loss's value with the surrogate's
    gradient, and ``RenyiELBO`` runs as :class:`~pplvm.objectives.renyi.RenyiBound`. The card
    section holds the constructor's numeric and boolean options, with Pyro's defaults.

    **Needs** what every SVI objective needs; an enumerating class (``TraceEnum_ELBO``,
    ``TraceTMC_ELBO``) needs enumerated locals, the others none. Refused: classes without a
    differentiable loss, the ``Jit*`` classes (they compile over Pyro's global parameter store,
    where pplvm keeps none: use ``training.compile``) and ``TraceTailAdaptive_ELBO`` (its loss
    has no value for pplvm's loop to read).
    """

    pyro_class: type[ELBO] = ELBO

    def elbo(self, model: Any) -> ELBO:
        options = {k: v for k, v in self.config.model_dump().items() if k in self._options()}
        if "strict_enumeration_warning" in inspect.signature(self.pyro_class.__init__).parameters:
            options["strict_enumeration_warning"] = model.enumerated and not model.collapsed
        return _trainable(self.pyro_class)(max_plate_nesting=model.max_plate_nesting, **options)

    @classmethod
    def _options(cls) -> set[str]:
        return set(inspect.signature(cls.pyro_class.__init__).parameters) - _PASSED

    def refusal(self, model: Any, guide: Any) -> str | None:
        if _trainable(self.pyro_class) is None:
            return self.cannot(
                model,
                f"{self.pyro_class.__name__} has no differentiable loss, which pplvm's SVI step differentiates",
            )
        if issubclass(self.pyro_class, _PARAM_STORE):
            return self.cannot(
                model,
                f"{self.pyro_class.__name__} compiles over Pyro's global param store, and pplvm keeps parameters "
                "in modules; use its un-jitted class with training.compile = 'trace' (pplvm's compiled step)",
            )
        if issubclass(self.pyro_class, _NO_VALUE):
            return self.cannot(
                model,
                f"{self.pyro_class.__name__}'s loss is a gradient surrogate with no value, and pplvm's loop "
                "reads the loss (non-finite checks, early stopping)",
            )
        for key, least in _NEEDS.get(self.pyro_class, {}).items():
            if getattr(self.config, key) < least:
                return f"objective.{key}: {self.pyro_class.__name__} needs {key} >= {least}"
        return super().refusal(model, guide)


#: ``:param [type] name: text`` in a Pyro docstring
_PARAM = re.compile(r":param(?:\s+[\w.]+)?\s+(\w+):\s*(.*?)(?=\n\s*:param|\n\s*\n|\Z)", re.S)


def _option_docs(cls: type[ELBO]) -> dict[str, str]:
    """Pyro's description of each constructor option of ``cls`` (its own docstring's, else a base's)."""
    out: dict[str, str] = {}
    for c in cls.__mro__:
        for name, text in _PARAM.findall(inspect.getdoc(c) or ""):
            out.setdefault(name, "Pyro's option: " + foreign_doc(" ".join(text.split())))
    return out


def _section(cls: type[ELBO]) -> type[SVIConfig]:
    """A card section with the constructor options of ``cls`` that take numbers or booleans
    (described as Pyro describes them)."""
    fields: dict[str, Any] = {}
    docs = _option_docs(cls)
    for name, p in inspect.signature(cls.__init__).parameters.items():
        if name in _PASSED or p.default is inspect.Parameter.empty or isinstance(p.default, str):
            continue
        default = _NEEDS.get(cls, {}).get(name, p.default)
        if isinstance(default, bool):
            fields[name] = (bool, Field(default, description=docs.get(name)))
        elif isinstance(default, int) and name == "num_particles":
            fields[name] = (int, Field(default, ge=1, description=docs.get(name)))
        elif isinstance(default, (int, float)):
            fields[name] = (float if isinstance(default, float) else int, Field(default, description=docs.get(name)))
        elif default is None:
            continue
    return create_model(f"{cls.__name__}Config", __base__=SVIConfig, __module__=__name__, **fields)


def _register(cls: type[ELBO], register: bool = True) -> type[PyroELBO]:
    """The plugin of Pyro's ELBO class ``cls`` (registered under its class name, or not)."""
    doc = " ".join(((cls.__doc__ or cls.__name__).strip().split("\n\n")[0]).split()).split(". ")[0].rstrip(".")
    doc = foreign_doc(doc)
    shared = inspect.cleandoc(PyroELBO.__doc__ or "").split("\n\n", 1)[1]  # what every such plugin needs
    return type(
        cls.__name__,
        (PyroELBO,),
        {
            "__doc__": f"Pyro's {cls.__name__}: {doc}.\n\nHere ``pyro.infer.{cls.__name__}``.\n\n{shared}",
            "__module__": __name__,
            "names": (cls.__name__,) if register else (),
            "Config": _section(cls),
            "pyro_class": cls,
            "enumerates": issubclass(cls, (TraceEnum_ELBO, TraceTMC_ELBO)),  # tensor variable elimination
            "mean_field": issubclass(cls, TraceMeanField_ELBO),
        },
    )


def _elbo_classes() -> list[type[ELBO]]:
    """The ELBO classes ``pyro.infer`` exports that can be built from options alone."""
    out = []
    for name in sorted(pyro.infer.__all__):
        cls = getattr(pyro.infer, name)
        if not (isinstance(cls, type) and issubclass(cls, ELBO)) or cls is ELBO:
            continue
        params = inspect.signature(cls.__init__).parameters.values()
        if all(p.default is not inspect.Parameter.empty or p.name == "self" or p.kind == p.VAR_KEYWORD for p in params):
            out.append(cls)
    return out


#: Pyro's ELBOs by class name (filled by :func:`register_pyro_elbos`)
PYRO_ELBOS: dict[str, type[PyroELBO]] = {}


def register_pyro_elbos() -> None:
    """Register every ELBO class of ``pyro.infer`` (after pplvm's own names, so that listings
    show those first)."""
    for cls in _elbo_classes():
        if cls.__name__ not in PYRO_ELBOS:
            PYRO_ELBOS[cls.__name__] = _register(cls)
