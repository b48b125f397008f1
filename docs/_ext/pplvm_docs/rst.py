"""Small helpers the generators share: reStructuredText text, tables and headings; docstrings
as Sphinx reads them (napoleon); files written only when their text changes."""

from __future__ import annotations

import inspect
import re
from pathlib import Path
from typing import Any, Iterable

from sphinx.util import logging

logger = logging.getLogger("pplvm_docs")

_SPECIAL = re.compile(r"([\\*`_|])")
_ROLE = re.compile(r":[a-z:]+:`~?\.?([^`<]*?)(?:\s*<[^>]*>)?`")


_KEPT = re.compile(r"(``[^`]+``|:math:`[^`]+`)")


def text(s: str) -> str:
    """``s`` (plain text, e.g. a card key's description or an argument's help) as inline
    reStructuredText that shows it as written (its ````literals```` and ``:math:`` kept)."""
    parts = _KEPT.split(" ".join(str(s).split()))
    return "".join(p if i % 2 else _SPECIAL.sub(r"\\\1", p) for i, p in enumerate(parts))


def literal(s: Any) -> str:
    """``s`` as an inline literal."""
    s = str(s)
    return f"``{s}``" if s and "``" not in s and not s.startswith(" ") and not s.endswith(" ") else text(s)


def unrole(s: str) -> str:
    """``s`` with Sphinx roles (``:class:`~x.Y```) reduced to their titles, for text written
    outside a docstring's context (Pyro's option descriptions)."""
    return _ROLE.sub(lambda m: m.group(1).rsplit(".", 1)[-1], s)


def heading(title: str, char: str, overline: bool = False) -> str:
    bar = char * max(len(title), 3)
    return f"{bar}\n{title}\n{bar}\n" if overline else f"{title}\n{bar}\n"


def table(header: list[str], rows: Iterable[list[str]], widths: list[int] | None = None, cls: str = "") -> str:
    """A ``list-table`` of already-escaped cells."""
    out = [".. list-table::", "   :header-rows: 1"]
    if widths:
        out.append(f"   :widths: {' '.join(map(str, widths))}")
    if cls:
        out.append(f"   :class: {cls}")
    out.append("")
    for row in [header, *rows]:
        for i, cell in enumerate(row):
            lines = (cell or "\\ ").split("\n")
            out.append(f"   {'*' if i == 0 else ' '} - {lines[0]}")
            out += [f"       {line}" if line else "" for line in lines[1:]]
    return "\n".join(out) + "\n"


def docstring(obj: Any, app: Any) -> str:
    """``obj``'s own docstring as Sphinx renders it (napoleon's Google style to
    reStructuredText); empty when it has none of its own."""
    doc = obj.__dict__.get("__doc__") if isinstance(obj, type) else getattr(obj, "__doc__", None)
    if not doc or not doc.strip():
        return ""
    from sphinx.ext.napoleon.docstring import GoogleDocstring

    return str(GoogleDocstring(inspect.cleandoc(doc), app.config, app, what="class", obj=obj))


def indent(s: str, n: int = 3) -> str:
    return "\n".join((" " * n + line) if line.strip() else "" for line in s.splitlines())


def write(path: Path, content: str) -> bool:
    """Write ``content`` to ``path`` unless it holds it already (so Sphinx rereads only pages
    that changed); whether it wrote."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.is_file() and path.read_text() == content:
        return False
    path.write_text(content)
    return True


def undocumented(what: str, where: str) -> None:
    """A build warning (an error under ``-W``): ``what`` has no documentation."""
    logger.warning(f"undocumented: {what}", type="pplvm", subtype="undocumented", location=where)
