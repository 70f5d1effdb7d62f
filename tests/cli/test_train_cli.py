"""`fedunlearn info | export | simulate | demo` through Typer's runner."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from clients.app import make_app
from fedunlearn.cli import app
from fedunlearn.config import settings_to_flat
from fedunlearn.federation.workflow import train_workflow
from tests.localgrid import LocalGrid

runner = CliRunner()


@pytest.fixture()
def trained_run(small_settings):
    grid = LocalGrid(make_app(), len(small_settings.organizations), run_config=settings_to_flat(small_settings))
    return train_workflow(grid, small_settings)


def test_info_text_and_json(trained_run):
    res = runner.invoke(app, ["info", "--run", str(trained_run.run_dir)])
    assert res.exit_code == 0, res.output
    assert "org-2" in res.output and "shard 0 since round 1" in res.output
    res = runner.invoke(app, ["info", "--run", str(trained_run.run_dir), "--json"])
    doc = json.loads(res.stdout)
    assert [o["name"] for o in doc["organizations"]] == ["org-0", "org-1", "org-2"]
    assert doc["shards"][0]["round"] == 2
    assert doc["served"]["served_hash"] == trained_run.served.hash


def _base_of(run_dir):
    from fedunlearn.runs import RunFolder

    return RunFolder.open(run_dir).base_model


def test_export_writes_a_loadable_peft_folder(trained_run, tmp_path):
    out = tmp_path / "adapter"
    res = runner.invoke(app, ["export", "--run", str(trained_run.run_dir), "--out", str(out)])
    assert res.exit_code == 0, res.output
    from fedunlearn.models import load_served

    assert "load_served" in " ".join(res.output.split())
    model = load_served(out, base=_base_of(trained_run.run_dir))
    ids = torch.tensor([[0, 5, 6, 7]])
    assert model(input_ids=ids).logits.shape[:2] == (1, 4)
    res = runner.invoke(app, ["export", "--run", str(trained_run.run_dir), "--out", str(out)])
    assert res.exit_code == 2 and "not empty" in res.output


def test_errors_exit_2_with_the_reason(tmp_path):
    res = runner.invoke(app, ["info", "--run", str(tmp_path)])
    assert res.exit_code == 2 and "not a fedunlearn run folder" in res.output
    res = runner.invoke(app, ["simulate", "--scenario", str(tmp_path / "nope.toml"), "--out", str(tmp_path / "r")])
    assert res.exit_code == 2 and "does not exist" in res.output
    bad = tmp_path / "bad.toml"
    bad.write_text("[train]\nrounds = 0\n")
    res = runner.invoke(app, ["simulate", "--scenario", str(bad), "--out", str(tmp_path / "r")])
    assert res.exit_code == 2 and "train.rounds = 0" in res.output


def test_help_lists_the_commands():
    res = runner.invoke(app, ["--help"])
    assert res.exit_code == 0
    for cmd in ("demo", "simulate", "export", "info"):
        assert cmd in res.output
    res = runner.invoke(app, ["--version"])
    assert res.exit_code == 0 and "fedunlearn" in res.output


def test_error_text_is_printed_verbatim(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('[[organizations]]\nname = "a"\ncolor = "[bold]red"\n')
    res = runner.invoke(app, ["simulate", "--scenario", str(bad), "--out", str(tmp_path / "r")])
    assert res.exit_code == 2 and "keys ['color', 'name']" in res.output


def test_simulate_checks_organization_data_before_anything_starts(tiny_model_dir, tmp_path):
    """A malformed line, a missing folder and an empty organization: one message each, exit 2, no
    traceback, no run folder (so the rerun with fixed data is not refused as 'other settings')."""
    data = tmp_path / "orgs"
    for org in ("a", "b"):
        (data / org).mkdir(parents=True)
        (data / org / "holdout.jsonl").write_text('{"id": "h1", "text": "a held out record"}\n')
    (data / "a" / "train.jsonl").write_text('{"id": "r1", "text": "one good record"}\n{not json\n')
    (data / "b" / "train.jsonl").write_text("")
    scenario = tmp_path / "s.toml"
    scenario.write_text(f'[model]\npath = "{tiny_model_dir}"\n[data]\ndir = "{data}"\n'
                        '[[organizations]]\nname = "a"\n[[organizations]]\nname = "b"\n[[organizations]]\nname = "c"\n')
    out = tmp_path / "run"
    res = runner.invoke(app, ["simulate", "--scenario", str(scenario), "--out", str(out)])
    assert res.exit_code == 2, res.output
    text = " ".join(res.output.split())
    assert "3 organization(s) have unusable data" in text
    assert "a/train.jsonl, line 2: malformed JSON" in text and "fix or remove that line" in text
    assert "b: no training records" in text or "b/train.jsonl" in text
    assert "c: organization 'c' has no data folder" in text
    assert "Traceback" not in res.output and not out.exists()
