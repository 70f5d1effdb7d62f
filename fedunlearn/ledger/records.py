"""Records of the lineage ledger: contributions, checkpoints, organizations, dependencies.

Frozen dataclasses returned by :class:`~fedunlearn.ledger.lineage.Ledger`, and the checks applied
to values before they are written.
"""

from __future__ import annotations

import math
import operator
import sqlite3
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from fedunlearn.errors import LedgerError
from fedunlearn.ledger.blobs import check_digest

__all__ = [
    "Checkpoint",
    "Contribution",
    "Dependency",
    "Organization",
    "check_contribution",
    "check_int",
    "check_name",
    "check_str",
    "checkpoint_from_row",
    "organization_from_row",
]


@dataclass(frozen=True)
class Contribution:
    """One organization's update inside an aggregate checkpoint.

    Attributes
    ----------
    org : str
        Organization name.
    update_hash : str
        SHA-256 hex of the update's tensor state (its blob, if the update is stored).
    weight : float
        Aggregation weight (non-negative, e.g. the FedAvg share).
    num_examples : int
        Training examples behind the update.
    metrics : Mapping[str, float]
        Client-reported metrics such as the training loss (ints and lists of numbers are kept
        as such, like in a Flower ``MetricRecord``).
    """

    org: str
    update_hash: str
    weight: float
    num_examples: int
    metrics: Mapping[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Checkpoint:
    """An aggregate adapter of one shard after one round (round 0: the initial adapter)."""

    id: int
    shard: int
    round: int
    hash: str
    parent_id: int | None
    created: str
    branch: int


@dataclass(frozen=True)
class Organization:
    """A registered organization; ``status`` is ``"active"`` or ``"erased"``."""

    name: str
    shard: int
    join_round: int
    status: str


@dataclass(frozen=True)
class Dependency:
    """A shard whose head chain contains contributions of an organization.

    Attributes
    ----------
    shard : int
        The shard.
    since_round : int
        First round with a contribution of the organization on the head chain.
    rounds : tuple[int, ...]
        Every such round, ascending.
    """

    shard: int
    since_round: int
    rounds: tuple[int, ...]


def check_int(name: str, value: object, *, minimum: int) -> int:
    """Return ``value`` as an ``int`` (numpy integers accepted) if it is >= ``minimum``."""
    try:
        if isinstance(value, bool):
            raise TypeError
        number = operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        number = None
    if number is None or number < minimum:
        raise LedgerError(f"{name} is {value!r}; expected an integer >= {minimum}")
    return number


def check_name(value: object) -> str:
    """Return ``value`` if it is a non-empty string (an organization name)."""
    if not isinstance(value, str) or not value:
        raise LedgerError(
            f"organization name {value!r} is not a non-empty string; use the name from the "
            "organization's node config"
        )
    return value


def check_str(what: str, value: object) -> str:
    """Return ``value`` if it is a string, else raise :class:`LedgerError` naming ``what``."""
    if not isinstance(value, str):
        raise LedgerError(
            f"{what} is {value!r} ({type(value).__name__}); ledger metadata holds strings: "
            "convert it with str() or json.dumps()"
        )
    return value


def _finite(what: str, value: object, *, minimum: float | None = None) -> float:
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        number = math.nan
    if not math.isfinite(number) or (minimum is not None and number < minimum):
        bound = "" if minimum is None else f" >= {minimum:g}"
        raise LedgerError(f"{what} is {value!r}; expected a finite number{bound}")
    return number


def _metric_number(value: object) -> int | float:
    if isinstance(value, (str, bytes, bool)):
        raise TypeError(value)
    try:
        return operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        return float(value)  # type: ignore[arg-type]


def check_contribution(item: object, shard: int, round: int) -> Contribution:
    """Validate one contribution to ``shard`` at ``round`` and return it normalized.

    Normalized: ``weight`` a float, ``num_examples`` an int, ``metrics`` a dict sorted by name
    whose values are ints, floats (NaN kept) or lists of them, as in a Flower ``MetricRecord``.
    """
    where = f"contribution to shard {shard} round {round}"
    if not isinstance(item, Contribution):
        raise LedgerError(f"{where} is a {type(item).__name__}; expected a Contribution")
    check_name(item.org)
    check_digest(item.update_hash)
    who = f"{where} of {item.org!r}"
    if not isinstance(item.metrics, Mapping):
        raise LedgerError(f"metrics of {who} are {item.metrics!r}; expected a mapping str -> float")
    metrics: dict[str, Any] = {}
    for key in sorted(item.metrics, key=str):
        check_str(f"metric name {key!r} of {who}", key)
        value = item.metrics[key]
        try:
            if isinstance(value, (list, tuple)):
                metrics[key] = [_metric_number(v) for v in value]
            else:
                metrics[key] = _metric_number(value)
        except (TypeError, ValueError):
            raise LedgerError(
                f"metric {key!r} of {who} is {value!r}; expected a number or a list of numbers"
            ) from None
    return Contribution(
        org=item.org,
        update_hash=item.update_hash,
        weight=_finite(f"weight of {who}", item.weight, minimum=0.0),
        num_examples=check_int(f"num_examples of {who}", item.num_examples, minimum=0),
        metrics=metrics,
    )


def checkpoint_from_row(row: sqlite3.Row) -> Checkpoint:
    """Build a :class:`Checkpoint` from a ``checkpoints`` row."""
    return Checkpoint(
        id=row["id"], shard=row["shard"], round=row["round"], hash=row["hash"],
        parent_id=row["parent_id"], created=row["created"], branch=row["branch"],
    )


def organization_from_row(row: sqlite3.Row) -> Organization:
    """Build an :class:`Organization` from an ``organizations`` row."""
    return Organization(row["name"], row["shard"], row["join_round"], row["status"])
