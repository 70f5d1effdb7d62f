"""The audit log: an append-only RFC 6962 Merkle log of events in SQLite, with signed checkpoints.

Every leaf is one event serialised as canonical JSON (RFC 8785): an organization's enrolment,
a round commit, an erasure request, an applied erasure, a certificate, a key rotation, or a
refusal. The log periodically signs a checkpoint (a C2SP signed note of origin, size and
root). An auditor needs only the SQLite file, the log's public key and the artifacts:
:meth:`AuditLog.verify` recomputes every leaf hash and root, checks every signature and the
consistency of successive checkpoints, and names what failed.

Storage (one SQLite file, e.g. ``run_dir/audit.sqlite``)::

    meta(key, value)                         origin, schema version
    entries(idx, entry, leaf_hash)           idx dense from 0; entry = canonical JSON bytes
    checkpoints(seq, size, root, note)       note = the signed note, UTF-8 bytes

Triggers make all three tables append-only: UPDATE and DELETE raise, and an INSERT into
``entries`` or ``checkpoints`` must use the next index. They stop accidents and honest bugs, not an attacker with write access to the file;
the signed checkpoints are what make tampering *evident*. Events must hold no personal data:
name organizations by keyed hash.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from fedunlearn.audit.canonical import canonical_json
from fedunlearn.audit.checkpoint import sign_checkpoint
from fedunlearn.audit.events import check_event
from fedunlearn.audit.keys import SigningKey, VerifierKey, check_key_name
from fedunlearn.audit.merkle import (
    HASH_SIZE,
    consistency_proof_from_leaf_hashes,
    inclusion_proof_from_leaf_hashes,
    leaf_hash,
    root_from_leaf_hashes,
)
from fedunlearn.audit.verify import VerifyReport, verify_log
from fedunlearn.errors import ConfigError, IntegrityError, LedgerError

__all__ = ["SCHEMA_VERSION", "AuditLog"]

SCHEMA_VERSION = "1"

_DDL = [
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS entries ("
    " idx INTEGER PRIMARY KEY, entry BLOB NOT NULL, leaf_hash BLOB NOT NULL)",
    "CREATE TABLE IF NOT EXISTS checkpoints ("
    " seq INTEGER PRIMARY KEY, size INTEGER NOT NULL, root BLOB NOT NULL, note BLOB NOT NULL)",
]
for _table in ("meta", "entries", "checkpoints"):
    for _op in ("UPDATE", "DELETE"):
        _DDL.append(
            f"CREATE TRIGGER IF NOT EXISTS {_table}_no_{_op.lower()} BEFORE {_op} ON {_table} "
            f"BEGIN SELECT RAISE(ABORT, 'audit log {_table} are append-only: {_op} refused'); END"
        )
for _table, _col in (("entries", "idx"), ("checkpoints", "seq")):
    _DDL.append(
        f"CREATE TRIGGER IF NOT EXISTS {_table}_dense BEFORE INSERT ON {_table} "
        f"WHEN NEW.{_col} IS NOT (SELECT COALESCE(MAX({_col}) + 1, 0) FROM {_table}) "
        f"BEGIN SELECT RAISE(ABORT, 'audit log {_table} must be appended at the next index'); END"
    )


class AuditLog:
    """Append-only Merkle audit log stored in one SQLite file. Create with :meth:`open`."""

    def __init__(
        self, conn: sqlite3.Connection, path: Path, origin: str, signer: SigningKey | None
    ) -> None:
        self._conn = conn
        self.path = path
        self.origin = origin
        self.signer = signer

    @classmethod
    def open(
        cls,
        path: str | Path,
        *,
        origin: str,
        signer: SigningKey | None = None,
        create: bool = True,
    ) -> AuditLog:
        """Open (and by default create) the audit log at ``path``.

        Parameters
        ----------
        path : str or Path
            SQLite file, e.g. ``run_dir / "audit.sqlite"``.
        origin : str
            Log identity written into every checkpoint, e.g. ``"fedunlearn.example/run-42"``;
            must match the origin the file was created with.
        signer : SigningKey, optional
            Key that signs checkpoints (by convention named like ``origin``). Not needed to
            append, read or verify.
        create : bool, default True
            If False, open an existing file read-only: a missing file is an error, and
            ``append``/``checkpoint`` fail (use this when auditing).
        """
        check_key_name(origin)
        if signer is not None and not isinstance(signer, SigningKey):
            raise ConfigError(f"signer is a {type(signer).__name__}; expected a SigningKey or None")
        path = Path(path)
        if not create and not path.is_file():
            raise LedgerError(f"no audit log at {path}; check the run folder path")
        try:
            if create:
                conn = sqlite3.connect(path, isolation_level=None)
            else:  # auditors: never write, never create
                conn = sqlite3.connect(
                    path.resolve().as_uri() + "?mode=ro", uri=True, isolation_level=None
                )
        except sqlite3.Error as exc:
            raise LedgerError(f"cannot open audit log {path}: {exc}") from exc
        log = cls(conn, path, origin, signer)
        try:
            with log._transaction("IMMEDIATE" if create else "DEFERRED") as tx:
                for statement in _DDL if create else ():  # one transaction: one fsync
                    tx.execute(statement)
                rows = dict(tx.execute("SELECT key, value FROM meta").fetchall())
                if not rows and create:
                    rows = {"origin": origin, "schema": SCHEMA_VERSION}
                    tx.executemany("INSERT INTO meta (key, value) VALUES (?, ?)", rows.items())
        except LedgerError as exc:
            conn.close()
            raise LedgerError(f"{exc}; is {path} an audit log?") from exc
        if rows.get("schema") != SCHEMA_VERSION:
            conn.close()
            raise LedgerError(
                f"audit log {path} has schema {rows.get('schema')!r}; this fedunlearn reads "
                f"schema {SCHEMA_VERSION!r}: use a matching fedunlearn version"
            )
        if rows.get("origin") != origin:
            conn.close()
            raise ConfigError(
                f"audit log {path} belongs to origin {rows.get('origin')!r}, not {origin!r}; "
                "pass the log's own origin or use another file"
            )
        return log

    def close(self) -> None:
        """Close the database connection."""
        self._conn.close()

    def __enter__(self) -> AuditLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def _transaction(self, mode: str = "IMMEDIATE") -> Iterator[sqlite3.Connection]:
        try:
            self._conn.execute(f"BEGIN {mode}")
        except sqlite3.Error as exc:
            raise LedgerError(f"cannot start a transaction on {self.path}: {exc}") from exc
        try:
            yield self._conn
            self._conn.execute("COMMIT")
        except BaseException as exc:
            if self._conn.in_transaction:  # a failed COMMIT may already have rolled back
                self._conn.execute("ROLLBACK")
            if isinstance(exc, sqlite3.Error):
                raise LedgerError(f"audit log {self.path}: {exc}") from exc
            raise

    def __len__(self) -> int:
        return self.size

    @property
    def size(self) -> int:
        """Number of entries in the log."""
        row = self._conn.execute("SELECT COALESCE(MAX(idx) + 1, 0) FROM entries").fetchone()
        return int(row[0])

    def append(self, event: Mapping[str, Any]) -> int:
        """Validate, canonicalise and append one event atomically; return its index.

        Raises
        ------
        ConfigError
            If the event is invalid (see :func:`check_event`) or holds floats (encode decimals
            as strings with :func:`~fedunlearn.audit.canonical.decimal_str`).
        """
        entry = canonical_json(check_event(event))
        digest = leaf_hash(entry)
        with self._transaction() as conn:
            index = int(conn.execute("SELECT COALESCE(MAX(idx) + 1, 0) FROM entries").fetchone()[0])
            conn.execute(
                "INSERT INTO entries (idx, entry, leaf_hash) VALUES (?, ?, ?)",
                (index, entry, digest),
            )
        return index

    def _range(self, start: int, end: int | None, what: str = "entries") -> tuple[int, int]:
        size = self.size
        end = size if end is None else end
        for name, value in (("start", start), ("end", end)):
            if isinstance(value, bool) or not isinstance(value, int):
                raise ConfigError(f"{what} {name} {value!r} must be an int")
        if not 0 <= start <= end <= size:
            raise ConfigError(
                f"{what} range [{start}, {end}) is not within the log's {size} entries; "
                f"expected 0 <= start <= end <= {size}"
            )
        return start, end

    def entries(self, start: int = 0, end: int | None = None) -> list[bytes]:
        """Return the canonical JSON bytes of entries ``start`` to ``end`` (exclusive)."""
        start, end = self._range(start, end)
        rows = self._conn.execute(
            "SELECT entry FROM entries WHERE idx >= ? AND idx < ? ORDER BY idx", (start, end)
        )
        return [bytes(r[0]) for r in rows]

    def leaf_hashes(self, start: int = 0, end: int | None = None) -> list[bytes]:
        """Return the stored leaf hashes of entries ``start`` to ``end`` (exclusive)."""
        start, end = self._range(start, end)
        rows = self._conn.execute(
            "SELECT leaf_hash FROM entries WHERE idx >= ? AND idx < ? ORDER BY idx", (start, end)
        )
        return [bytes(r[0]) for r in rows]

    def root(self, tree_size: int | None = None) -> bytes:
        """Return the root hash of the first ``tree_size`` entries (default: all)."""
        return root_from_leaf_hashes(self.leaf_hashes(0, tree_size))

    def inclusion_proof(self, index: int, tree_size: int) -> list[bytes]:
        """Return the proof that entry ``index`` is in the tree of size ``tree_size``."""
        self._range(0, tree_size, "tree")
        return inclusion_proof_from_leaf_hashes(self.leaf_hashes(0, tree_size), index)

    def consistency_proof(self, old_size: int, new_size: int) -> list[bytes]:
        """Return the proof that the tree of ``new_size`` extends the tree of ``old_size``."""
        self._range(old_size, new_size, "tree")
        return consistency_proof_from_leaf_hashes(self.leaf_hashes(0, new_size), old_size)

    def checkpoints(self) -> list[str]:
        """Return every stored signed checkpoint note, oldest first."""
        rows = self._conn.execute("SELECT note FROM checkpoints ORDER BY seq")
        return [bytes(r[0]).decode("utf-8", errors="replace") for r in rows]

    def latest_checkpoint(self) -> str | None:
        """Return the newest signed checkpoint note, or None if none was signed yet."""
        notes = self._conn.execute("SELECT note FROM checkpoints ORDER BY seq DESC LIMIT 1")
        row = notes.fetchone()
        return None if row is None else bytes(row[0]).decode("utf-8", errors="replace")

    def checkpoint(self) -> str:
        """Sign, store and return a checkpoint of the log at its current size.

        Before signing, the entries added since the previous checkpoint are re-hashed and the
        previous checkpoint's root is recomputed, so the log never signs a tree inconsistent
        with what it signed before.

        Raises
        ------
        ConfigError
            If the log was opened without a signer.
        IntegrityError
            If stored entries no longer match their hashes or the previous checkpoint.
        """
        if self.signer is None:
            raise ConfigError(
                f"audit log {self.path} was opened without a signer; pass "
                "signer=load_signing_key(...) to AuditLog.open to sign checkpoints"
            )
        with self._transaction() as conn:
            rows = conn.execute("SELECT idx, entry, leaf_hash FROM entries ORDER BY idx").fetchall()
            prev = conn.execute(
                "SELECT seq, size, root FROM checkpoints ORDER BY seq DESC LIMIT 1"
            ).fetchone()
            prev_size = 0 if prev is None else int(prev[1])
            hashes: list[bytes] = []
            for position, (idx, entry, stored) in enumerate(rows):
                if idx != position:
                    raise IntegrityError(f"audit log {self.path}: entry {position} is missing")
                intact = isinstance(stored, bytes) and len(stored) == HASH_SIZE
                if intact and position >= prev_size:  # older entries are covered by prev root
                    intact = isinstance(entry, bytes) and leaf_hash(entry) == stored
                if not intact:
                    raise IntegrityError(
                        f"audit log {self.path}: entry {idx} does not match its leaf hash; "
                        "refusing to sign: run verify() and restore the log from a backup"
                    )
                hashes.append(stored)
            if prev is not None and (
                prev_size > len(hashes)
                or root_from_leaf_hashes(hashes[:prev_size]) != prev[2]
            ):
                raise IntegrityError(
                    f"audit log {self.path}: entries no longer match checkpoint {prev[0]} "
                    f"(size {prev_size}); refusing to sign an inconsistent tree: run verify()"
                )
            root = root_from_leaf_hashes(hashes)
            note = sign_checkpoint(self.origin, len(hashes), root, self.signer)
            seq = 0 if prev is None else int(prev[0]) + 1
            conn.execute(
                "INSERT INTO checkpoints (seq, size, root, note) VALUES (?, ?, ?, ?)",
                (seq, len(hashes), root, note.encode("utf-8")),
            )
        return note

    def verify(
        self,
        public_key: VerifierKey | Ed25519PublicKey | bytes | str,
        *,
        name: str | None = None,
        known_checkpoints: Sequence[str] = (),
    ) -> VerifyReport:
        """Check the whole log against the log's public key; never raises on tampering.

        Parameters
        ----------
        public_key : VerifierKey, Ed25519PublicKey, bytes or str
            The trusted (first) public key of the log signer; ``key-rotation`` events attested
            by the key in force are followed (see :mod:`fedunlearn.audit.rotation`).
        name : str, optional
            Key name of the signer; defaults to the name inside ``public_key`` if it has one,
            else to the log origin.
        known_checkpoints : sequence of str, optional
            Signed notes of this log kept elsewhere (witness copies, certificates); they
            expose a rollback that the stored rows alone cannot.

        Returns
        -------
        VerifyReport
            ``ok`` and one problem line per failed entry, checkpoint or consistency check.
        """
        with self._transaction("DEFERRED") as conn:  # one consistent snapshot
            entries = conn.execute(
                "SELECT idx, entry, leaf_hash FROM entries ORDER BY idx"
            ).fetchall()
            checkpoints = conn.execute(
                "SELECT seq, size, root, note FROM checkpoints ORDER BY seq"
            ).fetchall()
        return verify_log(
            self.origin,
            entries,
            checkpoints,
            public_key,
            name=name,
            known_checkpoints=known_checkpoints,
        )
