"""One exception tree for fedunlearn.

Every error a user can trigger is a :class:`FedUnlearnError`. Messages name the bad value,
what was expected and how to fix it::

    FedUnlearnError
    ├── ConfigError            bad settings, scenario files or CLI arguments
    │   └── UnknownNameError   a name not in a registry / organization list (lists valid ones)
    ├── DataError              missing, empty or malformed data files (names the file)
    ├── ModelError             base model / tokenizer / adapter cannot be built or loaded
    ├── LedgerError            lineage database or blob store problems
    │   └── IntegrityError     a stored blob or log entry does not match its hash or signature
    ├── RunStateError          a run folder in the wrong state (other version, unfinished, erased org)
    ├── AuthorizationError     an erasure request not signed by its subject or the coordinator
    └── FederationError        Flower-side problems: nodes missing, bad replies, timeouts
        └── NodesMissingError  expected organizations never connected
"""

from __future__ import annotations

from collections.abc import Iterable

__all__ = [
    "AuthorizationError",
    "ConfigError",
    "DataError",
    "FedUnlearnError",
    "FederationError",
    "IntegrityError",
    "LedgerError",
    "ModelError",
    "NodesMissingError",
    "RunStateError",
    "UnknownNameError",
]


class FedUnlearnError(Exception):
    """Base class of every error fedunlearn raises on purpose."""


class ConfigError(FedUnlearnError, ValueError):
    """Invalid settings, scenario file or command-line argument."""


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """``"; did you mean 'x'?"`` for the closest of ``choices`` to ``word`` (difflib), else ``""``."""
    import difflib

    choices = [str(c) for c in choices]
    close = difflib.get_close_matches(str(word), choices, n=1, cutoff=0.6)
    if not close:  # case slips ('SISA') and prefixes ('influ')
        close = [c for c in choices if c.lower() == str(word).lower() or (len(str(word)) >= 3 and c.startswith(str(word)))][:1]
    return f"; did you mean {close[0]!r}?" if close else ""


class UnknownNameError(ConfigError, KeyError):
    """A name that is not registered; the message lists the valid names."""

    def __init__(self, kind: str, name: str, valid: Iterable[str]) -> None:
        self.kind = kind
        self.name = name
        self.valid = sorted(valid)
        listed = ", ".join(repr(v) for v in self.valid) or "(none)"
        guess = did_you_mean(name, self.valid)
        super().__init__(f"unknown {kind} {name!r}{guess}; valid {kind}s are: {listed}")

    def __str__(self) -> str:  # KeyError would otherwise repr() the message
        return str(self.args[0])


class DataError(FedUnlearnError, ValueError):
    """Missing, empty or malformed data; the message names the file."""


class ModelError(FedUnlearnError):
    """The base model, tokenizer or an adapter cannot be built, loaded or combined."""


class LedgerError(FedUnlearnError):
    """The lineage ledger or its blob store cannot be read or written."""


class IntegrityError(LedgerError):
    """Stored content does not match its hash, signature or authentication tag."""


class RunStateError(FedUnlearnError):
    """A run folder is in a state that forbids the operation (version, progress, erasure)."""


class AuthorizationError(FedUnlearnError):
    """A request was refused: bad signature, unknown signer, wrong run, replay (it is logged)."""


class FederationError(FedUnlearnError):
    """Flower-side failure: organizations missing, malformed replies, time-outs."""


class NodesMissingError(FederationError):
    """Some organizations' nodes never connected (nothing was trained or changed)."""
