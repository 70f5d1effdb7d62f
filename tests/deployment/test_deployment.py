"""A real Flower deployment on 127.0.0.1: SuperLink with TLS, SuperNodes authenticated by key.

Two training rounds, a SISA erasure of one organization through the same ServerApp
(``run.workflow = "erase"``), ``fedunlearn verify``; a SuperNode whose key was never registered
cannot join. Every process is stopped by its PID (process group) in the fixture's finalizer.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from fedunlearn.ledger import Ledger
from tests.deployment.conftest import ORGS, tail

pytestmark = [pytest.mark.slow, pytest.mark.deployment, pytest.mark.timeout(600)]


def _config(run_dir, model_dir, **extra):
    return {"run.dir": str(run_dir), "model.path": str(model_dir), "model.device": "cpu", "model.threads": 1,
            "organizations.names": ",".join(ORGS), "topology.shards": 2, "train.rounds": 2,
            "train.local-epochs": 1, "train.batch-size": 8, "data.max-length": 32,
            "run.discovery-timeout": 120.0, "run.round-timeout": 180.0, **extra}


def test_train_erase_verify_on_a_secure_deployment(deployment, consortium_dirs, tiny_model_dir, tmp_path):
    started = time.monotonic()
    deployment.start_superlink()
    deployment.register(*ORGS)
    for org in ORGS:
        deployment.start_supernode(org, consortium_dirs[org])
    run_dir = tmp_path / "run"

    trained = deployment.run(_config(run_dir, tiny_model_dir), timeout=300)
    assert trained.returncode == 0, trained.stdout[-2000:] + trained.stderr[-2000:] + tail(deployment, "superlink")
    with Ledger.open(run_dir) as ledger:
        assert [ledger.head(s).round for s in (0, 1)] == [2, 2], tail(deployment, "superlink")
        # organizations are known by their registered names, never by Flower node ids
        assert sorted(o.name for o in ledger.organizations()) == list(ORGS)
        assert {d.shard for d in ledger.dependents("org-2")} == {0}

    erased = deployment.run(_config(run_dir, tiny_model_dir, **{"run.workflow": "erase", "run.erase-orgs": "org-2"}),
                            timeout=300)
    assert erased.returncode == 0, erased.stdout[-2000:] + erased.stderr[-2000:]
    with Ledger.open(run_dir) as ledger:
        assert ledger.organization("org-2").status == "erased", tail(deployment, "superlink")
        assert ledger.dependents("org-2") == []
        chain = ledger.chain(0)
        assert [c.round for c in chain] == [0, 1, 2]
        assert all(c.org == "org-0" for ck in chain[1:] for c in ledger.contributions(ck.id))

    verified = subprocess.run([str(Path(sys.executable).parent / "fedunlearn"), "verify", "--run", str(run_dir)],
                              capture_output=True, text=True, timeout=120)
    assert verified.returncode == 0, verified.stdout[-3000:] + verified.stderr[-1000:]
    print(f"deployment test: {time.monotonic() - started:.0f} s")


def test_an_unregistered_supernode_cannot_join(deployment, tmp_path):
    from fedunlearn.deploy import make_node_keys

    deployment.start_superlink()
    stranger = make_node_keys("stranger", tmp_path / "unregistered")
    proc = deployment.start_supernode("stranger", key=stranger.private_key)
    try:
        proc.wait(timeout=90)  # refused by the SuperLink: the SuperNode gives up and exits
    except subprocess.TimeoutExpired:
        pass
    log = tail(deployment, "supernode-stranger", 6000)
    superlink = tail(deployment, "superlink", 6000)
    assert "Activated node_id" not in superlink, superlink
    assert proc.poll() is not None and proc.returncode != 0, log
