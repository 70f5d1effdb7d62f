"""Ledger compaction: delete stored blobs that no erasure method the operator keeps will read.

Storage grows with rounds × organizations × adapter size, almost all of it the per-organization
client updates (encrypted, one per member per round). Which erasure methods read what:

============================  =========================================================
method                        reads
============================  =========================================================
``sisa``, ``retrain``,        head-chain aggregates only (rollback points, round 0);
``drop``, ``ga``,             the client updates are never read
``graddiff``, ``npo``,
``sisa-records``
``subtract``, ``negate``      every stored client update on the head chain
``influence``                 the subject's stored updates (``gradient = stored``)
============================  =========================================================

The policy (:class:`CompactionPolicy`) is explicit: ``keep`` names the methods that must stay
possible. Client updates are deleted unless a kept method reads them (:data:`UPDATE_READERS`);
updates of erased organizations are unreadable (key shredded) and always deleted. Aggregates of
*abandoned* checkpoints (branches left by an exact erasure; the pre-erasure model that
``fedunlearn evaluate`` compares against) are deleted only with ``drop_history``. Never deleted:
head-chain aggregates and whatever the served model references (every method, resuming and
serving need them).

Every deleted blob is recorded first, in one transaction, in the ``compacted`` table (schema
version 3) with the policy; the lineage rows keep every hash, so the audit log's round commits
still match, and :meth:`~fedunlearn.ledger.Ledger.verify_blobs` treats compacted blobs as
expected-missing, as it does purged ones. A compaction interrupted after its record is finished by
running it again.

Each compaction is one *batch* of ``compacted`` rows sharing a time stamp; :func:`compaction_batches`
gives each batch's digest (SHA-256 over its sorted ``kind, org, hash`` rows), which the run's audit
log records in a signed ``compaction`` event (:mod:`fedunlearn.certify.compaction`): ``fedunlearn
verify`` then refuses blobs marked compacted that no signed event covers, so deleting stored
contributions and calling it compaction leaves a trace.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field

from fedunlearn.errors import UnknownNameError
from fedunlearn.ledger.lineage import Ledger
from fedunlearn.ledger.schema import utc_now

__all__ = ["AGGREGATE_ONLY", "UPDATE_READERS", "CompactionBatch", "CompactionPolicy", "CompactionReport", "compact",
           "compaction_batches", "plan_compaction"]

UPDATE_READERS: frozenset[str] = frozenset({"subtract", "negate", "influence"})
"""Erasure methods that read stored client updates (see the module table)."""

AGGREGATE_ONLY: frozenset[str] = frozenset({"sisa", "retrain", "drop", "ga", "graddiff", "npo", "sisa-records"})
"""Erasure methods that read only head-chain aggregates; compaction never stops them."""

KNOWN_METHODS = UPDATE_READERS | AGGREGATE_ONLY


@dataclass(frozen=True)
class CompactionPolicy:
    """What a compaction keeps: the erasure methods that must stay possible, and history or not."""

    keep: tuple[str, ...] = ()
    drop_history: bool = False

    def __post_init__(self) -> None:
        keep = tuple(sorted({m.strip().lower() for m in self.keep if m.strip()}))
        for method in keep:
            if method not in KNOWN_METHODS:
                raise UnknownNameError("erasure method to keep", method, sorted(KNOWN_METHODS))
        object.__setattr__(self, "keep", keep)

    @classmethod
    def parse(cls, keep: str | Iterable[str] = (), *, drop_history: bool = False) -> CompactionPolicy:
        """From a comma-separated list (``"subtract,sisa"``) or an iterable of method names."""
        items = keep.split(",") if isinstance(keep, str) else list(keep)
        return cls(keep=tuple(items), drop_history=drop_history)

    @property
    def keeps_updates(self) -> bool:
        return bool(UPDATE_READERS.intersection(self.keep))

    def to_json(self) -> str:
        return json.dumps({"keep": list(self.keep), "drop_history": self.drop_history}, sort_keys=True)


@dataclass
class CompactionReport:
    """What a compaction deleted (or would delete, for a plan) and the storage before and after."""

    policy: CompactionPolicy
    updates: list[tuple[str, str]] = field(default_factory=list)  # (org, hash)
    aggregates: list[str] = field(default_factory=list)
    bytes_before: int = 0
    bytes_after: int = 0
    applied: bool = False
    stamp: str = ""  # the batch's time stamp in the ``compacted`` table (set when applied)

    @property
    def bytes_freed(self) -> int:
        return self.bytes_before - self.bytes_after

    def as_dict(self) -> dict[str, object]:
        return {"keep": list(self.policy.keep), "drop_history": self.policy.drop_history,
                "updates_deleted": len(self.updates), "aggregates_deleted": len(self.aggregates),
                "bytes_before": self.bytes_before, "bytes_after": self.bytes_after,
                "bytes_freed": self.bytes_freed, "applied": self.applied, "stamp": self.stamp}


def _file_size(path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def plan_compaction(ledger: Ledger, policy: CompactionPolicy) -> CompactionReport:
    """The blobs ``policy`` would delete from ``ledger`` (nothing is changed).

    ``bytes_after`` is the blob storage once they are gone (previous compactions included).
    """
    report = CompactionReport(policy=policy, bytes_before=ledger.blobs.size_bytes())
    with ledger._lock:
        conn = ledger._db()
        _, protected = ledger._protected(conn)
        erased = {r["name"] for r in conn.execute("SELECT name FROM organizations WHERE status = 'erased'")}
        rows = conn.execute("SELECT DISTINCT org, update_hash FROM contributions ORDER BY org, update_hash").fetchall()
        updates = [(r["org"], r["update_hash"]) for r in rows if r["org"] in erased or not policy.keeps_updates]
        aggregates: list[str] = []
        if policy.drop_history:
            on_chain_hashes = protected
            rows = conn.execute("SELECT DISTINCT hash FROM checkpoints ORDER BY hash").fetchall()
            aggregates = [r["hash"] for r in rows if r["hash"] not in on_chain_hashes]
    report.updates = [(org, h) for org, h in updates if ledger.has_state(h, org=org)]
    report.aggregates = [h for h in aggregates if ledger.has_aggregate(h)]
    freed = sum(_file_size(p) for org, h in report.updates for p in ledger.update_paths(h, org))
    freed += sum(_file_size(p) for h in report.aggregates for p in ledger.aggregate_paths(h))
    report.bytes_after = report.bytes_before - freed
    return report


def compact(ledger: Ledger, policy: CompactionPolicy) -> CompactionReport:
    """Delete the blobs :func:`plan_compaction` lists, recording each one first.

    Crash-safe: the ``compacted`` rows are committed in one transaction before any file is
    deleted, and blobs recorded by an earlier, interrupted compaction are deleted too. The
    policy is also kept in the ledger metadata (``compaction/<time>``).

    Returns
    -------
    CompactionReport
        With ``applied = True`` and the measured storage after.
    """
    report = plan_compaction(ledger, policy)
    stamp = utc_now()
    with ledger._transaction() as conn:
        conn.executemany(
            "INSERT OR IGNORE INTO compacted (hash, org, kind, policy, compacted) VALUES (?, ?, 'update', ?, ?)",
            [(h, org, policy.to_json(), stamp) for org, h in report.updates])
        conn.executemany(
            "INSERT OR IGNORE INTO compacted (hash, org, kind, policy, compacted) VALUES (?, '', 'aggregate', ?, ?)",
            [(h, policy.to_json(), stamp) for h in report.aggregates])
        conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (f"compaction/{stamp}", json.dumps(
            {"policy": json.loads(policy.to_json()), "updates": len(report.updates),
             "aggregates": len(report.aggregates)}, sort_keys=True)))
    with ledger._lock:
        conn = ledger._db()
        _, protected = ledger._protected(conn)
        recorded = conn.execute("SELECT hash, org, kind FROM compacted").fetchall()
    for row in recorded:  # this compaction's and any interrupted one's
        if row["kind"] == "update":
            ledger.delete_update(row["hash"], row["org"])
        elif row["hash"] not in protected:  # a later commit may have made the same content current
            for path in ledger.aggregate_paths(row["hash"]):  # storage only: its key stays (not an erasure)
                path.unlink(missing_ok=True)
    report.bytes_after = ledger.blobs.size_bytes()
    report.applied, report.stamp = True, stamp
    return report


@dataclass(frozen=True)
class CompactionBatch:
    """The blobs one compaction recorded: its time stamp, policy, counts and digest."""

    stamp: str
    policy: dict
    updates: int
    aggregates: int
    digest: str  # sha256 hex over the batch's sorted "kind\x1forg\x1fhash\n" rows

    def as_event(self) -> dict[str, object]:
        """The ``compaction`` audit event that records this batch."""
        return {"type": "compaction", "stamp": self.stamp, "policy": self.policy, "updates": self.updates,
                "aggregates": self.aggregates, "digest": self.digest}


def compaction_batches(ledger: Ledger) -> list[CompactionBatch]:
    """Every compaction recorded in ``ledger``, oldest first (one batch per time stamp)."""
    import hashlib

    groups: dict[str, list] = {}
    for row in ledger._query("SELECT hash, org, kind, policy, compacted FROM compacted"):
        groups.setdefault(row["compacted"], []).append(row)
    batches = []
    for stamp, rows in sorted(groups.items()):
        lines = sorted(f"{r['kind']}\x1f{r['org']}\x1f{r['hash']}\n" for r in rows)
        batches.append(CompactionBatch(
            stamp=stamp, policy=json.loads(rows[0]["policy"]), digest=hashlib.sha256("".join(lines).encode()).hexdigest(),
            updates=sum(r["kind"] == "update" for r in rows), aggregates=sum(r["kind"] == "aggregate" for r in rows)))
    return batches


def compacted(ledger: Ledger) -> dict[str, set[str]]:
    """Hashes deleted by compaction: ``{"update": {...}, "aggregate": {...}}``."""
    out: dict[str, set[str]] = {"update": set(), "aggregate": set()}
    for row in ledger._query("SELECT hash, kind FROM compacted"):
        out[row["kind"]].add(row["hash"])
    return out
