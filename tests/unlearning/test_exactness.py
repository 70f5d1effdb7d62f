"""Exactness, the strongest test we have: SISA erasure equals training without the subject.

With fixed seeds every (shard, round, organization) gets the same seed whoever else trains, so a
shard replayed from the checkpoint before the subject joined must be bit-identical to the same
shard trained from scratch in a run where the subject never took part (here: the coordinator's own
rounds with the subject left out of every member list), and the served model must equal ``retrain``'s.
"""

from __future__ import annotations


import pytest
import torch

from fedunlearn.unlearning.service import erase
from fedunlearn.federation import protocol
from fedunlearn.ledger import Ledger, ShreddedError
from fedunlearn.unlearning import EraseRequest
from tests.unlearning.conftest import SHARDED, base_settings, checkpoints_depending_on, copy_run, grid_for

def _heads(run_dir) -> dict[int, dict[str, torch.Tensor]]:
    with Ledger.open(run_dir) as ledger:
        shards = len(ledger.stats()["rounds_per_shard"])
        return {s: ledger.get_state(ledger.head(s).hash) for s in range(shards)}


def _assert_same_states(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def _served_hash(run_dir) -> str:
    with Ledger.open(run_dir) as ledger:
        return ledger.served()["served_hash"]


def _train_messages_to(grid, org_index: int) -> list:
    node = list(grid.contexts)[org_index]
    return [m for m in grid.sent if m.metadata.dst_node_id == node and m.metadata.message_type == protocol.TRAIN]


def test_sisa_late_joiner_equals_training_without_it(run_factory, tiny_model_dir, tmp_path):
    run = copy_run(run_factory("sharded", **SHARDED), tmp_path / "sisa")
    never = run_factory("sharded-without-2", without=("org-2",), **SHARDED)
    before = _heads(run)
    settings = base_settings(tiny_model_dir, **SHARDED)
    grid = grid_for(settings)

    result = erase(run, EraseRequest(("org-2",), method="sisa"), grid=grid)

    after, reference = _heads(run), _heads(never)
    _assert_same_states(after[0], reference[0])  # the retrained shard, bit for bit
    _assert_same_states(after[1], before[1])  # the other shard was not touched
    assert result.served_hash == _served_hash(never) == _served_hash(run)
    assert result.previous_served_hash != result.served_hash
    assert result.recomputed == {0: (2,)}  # rolled back to round 1: org-2 joined at round 2
    assert result.organizations == ("org-0",)
    assert _train_messages_to(grid, 2) == []  # the subject was never sent work
    assert result.guarantee == "exact"
    assert result.cost.client_steps > 0 and result.cost.rounds == 1 and result.cost.aggregations == 1
    assert result.cost.bytes_sent > 0 and not result.cost.estimated
    full = result.full_retrain_cost
    assert full.estimated and full.rounds == 2 and full.aggregations == 4
    assert full.organizations == ("org-0", "org-1") and full.client_steps > result.cost.client_steps
    with Ledger.open(run) as ledger:
        assert ledger.dependents("org-2") == []
        assert ledger.organization("org-2").status == "erased"
        digest = ledger.update_hashes("org-2")[0]
        with pytest.raises(ShreddedError):
            ledger.get_state(digest, org="org-2")
        assert ledger.meta.get("erasure.pending", "") == ""


def test_sisa_equals_retrain_reference(run_factory, tiny_model_dir, tmp_path):
    src = run_factory("sharded", **SHARDED)
    settings = base_settings(tiny_model_dir, **SHARDED)
    sisa = erase(copy_run(src, tmp_path / "sisa"), EraseRequest(("org-0",), method="sisa"), grid=grid_for(settings))
    ref = erase(copy_run(src, tmp_path / "retrain"), EraseRequest(("org-0",), method="retrain"),
                grid=grid_for(settings))
    assert sisa.served_hash == ref.served_hash
    assert sisa.heads == ref.heads
    assert sisa.recomputed == {0: (2,)}  # round 1 had no member left: a carry-over, no training
    assert ref.recomputed == {0: (2,), 1: (1, 2)}
    # retrain's cost is measured, and it is what sisa's ledger estimate predicted (but the time)
    assert not ref.full_retrain_cost.estimated and ref.full_retrain_cost == ref.cost
    for field in ("client_steps", "rounds", "aggregations", "bytes_sent", "organizations"):
        assert getattr(sisa.full_retrain_cost, field) == getattr(ref.cost, field), field


def test_several_subjects_at_once(run_factory, tiny_model_dir, tmp_path):
    run = copy_run(run_factory("sharded", **SHARDED), tmp_path / "run")
    never = run_factory("sharded-without-0-1", without=("org-0", "org-1"), **SHARDED)
    grid = grid_for(base_settings(tiny_model_dir, **SHARDED))
    result = erase(run, EraseRequest(("org-1", "org-0"), method="sisa"), grid=grid)
    assert result.subjects == ("org-0", "org-1")
    assert result.served_hash == _served_hash(never)
    _assert_same_states(_heads(run)[0], _heads(never)[0])
    assert result.organizations == ("org-2",)
    assert _train_messages_to(grid, 0) == [] and _train_messages_to(grid, 1) == []
    with Ledger.open(run) as ledger:
        assert ledger.dependents("org-0") == ledger.dependents("org-1") == []
        assert [o.status for o in ledger.organizations()] == ["erased", "erased", "active"]


def test_one_shard_per_organization_drops_the_adapter_without_training(run_factory, tmp_path):
    run = copy_run(run_factory("s-eq-n", shards=3), tmp_path / "run")
    never = run_factory("s-eq-n-without-1", without=("org-1",), shards=3)
    # no grid: nothing can be trained (its wall time is in benchmarks/results/sisa.md, not asserted here)
    result = erase(run, EraseRequest(("org-1",), method="drop"))
    assert result.served_hash == _served_hash(never)
    assert result.cost.client_steps == 0 and result.cost.rounds == 0 and result.organizations == ()
    assert result.recomputed == {1: ()}
    assert not (run / "export" / "shard-1").exists()  # the dropped adapter is not left on disk
    assert (run / "export" / "shard-0" / "adapter_model.safetensors").is_file()
    with Ledger.open(run) as ledger:
        assert ledger.head(1).round == 2 and ledger.contributions(ledger.head(1).id) == []
        assert ledger.served()["components"] == [ledger.head(0).id, ledger.head(2).id]


def _readable_copies_of(run_dir, subject: str) -> list[str]:
    """Stored blobs that equal or depend on ``subject``'s contributions and can still be read,
    re-derived from the lineage tables: the subject's update hashes, and every checkpoint with a
    contribution of the subject on its ancestry (any branch)."""
    from fedunlearn.errors import LedgerError

    with Ledger.open(run_dir) as ledger:
        updates = set(ledger.update_hashes(subject))
        dependent = {h for h, _, depends in checkpoints_depending_on(ledger, subject).values() if depends}

        def readable(read, *args) -> bool:
            try:
                read(*args)
            except LedgerError:  # missing, or its key shredded
                return False
            return True

        assert not [p for p in (run_dir / "blobs").glob("*/*") if "." not in p.name]  # nothing in the clear
        return sorted({h for h in dependent if readable(ledger.aggregate_bytes, h)}
                      | {h for h in updates if readable(ledger.update_bytes, h, subject)})


def test_no_readable_copy_of_the_subjects_update_survives_a_drop(run_factory, tmp_path):
    # S = N: the round aggregate of a single-member shard is that member's update (stored as the aggregate)
    run = copy_run(run_factory("s-eq-n", shards=3), tmp_path / "run")
    assert _readable_copies_of(run, "org-1")  # before
    result = erase(run, EraseRequest(("org-1",), method="drop"))
    assert _readable_copies_of(run, "org-1") == []
    with Ledger.open(run) as ledger:
        assert len(ledger.purged("org-1")) == 2 and ledger.verify_blobs() == []
        assert any("purged the aggregates of 2" in n for n in result.notes)
        ledger.set_meta("erasure.pending", "")
        assert ledger.purge_erased() == ledger.purged("org-1")  # idempotent
    assert _readable_copies_of(run, "org-1") == []


def test_no_readable_copy_of_a_late_joiners_update_survives_sisa(run_factory, tiny_model_dir, tmp_path):
    run = copy_run(run_factory("sharded", **SHARDED), tmp_path / "sisa")
    assert _readable_copies_of(run, "org-2")
    grid = grid_for(base_settings(tiny_model_dir, **SHARDED))
    erase(run, EraseRequest(("org-2",), method="sisa"), grid=grid)
    assert _readable_copies_of(run, "org-2") == []
    with Ledger.open(run) as ledger:
        assert [c.shard for c in ledger.purged("org-2")] == [0] and ledger.verify_blobs() == []


def test_a_failed_pre_erasure_capture_does_not_block_the_erasure(run_factory, tmp_path, monkeypatch):
    from fedunlearn.errors import DataError
    from fedunlearn.evaluate import before
    from fedunlearn.progress import Reporter

    def broken(*args, **kwargs):
        raise DataError("the consortium's data cannot be read")

    messages: list[str] = []

    class Recorder(Reporter):
        def message(self, text: str) -> None:
            messages.append(text)

    run = copy_run(run_factory("s-eq-n", shards=3), tmp_path / "run")
    result = erase(run, EraseRequest(("org-1",), method="drop"), reporter=Recorder(), before=broken)
    assert result.subjects == ("org-1",)
    assert any("not captured" in m and "cannot be read" in m for m in messages), messages
    with Ledger.open(run) as ledger:
        assert ledger.organization("org-1").status == "erased"


def test_an_invalid_request_is_refused_before_any_capture(run_factory, tmp_path, monkeypatch):
    from fedunlearn.errors import UnknownNameError
    from fedunlearn.evaluate import before

    calls: list[object] = []
    run = copy_run(run_factory("s-eq-n", shards=3), tmp_path / "run")
    with pytest.raises(UnknownNameError):
        erase(run, EraseRequest(("org-9",), method="drop"), before=lambda *a, **k: calls.append(a))
    assert calls == []


def test_certified_erase_is_what_forget_does_and_verifies(run_factory, tmp_path):
    from fedunlearn.certify.verify_run import verify_run
    from fedunlearn.unlearning.service import certified_erase

    run = copy_run(run_factory("s-eq-n", shards=3), tmp_path / "run")
    bare = copy_run(run_factory("s-eq-n", shards=3), tmp_path / "bare")
    erase(bare, EraseRequest(("org-1",), method="drop"))
    assert not verify_run(bare).ok  # the bare engine's new export is not in the audit log
    result, certificate = certified_erase(run, EraseRequest(("org-1",), method="drop"))
    assert result.served_hash == _served_hash(bare)
    assert certificate.path.is_file()
    report = verify_run(run)
    assert report.ok, report.problems
