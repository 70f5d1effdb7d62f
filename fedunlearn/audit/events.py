"""Audit events: the leaves of the audit log.

An event is a JSON object with a ``type`` from :data:`EVENT_TYPES` and an RFC 3339 ``time``;
everything else is free-form but must be canonical-JSON serialisable (ints and strings, no
floats) and must hold no personal data: name organizations and records by keyed hash only.

==================  ===========================================================================
type                meaning
==================  ===========================================================================
enrolment           an organization joined the federation (keyed-hash id, shard)
round-commit        an aggregate was committed (round, shard, contributors, adapter hash)
erasure-request     an organization asked to be erased
erasure-applied     an unlearner produced new adapter(s) without the subject (``purged``: hashes of
                    the abandoned aggregates deleted because they depend on it)
export              the served model was exported (served hash, sha256 of every exported file)
export-copy         a copy of the served adapter was written outside the run (``fedunlearn export
                    --out``): ``destination``, the ``served_hash`` it copies, each file's sha256
certificate         a signed erasure certificate was issued (its hash)
key-rotation        a signing key changed: ``role`` coordinator (log/certificate key) or organization
                    (``org``: keyed hash), ``old``/``new`` raw keys, ``attestation`` by the old key
refusal             a request was refused, with the reason
compaction          stored ledger blobs were deleted by ``fedunlearn ledger compact``: the batch's
                    ``stamp``, ``policy``, ``updates``/``aggregates`` counts and ``digest`` (SHA-256
                    of its sorted hashes); ``verify`` refuses compacted blobs no event covers
run-settings        the run's settings were bound: ``sha256`` of ``run.json`` (canonical JSON), logged
                    before the first round commit (see fedunlearn.certify.binding)
data-fingerprint    the fingerprint (``sha256``) of an organization's (``org``: keyed hash) training data,
                    logged when it first connects: retraining must present the same data
data-removed        an erased organization's (``org``: keyed hash) records were deleted from the run
                    folder (a simulation's ``RUN/data``): ``files`` deleted; the judge regenerates
                    them from the scenario, checked against its ``data-fingerprint``
budget-exhausted    an organization's DP budget is spent: it trains no round from ``from_round`` on
                    (``by``: the organization refused the round, or the coordinator predicted it;
                    ``level``, predicted ``epsilon``, ``max_epsilon``, ``delta`` as decimal strings)
==================  ===========================================================================
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import datetime, timezone
from typing import Any

from fedunlearn.errors import ConfigError, UnknownNameError

__all__ = ["EVENT_TYPES", "check_event"]

EVENT_TYPES = frozenset(
    {
        "budget-exhausted",
        "certificate",
        "compaction",
        "data-fingerprint",
        "data-removed",
        "enrolment",
        "erasure-applied",
        "erasure-request",
        "export",
        "export-copy",
        "key-rotation",
        "refusal",
        "round-commit",
        "run-settings",
    }
)
"""The event types an audit log accepts."""

_RFC3339 = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,9})?(Z|[+-]\d{2}:\d{2})\Z")


def check_event(event: Mapping[str, Any], *, now: datetime | None = None) -> dict[str, Any]:
    """Validate an audit event and return a copy with ``time`` filled in.

    Parameters
    ----------
    event : Mapping
        Must hold ``"type"``, one of :data:`EVENT_TYPES`; ``"time"``, if present, must be an
        RFC 3339 timestamp with a zone such as ``"2025-01-31T12:00:00Z"``.
    now : datetime, optional
        Time to record when ``event`` has none (default: the current UTC time).

    Raises
    ------
    ConfigError
        If the event is not a mapping, lacks a valid type or has a malformed time.
    UnknownNameError
        If the type is not one of :data:`EVENT_TYPES` (the message lists them).
    """
    if not isinstance(event, Mapping):
        raise ConfigError(f"an audit event must be a mapping, got {type(event).__name__}")
    record = dict(event)
    kind = record.get("type")
    if not isinstance(kind, str):
        raise ConfigError(
            f"audit event {record!r:.100} has no string 'type'; add one of "
            f"{', '.join(sorted(EVENT_TYPES))}"
        )
    if kind not in EVENT_TYPES:
        raise UnknownNameError("audit event type", kind, EVENT_TYPES)
    if "time" not in record:
        stamp = (now or datetime.now(timezone.utc)).astimezone(timezone.utc)
        record["time"] = stamp.isoformat(timespec="milliseconds").replace("+00:00", "Z")
    elif not _is_rfc3339(record["time"]):
        raise ConfigError(
            f"audit event time {record['time']!r} is not RFC 3339; use e.g. "
            "'2025-01-31T12:00:00Z', or leave 'time' out to record the current time"
        )
    return record


def _is_rfc3339(value: object) -> bool:
    if not isinstance(value, str) or not _RFC3339.match(value):
        return False
    # Drop the fraction: before 3.11 fromisoformat takes only 3 or 6 digits of it.
    plain = re.sub(r"\.\d+", "", value).replace("Z", "+00:00")
    try:
        datetime.fromisoformat(plain)
    except ValueError:  # e.g. month 13 or February 30
        return False
    return True
