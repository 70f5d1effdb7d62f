"""``--json`` means JSON: stdout holds exactly one JSON document, everything else goes to stderr."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from fedunlearn.cli import app
from tests.unlearning.conftest import copy_run

runner = CliRunner()


def _one_document(res) -> object:
    assert res.exit_code == 0, res.stderr + res.stdout
    return json.loads(res.stdout)  # fails on anything before or after the document


@pytest.mark.parametrize("command", [
    ["info", "--json"],
    ["verify", "--json"],
    ["ledger", "compact", "--dry-run", "--json"],
    ["forget", "--org", "org-1", "--method", "drop", "--json"],
])
def test_each_json_command_prints_one_document(command, run_factory, tmp_path):
    run = copy_run(run_factory("s-eq-n", shards=3), tmp_path / "run")
    doc = _one_document(runner.invoke(app, command[:-1] + ["--run", str(run), command[-1]]))
    assert isinstance(doc, dict) and doc


def test_a_flower_backed_erasure_with_json_prints_one_document(run_factory, tmp_path):
    """The retraining sends Flower Messages to the ClientApps; its notes and progress go to stderr."""
    from tests.unlearning.conftest import SHARDED

    run = copy_run(run_factory("sharded", **SHARDED), tmp_path / "run")
    res = runner.invoke(app, ["forget", "--run", str(run), "--org", "org-2", "--method", "sisa", "--json"])
    doc = _one_document(res)
    assert doc["subjects"] == ["org-2"] and doc["cost"]["client_steps"] > 0
    assert "Flower Messages to the organizations' ClientApps" in res.stderr
