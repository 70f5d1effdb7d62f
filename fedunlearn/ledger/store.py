"""Storage side of the ledger: the run folder, its SQLite connection, metadata, organizations
and tensor states.

:class:`LedgerStore` owns ``<run>/ledger.sqlite``, the blob store ``<run>/blobs`` and the key store
``<run>/keys``; :class:`~fedunlearn.ledger.lineage.Ledger` adds the checkpoint chains on top. Every
aggregate is stored encrypted under its own key, and every client update under the
:func:`~fedunlearn.ledger.keys.bound_key` of its organization's key and the key of the aggregate it
was trained from (associated data: the organization name and that aggregate's hash). Erasing an
organization shreds its key; purging the aggregates whose lineage holds it shreds theirs, so that
neither they nor the updates trained on them can be read from a backup of the run folder made
before the erasure (see :mod:`fedunlearn.ledger.keys`). Runs made before this stored aggregates in
the clear and updates under their organization's key alone; those blobs are still read.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import torch

from fedunlearn.errors import IntegrityError, LedgerError, RunStateError, UnknownNameError
from fedunlearn.ledger.blobs import BlobStore, check_digest
from fedunlearn.ledger.keys import KeyStore, ShreddedError, aggregate_key_name, bound_key
from fedunlearn.ledger.records import (
    Organization,
    check_int,
    check_name,
    check_str,
    organization_from_row,
)
from fedunlearn.ledger.schema import (
    SCHEMA_VERSION,
    check_version,
    connect,
    initialize,
    migrate,
    utc_now,
)
from fedunlearn.ledger.tensors import state_from_bytes, state_to_bytes

__all__ = ["LEDGER_FILE", "LedgerStore"]

LEDGER_FILE = "ledger.sqlite"
"""Name of the SQLite index inside a run folder."""

_Self = TypeVar("_Self", bound="LedgerStore")


ROUND_SAMPLE_KEY = "round-sample"
"""Ledger metadata key of the per-round sample of organizations (see LedgerStore.set_round_sample)."""
BUDGET_STOP_PREFIX = "budget-exhausted/"
"""Meta key prefix: ``budget-exhausted/<org>`` (JSON with ``from_round``): the organization's DP budget is
spent and it is no member of that round or any later one (written by the coordinator)."""


NAMING_META = "keys.naming"
"""Meta key: ``hmac`` once the run's key files and blob names are keyed with the key folder's
``naming.secret`` (a run whose secret is lost then stops instead of creating new keys)."""

UPDATE_PARENT_PREFIX = "update-parent/"
"""Meta key prefix: ``update-parent/<org>/<update hash>``: the aggregate the update was trained from,
whose key its own key is bound to (see LedgerStore.put_state)."""

ROUND_SECONDS_PREFIX = "round-seconds/"
"""Meta key prefix: ``round-seconds/<checkpoint id>``: wall seconds the coordinator spent on that
training round (fit, transport, aggregation, storage); the basis of full-retraining estimates."""


def in_round_sample(seed: int, shard: int, round: int, org: str, fraction: float) -> bool:
    """Whether ``org`` trains in ``round`` of ``shard`` when a ``fraction`` of members is sampled.

    A Bernoulli(``fraction``) draw from SHA-256 of (seed, shard, round, org): stable across
    processes, independent between organizations, so removing one never changes the others.
    """
    if fraction >= 1.0:
        return True
    text = "\x1f".join(str(p) for p in (seed, "round-sample", shard, round, org)).encode()
    return int.from_bytes(hashlib.sha256(text).digest()[:8], "big") < fraction * 2**64


class LedgerStore:
    """Run folder, SQLite connection, metadata, organizations and tensor states of a ledger.

    Use :class:`~fedunlearn.ledger.lineage.Ledger`, which adds lineage; build one with
    :meth:`create` (new run) or :meth:`open` (resume, audit, erase) and close it with
    :meth:`close` or a ``with`` block. Methods may be called from several threads; several
    processes may share a ledger (writes are serialized by SQLite's write lock).
    """

    SCHEMA_VERSION: int = SCHEMA_VERSION

    def __init__(self, run_dir: Path, conn: sqlite3.Connection) -> None:
        """Wrap an open connection; use :meth:`create` or :meth:`open` instead."""
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LEDGER_FILE
        self.keys = KeyStore(self.run_dir)
        self.blobs = BlobStore(self.run_dir, tagger=self.keys.tag)
        self._conn: sqlite3.Connection | None = conn
        self._lock = threading.RLock()
        # keys named with the key folder's naming secret: a lost secret must stop, never mint new keys
        marked = conn.execute("SELECT value FROM meta WHERE key = ?", (NAMING_META,)).fetchall()
        self.keys.naming_required = bool(marked) and marked[0][0] == "hmac"

    # -- lifecycle --------------------------------------------------------------------------
    @classmethod
    def create(cls: type[_Self], run_dir: Path, *, meta: Mapping[str, str]) -> _Self:
        """Create the ledger of a new run in ``run_dir`` (``ledger.sqlite``, ``blobs/``, ``keys/``).

        Parameters
        ----------
        run_dir : Path
            Run folder; created if needed. It may already hold other files (settings, data).
        meta : Mapping[str, str]
            Initial run metadata, e.g. the settings hash and seed.

        Returns
        -------
        Ledger
            The open ledger.

        Raises
        ------
        RunStateError
            If ``run_dir`` already holds a ledger.
        """
        run_dir = Path(run_dir)
        path = run_dir / LEDGER_FILE
        if path.exists():
            raise RunStateError(
                f"{path} already exists; a new run needs a fresh folder: resume it with "
                "Ledger.open, or choose another run folder"
            )
        meta = {check_str("meta key", k): check_str(f"meta[{k!r}]", v) for k, v in meta.items()}
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "blobs").mkdir(exist_ok=True)
        conn = connect(path)
        try:
            initialize(conn, path, meta)
        except BaseException:
            conn.close()
            raise
        ledger = cls(run_dir, conn)
        ledger.keys.ensure_directory()
        return ledger

    @classmethod
    def open(cls: type[_Self], run_dir: Path) -> _Self:
        """Open the ledger of an existing run.

        Parameters
        ----------
        run_dir : Path
            Run folder holding ``ledger.sqlite``.

        Returns
        -------
        Ledger
            The open ledger; resume training from :meth:`Ledger.head` of each shard.

        Raises
        ------
        RunStateError
            If there is no ledger in ``run_dir`` or its schema version differs from
            :attr:`SCHEMA_VERSION` (the message names both versions) and cannot be upgraded.

        Notes
        -----
        A ledger of an older known schema version (1 or 2) is upgraded in place on opening
        (:func:`~fedunlearn.ledger.schema.migrate`), so opening one needs write access.
        """
        run_dir = Path(run_dir)
        path = run_dir / LEDGER_FILE
        if not path.is_file():
            raise RunStateError(
                f"no ledger at {path}; expected a run folder written by fedunlearn: check the "
                "path, or start a new run (Ledger.create)"
            )
        conn = connect(path)
        try:
            migrate(conn, path)
            check_version(conn, path)
        except BaseException:
            conn.close()
            raise
        return cls(run_dir, conn)

    def close(self) -> None:
        """Close the database connection (idempotent)."""
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def __enter__(self: _Self) -> _Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._conn is None else "open"
        return f"{type(self).__name__}({str(self.run_dir)!r}, {state})"

    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            raise LedgerError(
                f"the ledger of {self.run_dir} is closed; open it again with Ledger.open"
            )
        return self._conn

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction holding SQLite's write lock from its first statement."""
        with self._lock:
            conn = self._db()
            try:
                with conn:  # commits on success, rolls back on any exception
                    conn.execute("BEGIN IMMEDIATE")
                    yield conn
            except sqlite3.Error as exc:
                raise LedgerError(
                    f"ledger {self.path} write failed ({exc}); nothing was changed: if another "
                    "process holds the ledger, wait for it and retry"
                ) from exc

    def _query(
        self, sql: str, params: Mapping[str, Any] | Sequence[Any] = ()
    ) -> list[sqlite3.Row]:
        with self._lock:
            return self._db().execute(sql, params).fetchall()

    # -- metadata ---------------------------------------------------------------------------
    @property
    def meta(self) -> dict[str, str]:
        """Run metadata (a copy); change it with :meth:`set_meta`."""
        return {row["key"]: row["value"] for row in self._query("SELECT * FROM meta ORDER BY key")}

    def set_meta(self, key: str, value: str) -> None:
        """Set one metadata entry (insert or replace)."""
        key, value = check_str("meta key", key), check_str(f"meta[{key!r}]", value)
        with self._transaction() as conn:
            conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value))

    # -- organizations ----------------------------------------------------------------------
    def register_organization(self, name: str, *, shard: int, join_round: int = 1) -> None:
        """Register ``name`` as a member of ``shard`` from round ``join_round`` on.

        Idempotent when called again with the same values.

        Raises
        ------
        RunStateError
            If ``name`` was erased, or is registered with another shard or join round.
        """
        check_name(name)
        shard = check_int("shard", shard, minimum=0)
        join_round = check_int("join_round", join_round, minimum=1)
        with self._transaction() as conn:
            row = conn.execute("SELECT * FROM organizations WHERE name = ?", (name,)).fetchone()
            if row is None:
                conn.execute(
                    "INSERT INTO organizations (name, shard, join_round) VALUES (?, ?, ?)",
                    (name, shard, join_round),
                )
                return
        self._refuse_erased(row)
        if (row["shard"], row["join_round"]) != (shard, join_round):
            raise RunStateError(
                f"organization {name!r} is already registered in shard {row['shard']} from round "
                f"{row['join_round']}, not shard {shard} from round {join_round}; a run's "
                "topology cannot change: resume with the original assignment or start a new run"
            )

    @staticmethod
    def _refuse_erased(row: sqlite3.Row) -> None:
        if row["status"] == "erased":
            raise RunStateError(
                f"organization {row['name']!r} was already erased ({row['erased']}); it cannot "
                "be registered, store updates or contribute again in this run: enrol it under a "
                "new name if it rejoins"
            )

    def organizations(self) -> list[Organization]:
        """Every registered organization, sorted by name."""
        rows = self._query("SELECT * FROM organizations ORDER BY name")
        return [organization_from_row(row) for row in rows]

    def organization(self, name: str) -> Organization:
        """The organization called ``name`` (:class:`UnknownNameError` lists the valid names)."""
        return organization_from_row(self._org_row(name))

    def _org_row(self, name: str, conn: sqlite3.Connection | None = None) -> sqlite3.Row:
        check_name(name)
        with self._lock:
            conn = conn or self._db()
            row = conn.execute("SELECT * FROM organizations WHERE name = ?", (name,)).fetchone()
            if row is None:
                names = [r[0] for r in conn.execute("SELECT name FROM organizations")]
                raise UnknownNameError("organization", name, names)
            return row

    def members(self, shard: int, round: int) -> list[str]:
        """Active organizations of ``shard`` that have joined by ``round``, sorted; when the run
        samples organizations per round (:meth:`set_round_sample`), only those sampled for ``round``;
        never those whose DP budget was spent by ``round`` (:data:`BUDGET_STOP_PREFIX`)."""
        shard = check_int("shard", shard, minimum=0)
        round = check_int("round", round, minimum=0)
        rows = self._query(
            "SELECT name FROM organizations WHERE shard = ? AND join_round <= ? "
            "AND status = 'active' ORDER BY name",
            (shard, round),
        )
        names = [r["name"] for r in rows]
        stopped = self._query("SELECT key, value FROM meta WHERE key LIKE ?", (BUDGET_STOP_PREFIX + "%",))
        spent = {r["key"][len(BUDGET_STOP_PREFIX):] for r in stopped if json.loads(r["value"])["from_round"] <= round}
        names = [n for n in names if n not in spent]  # DP budget spent: out of this and later rounds
        sample = self._query("SELECT value FROM meta WHERE key = ?", (ROUND_SAMPLE_KEY,))
        if sample:
            rule = json.loads(sample[0]["value"])
            names = [n for n in names if in_round_sample(rule["seed"], shard, round, n, rule["fraction"])]
        return names

    def set_round_sample(self, fraction: float, seed: int) -> None:
        """Let :meth:`members` return, each round, a seeded sample of ``fraction`` of the members.

        Each organization is in round ``r`` of its shard independently with probability
        ``fraction`` (:func:`in_round_sample`), decided by (``seed``, shard, round, name) alone, so
        an erasure that replays a round without one organization replays it with the same others.
        Recorded once per run; ``fraction = 1`` on a ledger without a sample is a no-op.

        Raises
        ------
        LedgerError
            If ``fraction`` is not in (0, 1].
        RunStateError
            If the ledger already samples with another fraction or seed (resuming with a different
            sample would break the lineage every erasure replays).
        """
        fraction = float(fraction)
        if not 0.0 < fraction <= 1.0:
            raise LedgerError(f"round sample fraction {fraction!r} is invalid: expected a share in (0, 1], e.g. 0.1")
        wanted = json.dumps({"fraction": fraction, "seed": int(seed)}, sort_keys=True)
        current = self.meta.get(ROUND_SAMPLE_KEY)
        if current is None and fraction == 1.0:
            return
        if current is not None and current != wanted:
            raise RunStateError(
                f"this run samples organizations per round as {current}, not {wanted}; the sample is fixed "
                "for the life of a run: resume it with the same topology.sample-fraction and run.seed, or "
                "start a new run"
            )
        if current is None:
            self.set_meta(ROUND_SAMPLE_KEY, wanted)

    def mark_erased(self, org: str) -> None:
        """Mark ``org`` erased and shred its key; its stored updates become unreadable.

        Read whatever the erasure needs from the updates (e.g. for subtraction) first.
        Idempotent: a repeated call finishes an interrupted one.
        """
        with self._transaction() as conn:
            row = self._org_row(org, conn)
            if row["status"] != "erased":
                conn.execute(
                    "UPDATE organizations SET status = 'erased', erased = ? WHERE name = ?",
                    (utc_now(), org),
                )
        self.keys.shred(org)

    # -- tensor states ----------------------------------------------------------------------
    def put_state(self, state: Mapping[str, torch.Tensor], *, org: str | None = None,
                  parent: str | None = None) -> str:
        """Store a tensor state and return its identity hash.

        An aggregate (``org=None``) is encrypted under its own key, shredded when it is purged. An
        update of ``org`` is encrypted under the bound key of ``org``'s key and the key of
        ``parent``, the aggregate it was trained from (associated data: the name and ``parent``), so
        shredding either makes it unreadable; without ``parent``, under ``org``'s key alone.

        Raises
        ------
        UnknownNameError
            If ``org`` is not registered.
        RunStateError
            If ``org`` was erased.
        """
        data = state_to_bytes(state)
        if org is None:
            digest = hashlib.sha256(data).hexdigest()
            digest = self.blobs.put(data, key=self.keys.key_for(aggregate_key_name(digest)), aad=_AGGREGATE_AAD)
            self._mark_naming()
            return digest
        self._refuse_erased(self._org_row(org))
        key, aad = self._update_key(org, parent, create=True)
        digest = self.blobs.put(data, key=key, aad=aad)
        self._mark_naming()
        if parent is not None:
            self.set_meta(f"{UPDATE_PARENT_PREFIX}{org}/{digest}", parent)
        return digest

    def _mark_naming(self) -> None:
        """Record in the ledger that this run's key files are named with the naming secret (once)."""
        if not self.keys.naming_required and self.keys.tag(b"") is not None:
            self.set_meta(NAMING_META, "hmac")
            self.keys.naming_required = True

    def _update_key(self, org: str, parent: str | None, *, create: bool) -> tuple[bytes, bytes]:
        """(key, associated data) of ``org``'s updates trained from aggregate ``parent`` (None: org key alone)."""
        key = self.keys.key_for(org, create=create)
        if parent is None:
            return key, org.encode("utf-8")
        check_digest(parent)
        # create: an older run's aggregate, stored in the clear, gets its key when an update is bound to it
        return (bound_key(key, self._aggregate_key(parent, create=create)),
                org.encode("utf-8") + b"\x1f" + parent.encode("ascii"))

    def _aggregate_key(self, digest: str, *, create: bool = False) -> bytes:
        try:
            return self.keys.key_for(aggregate_key_name(digest), create=create)
        except ShreddedError:
            raise ShreddedError(
                f"the key of aggregate {digest} was shredded when an organization its lineage holds was erased: "
                "the aggregate, and every update trained from it, can no longer be decrypted (from the run or "
                "any copy of it), by design; use the retrained adapters, which do not depend on it"
            ) from None
        except IntegrityError:
            raise
        except LedgerError:
            raise LedgerError(
                f"no key for aggregate {digest} in {self.keys.directory}: the run's key folder is not here or "
                "is incomplete (with run.key-dir, the keys live outside the run folder: restore or point to them)"
            ) from None

    def _parent_of(self, org: str, digest: str) -> str | None:
        """The aggregate ``org``'s update ``digest`` was trained from, or None when it was stored
        before updates were bound to their aggregate."""
        rows = self._query("SELECT value FROM meta WHERE key = ?", (f"{UPDATE_PARENT_PREFIX}{org}/{digest}",))
        return rows[0]["value"] if rows else None

    def aggregate_bytes(self, digest: str) -> bytes:
        """The plaintext of aggregate ``digest``: decrypted under its key, or a plaintext blob of a run
        made before aggregates were encrypted.

        Raises
        ------
        ShreddedError
            Its key was shredded (purged on an erasure).
        LedgerError, IntegrityError
            Missing, or changed on disk.
        """
        if self.blobs.exists(digest, encrypted=True, aad=_AGGREGATE_AAD):
            return self.blobs.get(digest, key=self._aggregate_key(digest), aad=_AGGREGATE_AAD)
        if self.blobs.exists(digest):
            return self.blobs.get(digest)  # an older run's plaintext aggregate
        if self.keys.is_shredded(aggregate_key_name(digest)):
            self._aggregate_key(digest)  # raises: shredded
        raise LedgerError(
            f"aggregate {digest} is missing (expected {self.blobs.path(digest, encrypted=True, aad=_AGGREGATE_AAD)}); "
            "it was never stored, or was deleted: store blobs before committing them and copy the whole run "
            "folder when moving a run")

    def has_aggregate(self, digest: str) -> bool:
        """Whether aggregate ``digest`` is stored (encrypted, or in the clear in an older run)."""
        return self.blobs.exists(digest, encrypted=True, aad=_AGGREGATE_AAD) or self.blobs.exists(digest)

    def aggregate_paths(self, digest: str) -> list[Path]:
        """The files that hold aggregate ``digest`` (for sizes and messages)."""
        return [p for p in (self.blobs.path(digest, encrypted=True, aad=_AGGREGATE_AAD), self.blobs.path(digest))
                if p.is_file()]

    def delete_aggregate(self, digest: str) -> None:
        """Delete aggregate ``digest`` (every copy) and shred its key: a copy kept elsewhere (a backup)
        can no longer be decrypted, nor can the updates trained from it."""
        self.keys.shred(aggregate_key_name(digest))
        self.blobs.delete(digest, encrypted=True, aad=_AGGREGATE_AAD)
        self.blobs.delete(digest)

    def get_state(self, digest: str, *, org: str | None = None) -> dict[str, torch.Tensor]:
        """Load a stored tensor state, verified against ``digest``.

        Raises
        ------
        ShreddedError
            If ``org``'s key was shredded (the organization was erased), or the key of the
            aggregate the update was trained from (purged on an erasure).
        IntegrityError
            If the blob was modified on disk.
        LedgerError
            If the blob is missing.
        """
        if org is None:
            return state_from_bytes(self.aggregate_bytes(digest))
        return state_from_bytes(self.update_bytes(digest, org))

    def update_bytes(self, digest: str, org: str) -> bytes:
        """The plaintext of ``org``'s update ``digest`` (see :meth:`get_state`)."""
        row = self._org_row(org)
        if row["status"] == "erased" and not self.keys.is_shredded(org):
            self.keys.shred(org)  # finish an erasure interrupted between its two steps
        self.keys.key_for(org, create=False)  # shredded or missing: say so first
        if not self.has_state(digest, org=org) and self._query(
            "SELECT 1 FROM compacted WHERE hash = ? AND org = ? AND kind = 'update' LIMIT 1", (digest, org)
        ):
            raise LedgerError(
                f"organization {org!r}'s update {digest} was deleted by a ledger compaction (its hash "
                "stays in the lineage); methods that read stored updates (subtract, negate, influence "
                "with gradient=stored) cannot use it: erase with sisa or retrain, or compact with "
                "--keep naming the method"
            )
        key, aad = self._update_key(org, self._parent_of(org, digest), create=False)
        return self.blobs.get(digest, key=key, aad=aad)

    def update_paths(self, digest: str, org: str) -> list[Path]:
        """The files that hold ``org``'s update ``digest`` (bound to its aggregate, or of an older run)."""
        parent = self._parent_of(org, digest)
        aads = [org.encode("utf-8")] + ([org.encode("utf-8") + b"\x1f" + parent.encode("ascii")] if parent else [])
        return [p for p in (self.blobs.path(digest, encrypted=True, aad=a) for a in aads) if p.is_file()]

    def delete_update(self, digest: str, org: str) -> None:
        """Delete every stored copy of ``org``'s update ``digest``."""
        for path in self.update_paths(digest, org):
            path.unlink(missing_ok=True)

    def has_state(self, digest: str, *, org: str | None = None) -> bool:
        """Whether a blob for ``digest`` (encrypted for ``org`` if given) is stored."""
        if org is None:
            return self.has_aggregate(digest)
        return bool(self.update_paths(digest, org))


_AGGREGATE_AAD = b"fedunlearn/aggregate"
