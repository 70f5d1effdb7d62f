"""``fedunlearn forget`` through typer's CliRunner."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from fedunlearn.cli import app
from fedunlearn.ledger import Ledger
from tests.unlearning.conftest import copy_run

runner = CliRunner()


def test_forget_sisa_on_one_shard_per_organization(run_factory, tmp_path):
    run = copy_run(run_factory("s-eq-n", shards=3), tmp_path / "run")
    out = runner.invoke(app, ["forget", "--run", str(run), "--org", "org-1", "--method", "sisa", "--json"])
    assert out.exit_code == 0, out.output
    doc = json.loads(out.stdout)
    assert doc["subjects"] == ["org-1"] and doc["guarantee"] == "exact" and doc["cost"]["client_steps"] == 0
    assert doc["full_retrain_cost"]["estimated"] is True
    with Ledger.open(run) as ledger:
        assert ledger.organization("org-1").status == "erased"
        assert ledger.served()["served_hash"] == doc["served_hash"]
    log = [json.loads(line) for line in (run / "erasures.jsonl").read_text().splitlines()]
    assert [row["subjects"] for row in log] == [["org-1"]]
    again = runner.invoke(app, ["forget", "--run", str(run), "--org", "org-1"])
    assert again.exit_code == 2 and "already erased" in again.output


def test_forget_refuses_a_method_the_topology_cannot_serve(sharded_run):
    out = runner.invoke(app, ["forget", "--run", str(sharded_run), "--org", "org-1", "--method", "drop"])
    assert out.exit_code == 2
    assert "'drop' cannot erase" in out.output and "--method sisa" in out.output
    out = runner.invoke(app, ["forget", "--run", str(sharded_run), "--org", "org-7"])
    assert out.exit_code == 2 and "unknown organization 'org-7'" in out.output


def test_forget_prints_the_cost_table(run_factory, tmp_path):
    run = copy_run(run_factory("s-eq-n", shards=3), tmp_path / "run")
    out = runner.invoke(app, ["forget", "--run", str(run), "--org", "org-0", "--org", "org-2", "--method", "drop"])
    assert out.exit_code == 0, out.output
    text = " ".join(out.output.split())
    assert "this erasure: 0 client-steps" in text and "full retraining:" in text and "estimated" in text
    assert "served model" in text
