"""Named registries: components register under a name; unknown names list the valid ones."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar

from e2urec.errors import E2URecError

T = TypeVar("T")


class Registry(Generic[T]):
    """A name → component mapping with a decorator to register and a clear error on lookup."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}
        self._meta: dict[str, dict[str, Any]] = {}

    def register(self, name: str, **meta: Any) -> Callable[[T], T]:
        """Decorator: register the decorated object under `name` with optional metadata."""

        def decorate(obj: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._items[name] = obj
            self._meta[name] = dict(meta)
            return obj

        return decorate

    def get(self, name: str) -> T:
        """The component called `name`; an unknown name raises an error listing the valid ones."""
        try:
            return self._items[name]
        except KeyError:
            valid = ", ".join(sorted(self._items)) or "(none registered)"
            raise E2URecError(f"unknown {self.kind} {name!r}; valid: {valid}") from None

    def meta(self, name: str) -> dict[str, Any]:
        """Metadata given at registration (description, source, ...)."""
        self.get(name)
        return self._meta[name]

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._items)
