"""A run whose keys live outside the run folder, trained and erased by the ServerApp and certified.

One 2-shard run (org-0 and org-2 share shard 0) with ``run.key-dir`` outside the run folder and
client-level DP-FedAvg sampling half of the organizations, end to end through the ServerApp of
``flwr run`` over the in-process grid: ``run.workflow = "train"`` trains it, ``run.workflow = "erase"``
retrains shard 0 without org-2, must replay the keyed sample, and must authorize and certify the
erasure exactly as ``fedunlearn forget`` does; ``verify`` passes and the run folder never holds a key.
"""

from __future__ import annotations

import hashlib
import os
import shutil

import pytest
from flwr.app import Context, RecordDict

from clients.app import make_app as client_app
from fedunlearn.certify import Certificate, RunAudit, verify_run
from fedunlearn.config import settings_to_flat
from fedunlearn.federation.dpfedavg import keyed_poisson_sample
from fedunlearn.ledger import Ledger, ShreddedError
from fedunlearn.ledger.keys import key_folder
from fedunlearn.models import resolve_model_path
from fedunlearn.runs import RunFolder
from server.app import make_app as server_app
from tests.certify.conftest import small
from tests.localgrid import LocalGrid

SECRETS = ("*.key", "*.pem", "*.shredded")


def _serve(settings, **run):
    """Run the ServerApp (as ``flwr run`` does) with ``run.*`` overrides over a fresh in-process grid."""
    flat = settings_to_flat(settings.replace(run=run) if run else settings)
    grid, results = LocalGrid(client_app(), 3, run_config=flat), []
    server_app(results=results)(grid, Context(run_id=1, node_id=0, node_config={}, state=RecordDict(),
                                              run_config=flat))
    assert len(results) == 1  # the workflow finished
    return grid, results[0]


@pytest.fixture(scope="module")
def outside_keys_run(tiny_model_dir, tmp_path_factory):
    """(run folder, settings) of a 2-shard run trained by the ServerApp whose key folder is ``../run-keys``."""
    root = tmp_path_factory.mktemp("keydir")
    settings = small(tiny_model_dir, root / "run", topology={"shards": 2},
                     dp={"client_level": True, "client_noise_multiplier": 1.0, "client_clip": 0.5,
                         "client_sample_rate": 0.5})
    settings = settings.replace(run={"key_dir": "../run-keys"})  # relative to the run folder
    # a run secret under which org-0 trains in both rounds of shard 0 and org-2 in one at least (so the
    # retrain has work to replay); any secret works the same way, this one just makes the test meaningful
    RunFolder.create_or_resume(root / "run", settings, resolve_model_path(settings.model.path))
    secrets = key_folder(root / "run") / "secrets"  # the run's own sub-folder of ../run-keys
    secrets.mkdir(parents=True, mode=0o700)
    fd = os.open(secrets / "dp-sampling.key", os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, _useful_secret())
    os.close(fd)
    _, report = _serve(settings)  # run.workflow = "train" (the default)
    assert report.served is not None and report.run_dir == root / "run"
    return root / "run", settings


def _useful_secret() -> bytes:
    for i in range(1000):
        key = hashlib.sha256(b"test secret %d" % i).digest()
        picks = [keyed_poisson_sample(["org-0", "org-2"], 0.5, key, shard=0, rnd=r) for r in (1, 2)]
        if all("org-0" in p for p in picks) and any("org-2" in p for p in picks):
            return key
    raise AssertionError("no secret found")


def _sampled(ledger, shard):
    return {ck.round: sorted(c.org for c in ledger.contributions(ck.id)) for ck in ledger.chain(shard) if ck.round}


def _secret_files(folder):
    return sorted(p.relative_to(folder).as_posix() for pattern in SECRETS for p in folder.rglob(pattern))


def test_keys_and_secrets_live_outside_the_run_folder(outside_keys_run):
    run_dir, _ = outside_keys_run
    keys = key_folder(run_dir)
    assert keys.parent.resolve() == (run_dir.parent / "run-keys").resolve() and keys.name.startswith("run-")  # run id
    assert _secret_files(run_dir) == []  # a copy of the run folder holds no key material
    assert not (run_dir / "keys").exists() and not (run_dir / "secrets").exists()
    assert {p.name for p in (keys / "secrets").iterdir()} >= {"coordinator.pem", "subject-hmac.key"}
    with Ledger.open(run_dir) as ledger:  # the ledger finds its keys through run.json
        stored = {c.org for s in range(2) for ck in ledger.chain(s) for c in ledger.contributions(ck.id)}
        # one AES key per organization, one per stored aggregate; named by keyed hashes (no name in clear)
        assert len(stored) >= 2 and all(ledger.keys.key_path(o).parent == keys / "keys" for o in stored)
        assert all(ledger.keys.key_path(o).is_file() for o in stored)
        assert len(list((keys / "keys").glob("*.key"))) > len(stored)
        contribution = ledger.contributions(ledger.head(0).id)[0]
        assert ledger.get_state(contribution.update_hash, org=contribution.org)
    assert verify_run(run_dir).ok


def test_deployment_erasure_is_certified_and_shredding_beats_a_backup(outside_keys_run):
    run_dir, settings = outside_keys_run
    backup = run_dir.parent / "backup-of-run"  # a sibling: its run.json finds the same ../run-keys
    shutil.copytree(run_dir, backup)  # what an ordinary backup of the run folder holds
    with Ledger.open(run_dir) as ledger:
        org2_updates = [c.update_hash for ck in ledger.chain(0) for c in ledger.contributions(ck.id) if c.org == "org-2"]
        sampled_before = _sampled(ledger, 0)
    assert org2_updates

    grid, result = _serve(settings, workflow="erase", erase_orgs="org-2")
    assert result.subjects == ("org-2",) and result.method == "sisa"
    trained = {grid.contexts[m.metadata.dst_node_id].node_config["partition-id"] for m in grid.sent
               if m.metadata.message_type == "train"}
    assert trained == {0}  # only org-0 retrained shard 0 (org-1's shard was untouched)
    with Ledger.open(run_dir) as ledger:  # the retrain replayed the keyed DP sample, less the subject
        assert _sampled(ledger, 0) == {r: [o for o in orgs if o != "org-2"] for r, orgs in sampled_before.items()}

    # certified like `fedunlearn forget`: a coordinator-signed request, logged, then a certificate
    certificates = sorted((run_dir / "certificates").glob("*.json"))
    assert len(certificates) == 1
    cert = Certificate.read(certificates[0])
    with RunAudit.open(run_dir) as audit:
        assert cert.body["subjects"] == [audit.subject("org-2")]
        assert cert.body["request"]["signer"] == "coordinator"
        assert cert.body["guarantee"]["kind"] == "exact"
        assert cert.body["models"]["after"]["served"] == result.served_hash
        requests = [e for _, e in audit.events("erasure-request")]
        assert [r["request"] for r in requests] == [cert.body["request"]["hash"]]
    report = verify_run(run_dir, certificates=certificates)
    assert report.ok, report.problems

    # crypto-shredding: org-2's key is gone from the key folder, and the backup cannot read its updates
    assert _secret_files(run_dir) == [] and _secret_files(backup) == []
    with Ledger.open(backup) as old:
        with pytest.raises(ShreddedError):
            old.get_state(org2_updates[0], org="org-2")
        org0 = next(c for ck in old.chain(0) for c in old.contributions(ck.id) if c.org == "org-0")
        assert old.get_state(org0.update_hash, org="org-0")  # only the erased organization's key is gone
