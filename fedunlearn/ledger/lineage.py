"""The lineage ledger: which update of which organization went into which adapter.

Every shard has a chain of aggregate checkpoints: round 0 is the initial adapter (no
contributions, no parent) and round ``r`` aggregates the round-``r`` updates of the shard's
members on top of round ``r - 1``. :meth:`Ledger.commit_round` appends to a shard's chain and moves
its head in one SQLite transaction; :meth:`Ledger.rollback` moves the head back (erasure by
retraining, SISA), and later commits start a new *branch*. Abandoned checkpoints stay in the table
as history, but only the *head chain* (the head and its ancestors) counts when the ledger answers
"does the model depend on organization c?" (:meth:`Ledger.dependents`).

Purging: an abandoned checkpoint whose lineage holds an erased organization keeps, in its
aggregate, information about that organization's updates (with a single member in a round the
aggregate *is* the update). :meth:`Ledger.purge_dependents` deletes those aggregate blobs, shreds
their keys (so that no copy of them, and no update trained from them, can be decrypted any more)
and records the checkpoints in the ``purged`` table (schema version 2); their hashes stay in
``checkpoints`` for the audit log, and :meth:`Ledger.verify_blobs` expects them missing. Blobs
referenced by a head chain or the served model are never deleted.

Resuming: the caller stores blobs before the commit that references them, so a run interrupted
mid-round left at most orphan blobs, which are harmless to lineage, and resumes from
:meth:`Ledger.head`. An orphan aggregate is linked to no organization, so a purge cannot find it;
a round that crashed before its commit may leave one holding a later-erased organization's update.
"""

from __future__ import annotations

import json
import math
import sqlite3
from collections.abc import Sequence
from typing import Any

import torch

from fedunlearn.errors import LedgerError, RunStateError
from fedunlearn.ledger.blobs import check_digest
from fedunlearn.ledger.keys import ShreddedError, aggregate_key_name
from fedunlearn.ledger.records import (
    Checkpoint,
    Contribution,
    Dependency,
    Organization,
    check_contribution,
    check_int,
    check_str,
    checkpoint_from_row,
)
from fedunlearn.ledger.schema import utc_now
from fedunlearn.ledger.tensors import state_from_bytes
from fedunlearn.ledger.store import LedgerStore

__all__ = ["Checkpoint", "Contribution", "Dependency", "Ledger", "Organization"]

# Head chain of one shard, root first. The recursion walks parent ids from the head.
_HEAD_CHAIN = """
    WITH RECURSIVE chain(id, depth) AS (
        SELECT checkpoint_id, 0 FROM heads WHERE shard = :shard
        UNION ALL
        SELECT c.parent_id, chain.depth + 1 FROM checkpoints c JOIN chain ON c.id = chain.id
        WHERE c.parent_id IS NOT NULL
    )
    SELECT c.* FROM chain JOIN checkpoints c ON c.id = chain.id ORDER BY chain.depth DESC
"""

# Rounds of every shard's head chain that hold a contribution of :org.
_DEPENDENTS = """
    WITH RECURSIVE chain(id, shard) AS (
        SELECT checkpoint_id, shard FROM heads
        UNION ALL
        SELECT c.parent_id, chain.shard FROM checkpoints c JOIN chain ON c.id = chain.id
        WHERE c.parent_id IS NOT NULL
    )
    SELECT chain.shard AS shard, c.round AS round
    FROM chain
    JOIN checkpoints c ON c.id = chain.id
    JOIN contributions k ON k.checkpoint_id = chain.id
    WHERE k.org = :org
    ORDER BY chain.shard, c.round
"""

# Every checkpoint whose lineage holds a contribution of :org: those with one, and their
# descendants on any branch.
_TAINTED = """
    WITH RECURSIVE tainted(id) AS (
        SELECT checkpoint_id FROM contributions WHERE org = :org
        UNION
        SELECT c.id FROM checkpoints c JOIN tainted t ON c.parent_id = t.id
    )
    SELECT c.* FROM tainted JOIN checkpoints c ON c.id = tainted.id ORDER BY c.id
"""

# Every checkpoint on some shard's head chain.
_ON_HEAD_CHAINS = """
    WITH RECURSIVE chain(id) AS (
        SELECT checkpoint_id FROM heads
        UNION
        SELECT c.parent_id FROM checkpoints c JOIN chain ON c.id = chain.id
        WHERE c.parent_id IS NOT NULL
    )
    SELECT c.id, c.hash FROM chain JOIN checkpoints c ON c.id = chain.id
"""


class Ledger(LedgerStore):
    """Lineage index and encrypted update store of one run folder.

    Build one with :meth:`create` (new run: ``ledger.sqlite``, ``blobs/``, ``keys/`` in the run
    folder) or :meth:`open` (resume, audit, erase); close it with :meth:`close` or a ``with``
    block. See :class:`~fedunlearn.ledger.store.LedgerStore` for metadata, organizations and
    tensor states.

    Examples
    --------
    >>> ledger = Ledger.create(run_dir, meta={"seed": "0"})            # doctest: +SKIP
    >>> h0 = ledger.put_state(initial_adapter)                          # doctest: +SKIP
    >>> root = ledger.commit_round(shard=0, round=0, aggregate_hash=h0,
    ...                            contributions=[], parent_id=None)    # doctest: +SKIP
    """

    # -- commits ----------------------------------------------------------------------------
    def commit_round(
        self,
        *,
        shard: int,
        round: int,
        aggregate_hash: str,
        contributions: Sequence[Contribution],
        parent_id: int | None,
    ) -> Checkpoint:
        """Record the aggregate of ``shard`` after ``round`` and make it the shard's head.

        One SQLite transaction inserts the checkpoint and its contributions and moves the head:
        on any error nothing is recorded. Store the aggregate (and the updates) first.

        Parameters
        ----------
        shard : int
            The shard.
        round : int
            ``head.round + 1``; 0 for the initial adapter (no contributions, ``parent_id=None``).
        aggregate_hash : str
            Hash of the stored aggregate adapter (:meth:`put_state` with ``org=None``).
        contributions : Sequence[Contribution]
            The updates that went into it, one per organization.
        parent_id : int or None
            Id of the shard's current head, as read before the round started.

        Returns
        -------
        Checkpoint
            The new head.

        Raises
        ------
        LedgerError
            If ``parent_id`` is not the current head (a stale or concurrent commit), the round
            does not follow the head's, the aggregate blob is missing, or a contribution is
            invalid or from an organization of another shard or not yet joined.
        UnknownNameError
            If a contribution names an unregistered organization.
        RunStateError
            If a contribution comes from an erased organization.
        """
        shard = check_int("shard", shard, minimum=0)
        round = check_int("round", round, minimum=0)
        check_digest(aggregate_hash)
        items = [check_contribution(item, shard, round) for item in contributions]
        orgs = [item.org for item in items]
        if len(set(orgs)) != len(orgs):
            twice = sorted({org for org in orgs if orgs.count(org) > 1})
            raise LedgerError(
                f"shard {shard} round {round} lists organizations {twice} more than once; expected "
                "one contribution per organization: aggregate each organization's updates first"
            )
        if round == 0 and items:
            raise LedgerError(
                f"round 0 of shard {shard} is the initial adapter and takes no contributions, got "
                f"{len(items)}; commit round 0 with contributions=[] and the first training round "
                "as round 1"
            )
        if not self.has_aggregate(aggregate_hash):
            raise LedgerError(
                f"aggregate {aggregate_hash} of shard {shard} round {round} is not in the blob "
                f"store (under {self.blobs.directory}); store it with put_state(state) before commit_round"
            )
        with self._transaction() as conn:
            head = self._head_row(conn, shard)
            branch = self._check_parent(shard, round, parent_id, head)
            cursor = conn.execute(
                "INSERT INTO checkpoints (shard, round, hash, parent_id, created, branch) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (shard, round, aggregate_hash, parent_id, utc_now(), branch),
            )
            checkpoint_id = cursor.lastrowid
            for item in items:  # validated inside the transaction: a failure undoes the insert
                self._check_member(conn, item.org, shard, round)
                conn.execute(
                    "INSERT INTO contributions (checkpoint_id, org, update_hash, weight, "
                    "num_examples, metrics) VALUES (?, ?, ?, ?, ?, ?)",
                    (checkpoint_id, item.org, item.update_hash, item.weight, item.num_examples,
                     json.dumps(dict(item.metrics), sort_keys=True)),
                )
            conn.execute(
                "INSERT OR REPLACE INTO heads (shard, checkpoint_id, branch) VALUES (?, ?, ?)",
                (shard, checkpoint_id, branch),
            )
            row = conn.execute("SELECT * FROM checkpoints WHERE id = ?", (checkpoint_id,))
            return checkpoint_from_row(row.fetchone())

    @staticmethod
    def _head_row(conn: sqlite3.Connection, shard: int) -> sqlite3.Row | None:
        return conn.execute(
            "SELECT c.*, h.branch AS next_branch FROM heads h "
            "JOIN checkpoints c ON c.id = h.checkpoint_id WHERE h.shard = ?",
            (shard,),
        ).fetchone()

    @staticmethod
    def _check_parent(
        shard: int, round: int, parent_id: int | None, head: sqlite3.Row | None
    ) -> int:
        """Return the branch of the next commit, or raise if it does not extend the head."""
        if head is None:
            if parent_id is not None or round != 0:
                raise LedgerError(
                    f"shard {shard} has no checkpoint yet, so its first commit must be round 0 "
                    f"with parent_id=None; got round {round}, parent_id {parent_id}: commit the "
                    "initial adapter first"
                )
            return 0
        if parent_id != head["id"]:
            raise LedgerError(
                f"stale or concurrent commit to shard {shard}: parent_id {parent_id} but the head "
                f"is checkpoint {head['id']} (round {head['round']}); nothing was committed: "
                "re-read head(shard) and recompute the round from it"
            )
        if round != head["round"] + 1:
            raise LedgerError(
                f"shard {shard} round {round} does not follow its head (checkpoint {head['id']}, "
                f"round {head['round']}); expected round {head['round'] + 1}"
            )
        return int(head["next_branch"])

    def _check_member(self, conn: sqlite3.Connection, org: str, shard: int, round: int) -> None:
        row = self._org_row(org, conn)
        self._refuse_erased(row)
        if row["shard"] != shard:
            raise LedgerError(
                f"organization {org!r} belongs to shard {row['shard']}, not shard {shard}; its "
                f"update cannot enter shard {shard}'s round {round}: send each update to its own "
                "shard's aggregate"
            )
        if row["join_round"] > round:
            raise LedgerError(
                f"organization {org!r} joins shard {shard} at round {row['join_round']} but "
                f"contributed to round {round}; register it with join_round <= {round} or drop "
                "the update"
            )

    # -- reading the chains -----------------------------------------------------------------
    def head(self, shard: int) -> Checkpoint | None:
        """The current head of ``shard``, or ``None`` before its round 0 was committed."""
        shard = check_int("shard", shard, minimum=0)
        with self._lock:
            row = self._head_row(self._db(), shard)
        return None if row is None else checkpoint_from_row(row)

    def chain(self, shard: int) -> list[Checkpoint]:
        """The head chain of ``shard`` from round 0 to the head (empty before round 0)."""
        shard = check_int("shard", shard, minimum=0)
        return [checkpoint_from_row(row) for row in self._query(_HEAD_CHAIN, {"shard": shard})]

    def checkpoint(self, id: int) -> Checkpoint:
        """The checkpoint with id ``id`` (on any branch)."""
        id = check_int("checkpoint id", id, minimum=1)
        rows = self._query("SELECT * FROM checkpoints WHERE id = ?", (id,))
        if not rows:
            count = self._query("SELECT count(*), max(id) FROM checkpoints")[0]
            raise LedgerError(
                f"no checkpoint with id {id}; the ledger holds {count[0]} checkpoints (ids up to "
                f"{count[1]}): take ids from head(), chain() or dependents()"
            )
        return checkpoint_from_row(rows[0])

    def contributions(self, checkpoint_id: int) -> list[Contribution]:
        """The contributions aggregated into checkpoint ``checkpoint_id``, sorted by org name."""
        self.checkpoint(checkpoint_id)
        rows = self._query(
            "SELECT * FROM contributions WHERE checkpoint_id = ? ORDER BY org", (checkpoint_id,)
        )
        return [
            Contribution(row["org"], row["update_hash"], row["weight"], row["num_examples"],
                         json.loads(row["metrics"]))
            for row in rows
        ]

    def checkpoint_before_join(self, shard: int, org: str) -> Checkpoint:
        """The latest checkpoint on ``shard``'s head chain that does not depend on ``org``.

        That is the parent of the first checkpoint with a contribution of ``org`` or, when
        ``org`` never contributed on this chain, the head. SISA erasure rolls back to it and
        retrains the later rounds without ``org``.

        Raises
        ------
        LedgerError
            If ``shard`` has no checkpoints.
        UnknownNameError
            If ``org`` is not registered.
        """
        shard = check_int("shard", shard, minimum=0)
        self._org_row(org)
        chain = self.chain(shard)
        if not chain:
            raise LedgerError(
                f"shard {shard} has no checkpoints; nothing depends on {org!r} there: commit "
                "round 0 before asking for lineage"
            )
        rows = self._query(_DEPENDENTS, {"org": org})
        rounds = [row["round"] for row in rows if row["shard"] == shard]
        if not rounds:
            return chain[-1]
        return chain[min(rounds) - 1]  # the chain holds one checkpoint per round 0..head

    def rollback(self, shard: int, checkpoint_id: int) -> None:
        """Move ``shard``'s head back to ``checkpoint_id``, an ancestor on its head chain.

        Later commits continue from it on a new branch; the abandoned checkpoints stay as history
        and no longer count for :meth:`dependents`. Rolling back to the head is a no-op.

        Raises
        ------
        LedgerError
            If ``checkpoint_id`` is not on the head chain of ``shard``.
        """
        shard = check_int("shard", shard, minimum=0)
        checkpoint_id = check_int("checkpoint id", checkpoint_id, minimum=1)
        with self._transaction() as conn:
            chain = [row["id"] for row in conn.execute(_HEAD_CHAIN, {"shard": shard})]
            if checkpoint_id not in chain:
                raise LedgerError(
                    f"checkpoint {checkpoint_id} is not on the head chain of shard {shard} "
                    f"(ids {chain}); rollback only moves a head back to one of its ancestors"
                )
            if checkpoint_id == chain[-1]:
                return
            branch = conn.execute(
                "SELECT max(coalesce((SELECT max(branch) FROM checkpoints WHERE shard = :s), 0), "
                "(SELECT branch FROM heads WHERE shard = :s)) + 1",
                {"s": shard},
            ).fetchone()[0]
            conn.execute(
                "UPDATE heads SET checkpoint_id = ?, branch = ? WHERE shard = ?",
                (checkpoint_id, branch, shard),
            )

    # -- dependence -------------------------------------------------------------------------
    def dependents(self, org: str) -> list[Dependency]:
        """Every shard whose head chain contains a contribution of ``org``, by shard.

        An empty list proves, from the lineage, that no current adapter depends on ``org``.
        """
        self._org_row(org)
        by_shard: dict[int, list[int]] = {}
        for row in self._query(_DEPENDENTS, {"org": org}):
            by_shard.setdefault(row["shard"], []).append(row["round"])
        return [
            Dependency(shard=shard, since_round=rounds[0], rounds=tuple(rounds))
            for shard, rounds in sorted(by_shard.items())
        ]

    # -- purging the aggregates of erased organizations -------------------------------------
    def _protected(self, conn: sqlite3.Connection) -> tuple[set[int], set[str]]:
        """Ids on a head chain, and every hash a head chain or the served model references."""
        rows = conn.execute(_ON_HEAD_CHAINS).fetchall()
        ids = {row["id"] for row in rows}
        hashes = {row["hash"] for row in rows}
        served = conn.execute("SELECT components FROM served ORDER BY id DESC LIMIT 1").fetchone()
        if served is not None:
            components = json.loads(served["components"])
            if components:
                marks = ", ".join("?" for _ in components)
                found = conn.execute(f"SELECT hash FROM checkpoints WHERE id IN ({marks})", components)
                hashes |= {row["hash"] for row in found}
        return ids, hashes

    def purge_dependents(self, org: str) -> list[Checkpoint]:
        """Delete the aggregate blobs of abandoned checkpoints whose lineage holds ``org``.

        After an erasure the heads no longer depend on ``org`` (exact methods), but the
        checkpoints of the abandoned branches still do: their aggregates mix ``org``'s updates in,
        and a round that ``org`` trained alone stored its update as the aggregate. This deletes the
        aggregate blob of every checkpoint that is *not* on a current head chain and has a
        contribution of ``org`` on its ancestry (itself included), shreds its key (every update
        trained from it is bound to that key: they become unreadable too, in backups as well),
        and records it in
        the ``purged`` table (a new table of schema version 2; version-1 ledgers are upgraded on
        :meth:`open`). The checkpoint rows and their hashes stay: the audit log references them,
        and :meth:`verify_blobs` expects those blobs missing.

        Never deleted: a blob whose hash a head chain or the latest served model references
        (equal content is not information about ``org`` beyond what is served). Checkpoints *on*
        a head chain are kept too: after an ``empirical`` erasure (``influence``, ``subtract``,
        ``negate``) the head chain still holds ``org``'s contributions by construction (the new
        head is a correction committed on top of them, and :meth:`dependents` still lists
        ``org``, which is why such an erasure is never certified ``exact``). Those aggregates
        stay readable: they are the lineage the served head is derived from, the rollback and
        resume points of the shard, and the history later approximate erasures replay. An
        operator who needs them gone erases ``org`` with an exact method (``sisa``,
        ``retrain``, ``drop``) instead; a rollback there would abandon them and purge them.

        Crash safety: the records are committed first, in one transaction, then the blobs are
        deleted; a repeated call deletes whatever a previous, interrupted call left.

        Parameters
        ----------
        org : str
            An erased organization (:meth:`mark_erased` first).

        Returns
        -------
        list[Checkpoint]
            Every checkpoint purged because of ``org``, by id (the ones of earlier calls
            included, so a repeated call returns the same list).

        Raises
        ------
        UnknownNameError
            If ``org`` is not registered.
        RunStateError
            If ``org`` is not erased: purging is the last step of its erasure.
        """
        row = self._org_row(org)
        if row["status"] != "erased":
            raise RunStateError(
                f"organization {org!r} is {row['status']}, not erased; purging deletes the "
                "aggregates that depend on an erased organization: erase it first "
                "(fedunlearn.unlearning.service.erase, or mark_erased after switching the heads)"
            )
        with self._transaction() as conn:
            on_chain, protected = self._protected(conn)
            stamp = utc_now()
            for ckpt in conn.execute(_TAINTED, {"org": org}).fetchall():
                if ckpt["id"] in on_chain or ckpt["hash"] in protected:
                    continue
                conn.execute(
                    "INSERT OR IGNORE INTO purged (checkpoint_id, hash, purged) VALUES (?, ?, ?)",
                    (ckpt["id"], ckpt["hash"], stamp),
                )
        with self._lock:
            _, protected = self._protected(self._db())
        done = self._purged_for(org)
        for ckpt in done:
            if ckpt.hash not in protected:  # deleted and its key shredded: unreadable in any copy too
                self.delete_aggregate(ckpt.hash)
        return done

    def purge_erased(self) -> list[Checkpoint]:
        """:meth:`purge_dependents` for every erased organization; idempotent.

        The erasure engine calls it after marking the subjects erased, so that an erasure (or a
        purge) interrupted earlier is completed too. Returns every purged checkpoint, by id.
        """
        rows = self._query("SELECT name FROM organizations WHERE status = 'erased' ORDER BY name")
        purged: dict[int, Checkpoint] = {}
        for row in rows:
            purged.update((c.id, c) for c in self.purge_dependents(row["name"]))
        return [purged[k] for k in sorted(purged)]

    def _purged_for(self, org: str) -> list[Checkpoint]:
        rows = self._query(
            f"SELECT c.* FROM ({_TAINTED}) c JOIN purged p ON p.checkpoint_id = c.id ORDER BY c.id",
            {"org": org},
        )
        return [checkpoint_from_row(row) for row in rows]

    def purged(self, org: str | None = None) -> list[Checkpoint]:
        """Checkpoints whose aggregate blob was purged (those depending on ``org``, if given)."""
        if org is not None:
            self._org_row(org)
            return self._purged_for(org)
        rows = self._query(
            "SELECT c.* FROM checkpoints c JOIN purged p ON p.checkpoint_id = c.id ORDER BY c.id"
        )
        return [checkpoint_from_row(row) for row in rows]

    def get_state(self, digest: str, *, org: str | None = None) -> dict[str, torch.Tensor]:
        """Load a stored tensor state, verified against ``digest`` (see :meth:`LedgerStore.get_state`).

        Raises
        ------
        LedgerError
            If the blob is missing; when it was purged on an erasure the message says so.
        """
        if org is not None:
            return super().get_state(digest, org=org)
        check_digest(digest)
        try:
            return state_from_bytes(self.aggregate_bytes(digest))
        except LedgerError as exc:
            if not self.has_aggregate(digest) and self._query(
                "SELECT 1 FROM compacted WHERE hash = ? AND kind = 'aggregate' LIMIT 1", (digest,)
            ):
                raise LedgerError(
                    f"aggregate {digest} of an abandoned checkpoint was deleted by a ledger compaction "
                    "with drop_history (fedunlearn ledger compact --drop-history); start from a "
                    "head-chain checkpoint (chain(shard)) instead"
                ) from exc
            if self.has_aggregate(digest) or not self._query(
                "SELECT 1 FROM purged WHERE hash = ? LIMIT 1", (digest,)
            ):
                raise
            raise LedgerError(
                f"aggregate {digest} was purged when an organization its lineage depends on was "
                "erased (Ledger.purged lists those checkpoints); it is gone by design: start from "
                "a head-chain checkpoint (chain(shard)) instead"
            ) from exc

    def update_hashes(self, org: str) -> list[str]:
        """Hashes of all updates ``org`` contributed, on any branch, in commit order, unique."""
        self._org_row(org)
        rows = self._query(
            "SELECT update_hash FROM contributions WHERE org = ? ORDER BY checkpoint_id", (org,)
        )
        return list(dict.fromkeys(row["update_hash"] for row in rows))

    # -- the served model -------------------------------------------------------------------
    def record_served(
        self, *, served_hash: str, components: Sequence[int], weights: Sequence[float], path: str
    ) -> None:
        """Record the model now served: a combination of checkpoints with weights, exported to
        ``path``."""
        check_digest(served_hash)
        check_str("served path", path)
        ids = [check_int("served component", c, minimum=1) for c in components]
        values = [float(w) for w in weights]
        if len(ids) != len(values) or not ids:
            raise LedgerError(
                f"served model lists {len(ids)} components and {len(values)} weights; expected "
                "one weight per component checkpoint, at least one"
            )
        if not all(math.isfinite(w) for w in values):
            raise LedgerError(f"served weights {values} must be finite numbers")
        for checkpoint_id in ids:
            self.checkpoint(checkpoint_id)
        with self._transaction() as conn:
            conn.execute(
                "INSERT INTO served (served_hash, components, weights, path, created) "
                "VALUES (?, ?, ?, ?, ?)",
                (served_hash, json.dumps(ids), json.dumps(values), path, utc_now()),
            )

    def served(self) -> dict[str, Any] | None:
        """The latest :meth:`record_served` entry (keys ``served_hash``, ``components``,
        ``weights``, ``path``, ``created``), or ``None``."""
        rows = self._query("SELECT * FROM served ORDER BY id DESC LIMIT 1")
        if not rows:
            return None
        row = rows[0]
        return {
            "served_hash": row["served_hash"],
            "components": json.loads(row["components"]),
            "weights": json.loads(row["weights"]),
            "path": row["path"],
            "created": row["created"],
        }

    def served_history(self, *, limit: int | None = None) -> list[dict[str, Any]]:
        """Every :meth:`record_served` entry, oldest first (the last ``limit`` ones if given).

        Each is a dict like :meth:`served`'s, plus ``purged``: whether a component checkpoint's
        aggregate was purged on an erasure (that model can no longer be rebuilt).
        """
        sql = "SELECT * FROM served ORDER BY id DESC" + ("" if limit is None else f" LIMIT {int(limit)}")
        purged = {int(r["checkpoint_id"]) for r in self._query("SELECT checkpoint_id FROM purged")}
        out = []
        for row in reversed(self._query(sql)):
            ids = json.loads(row["components"])
            out.append({
                "served_hash": row["served_hash"],
                "components": ids,
                "weights": json.loads(row["weights"]),
                "path": row["path"],
                "created": row["created"],
                "purged": any(int(i) in purged for i in ids),
            })
        return out

    # -- audits -----------------------------------------------------------------------------
    def verify_blobs(self) -> list[str]:
        """Re-hash every referenced blob that can be read; return the problems found.

        Aggregates must exist and match their hash, except those purged on an erasure
        (:meth:`purge_dependents`), which must be *missing*: a purged aggregate still in the
        clear is reported, as is an abandoned checkpoint that depends on an erased organization
        but was never purged. A blob deleted without a purge record is reported as missing.
        Updates are checked when they were stored (storing them is optional) and their
        organization's key still exists; the updates of erased organizations are unreadable by
        design and skipped. Each problem names the hash and the file; an empty list means every
        readable blob is intact and nothing that should be gone is readable.
        """
        problems: list[str] = []
        with self._lock:
            conn = self._db()
            on_chain, protected = self._protected(conn)
            purged = {row["hash"] for row in conn.execute("SELECT hash FROM purged")}
            kept = {row["hash"] for row in conn.execute(
                "SELECT hash FROM checkpoints WHERE id NOT IN (SELECT checkpoint_id FROM purged)"
            )}
            # deleted by a compaction (fedunlearn.ledger.compact): expected missing, never a head chain's
            kept -= {row["hash"] for row in conn.execute(
                "SELECT hash FROM compacted WHERE kind = 'aggregate'")} - protected
        for digest in sorted(kept):
            try:
                self.aggregate_bytes(digest)
            except LedgerError as exc:
                problems.append(str(exc))
        for digest in sorted(purged - kept - protected):
            # readable: a copy left, or its key still there (a run purged before aggregates had keys has neither)
            if self.has_aggregate(digest) or self.keys.key_path(aggregate_key_name(digest)).exists():
                where = ", ".join(str(p) for p in self.aggregate_paths(digest)) or "its key was not shredded"
                problems.append(
                    f"aggregate {digest} was purged on erasure but is still readable ({where}): the purge "
                    "was interrupted; finish it with Ledger.open(run_dir).purge_erased()"
                )
        erased = self._query("SELECT name FROM organizations WHERE status = 'erased'")
        leaking: set[int] = set()
        for row in erased:
            for ckpt in self._query(_TAINTED, {"org": row["name"]}):
                if (ckpt["id"] not in on_chain and ckpt["hash"] not in protected
                        and ckpt["hash"] not in purged and self.has_aggregate(ckpt["hash"])):
                    leaking.add(ckpt["id"])
        if leaking:
            problems.append(
                f"abandoned checkpoints {sorted(leaking)} depend on an erased organization and "
                "keep their aggregates readable; expected them purged: run "
                "Ledger.open(run_dir).purge_erased()"
            )
        rows = self._query("SELECT DISTINCT org, update_hash FROM contributions ORDER BY org, 2")
        for row in rows:
            org, digest = row["org"], row["update_hash"]
            if self.keys.is_shredded(org) or not self.has_state(digest, org=org):
                continue
            try:
                self.update_bytes(digest, org)
            except ShreddedError:
                continue  # trained from an aggregate purged on an erasure: unreadable by design
            except LedgerError as exc:
                problems.append(str(exc))
        return problems

    def stats(self) -> dict[str, Any]:
        """Counts: ``rounds_per_shard`` (head round by shard), ``checkpoints``, ``updates``,
        ``organizations``, ``erased``, ``blob_bytes`` and ``database_bytes``."""
        heads = self._query(
            "SELECT h.shard, c.round FROM heads h JOIN checkpoints c ON c.id = h.checkpoint_id "
            "ORDER BY h.shard"
        )
        counts = self._query(
            "SELECT (SELECT count(*) FROM checkpoints), (SELECT count(*) FROM contributions), "
            "(SELECT count(*) FROM organizations), "
            "(SELECT count(*) FROM organizations WHERE status = 'erased')"
        )[0]
        database = sum(
            p.stat().st_size for p in self.run_dir.glob(self.path.name + "*") if p.is_file()
        )
        return {
            "rounds_per_shard": {row[0]: row[1] for row in heads},
            "checkpoints": counts[0],
            "updates": counts[1],
            "organizations": counts[2],
            "erased": counts[3],
            "blob_bytes": self.blobs.size_bytes(),
            "database_bytes": database,
        }

