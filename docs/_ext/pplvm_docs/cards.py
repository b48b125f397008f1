"""The card reference, generated from pplvm's pydantic schema (:func:`pplvm.card_schema`): every
section and key with its type, default and description. A key without a description is a build
warning (an error under ``-W``)."""

from __future__ import annotations

import json
import types
import typing
from typing import Any

import annotated_types
from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from .rst import heading, literal, table, text, undocumented

#: what a section's tag selects, for the tag's row: section -> (what, reference folder)
TAG_WORDS = {
    "model": ("model family", "families"),
    "guide": ("guide", "guides"),
    "objective": ("objective", "objectives"),
    "data": ("data source", None),
}

_BOUNDS = [(annotated_types.Ge, "ge", "≥"), (annotated_types.Gt, "gt", ">"), (annotated_types.Le, "le", "≤")]
_BOUNDS += [(annotated_types.Lt, "lt", "<")]


def type_name(tp: Any) -> str:
    """A field's type as a reader of a card sees it: ``int ≥ 1 | None``, ``"diag" | "full"``."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is typing.Annotated:
        return _constrained(type_name(args[0]), args[1:])
    if origin is typing.Literal:
        return " | ".join(json.dumps(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        return " | ".join(type_name(a) for a in args)
    if origin in (list, tuple, dict):
        return f"{origin.__name__}[{', '.join(type_name(a) for a in args)}]"
    if tp is type(None):
        return "None"
    if tp is typing.Any:
        return "any"
    return getattr(tp, "__name__", str(tp))


def _constrained(name: str, metadata: Any) -> str:
    parts = []
    for m in metadata:
        for cls, attr, sign in _BOUNDS:
            if isinstance(m, cls):
                parts.append(f"{sign} {getattr(m, attr)}")
        if isinstance(m, annotated_types.MinLen):
            parts.append(f"length ≥ {m.min_length}")
        if isinstance(m, annotated_types.MaxLen):
            parts.append(f"length ≤ {m.max_length}")
        pattern = getattr(m, "pattern", None)
        if isinstance(pattern, str):
            parts.append(f"matching {pattern}")
        if getattr(m, "metadata", None):  # a FieldInfo inside Annotated[...]
            return _constrained(name, m.metadata)
    return f"{name} {', '.join(parts)}" if parts else name


def field_type(field: Any) -> str:
    return _constrained(type_name(field.annotation), field.metadata)


def default(field: Any) -> str:
    if field.default_factory is not None:
        value = field.default_factory()
    elif field.default is PydanticUndefined:
        return "required"
    else:
        value = field.default
    if isinstance(value, BaseModel):
        value = value.model_dump(mode="json")
    try:
        return literal(json.dumps(value, ensure_ascii=False)) if value is not None else literal("None")
    except TypeError:
        return literal(repr(value))


def _nested(tp: Any) -> type[BaseModel] | None:
    """The model a field holds (itself or as a list's items), for keys one level down."""
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return tp
    return next((m for a in typing.get_args(tp) if (m := _nested(a)) is not None), None)


def rows(config: type[BaseModel], path: str, where: str, tag: str | None = None) -> list[list[str]]:
    """The table rows of a section's keys (``path``: the section's dotted name); a key without
    a description is reported as undocumented."""
    out = []
    for key, field in config.model_fields.items():
        full = f"{path}.{key}" if path else key
        if key == tag:  # the tag selects the section; its value is this entry's name
            what = TAG_WORDS[path.split(".")[0]][0]
            out.append([literal(key), text(field_type(field)), default(field), text(f"selects this {what}")])
            continue
        if not field.description:
            undocumented(f"card key {full} ({config.__module__}.{config.__qualname__}) has no description", where)
        out.append([literal(key), text(field_type(field)), default(field), text(field.description or "")])
        inner = _nested(field.annotation)
        if inner is not None:
            suffix = "[]" if typing.get_origin(field.annotation) is list else ""
            for row in rows(inner, f"{full}{suffix}", where):
                row[0] = literal(f"{key}{suffix}.{row[0].strip('`')}")
                out.append(row)
    return out


def section_table(config: type[BaseModel], path: str, where: str, tag: str | None = None) -> str:
    return table(["key", "type", "default", "description"], rows(config, path, where, tag), widths=[18, 18, 14, 50])


def card_page(app: Any) -> str:
    from pplvm.config import TAGGED, _registry, card_schema

    schema, where = card_schema(), "reference/card"
    out = [heading("Card reference", "=")]
    out.append(
        "A model card is a TOML file (or the same nested dict from Python) with the sections below. "
        "This page is generated from the schema cards are validated against (:func:`pplvm.card_schema`), "
        "so every key listed exists and every key that exists is listed. Tagged sections (``[model]``, "
        "``[guide]``, ``[objective]``, ``[data]``) have one set of keys per entry their tag selects.\n"
    )
    top = {k: f for k, f in schema.model_fields.items() if _nested(f.annotation) is None and k not in TAGGED}
    out.append(heading("Top level", "-"))
    top_rows = []
    for key, field in top.items():
        if not field.description:
            undocumented(f"card key {key} has no description", where)
        top_rows.append([literal(key), text(field_type(field)), default(field), text(field.description or "")])
    out.append(table(["key", "type", "default", "description"], top_rows, widths=[18, 18, 14, 50]))
    for section, field in schema.model_fields.items():
        if section in top:
            continue
        out.append(f".. _card-{section}:\n\n" + heading(f"[{section}]", "-"))
        if section not in TAGGED:
            doc = (field.annotation.__doc__ or "").strip()
            out.append((text(doc) + "\n") if doc and not doc.startswith(field.annotation.__name__) else "")
            out.append(section_table(field.annotation, section, where))
            continue
        tag, fallback = TAGGED[section]
        what, folder = TAG_WORDS[section]
        out.append(
            f"``{section}.{tag}`` selects the {what}"
            + (f" (default: ``{fallback}``)" if fallback else "")
            + "; each has its own keys.\n"
        )
        for name, entry in _registry(section).in_order():
            title = f'{section}.{tag} = "{name}"'
            out.append(f".. _card-{section}-{name.lower()}:\n\n" + heading(title, "~"))
            if folder:
                out.append(f"See :doc:`{folder}/{name}`.\n")
            else:
                out.append(text(getattr(entry, "doc", "")) + "\n")
            out.append(section_table(entry.Config, section, where, tag))
    return "\n".join(out)
