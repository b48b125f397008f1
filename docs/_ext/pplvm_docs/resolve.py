"""Cross-references to pplvm's objects by any name they are reachable under.

pplvm re-exports names (``pplvm.Run`` is ``pplvm.run.Run``; a Run's methods live in
:mod:`pplvm.facade`), and docstrings name objects the way their own module sees them. A
reference Sphinx cannot resolve as written is looked up here: the target is imported (as
written, or relative to the module of the docstring it appears in), and resolved to the place
where that same object is documented. What still resolves nowhere stays a nitpicky warning.
"""

from __future__ import annotations

import importlib
import inspect
import re
import sys
import typing
from typing import Any

_OWNER = re.compile(r"docstring of ([\w.]+)")
_CACHE: dict[str, Any] = {}


def lookup(path: str) -> Any:
    """The object a dotted ``path`` names (a module, then attributes), or None."""
    parts = path.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except Exception:
            continue
        try:
            for attr in parts[i:]:
                obj = inspect.getattr_static(obj, attr) if inspect.isclass(obj) else getattr(obj, attr)
        except AttributeError:
            return None
        return obj
    return None


def _identity(obj: Any) -> Any:
    """What identifies an object across names (a classmethod by its function; None for plain values)."""
    obj = getattr(obj, "__func__", obj)
    return id(obj) if inspect.ismodule(obj) or hasattr(obj, "__qualname__") or isinstance(obj, property) else None


def _documented(domain: Any) -> dict[int, str]:
    """Identity of every documented pplvm object -> the name it is documented under."""
    objects = domain.objects
    if _CACHE.get("size") != len(objects):
        found: dict[int, str] = {}
        for name in objects:
            if name.startswith("pplvm"):
                key = _identity(lookup(name))
                if key is not None:
                    found.setdefault(key, name)
        _CACHE.update(size=len(objects), found=found)
    return _CACHE["found"]


def _candidates(target: str, node: Any) -> list[str]:
    target = target.lstrip("~")
    relative = target.startswith(".")
    target = target.lstrip(".")
    contexts = []
    owner = _OWNER.search(str(node.source or ""))
    if owner:
        obj = lookup(owner.group(1))
        module = getattr(getattr(obj, "__func__", obj), "__module__", None)
        if module:
            contexts += [module, module.rsplit(".", 1)[0]]
    for key in ("py:class", "py:module"):
        context = node.get(key)
        if context:
            obj = lookup(context if key == "py:module" else f"{node.get('py:module')}.{context}")
            if inspect.isclass(obj):
                contexts += [f"{obj.__module__}.{obj.__qualname__}", obj.__module__, obj.__module__.rsplit(".", 1)[0]]
            elif inspect.ismodule(obj):
                contexts.append(obj.__name__)
    names = [] if relative else [target]
    names += [f"{c}.{target}" for c in contexts]
    for context in contexts:  # a method named in its module's docstring: of a class there
        module = lookup(context)
        if inspect.ismodule(module):
            names += [f"{context}.{n}.{target}" for n, o in vars(module).items() if inspect.isclass(o)]
    if "." not in target:  # a name some pplvm module imports (a type alias, another project's class)
        modules = [m for m, mod in list(sys.modules.items()) if m.startswith("pplvm") and target in vars(mod)]
        names += [f"{m}.{target}" for m in modules]
    return names


def _foreign(obj: Any) -> bool:
    """Whether ``obj`` is documented nowhere pplvm can link offline: another project's class or
    function (as a pplvm module imports it), or a type alias / type variable."""
    if obj is None or inspect.ismodule(obj) and obj.__name__.startswith("pplvm"):
        return False
    if typing.get_origin(obj) is not None or isinstance(obj, typing.TypeVar):
        return True
    module = getattr(obj, "__module__", None) or ""
    return (inspect.isclass(obj) or callable(obj) or inspect.ismodule(obj)) and not module.startswith("pplvm")


def missing_reference(app: Any, env: Any, node: Any, contnode: Any) -> Any:
    if node.get("refdomain") != "py" or "pplvm" not in str(node.get("reftarget")) + str(node.get("py:module")):
        return None
    domain = env.get_domain("py")
    documented = _documented(domain)
    found = False
    for name in _candidates(node["reftarget"], node):
        obj = lookup(name)
        if _foreign(obj):  # another project's object, or a type alias: shown, not linked
            return contnode
        found = found or obj is not None
        full = name if name in domain.objects else None
        if full is None:
            key = _identity(lookup(name))
            full = documented.get(key) if key is not None else None
        if full is None and "." in name:  # an attribute of a documented class, named through another path
            parent, attr = name.rsplit(".", 1)
            key = _identity(lookup(parent))
            alias = f"{documented[key]}.{attr}" if key in documented else None
            full = alias if alias in domain.objects else None
        if full is not None:
            for role in (node["reftype"], "obj"):
                ref = domain.resolve_xref(env, node["refdoc"], app.builder, role, full, node, contnode)
                if ref is not None:
                    return ref
    # a pplvm object that exists but has no entry on the site (an internal): shown, not linked;
    # a name that exists nowhere stays a warning
    return contnode if found else None


_RELATIVE = re.compile(r"(:[\w:]+:`~?)(\.[\w.]+)`")


def absolute_refs(app: Any, what: str, name: str, obj: Any, options: Any, lines: list[str]) -> None:
    """autodoc-process-docstring: a reference written relative to the docstring's module, as
    Python reads ``from .graph import ...`` (``:mod:`.graph``` in :mod:`pplvm.families._graph_check`
    is :mod:`pplvm.families.graph`), made absolute where that names something."""
    module = name if what == "module" else getattr(getattr(obj, "__func__", obj), "__module__", None)
    if not module or not module.startswith("pplvm"):
        return
    package = module if what == "module" and hasattr(lookup(module), "__path__") else module.rsplit(".", 1)[0]

    def absolute(m: re.Match) -> str:
        target = package + m.group(2)
        return f"{m.group(1)}{target}`" if lookup(target) is not None else m.group(0)

    lines[:] = [_RELATIVE.sub(absolute, line) for line in lines]
