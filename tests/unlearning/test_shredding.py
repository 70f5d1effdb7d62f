"""Crypto-shredding that holds against a backup: a copy of the run folder taken before an erasure
(keys kept outside it, ``run.key-dir``, as the docs recommend) yields nothing of the erased
organization afterwards: not its updates, not the aggregates whose lineage holds it, not the other
organizations' updates trained on those aggregates. What never depended on it stays readable."""

from __future__ import annotations

import shutil

import pytest

from fedunlearn.ledger import Ledger
from fedunlearn.ledger.keys import ShreddedError
from fedunlearn.unlearning import EraseRequest
from fedunlearn.unlearning.service import erase
from tests.unlearning.conftest import base_settings, checkpoints_depending_on, grid_for, train


def _lineage(ledger: Ledger, subject: str):
    """(checkpoint id -> (hash, parent id, depends on subject)), [(org, update hash, trained from a
    dependent aggregate)]."""
    checkpoints = checkpoints_depending_on(ledger, subject)
    updates = [(r["org"], r["update_hash"], r["parent_id"] is not None and checkpoints[r["parent_id"]][2])
               for r in ledger._query("SELECT c.org, c.update_hash, k.parent_id FROM contributions c "
                                      "JOIN checkpoints k ON k.id = c.checkpoint_id")]
    return checkpoints, updates


def _readable(read, *args) -> bool:
    try:
        read(*args)
    except ShreddedError:
        return False
    return True


def test_a_backup_taken_before_an_erasure_yields_nothing_of_the_subject_afterwards(tiny_model_dir, tmp_path):
    settings = base_settings(tiny_model_dir, shards=1, orgs=3, rounds=2).replace(
        run={"key_dir": str(tmp_path / "keys")})  # outside the run folder: not in its backups
    run = train(settings, tmp_path / "run")
    backup = tmp_path / "backup"
    shutil.copytree(run, backup)  # e.g. last night's backup of the run folder
    with Ledger.open(backup) as old:
        checkpoints, updates = _lineage(old, "org-2")
        assert all(_readable(old.aggregate_bytes, h) for h, _, _ in checkpoints.values())  # before: all readable
        assert all(_readable(old.update_bytes, h, org) for org, h, _ in updates)
    tainted_updates = [(org, h) for org, h, from_tainted in updates if org != "org-2" and from_tainted]
    assert tainted_updates  # org-0 and org-1 trained round 2 from the aggregate that holds org-2

    erase(run, EraseRequest(("org-2",), method="sisa"), grid=grid_for(settings.replace(run={"dir": str(run)})))

    with Ledger.open(backup) as old:  # the backup, with every key that still exists
        for digest, _, depends in checkpoints.values():
            assert _readable(old.aggregate_bytes, digest) is not depends, digest
        for org, digest, from_tainted in updates:
            readable = _readable(old.update_bytes, digest, org)
            assert readable is not (org == "org-2" or from_tainted), (org, digest)
        # the attack: 2 x a round's aggregate - the other member's update = the subject's update
        [r1] = [h for h, parent, d in checkpoints.values() if d and not checkpoints[parent][2]]  # org-2's 1st round
        with pytest.raises(ShreddedError, match="aggregate .* was shredded"):
            old.get_state(r1)
    with Ledger.open(run) as ledger:
        assert ledger.verify_blobs() == []
        assert ledger.organization("org-2").status == "erased"
        for digest in (h for h, _, depends in checkpoints.values() if not depends):  # what never held org-2
            ledger.get_state(digest)


def test_updates_of_a_run_made_before_bound_keys_are_still_read(tiny_model_dir, tmp_path):
    """Runs stored before: aggregates in the clear, updates under their organization's key alone, blob
    names by the unkeyed hash (a store without a naming secret wrote them)."""
    from fedunlearn.ledger.blobs import BlobStore
    from fedunlearn.ledger.tensors import state_to_bytes

    settings = base_settings(tiny_model_dir, shards=1, orgs=2, rounds=1)
    run = train(settings, tmp_path / "run")
    with Ledger.open(run) as ledger:
        head = ledger.head(0)
        [update] = [c for c in ledger.contributions(head.id) if c.org == "org-0"]
        state, aggregate = ledger.get_state(update.update_hash, org="org-0"), ledger.get_state(head.hash)
        for path in ledger.update_paths(update.update_hash, "org-0") + ledger.aggregate_paths(head.hash):
            path.unlink()
        ledger._db().execute("DELETE FROM meta WHERE key LIKE 'update-parent/%'")
        ledger._db().commit()
        old = BlobStore(run)  # no tagger: the names and layout of a run made before
        old.put(state_to_bytes(aggregate))
        old.put(state_to_bytes(state), key=ledger.keys.key_for("org-0"), aad=b"org-0")
        assert [p.name for p in ledger.update_paths(update.update_hash, "org-0")] == [
            old.path(update.update_hash, encrypted=True, aad=b"org-0").name]
        assert ledger.aggregate_paths(head.hash) == [old.path(head.hash)]
        assert set(ledger.get_state(head.hash)) == set(aggregate)
        assert set(ledger.get_state(update.update_hash, org="org-0")) == set(state)
        assert ledger.verify_blobs() == []
        ledger.mark_erased("org-0")  # and its erasure shreds it as before
        with pytest.raises(ShreddedError):
            ledger.get_state(update.update_hash, org="org-0")
