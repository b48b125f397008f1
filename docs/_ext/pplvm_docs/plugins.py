"""One page per registered family, guide and objective, built from the registries: the class
docstring, its card section (from the schema), what it declares, and which guides and
objectives it admits, computed by asking the declarations the facade asks
(:func:`pplvm.objectives.admissions`, each plugin's ``refusal``)."""

from __future__ import annotations

import functools
import inspect
from pathlib import Path
from typing import Any

from sphinx.pycode import ModuleAnalyzer

from .cards import section_table
from .rst import docstring, heading, indent, literal, text, undocumented, unrole

KINDS = {"families": "model family", "guides": "guide", "objectives": "objective"}


def registries() -> dict[str, Any]:
    from pplvm import FAMILIES, GUIDES, OBJECTIVES

    return {"families": FAMILIES, "guides": GUIDES, "objectives": OBJECTIVES}


@functools.cache
def _attr_docs(module: str) -> dict[tuple[str, str], list[str]]:
    try:
        return ModuleAnalyzer.for_module(module).find_attr_docs()
    except Exception:  # a class made at run time has no source to read
        return {}


def declarations(cls: type) -> list[tuple[str, Any, str]]:
    """``(name, value, meaning)`` of each class attribute pplvm documents (a ``#:`` comment) on
    ``cls`` or a pplvm base of it: what the facade asks of it."""
    out, seen = [], set()
    for base in reversed(cls.__mro__):
        if not base.__module__.startswith("pplvm.") or base.__module__ == "pplvm._registry":
            continue
        for (owner, attr), doc in _attr_docs(base.__module__).items():
            if owner == base.__qualname__ and attr not in seen and hasattr(cls, attr):
                seen.add(attr)
                meaning = " ".join(" ".join(doc).split())
                out.append((attr, getattr(cls, attr), unrole(meaning)))
    return out


@functools.cache
def models() -> dict[str, Any]:
    """Each family built at its card defaults (None where its defaults build no model)."""
    import torch

    from pplvm.errors import PplvmError

    torch.set_num_threads(1)
    out = {}
    for name, cls in registries()["families"].items():
        try:
            out[name] = cls.from_config(cls.Config(family=name), 8)
        except (PplvmError, ValueError, TypeError):
            out[name] = None
    return out


@functools.cache
def admissions() -> dict[str, tuple[list[str], list[str]]]:
    from pplvm.objectives import admissions as admits

    return {name: admits(name, cls) for name, cls in registries()["families"].items()}


def _guide(kind: str) -> Any:
    from pplvm.guides import GUIDES

    return GUIDES[kind](GUIDES[kind].Config(kind=kind))


def _objective(name: str) -> Any:
    from pplvm.objectives import OBJECTIVES

    return OBJECTIVES[name](OBJECTIVES[name].Config(name=name))


def _links(folder: str, names: list[str]) -> str:
    return ", ".join(f":doc:`{n} <../{folder}/{n}>`" for n in names) or "none"


def _class_block(cls: type, where: str, indexed: bool) -> str:
    doc = docstring(cls, _APP["app"])
    if not doc.strip():
        undocumented(f"class {cls.__module__}.{cls.__qualname__} has no docstring", where)
    block = f".. py:currentmodule:: {cls.__module__}\n\n.. py:class:: {cls.__qualname__}\n"
    block += "" if indexed else "   :no-index:\n"
    return block + "\n" + indent(doc or "(no docstring)") + "\n"


_APP: dict[str, Any] = {}


def _declared_table(cls: type) -> str:
    from .rst import table

    rows = [[literal(a), literal(repr(v)), text(m)] for a, v, m in declarations(cls)]
    return table(["declares", "value", "meaning"], rows, widths=[20, 20, 60]) if rows else ""


def family_page(name: str, cls: type) -> str:
    from pplvm.families import capabilities

    where = f"reference/families/{name}"
    out = [heading(name, "="), f'``model.family = "{name}"``\n', _class_block(cls, where, True)]
    if (Path(__file__).parents[2] / "families" / f"{name}.md").is_file():  # a hand-written page of details
        out.append(f"More on this family: :doc:`/families/{name}`.\n")
    out.append(heading("Card keys", "-") + section_table(cls.Config, "model", where, "family"))
    offered = [b for b in cls.__mro__[1:] if b.__module__ == capabilities.__name__]
    out.append(heading("What it declares", "-"))
    if offered:
        names = ", ".join(f":class:`~{b.__module__}.{b.__qualname__}`" for b in offered)
        out.append(f"Capabilities it offers: {names}.\n")
    out.append(_declared_table(cls))
    out.append(heading("Guides and objectives it admits", "-"))
    guides, objectives = admissions()[name]
    model = models()[name]
    if model is None:
        out.append(
            "Its card section has required keys (its defaults build no model), so which guides and objectives "
            "serve it is decided by the model its card builds: ``pplvm fit`` names what it refuses and why.\n"
        )
        return "\n".join(out)
    out.append(f"At its card defaults, computed from the declarations. Guides: {_links('guides', guides)}.\n")
    out.append(f"Objectives (with one of those guides): {_links('objectives', objectives)}.\n")
    refused = [(k, _guide(k).refusal(model)) for k in registries()["guides"] if k not in guides]
    rows = [[f":doc:`{k} <../guides/{k}>`", text(why)] for k, why in refused if why]
    if rows:
        from .rst import table

        out.append("Guides it refuses, with the reason the guide gives:\n")
        out.append(table(["guide", "why not"], rows, widths=[20, 80]))
    return "\n".join(out)


def _traits(kind: str, model: Any) -> str:
    traits = _guide(kind).traits(model)
    default = type(traits)()
    changed = [f for f in traits.__dataclass_fields__ if getattr(traits, f) != getattr(default, f)]
    shown = [f"{f}={getattr(traits, f)!r}" for f in changed]
    return literal(", ".join(shown)) if shown else "the defaults"


def _plugin_head(name: str, cls: type, first: bool, folder: str, section: str, tag: str) -> list[str]:
    """A guide's or an objective's page up to its table of families: the title, the card line,
    the class's docstring, its card keys and what it declares."""
    where = f"reference/{folder}/{name}"
    out = [heading(name, "="), f'``{section}.{tag} = "{name}"``\n', _class_block(cls, where, first)]
    out.append(heading("Card keys", "-") + section_table(cls.Config, section, where, tag))
    if (declared := _declared_table(cls)).strip():
        out.append(heading("What it declares", "-") + declared)
    return out


def guide_page(name: str, cls: type, first: bool) -> str:
    from .rst import table

    out = _plugin_head(name, cls, first, "guides", "guide", "kind")
    out.append(heading("Families it serves", "-"))
    out.append(
        "Each family at its card defaults, asked as the facade asks (:func:`pplvm.objectives.admissions`); "
        "what the guide then offers (:class:`~pplvm.guides.base.GuideTraits` that differ from the defaults), "
        "or why it refuses.\n"
    )
    rows = []
    for family, model in models().items():
        if model is None:
            continue
        serves = name in admissions()[family][0]
        why = _guide(name).refusal(model) if not serves else None
        cell = f"serves; offers {_traits(name, model)}" if serves else text(why or "not chosen by itself")
        rows.append([f":doc:`{family} <../families/{family}>`", cell])
    out.append(table(["family", "serves?"], rows, widths=[20, 80]))
    return "\n".join(out)


def objective_page(name: str, cls: type, first: bool) -> str:
    from .rst import table

    out = _plugin_head(name, cls, first, "objectives", "objective", "name")
    out.append(heading("Families it trains", "-"))
    out.append(
        "Each family at its card defaults, with the guides it admits, asked as the facade asks "
        "(:func:`pplvm.objectives.admissions`): the guides it trains the family with, or why it refuses "
        "(with the family's first admitted guide).\n"
    )
    from pplvm.errors import PplvmError

    try:
        plugin = _objective(name)
    except PplvmError as err:  # an objective built around an object of your own
        out.append(
            f"Its section alone builds no objective ({text(str(err))}): what it trains is what the "
            "object it names declares.\n"
        )
        return "\n".join(out)
    rows = []
    for family, model in models().items():
        if model is None:
            continue
        guides, objectives = admissions()[family]
        if name in objectives:
            with_ = [g for g in guides if plugin.refusal(model, _guide(g).traits(model)) is None]
            cell = f"trains it, with {_links('guides', with_)}"
        else:
            from pplvm.guides.base import GuideTraits

            traits = _guide(guides[0]).traits(model) if guides else GuideTraits()
            cell = text(plugin.refusal(model, traits) or "not chosen by itself")
        rows.append([f":doc:`{family} <../families/{family}>`", cell])
    out.append(table(["family", "trains?"], rows, widths=[20, 80]))
    return "\n".join(out)


def index_page(folder: str) -> str:
    from .rst import table

    registry, kind = registries()[folder], KINDS[folder]
    title = {"families": "Model families", "guides": "Guides", "objectives": "Objectives"}[folder]
    out = [heading(title, "=")]
    out.append(f"Every registered {kind}, one page each, generated from the registry.\n")
    rows = []
    for name, cls in registry.in_order():
        summary = " ".join((inspect.getdoc(cls) or "").split("\n\n")[0].split()) if cls.__dict__.get("__doc__") else ""
        rows.append([f":doc:`{name}`", text(unrole(summary))])
    out.append(table([kind, "summary"], rows, widths=[25, 75]))
    out.append(".. toctree::\n   :hidden:\n\n" + "\n".join(f"   {n}" for n, _ in registry.in_order()) + "\n")
    return "\n".join(out)


def pages(app: Any) -> dict[str, str]:
    """Docname -> reStructuredText of every plugin page and the three indexes."""
    _APP["app"] = app
    out: dict[str, str] = {}
    makers = {"families": family_page, "guides": guide_page, "objectives": objective_page}
    for folder, registry in registries().items():
        out[f"reference/{folder}/index"] = index_page(folder)
        seen: set[type] = set()
        for name, cls in registry.in_order():
            args = (name, cls) if folder == "families" else (name, cls, cls not in seen)
            out[f"reference/{folder}/{name}"] = makers[folder](*args)
            seen.add(cls)
    return out
