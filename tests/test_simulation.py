"""End to end through Flower's own simulation engine (Ray): 3 organizations, 2 rounds."""

from __future__ import annotations

import json

import psutil
import pytest

from fedunlearn.federation.simulation import simulate
from fedunlearn.ledger import Ledger
from fedunlearn.models import state_sha256

pytestmark = [pytest.mark.slow, pytest.mark.simulation]


def _ray_processes() -> list[str]:
    names = []
    for p in psutil.process_iter(["name", "cmdline"]):
        try:
            cmd = " ".join(p.info["cmdline"] or [])
        except (psutil.Error, TypeError):
            continue
        if any(k in cmd for k in ("raylet", "gcs_server", "ray::", "default_worker.py")):
            names.append(cmd[:80])
    return names


def test_simulation_trains_exports_and_leaves_nothing_running(small_settings, tmp_path):
    before = _ray_processes()
    # the tiny test model learns slowly: four local epochs at a moderate rate make every
    # organization's loss fall in each round (deterministic on CPU, checked on the in-process grid)
    settings = small_settings.replace(train={"lr": 1e-2, "local_epochs": 4})
    report = simulate(settings, tmp_path / "run")
    # local loss fell: within round 1 for every organization, and from round 1 to round 2
    assert len(report.rounds) == 2
    first, second = report.rounds
    for summary in report.rounds:
        assert sorted(summary.members) == ["org-0", "org-1", "org-2"]
    for org in first.members:
        assert first.train_loss[org] < first.train_loss_first[org]
        assert second.train_loss_first[org] < first.train_loss_first[org]
    # the holdout loss after round 2 is below the one after round 1 for the consortium as a whole
    r1, r2 = report.rounds[0].eval_loss, report.rounds[1].eval_loss
    assert sum(r2.values()) < sum(r1.values())
    # the exported adapter's hash is the served hash recorded in the ledger
    from safetensors.torch import load_file

    exported = load_file(str(report.served.path / "adapter_model.safetensors"))
    manifest = json.loads((report.served.path / "fedunlearn.json").read_text())
    with Ledger.open(report.run_dir) as ledger:
        served = ledger.served()
        assert served["served_hash"] == manifest["served_hash"] == report.served.hash
        assert ledger.head(0).round == 2
        assert len(ledger.update_hashes("org-1")) == 2
    assert state_sha256(exported) == report.served.hash
    assert _ray_processes() == before
