"""Every module of the package with its docstring, for contributors: the house as its source
tells it (and a target for a docstring's ``:mod:`` reference into pplvm's internals)."""

from __future__ import annotations

import pkgutil

from .rst import heading


def modules() -> list[str]:
    import pplvm

    names = ["pplvm"] + [m.name for m in pkgutil.walk_packages(pplvm.__path__, "pplvm.")]
    return sorted(n for n in names if n != "pplvm.__main__")


def page(elsewhere: set[str]) -> str:
    """``elsewhere``: modules another page documents whole (linked, not repeated)."""
    out = [heading("Modules", "=")]
    out.append(
        "Every module of pplvm and what it is for: the house as its source tells it. "
        "The public API is on :doc:`api`; families, guides and objectives have their own pages.\n"
    )
    for name in modules():
        out.append(heading(name, "-"))
        out.append(f"See :mod:`{name}`.\n" if name in elsewhere else f".. automodule:: {name}\n")
    return "\n".join(out)
