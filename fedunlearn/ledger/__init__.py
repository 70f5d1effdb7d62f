"""Lineage ledger and encrypted update store of a federated run.

Which update of which organization went into which adapter, content-addressed blobs (safetensors)
encrypted per organization, a SQLite index, and crypto-shredding on erasure::

    run_dir/
        ledger.sqlite      lineage index (Ledger)
        blobs/             tensor states by SHA-256 of their plaintext (BlobStore)
        keys/              one AES-256-GCM key per organization (KeyStore)

Compaction (:mod:`fedunlearn.ledger.compact`) deletes stored blobs no kept erasure method needs.

Errors: :class:`~fedunlearn.errors.LedgerError` (missing blob, stale commit, bad value),
:class:`~fedunlearn.errors.IntegrityError` (a blob or key that changed on disk),
:class:`ShreddedError` (an erased organization's key is gone),
:class:`~fedunlearn.errors.RunStateError` (wrong schema version, erased organization).
"""

from __future__ import annotations

from fedunlearn.ledger.blobs import BlobStore
from fedunlearn.ledger.compact import (
    CompactionBatch,
    CompactionPolicy,
    CompactionReport,
    compact,
    compaction_batches,
    plan_compaction,
)
from fedunlearn.ledger.keys import KeyStore, ShreddedError
from fedunlearn.ledger.lineage import Checkpoint, Contribution, Dependency, Ledger, Organization
from fedunlearn.ledger.tensors import state_from_bytes, state_sha256, state_to_bytes

__all__ = [
    "BlobStore",
    "Checkpoint",
    "CompactionBatch",
    "CompactionPolicy",
    "CompactionReport",
    "Contribution",
    "Dependency",
    "KeyStore",
    "Ledger",
    "Organization",
    "ShreddedError",
    "compact",
    "compaction_batches",
    "plan_compaction",
    "state_from_bytes",
    "state_sha256",
    "state_to_bytes",
]
