"""One small registry type, shared by families, data sources, objectives and guides; and the
base of a plugin that registers its own names and tags its card section with them."""

from __future__ import annotations

import re
from typing import Any, Callable, ClassVar, Generic, Iterator, Literal, TypeVar

from pydantic import create_model

from .errors import CardError

T = TypeVar("T")

_ROLE = re.compile(r":(?!math:)[\w:]+:`(~?)\.?([^`<]*?)(?:\s*<[^>]*>)?`")  # a role other than math


def foreign_doc(text: str) -> str:
    """Text lifted from another project's docstring (Pyro's), its Sphinx roles made literals,
    since their targets are relative to that project: ``:class:`~pyro.infer.Trace_ELBO```
    becomes ````Trace_ELBO````."""
    return _ROLE.sub(lambda m: f"``{m.group(2).rsplit('.', 1)[-1] if m.group(1) else m.group(2)}``", text)


class Registry(Generic[T]):
    """Name -> object, with an error that lists the choices on a miss."""

    def __init__(self, kind: str):
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def deco(obj: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._items[name] = obj
            return obj

        return deco

    def __getitem__(self, name: str) -> T:
        try:
            return self._items[name]
        except KeyError:
            raise CardError(
                f"unknown {self.kind} {name!r}; expected one of: {', '.join(sorted(self._items))}"
            ) from None

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._items))

    def items(self) -> list[tuple[str, T]]:
        return sorted(self._items.items())

    def in_order(self) -> list[tuple[str, T]]:
        """The entries in the order they were registered."""
        return list(self._items.items())

    def takers(self, key: str) -> list[str]:
        """The names (in order) whose card section (``entry.Config``) has the option ``key``."""
        return [n for n, e in self._items.items() if key in getattr(getattr(e, "Config", None), "model_fields", {})]

    def foreign_option(self, section: str, tag: str, named: object, key: str) -> str | None:
        """The one-line refusal of ``key`` in ``[section]`` whose ``tag`` names ``named``, when
        ``key`` belongs to other entries (None when none takes it: an unknown key)."""
        takers = self.takers(key)
        if not takers:
            return None
        return f"{section}.{tag} = {named!r} takes no such option (it belongs to {', '.join(takers[:4])})"


class Plugin:
    """Base of a plugin family (objectives, guides): a subclass lists its ``names``, registered in
    the family's ``registry`` on definition, and its ``Config`` (the card section, whose ``tag``
    field, ``name`` or ``kind``, is then typed as one of those names); one named by import path
    subclasses it without ``names``."""

    registry: ClassVar[Registry]
    section: ClassVar[str]  #: the card section: "objective", "guide"
    tag: ClassVar[str]  #: the section's tag field: "name", "kind"
    names: ClassVar[tuple[str, ...]] = ()
    Config: ClassVar[type]

    def __init_subclass__(cls, **kwargs: Any):
        super().__init_subclass__(**kwargs)
        names = cls.__dict__.get("names", ())
        if names:  # the section is tagged by these names
            tag = {cls.tag: (Literal[names], names[0])}
            cls.Config = create_model(cls.Config.__name__, __base__=cls.Config, __module__=cls.__module__, **tag)
        for name in names:
            cls.registry.register(name)(cls)

    def __init__(self, config: Any):
        self.config = config

    @classmethod
    def summary(cls) -> str:
        """The first paragraph of the class's docstring on one line: what ``pplvm list`` prints."""
        return " ".join((cls.__doc__ or "").strip().split("\n\n")[0].split())

    @property
    def label(self) -> str:
        """How errors name this plugin: ``objective.name = 'elbo'``, ``guide.kind = 'amortized'``."""
        return f"{self.section}.{self.tag} = {getattr(self.config, self.tag)!r}"
