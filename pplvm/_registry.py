"""One small registry type, shared by families, data sources and objectives."""

from __future__ import annotations

from typing import Callable, Generic, Iterator, TypeVar

from .errors import CardError

T = TypeVar("T")


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
