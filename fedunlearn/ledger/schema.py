"""SQLite schema of the lineage ledger, connection settings and the version check.

The schema version lives in ``PRAGMA user_version`` and the file is tagged with ``PRAGMA
application_id`` so that :meth:`~fedunlearn.ledger.lineage.Ledger.open` can tell a ledger written
by another fedunlearn version, or a file that is no ledger at all, from a damaged one.

Tables::

    meta(key, value)                          free-form run metadata (strings)
    organizations(name, shard, join_round, status, erased)
    checkpoints(id, shard, round, hash, parent_id -> checkpoints, created, branch)
    contributions(checkpoint_id -> checkpoints, org -> organizations, update_hash, weight,
                  num_examples, metrics)     one row per organization update in an aggregate
    heads(shard, checkpoint_id -> checkpoints, branch)
                                              current head of every shard; ``branch`` is the
                                              number given to the next commit
    served(id, served_hash, components, weights, path, created)
    purged(checkpoint_id -> checkpoints, hash, purged)
                                              (version 2) aggregates whose blob was deleted on
                                              erasure because their lineage holds an erased
                                              organization; the hash stays in ``checkpoints``
                                              (the audit log references it)

Version history: 1, the tables above without ``purged``; 2 adds ``purged``. :func:`migrate`
upgrades a version-1 ledger in place (one transaction: it only creates the new table), which
:meth:`~fedunlearn.ledger.store.LedgerStore.open` does on opening.
"""

from __future__ import annotations

import datetime
import sqlite3
from pathlib import Path

from fedunlearn.errors import RunStateError

__all__ = [
    "APPLICATION_ID", "SCHEMA_VERSION", "check_version", "connect", "initialize", "migrate", "utc_now",
]

SCHEMA_VERSION = 3
"""Version of the tables below; bump it (and add a migration) whenever they change."""

APPLICATION_ID = 0x46554C44  # "FULD": marks the SQLite file as a fedunlearn ledger

_DDL = (
    """CREATE TABLE meta (
        key   TEXT PRIMARY KEY,
        value TEXT NOT NULL
    )""",
    """CREATE TABLE organizations (
        name       TEXT PRIMARY KEY CHECK (length(name) > 0),
        shard      INTEGER NOT NULL CHECK (shard >= 0),
        join_round INTEGER NOT NULL CHECK (join_round >= 1),
        status     TEXT NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'erased')),
        erased     TEXT
    )""",
    """CREATE TABLE checkpoints (
        id        INTEGER PRIMARY KEY,
        shard     INTEGER NOT NULL CHECK (shard >= 0),
        round     INTEGER NOT NULL CHECK (round >= 0),
        hash      TEXT NOT NULL CHECK (length(hash) = 64),
        parent_id INTEGER REFERENCES checkpoints (id),
        created   TEXT NOT NULL,
        branch    INTEGER NOT NULL CHECK (branch >= 0),
        UNIQUE (shard, branch, round),
        CHECK ((round = 0) = (parent_id IS NULL))
    )""",
    """CREATE TABLE contributions (
        checkpoint_id INTEGER NOT NULL REFERENCES checkpoints (id),
        org           TEXT NOT NULL REFERENCES organizations (name),
        update_hash   TEXT NOT NULL CHECK (length(update_hash) = 64),
        weight        REAL NOT NULL CHECK (weight >= 0),
        num_examples  INTEGER NOT NULL CHECK (num_examples >= 0),
        metrics       TEXT NOT NULL DEFAULT '{}',
        PRIMARY KEY (checkpoint_id, org)
    )""",
    "CREATE INDEX contributions_by_org ON contributions (org, checkpoint_id)",
    """CREATE TABLE heads (
        shard         INTEGER PRIMARY KEY,
        checkpoint_id INTEGER NOT NULL REFERENCES checkpoints (id),
        branch        INTEGER NOT NULL CHECK (branch >= 0)
    )""",
    """CREATE TABLE served (
        id          INTEGER PRIMARY KEY,
        served_hash TEXT NOT NULL,
        components  TEXT NOT NULL,
        weights     TEXT NOT NULL,
        path        TEXT NOT NULL,
        created     TEXT NOT NULL
    )""",
)

_PURGED_DDL = """CREATE TABLE purged (
        checkpoint_id INTEGER PRIMARY KEY REFERENCES checkpoints (id),
        hash          TEXT NOT NULL CHECK (length(hash) = 64),
        purged        TEXT NOT NULL
    )"""

_COMPACTED_DDL = """CREATE TABLE compacted (
        hash      TEXT NOT NULL CHECK (length(hash) = 64),
        org       TEXT NOT NULL DEFAULT '',
        kind      TEXT NOT NULL CHECK (kind IN ('update', 'aggregate')),
        policy    TEXT NOT NULL,
        compacted TEXT NOT NULL,
        PRIMARY KEY (hash, org, kind)
    )"""
"""Version 3: blobs deleted by a compaction (fedunlearn.ledger.compact); their hashes stay in the
lineage tables, and ``org`` is '' for an aggregate."""

_MIGRATIONS: dict[int, tuple[str, ...]] = {1: (_PURGED_DDL,), 2: (_COMPACTED_DDL,)}
"""Statements that upgrade a ledger from the key's version to the next one."""

_DDL = _DDL + (_PURGED_DDL, _COMPACTED_DDL)


def utc_now() -> str:
    """Current UTC time as ISO 8601 with microseconds, e.g. ``2025-01-31T12:00:00.000001+00:00``."""
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="microseconds")


def connect(path: Path) -> sqlite3.Connection:
    """Open ``path`` with the ledger's settings.

    Autocommit mode (``isolation_level=None``) so that writers open their transactions with
    ``BEGIN IMMEDIATE`` themselves: a check such as "is the parent still the head?" and the write
    that depends on it then happen under one write lock, also across processes. WAL lets readers
    proceed during a write; ``synchronous=FULL`` makes a committed round survive a power cut.
    """
    conn = sqlite3.connect(path, timeout=30.0, isolation_level=None, check_same_thread=False)
    conn.row_factory = sqlite3.Row
    try:
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA foreign_keys = ON")
        conn.execute("PRAGMA synchronous = FULL")
    except sqlite3.DatabaseError as exc:
        conn.close()
        raise RunStateError(
            f"{path} is not a readable SQLite database ({exc}); expected a fedunlearn ledger: "
            "point to a run folder created by fedunlearn"
        ) from exc
    return conn


def initialize(conn: sqlite3.Connection, path: Path, meta: dict[str, str]) -> None:
    """Create the tables in an empty database and store ``meta``, in one transaction."""
    with conn:
        conn.execute("BEGIN IMMEDIATE")
        found = conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
        if found:
            raise RunStateError(
                f"{path} already holds a database ({found} schema objects); a new run needs a "
                "fresh folder: choose another run folder or open this one with Ledger.open"
            )
        for statement in _DDL:
            conn.execute(statement)
        conn.executemany("INSERT INTO meta (key, value) VALUES (?, ?)", sorted(meta.items()))
        conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")


def migrate(conn: sqlite3.Connection, path: Path) -> None:
    """Upgrade a ledger of an older known schema version to :data:`SCHEMA_VERSION` in place.

    Each step runs in one transaction together with the version bump, so an interrupted
    migration leaves the old version intact and is simply repeated. A ledger that is already
    current, of an unknown version or not a ledger at all is left alone (:func:`check_version`
    reports it).

    Parameters
    ----------
    conn : sqlite3.Connection
        Connection from :func:`connect`.
    path : Path
        The ledger file, for messages.
    """
    try:
        if conn.execute("PRAGMA application_id").fetchone()[0] != APPLICATION_ID:
            return
        with conn:
            conn.execute("BEGIN IMMEDIATE")
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            while version in _MIGRATIONS:
                for statement in _MIGRATIONS[version]:
                    conn.execute(statement)
                version += 1
                conn.execute(f"PRAGMA user_version = {version}")
    except sqlite3.DatabaseError as exc:
        raise RunStateError(
            f"ledger {path} could not be upgraded to schema version {SCHEMA_VERSION} ({exc}); "
            "nothing was changed: make the run folder writable and open it again, or open it "
            "with the fedunlearn version that wrote it"
        ) from exc


def check_version(conn: sqlite3.Connection, path: Path) -> None:
    """Raise :class:`RunStateError` unless ``conn`` is a ledger of :data:`SCHEMA_VERSION`."""
    try:
        application_id = conn.execute("PRAGMA application_id").fetchone()[0]
        version = conn.execute("PRAGMA user_version").fetchone()[0]
    except sqlite3.DatabaseError as exc:
        raise RunStateError(
            f"{path} cannot be read as a fedunlearn ledger ({exc}); restore the run folder from "
            "a backup or start a new run"
        ) from exc
    if application_id != APPLICATION_ID:
        raise RunStateError(
            f"{path} is not a fedunlearn ledger (SQLite application_id {application_id:#x}, "
            f"expected {APPLICATION_ID:#x}); point to the ledger.sqlite of a fedunlearn run"
        )
    if version != SCHEMA_VERSION:
        newer = "a newer" if version > SCHEMA_VERSION else "an older"
        raise RunStateError(
            f"ledger {path} has schema version {version}, this fedunlearn reads schema version "
            f"{SCHEMA_VERSION}; it was written by {newer} fedunlearn: open it with that version, "
            "or start a new run"
        )
