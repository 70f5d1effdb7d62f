"""Compaction and per-round sampling on a real trained run (tiny model, real ClientApp messages)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fedunlearn.cli import app
from fedunlearn.errors import RunStateError
from fedunlearn.unlearning.service import erase
from fedunlearn.ledger import Ledger
from fedunlearn.ledger.store import in_round_sample
from fedunlearn.unlearning import EraseRequest
from tests.unlearning.conftest import base_settings, grid_for, train

SEED = 0


@pytest.fixture(scope="module")
def sampled_run(tiny_model_dir, tmp_path_factory) -> Path:
    """Five organizations, one shard, 3 rounds, 60 % of the members sampled per round."""
    settings = base_settings(tiny_model_dir, shards=1, orgs=5, rounds=3).replace(
        topology={"sample_fraction": 0.6}, run={"seed": SEED})
    return train(settings, tmp_path_factory.mktemp("sampled") / "run")


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def test_each_round_trains_its_seeded_sample(sampled_run: Path) -> None:
    names = [f"org-{i}" for i in range(5)]
    with Ledger.open(sampled_run) as ledger:
        trained = {c.round: sorted(k.org for k in ledger.contributions(c.id)) for c in ledger.chain(0)[1:]}
    expected = {r: [n for n in names if in_round_sample(SEED, 0, r, n, 0.6)] for r in (1, 2, 3)}
    assert trained == expected
    assert any(len(t) < 5 for t in trained.values())  # the sample is not everyone
    from fedunlearn.runs import RunFolder

    evaluated: dict[int, list[str]] = {}
    for row in RunFolder.open(sampled_run).read_metrics():
        if row.get("kind") == "evaluate":
            evaluated.setdefault(row["round"], []).append(row["org"])
    assert {r: sorted(v) for r, v in evaluated.items()} == expected  # each round evaluated by its sample


def test_compact_then_verify_then_exact_erasure_still_equals_retraining(sampled_run: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    run = _copy(sampled_run, tmp_path / "run")
    with Ledger.open(run) as ledger:
        before = ledger.stats()["blob_bytes"]
        hashes = {o: ledger.update_hashes(o) for o in ("org-0", "org-1")}
    dry = runner.invoke(app, ["ledger", "compact", "--run", str(run), "--dry-run"])
    assert dry.exit_code == 0, dry.output
    assert "would delete" in dry.output
    result = runner.invoke(app, ["ledger", "compact", "--run", str(run)])
    assert result.exit_code == 0, result.output
    with Ledger.open(run) as ledger:
        assert ledger.stats()["blob_bytes"] < before / 2  # the updates were most of it
        assert {o: ledger.update_hashes(o) for o in hashes} == hashes  # hashes stay in the lineage
    verified = runner.invoke(app, ["verify", "--run", str(run)])
    assert verified.exit_code == 0, verified.output
    subject = "org-1"
    settings_run = _copy(run, tmp_path / "retrain")
    with pytest.raises(RunStateError, match="not stored"):
        erase(_copy(run, tmp_path / "negate"), EraseRequest((subject,), method="negate"))
    from fedunlearn.runs import RunFolder

    settings = RunFolder.open(run).settings
    sisa = erase(run, EraseRequest((subject,), method="sisa"), grid=grid_for(settings))
    retrain = erase(settings_run, EraseRequest((subject,), method="retrain"), grid=grid_for(settings))
    assert sisa.served_hash == retrain.served_hash
    with Ledger.open(run) as ledger:  # the erasure purged what depends on the subject; compacted blobs expected gone
        assert ledger.verify_blobs() == []


def test_compact_refuses_an_unknown_method(sampled_run: Path) -> None:
    result = CliRunner().invoke(app, ["ledger", "compact", "--run", str(sampled_run), "--keep", "subtrct"])
    assert result.exit_code == 2
    assert "subtrct" in result.output and "subtract" in result.output


def test_a_compaction_is_a_signed_audit_event_and_verify_refuses_unlogged_ones(sampled_run: Path, tmp_path: Path) -> None:
    """Blobs deleted and marked compacted outside `fedunlearn ledger compact` fail verify until logged."""
    import sqlite3

    from fedunlearn.certify.compaction import compact_run
    from fedunlearn.certify.runaudit import RunAudit
    from fedunlearn.certify.verify_run import verify_run
    from fedunlearn.ledger import CompactionPolicy, compact, compaction_batches

    logged = _copy(sampled_run, tmp_path / "logged")
    report = compact_run(logged, CompactionPolicy())
    with Ledger.open(logged) as ledger:
        [batch] = compaction_batches(ledger)
    with RunAudit.open(logged) as audit:
        [(_, event)] = audit.events("compaction")
    assert (event["stamp"], event["digest"], event["updates"]) == (report.stamp, batch.digest, len(report.updates))
    assert verify_run(logged).ok

    raw = _copy(sampled_run, tmp_path / "raw")  # the ledger API alone: deleted, but no signed record
    with Ledger.open(raw) as ledger:
        compact(ledger, CompactionPolicy())
    problems = verify_run(raw).problems
    assert any("no signed compaction event" in p for p in problems), problems
    compact_run(raw, CompactionPolicy())  # an interrupted compaction is logged by the next one
    assert verify_run(raw).ok

    with sqlite3.connect(logged / "ledger.sqlite") as conn:  # someone widens the signed batch afterwards
        conn.execute("INSERT INTO compacted (hash, org, kind, policy, compacted) VALUES (?, 'org-0', 'update', ?, ?)",
                     ("0" * 64, '{"drop_history": false, "keep": []}', report.stamp))
    problems = verify_run(logged).problems
    assert any("ledger compaction" in p and "no signed compaction event" in p for p in problems), problems
