"""Tamper-evident audit trail: RFC 6962 Merkle log, signed checkpoints, proofs, verification.

Modules
-------
merkle      RFC 6962 / 9162 tree hashing, inclusion and consistency proofs (hashlib only)
canonical   RFC 8785 canonical JSON without floats; ``decimal_str`` for decimals
keys        named Ed25519 signing keys, C2SP key IDs and verifier-key files
checkpoint  C2SP signed notes over tlog checkpoints (origin, size, root)
events      the audit event types and their validation
log         ``AuditLog``: the append-only SQLite log that signs checkpoints
rotation    ``key-rotation`` events attested by the old key; ``KeyHistory`` of the keys in force
verify      whole-log verification and single-entry checks an outside auditor runs
"""

from __future__ import annotations

from fedunlearn.audit.canonical import canonical_json, decimal_str, parse_canonical_json
from fedunlearn.audit.checkpoint import (
    Checkpoint,
    parse_and_verify_checkpoint,
    sign_checkpoint,
    sign_note,
    verify_note,
)
from fedunlearn.audit.events import EVENT_TYPES, check_event
from fedunlearn.audit.keys import (
    SigningKey,
    VerifierKey,
    as_verifier,
    generate_signing_key,
    key_id,
    load_public_key,
    load_signing_key,
    save_private_key,
    save_public_key,
)
from fedunlearn.audit.log import AuditLog
from fedunlearn.audit.merkle import (
    EMPTY_ROOT,
    consistency_proof,
    consistency_proof_from_leaf_hashes,
    inclusion_proof,
    inclusion_proof_from_leaf_hashes,
    leaf_hash,
    root_from_leaf_hashes,
    root_hash,
    verify_consistency,
    verify_inclusion,
)
from fedunlearn.audit.rotation import KeyHistory, attest_rotation, rotation_event, verify_rotation
from fedunlearn.audit.verify import VerifyReport, key_history, verify_entry_in_checkpoint, verify_log

__all__ = [
    "EMPTY_ROOT",
    "EVENT_TYPES",
    "AuditLog",
    "Checkpoint",
    "KeyHistory",
    "SigningKey",
    "VerifierKey",
    "VerifyReport",
    "as_verifier",
    "attest_rotation",
    "canonical_json",
    "check_event",
    "consistency_proof",
    "consistency_proof_from_leaf_hashes",
    "decimal_str",
    "generate_signing_key",
    "inclusion_proof",
    "inclusion_proof_from_leaf_hashes",
    "key_history",
    "key_id",
    "leaf_hash",
    "load_public_key",
    "load_signing_key",
    "parse_and_verify_checkpoint",
    "parse_canonical_json",
    "root_from_leaf_hashes",
    "root_hash",
    "rotation_event",
    "save_private_key",
    "save_public_key",
    "sign_checkpoint",
    "sign_note",
    "verify_consistency",
    "verify_entry_in_checkpoint",
    "verify_inclusion",
    "verify_log",
    "verify_note",
    "verify_rotation",
]
