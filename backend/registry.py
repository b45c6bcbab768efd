"""One small registry for strategies, skills and domain sources.

Built-in entries register exactly as a user's would (`@REG.register(name)` or
`REG.add(name, obj)`); a duplicate is refused, and a lookup of an unknown
name raises `UnknownName` listing what exists, so no bare `KeyError` ever
reaches a person as a traceback.
"""

from __future__ import annotations

from typing import Callable, Generic, Iterator, TypeVar

T = TypeVar("T")


class RegistryError(ValueError):
    """A registry refused a name; the message lists what exists."""


class UnknownName(RegistryError, KeyError):
    """No entry of that name."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class DuplicateName(RegistryError):
    """An entry of that name is already registered."""


class Registry(Generic[T]):
    """Name -> object, for one kind of thing (`kind` names it in errors)."""

    def __init__(self, kind: str):
        self.kind = kind
        self._items: dict[str, T] = {}

    def add(self, name: str, obj: T) -> T:
        """Register `obj` under `name`; a duplicate raises DuplicateName."""
        if not isinstance(name, str) or not name:
            raise RegistryError(f"{self.kind} name must be a non-empty string, got {name!r}")
        if name in self._items:
            raise DuplicateName(f"{self.kind} {name!r} is already registered")
        self._items[name] = obj
        return obj

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator form of `add`."""

        def deco(obj: T) -> T:
            return self.add(name, obj)

        return deco

    def get(self, name: str) -> T:
        """The entry, or UnknownName listing the known names."""
        try:
            return self._items[name]
        except (KeyError, TypeError):
            raise UnknownName(f"unknown {self.kind} {name!r} (known: {', '.join(self._items) or 'none'})") from None

    def remove(self, name: str) -> None:
        """Unregister (tests, plugins that reload)."""
        self.get(name)
        del self._items[name]

    def names(self) -> list[str]:
        """Registered names, in registration order."""
        return list(self._items)

    def items(self):
        return self._items.items()

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)
