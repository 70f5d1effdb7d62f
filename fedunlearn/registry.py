"""Named registries: unlearners, certifiers, attacks, metrics.

One small generic class, after Opacus' accountant registry: names are lowercase, built-ins
register themselves when their package is imported, a second registration under a taken name
raises unless ``force=True``, and an unknown name raises :class:`~fedunlearn.errors.UnknownNameError`
listing the valid ones::

    UNLEARNERS = Registry("unlearning method")
    UNLEARNERS.register("sisa", SisaUnlearner)
    UNLEARNERS.get("sisa")        # -> SisaUnlearner
    UNLEARNERS.get("sisa2")       # UnknownNameError: ... valid unlearning methods are: 'sisa'
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Generic, TypeVar

from fedunlearn.errors import ConfigError, UnknownNameError

__all__ = ["Registry"]

T = TypeVar("T")

_NAME = re.compile(r"^[a-z][a-z0-9_-]*$")


class Registry(Generic[T]):
    """A mapping from lowercase names to registered objects (usually classes).

    Parameters
    ----------
    kind : str
        What the registry holds, singular (``"unlearning method"``); used in error messages.
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str, item: T, *, force: bool = False) -> T:
        """Register ``item`` under ``name`` and return it.

        Parameters
        ----------
        name : str
            Lowercase letters, digits, ``-`` and ``_``, starting with a letter.
        item : T
            The object to register.
        force : bool, optional
            Replace an existing registration instead of raising.

        Raises
        ------
        ConfigError
            If ``name`` is not a lowercase name, or is taken and ``force`` is false.
        """
        if not isinstance(name, str) or not _NAME.match(name):
            raise ConfigError(
                f"{self.kind} name {name!r} is invalid: expected lowercase letters, digits, '-' or "
                "'_', starting with a letter (e.g. 'sisa')"
            )
        if name in self._items and not force:
            raise ConfigError(
                f"{self.kind} {name!r} is already registered ({self._items[name]!r}); choose another "
                "name or pass force=True to replace it"
            )
        self._items[name] = item
        return item

    def get(self, name: str) -> T:
        """The object registered under ``name`` (matched case-insensitively).

        Raises
        ------
        UnknownNameError
            If nothing is registered under ``name``; the message lists the valid names.
        """
        key = name.lower() if isinstance(name, str) else name
        if key not in self._items:
            raise UnknownNameError(self.kind, str(name), self._items)
        return self._items[key]

    def names(self) -> list[str]:
        """Registered names, sorted."""
        return sorted(self._items)

    def unregister(self, name: str) -> None:
        """Remove ``name`` (for tests and plug-ins); :class:`UnknownNameError` if absent."""
        self.get(name)
        del self._items[name.lower()]

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._items)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {self.names()})"
