"""Name -> factory tables, so users add their own models and datasets the same way we do."""

from __future__ import annotations

from typing import Callable, Generic, Iterator, TypeVar

from ticketlab.errors import TicketlabError

T = TypeVar("T")


class Registry(Generic[T]):
    """A plain dict behind a decorator; unknown names fail with the list of choices."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        if not isinstance(name, str) or not name:  # a name users type on the command line
            raise TicketlabError(f"a {self.kind} is registered under a non-empty string name, got {name!r}")

        def decorate(entry: T) -> T:
            if name in self._entries:
                raise TicketlabError(f"{self.kind} {name!r} is already registered; register yours under another name")
            self._entries[name] = entry
            return entry

        return decorate

    def get(self, name: str) -> T:
        try:
            return self._entries[name]
        except KeyError:
            choices = ", ".join(sorted(self._entries))
            raise TicketlabError(f"unknown {self.kind} {name!r}; choose one of: {choices}") from None

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._entries))
