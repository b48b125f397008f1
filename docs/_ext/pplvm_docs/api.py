"""The Python API reference: autodoc for every name in ``pplvm.__all__`` and the public
submodules users touch; a public name or member without a docstring is a build warning (an
error under ``-W``), reported by :func:`check_docstring`."""

from __future__ import annotations

import importlib
import inspect
from typing import Any

from .rst import heading, text, undocumented, unrole

WHERE = "reference/api"
#: folders of the generated plugin pages, by registry name
PAGES = {"FAMILIES": "families", "GUIDES": "guides", "OBJECTIVES": "objectives"}
#: the submodules users touch beyond the top level, each with what it is for
SUBMODULES = {
    "pplvm.data": "Data: loaders, batches and the sources a card's ``[data]`` section names.",
    "pplvm.errors": "Errors: every error pplvm raises on purpose is one of these.",
}
#: what a plugin of your own implements, and the functions that admit it (None: the whole module)
EXTENDING = {
    "pplvm.families.capabilities": None,
    "pplvm.guides.base": ["Guide", "GuideConfig", "GuideTraits"],
    "pplvm.objectives.base": ["Objective", "ObjectiveConfig"],
    "pplvm.objectives": ["admissions", "admitted_for", "admitted", "check_compatible"],
}


#: the modules this page documents whole
DOCUMENTED_MODULES = {"pplvm", *SUBMODULES, *(m for m, names in EXTENDING.items() if names is None)}


def _first_line(doc: str | None) -> str:
    return " ".join((doc or "").strip().split("\n\n")[0].split())


def _directive(name: str, obj: Any) -> str:
    if inspect.isclass(obj) and issubclass(obj, BaseException):
        return f".. autoexception:: pplvm.{name}\n   :show-inheritance:\n"
    if inspect.isclass(obj):
        return f".. autoclass:: pplvm.{name}\n   :members:\n   :undoc-members:\n"
    if callable(obj):
        return f".. autofunction:: pplvm.{name}\n"
    return _registry(name, obj)


def _registry(name: str, registry: Any) -> str:
    """A registry: what it holds, and each entry with a link to its page."""
    folder = PAGES.get(name)
    if folder:
        entries = ", ".join(f":doc:`{n} <{folder}/{n}>`" for n, _ in registry.in_order())
    else:  # the data sources: their sections in the card reference
        entries = ", ".join(f":ref:`{n} <card-data-{n.lower()}>`" for n, _ in registry.in_order())
    return (
        f".. py:data:: {name}\n\n"
        f"   The registry of {registry.kind}s: a name in a card -> its entry. ``{name}[name]`` is the entry "
        f"(a :class:`~pplvm.errors.CardError` listing the choices for an unknown name); iterating gives the "
        f"names.\n\n   Entries: {entries}.\n"
    )


def page(app: Any) -> str:
    import pplvm

    out = [heading("Python API", "=")]
    out.append(".. automodule:: pplvm\n")
    groups: dict[str, list[str]] = {}
    for name in pplvm.__all__:
        module = pplvm._LAZY.get(name)
        module = f"pplvm{module}" if module else getattr(pplvm, name).__module__
        groups.setdefault(module, []).append(name)
    out.append(".. currentmodule:: pplvm\n")
    for module, names in groups.items():
        title = _first_line(importlib.import_module(module).__doc__).split(":")[0].rstrip(".")
        out.append(heading(f"{title} ({module})", "-"))
        out += [_directive(n, getattr(pplvm, n)) for n in names]
    for module, what in SUBMODULES.items():
        out.append(heading(module, "-") + text(what) + "\n")
        mod = importlib.import_module(module)
        exclude = sorted(n for n in pplvm.__all__ if getattr(mod, n, None) is getattr(pplvm, n))
        block = f".. automodule:: {module}\n   :members:\n   :undoc-members:\n   :show-inheritance:\n"
        out.append(block + (f"   :exclude-members: {', '.join(exclude)}\n" if exclude else ""))
    out.append(heading("Extending pplvm", "-"))
    out.append(
        "A family, guide or objective of your own implements the contract below and declares what it "
        "needs and offers; the facade asks those declarations (see the generated pages of the built-in ones).\n"
    )
    for module, names in EXTENDING.items():
        doc = _first_line(importlib.import_module(module).__doc__)
        out.append(heading(module, "~") + text(unrole(doc)) + "\n")
        if names is None:
            out.append(f".. automodule:: {module}\n   :members:\n   :undoc-members:\n")
            continue
        out.append(f".. currentmodule:: {module}\n")
        for n in names:
            obj = getattr(importlib.import_module(module), n)
            kind = "autoclass" if inspect.isclass(obj) else "autofunction"
            opts = "   :members:\n   :undoc-members:\n" if kind == "autoclass" else ""
            out.append(f".. {kind}:: {module}.{n}\n{opts}")
    return "\n".join(out)


def _field(what: str, name: str) -> tuple[Any, str] | None:
    """The pydantic model and field name ``name`` (``module.Model.field``) documents, if any."""
    from pydantic import BaseModel

    owner, _, field = name.rpartition(".")
    module, _, cls = owner.rpartition(".")
    try:
        model = getattr(importlib.import_module(module), cls)
    except (ImportError, AttributeError, ValueError):
        return None
    if isinstance(model, type) and issubclass(model, BaseModel) and field in model.model_fields:
        return model, field
    return None


def prose_attribute(app: Any, what: str, name: str, obj: Any, options: Any, lines: list[str]) -> None:
    """autodoc-process-docstring, before napoleon: pplvm's attribute comments (``#:``) are prose,
    not Google style's ``type: description``; a leading empty escape keeps napoleon from reading
    the text before their first colon as a type."""
    if what in ("attribute", "data", "property") and lines and ":" in lines[0]:
        lines.insert(0, "\\ ")


def check_docstring(app: Any, what: str, name: str, obj: Any, options: Any, lines: list[str]) -> None:
    """autodoc-process-docstring: a card section's field (pydantic) gets its description; a
    public name of the API page with no docstring is reported."""
    if what in ("attribute", "property") and not any(s.strip() for s in lines):
        found = _field(what, name)
        if found is not None:
            description = found[0].model_fields[found[1]].description
            lines[:] = [text(description)] if description else []
    if app.env.docname != WHERE or what == "module" or name.rsplit(".", 1)[-1].startswith("_"):
        return
    if not any(s.strip() for s in lines):
        undocumented(f"{what} {name} has no docstring", WHERE)


def skip_member(app: Any, what: str, name: str, obj: Any, skip: bool, options: Any) -> bool | None:
    """autodoc-skip-member: pydantic's own machinery on a card section (``model_config``, ...)."""
    return True if what == "class" and name.startswith("model_") else None
