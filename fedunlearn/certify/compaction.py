"""Ledger compaction as an audited act: each compaction is recorded by a signed ``compaction`` event.

:func:`fedunlearn.ledger.compact` deletes stored blobs no kept erasure method reads and records
every deleted hash in the ledger's ``compacted`` table, so ``verify`` expects them missing. Without
a signature over that record, anyone able to write the ledger could delete an organization's stored
contributions and mark them "compacted". :func:`compact_run` therefore also appends, for every
compaction batch (:func:`~fedunlearn.ledger.compaction_batches`), a ``compaction`` event holding the
batch's time stamp, policy, counts and digest, and signs a checkpoint; :func:`check_compactions`
(run by ``fedunlearn verify``) reports every batch of the ledger that no logged event covers.

Crash-safety: a compaction interrupted after the ledger recorded its batch but before the event
was logged is logged by the next :func:`compact_run` (which logs every unlogged batch).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from fedunlearn.ledger import CompactionPolicy, CompactionReport, Ledger, compact, compaction_batches, plan_compaction

__all__ = ["check_compactions", "compact_run", "log_compactions"]


def log_compactions(audit: Any, ledger: Ledger) -> list[int]:
    """Append a ``compaction`` event for every batch of ``ledger`` the log lacks; sign if any. Returns their indexes."""
    logged = {(e.get("stamp"), e.get("digest")) for _, e in audit.events("compaction")}
    added = [audit.append(batch.as_event()) for batch in compaction_batches(ledger)
             if (batch.stamp, batch.digest) not in logged]
    if added:
        audit.checkpoint()
    return added


def compact_run(run_dir: str | Path, policy: CompactionPolicy, *, dry_run: bool = False,
                key_dir: str | Path | None = None) -> CompactionReport:
    """Compact the ledger of ``run_dir`` under ``policy`` and log it in the run's audit log (signed).

    ``dry_run``: only plan (nothing is deleted or logged). A run without an audit log (created with
    the ledger API alone) is compacted without an event. ``key_dir``: the coordinator's secrets,
    as for :meth:`~fedunlearn.certify.runaudit.RunAudit.open`.
    """
    from fedunlearn.certify.runaudit import AUDIT_FILE, RunAudit

    run_dir = Path(run_dir)
    with Ledger.open(run_dir) as ledger:
        if dry_run:
            return plan_compaction(ledger, policy)
        report = compact(ledger, policy)
        if (run_dir / AUDIT_FILE).exists():
            with RunAudit.open(run_dir, key_dir=key_dir) as audit:
                log_compactions(audit, ledger)
    return report


def check_compactions(ledger: Ledger, events: Iterable[Mapping[str, Any]]) -> list[str]:
    """Problems: compaction batches of ``ledger`` that no ``compaction`` event of ``events`` covers."""
    logged = {(e.get("stamp"), e.get("digest")) for e in events if e.get("type") == "compaction"}
    return [f"{b.updates} client updates and {b.aggregates} aggregates are marked compacted at {b.stamp} but no "
            f"signed compaction event records them (digest {b.digest[:16]}...): they were deleted outside "
            "`fedunlearn ledger compact`, or the ledger's compaction record was altered"
            for b in compaction_batches(ledger) if (b.stamp, b.digest) not in logged]
