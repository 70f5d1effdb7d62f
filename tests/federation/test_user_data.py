"""Organizations bring their own data folders (.txt / .jsonl), named in a scenario file."""

from __future__ import annotations

import json

import pytest

from clients.app import make_app
from fedunlearn.config import load_scenario, settings_to_flat
from fedunlearn.errors import DataError
from fedunlearn.federation.workflow import train_workflow
from fedunlearn.ledger import Ledger
from tests.localgrid import LocalGrid


def _scenario(tmp_path, tiny_model_dir, *, broken: bool = False):
    a, b = tmp_path / "orgs" / "clinic", tmp_path / "orgs" / "bank"
    a.mkdir(parents=True)
    b.mkdir(parents=True)
    (a / "notes.txt").write_text("\n".join(f"Patient {i} was seen on ward {i % 5} for a check-up." for i in range(30)))
    rows = [{"id": f"c{i}", "text": f"Client {i} holds account {1000 + i} at the river branch."} for i in range(30)]
    rows += [{"id": f"h{i}", "text": f"Client {i} closed account {2000 + i}.", "split": "holdout"} for i in range(6)]
    (b / "clients.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + ("\n{not json" if broken else ""))
    f = tmp_path / "scenario.toml"
    f.write_text(
        f'[run]\ndir = "run"\n[model]\npath = "{tiny_model_dir}"\ndevice = "cpu"\n'
        '[train]\nrounds = 1\nlocal-epochs = 1\nbatch-size = 8\n'
        '[[organizations]]\nname = "clinic"\ndata = "orgs/clinic"\n'
        '[[organizations]]\nname = "bank"\ndata = "orgs/bank"\n'
    )
    return load_scenario(f)


def test_own_data_folders_train(tmp_path, tiny_model_dir):
    settings = _scenario(tmp_path, tiny_model_dir)
    assert settings.run.dir.endswith("run") and settings.organization("bank").data.endswith("orgs/bank")
    grid = LocalGrid(make_app(), 2, run_config=settings_to_flat(settings))
    report = train_workflow(grid, settings)
    with Ledger.open(report.run_dir) as ledger:
        contributions = ledger.contributions(ledger.head(0).id)
    sizes = {c.org: c.num_examples for c in contributions}
    assert sizes["bank"] == 30  # its explicit holdout split is not trained on
    assert 24 <= sizes["clinic"] <= 30  # 10% hash-split holdout


def test_malformed_file_is_named_in_the_error(tmp_path, tiny_model_dir):
    settings = _scenario(tmp_path, tiny_model_dir, broken=True)
    grid = LocalGrid(make_app(), 2, run_config=settings_to_flat(settings))
    with pytest.raises(Exception, match=r"clients\.jsonl"):
        train_workflow(grid, settings)
