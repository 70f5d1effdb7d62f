"""Verification of a whole audit log, and of one entry against a signed checkpoint.

These functions need only what an outside auditor holds: the stored rows (or one entry and
its proof), the signer's public key and, optionally, checkpoints kept elsewhere. They report
every failure instead of stopping at the first, so a damaged log shows *what* was damaged.

What verification can and cannot show. Altering, inserting or removing any entry that a
signed checkpoint covers, or altering any checkpoint, is detected. Removing the newest
checkpoints together with the entries after them (a rollback) leaves a log that is
consistent with itself; only a checkpoint kept outside the log (a witness copy, or the one
cited in an erasure certificate) exposes it: pass such notes as ``known_checkpoints``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from fedunlearn.audit.canonical import parse_canonical_json
from fedunlearn.audit.checkpoint import Checkpoint, parse_and_verify_checkpoint, parse_checkpoint_body
from fedunlearn.audit.events import check_event
from fedunlearn.audit.keys import VerifierKey, as_verifier
from fedunlearn.audit.merkle import (
    consistency_proof_from_leaf_hashes,
    leaf_hash,
    prefix_roots,
    verify_consistency,
    verify_inclusion,
)
from fedunlearn.audit.rotation import KeyHistory
from fedunlearn.errors import ConfigError, IntegrityError

__all__ = ["VerifyReport", "key_history", "verify_entry_in_checkpoint", "verify_log"]

PublicKeyLike = VerifierKey | Ed25519PublicKey | bytes | str


@dataclass(frozen=True)
class VerifyReport:
    """Outcome of :meth:`AuditLog.verify` / :func:`verify_log`.

    Attributes
    ----------
    ok : bool
        True when no problem was found.
    problems : list of str
        One line per failure, naming the entry or checkpoint (``entry 3: ...``,
        ``checkpoint 2 (size 5): ...``).
    size : int
        Number of entries read.
    checkpoints : int
        Number of checkpoints read.
    signed_size : int
        Size of the newest checkpoint whose signature verified; entries beyond it are not
        yet covered by any signature.
    keys : KeyHistory or None
        The coordinator and organization keys in force when (see :mod:`fedunlearn.audit.rotation`).
    """

    ok: bool
    problems: list[str] = field(default_factory=list)
    size: int = 0
    checkpoints: int = 0
    signed_size: int = 0
    keys: KeyHistory | None = None


def _verifier(public_key: PublicKeyLike, name: str | None, origin: str) -> VerifierKey:
    if name is not None:
        return as_verifier(public_key, name)
    if isinstance(public_key, VerifierKey):
        return public_key
    if isinstance(public_key, str) and public_key.count("+") >= 2:
        try:
            return as_verifier(public_key)
        except ConfigError:
            pass  # plain base64 that happens to hold '+'
    return as_verifier(public_key, origin)


def _check_entries(
    rows: Sequence[Sequence[Any]], problems: list[str], events: list[tuple[int, dict[str, Any]]]
) -> list[bytes]:
    """Recompute every leaf hash from the entry bytes; report mismatches and bad events."""
    hashes: list[bytes] = []
    for position, (idx, entry, stored) in enumerate(rows):
        if idx != position and (position == 0 or rows[position - 1][0] == position - 1):
            problems.append(
                f"entry {position}: missing (the next stored index is {idx}); entries were "
                "deleted or renumbered"
            )
        data = entry.encode("utf-8") if isinstance(entry, str) else bytes(entry)
        recomputed = leaf_hash(data)
        if not isinstance(stored, bytes) or stored != recomputed:
            shown = stored.hex()[:16] + "..." if isinstance(stored, bytes) else repr(stored)[:40]
            problems.append(
                f"entry {idx}: stored leaf hash {shown} does not match SHA-256(0x00 || entry) = "
                f"{recomputed.hex()[:16]}...; the entry or its hash was altered"
            )
        try:
            event = parse_canonical_json(data)
            if not isinstance(event, dict) or "time" not in event:
                raise ConfigError("it is not an event object with a 'time'")
            check_event(event)
            events.append((position, event))
        except (IntegrityError, ConfigError) as exc:
            problems.append(f"entry {idx}: not a valid audit event: {exc}")
        hashes.append(recomputed)
    return hashes


def verify_log(
    origin: str,
    entries: Sequence[Sequence[Any]],
    checkpoints: Sequence[Sequence[Any]],
    public_key: PublicKeyLike,
    *,
    name: str | None = None,
    known_checkpoints: Sequence[str] = (),
) -> VerifyReport:
    """Verify stored log rows against the signer's public key.

    Parameters
    ----------
    origin : str
        The log origin every checkpoint must carry.
    entries : sequence of (idx, entry bytes, stored leaf hash)
        All entry rows, ordered by index.
    checkpoints : sequence of (seq, size, root, note bytes)
        All checkpoint rows, ordered by sequence number.
    public_key : VerifierKey, Ed25519PublicKey, bytes or str
        The trusted public key of the log signer.
    name : str, optional
        Signer key name; default: the name carried by ``public_key``, else ``origin``.
    known_checkpoints : sequence of str, optional
        Signed notes kept outside the log (witness copies, certificates); each must verify
        and match the entries, which exposes rollbacks.

    Returns
    -------
    VerifyReport
        Every failure, each naming the entry or checkpoint concerned.
    """
    verifier = _verifier(public_key, name, origin)
    problems: list[str] = []
    events: list[tuple[int, dict[str, Any]]] = []
    hashes = _check_entries(entries, problems, events)
    keys = KeyHistory.replay(verifier, origin, events)
    problems.extend(keys.problems)
    n = len(hashes)
    signed: list[tuple[str, Checkpoint]] = []
    for position, (seq, size, root, note) in enumerate(checkpoints):
        label = f"checkpoint {seq} (size {size})"
        if seq != position and (position == 0 or checkpoints[position - 1][0] == position - 1):
            problems.append(f"checkpoint {position}: missing (the next stored one is {seq})")
        try:
            data = note.encode("utf-8") if isinstance(note, str) else bytes(note)
            cp = _verify_checkpoint(data, keys)
        except IntegrityError as exc:
            problems.append(f"{label}: {exc}")
            continue
        if cp.origin != origin:
            problems.append(f"{label}: signed for origin {cp.origin!r}, not this log's {origin!r}")
        if cp.size != size or cp.root != root:
            problems.append(
                f"{label}: the stored size/root columns differ from the signed note "
                f"(size {cp.size}, root {cp.root.hex()[:16]}...)"
            )
        signed.append((f"checkpoint {seq}", cp))
    for i, note in enumerate(known_checkpoints):
        try:
            cp = _verify_checkpoint(note, keys)
        except IntegrityError as exc:
            problems.append(f"known checkpoint {i}: {exc}")
            continue
        signed.append((f"known checkpoint {i}", cp))

    roots = prefix_roots(hashes, [cp.size for _, cp in signed if cp.size <= n])
    for label, cp in signed:
        where = f"{label} (size {cp.size})"
        if cp.size > n:
            problems.append(
                f"{where}: signs {cp.size} entries but the log holds only {n}; entries were "
                "removed (or the log was rolled back)"
            )
        elif roots[cp.size] != cp.root:
            problems.append(
                f"{where}: signed root {cp.root.hex()[:16]}... does not match the root "
                f"{roots[cp.size].hex()[:16]}... recomputed from entries 0-{cp.size - 1}; "
                "an entry was altered, removed or inserted"
            )
    in_log = [(label, cp) for label, cp in signed if not label.startswith("known")]
    for (prev_label, prev), (label, cp) in zip(in_log, in_log[1:]):
        where = f"{label} (size {cp.size})"
        if cp.size < prev.size:
            problems.append(
                f"{where}: smaller than {prev_label} (size {prev.size}); an append-only log "
                "never shrinks"
            )
        elif prev.size > 0 and cp.size <= n:
            proof = consistency_proof_from_leaf_hashes(hashes[: cp.size], prev.size)
            if not verify_consistency(prev.size, cp.size, prev.root, cp.root, proof):
                problems.append(
                    f"{where}: not consistent with {prev_label} (size {prev.size}); the RFC 9162 "
                    "consistency proof rebuilt from the entries fails"
                )
    return VerifyReport(
        ok=not problems,
        problems=problems,
        size=n,
        checkpoints=len(checkpoints),
        signed_size=in_log[-1][1].size if in_log else 0,
        keys=keys,
    )


def key_history(origin: str, entries: Sequence[bytes], public_key: PublicKeyLike, *, name: str | None = None) -> KeyHistory:
    """Replay the enrolments and key rotations of raw log ``entries`` from the pinned first key."""
    events: list[tuple[int, dict[str, Any]]] = []
    _check_entries([(i, e, None) for i, e in enumerate(entries)], [], events)
    return KeyHistory.replay(_verifier(public_key, name, origin), origin, events)


def _verify_checkpoint(note: str | bytes, keys: KeyHistory) -> Checkpoint:
    """Verify a checkpoint note under the coordinator key in force for the tree size it states."""
    text = note.decode("utf-8", errors="replace") if isinstance(note, (bytes, bytearray)) else str(note)
    try:
        size = parse_checkpoint_body(text[: text.rfind("\n\n") + 1]).size
    except IntegrityError:
        size = 0  # malformed: the full check below says why
    expected = keys.key_at(size)
    try:
        return parse_and_verify_checkpoint(note, expected, expected.name)
    except IntegrityError as exc:
        for index, key in keys.coordinator:
            if key is expected:
                continue
            try:
                parse_and_verify_checkpoint(note, key, key.name)
            except IntegrityError:
                continue
            when = "the first key" if index < 0 else f"the key rotated in at entry {index}"
            raise IntegrityError(
                f"signed by {when} (ID {key.key_id.hex()}), but the key in force at size {size} is "
                f"{expected.key_id.hex()}: a rotated-out key signed it") from exc
        raise IntegrityError(f"{exc} (the key in force at size {size} is {expected.key_id.hex()}; "
                             f"{len(keys.coordinator) - 1} rotation(s) followed)") from exc


def verify_entry_in_checkpoint(
    entry: bytes,
    index: int,
    proof: Sequence[bytes],
    note: str,
    public_key: PublicKeyLike,
    name: str,
) -> Checkpoint:
    """Check that ``entry`` is leaf ``index`` of the tree a signed checkpoint commits to.

    This is what a reader of an erasure certificate runs: the tree size and root come from
    the signed note, never from the proof.

    Returns
    -------
    Checkpoint
        The verified tree head.

    Raises
    ------
    IntegrityError
        If the note does not verify or the proof does not lead to its root.
    """
    cp = parse_and_verify_checkpoint(note, public_key, name)
    if not isinstance(entry, (bytes, bytearray)) or not verify_inclusion(
        leaf_hash(bytes(entry)), index, cp.size, proof, cp.root
    ):
        raise IntegrityError(
            f"entry {index} is not included in the checkpoint of {cp.origin!r} at size "
            f"{cp.size}: the entry, its index or the proof was altered"
        )
    return cp
