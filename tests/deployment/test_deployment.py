"""A real Flower deployment on 127.0.0.1, driven by the `fedunlearn` CLI as an operator would.

One deployment (``fedunlearn deploy up``: SuperLink with TLS, three SuperNodes authenticated by
their registered keys, warm ServerApp/ClientApp processes) serves the whole module:

1. a SuperNode whose key was never registered tries to join the whole time and is refused;
2. training (``fedunlearn deploy run``) is killed (its ServerApp process, by PID) after round 1:
   the ledger is consistent at round 1; running the same command again resumes to round 2;
3. an erasure of org-2 through the same ServerApp (``run.workflow = "erase"``) is stopped by Ctrl-C
   on ``deploy run`` once the retraining has started (``flwr stop``: the ServerApp ends): the served
   model, heads and keys are untouched; run again, it completes;
2'. org-1 asks to be erased from its own side during the resumed training: its signed request, in
   its SuperNode's outbox (``deploy up``'s ``WORK/outbox/org-1``), rides on its evaluation reply and
   is applied before the training ends (a live request over TLS and node authentication); the
   served model is then the one of the same settings trained without org-1, bit for bit;
4. ``fedunlearn forget --org org-1`` is refused: already erased;
5. ``fedunlearn verify`` passes on the run; ``fedunlearn deploy down`` stops every process by PID.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest

from fedunlearn.ledger import Ledger
from tests.deployment.conftest import FEDUNLEARN, ORGS, ROOT, cli, tail, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.deployment, pytest.mark.timeout(600)]


def _settings(run_dir: Path, model_dir: Path, **extra: object) -> dict[str, object]:
    return {"run.dir": str(run_dir), "model.path": str(model_dir), "model.device": "cpu", "model.threads": 1,
            "organizations.names": ",".join(ORGS), "topology.shards": 2, "train.rounds": 2,
            "train.local-epochs": 1, "train.batch-size": 8, "data.max-length": 32,
            "run.discovery-timeout": 120.0, "run.round-timeout": 120.0, **extra}


def _config(run_dir: Path, model_dir: Path, **extra: object) -> list[str]:
    config = _settings(run_dir, model_dir, **extra)
    args = []
    for key, value in config.items():
        text = json.dumps(value) if isinstance(value, str) else repr(value)
        args += ["-c", f"{key}={text}"]
    return args


def _run(work: Path, config: list[str], timeout: float = 240.0):
    return cli("deploy", "run", "--work", str(work), *config, timeout=timeout)


def _snapshot(run_dir: Path) -> dict:
    with Ledger.open(run_dir) as ledger:
        served = ledger.served()
        return {"served": served and served["served_hash"],
                "heads": {s: ledger.head(s).id for s in (0, 1)},
                "status": {o.name: o.status for o in ledger.organizations()},
                "shredded": {o.name: ledger.keys.is_shredded(o.name) for o in ledger.organizations()},
                "pending": ledger.meta.get("erasure.pending", ""),
                "served_files": sorted(str(p.relative_to(run_dir)) for p in (run_dir / "export").rglob("*")
                                       if p.is_file())}


def _consistent(run_dir: Path) -> dict[int, int]:
    """Check every shard's chain (rounds 0..head, each round's contributions stored, unless every
    member of the shard was erased); return the heads."""
    with Ledger.open(run_dir) as ledger:
        heads = {}
        for shard in (0, 1):
            chain = ledger.chain(shard)
            assert [c.round for c in chain] == list(range(len(chain))), chain
            active = [o for o in ledger.organizations() if o.shard == shard and o.status == "active"]
            assert not active or all(ledger.contributions(c.id) for c in chain[1:]), f"shard {shard}: a round without updates"
            heads[shard] = chain[-1].round
        assert ledger.verify_blobs() == []
    return heads


def _kill_serverapp(work: Path, run: subprocess.Popen, log: Path) -> None:
    """Kill the running ServerApp process(es) by PID (SIGKILL) and the `deploy run` that streamed it,
    then stop the dead run as an operator would (``flwr stop RUN_ID``): until the SuperLink marks the
    run stopped (on its own only after the ServerApp's heartbeat expires, ~50 s) SuperNodes holding
    one of its messages wait for it."""
    from fedunlearn.deploy import CONNECTION, LocalDeployment
    from fedunlearn.deploy.local import serverapp_pids

    pids = wait_for("a ServerApp process", lambda: serverapp_pids(work), timeout=30)
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
    os.killpg(run.pid, signal.SIGKILL)
    run.wait(timeout=10)
    run_id = re.search(r"started run (\d+)", log.read_text(errors="replace"))
    assert run_id, log.read_text(errors="replace")[-2000:]
    stopped = LocalDeployment.from_record(work, ROOT).flwr("stop", run_id.group(1), CONNECTION, timeout=60)
    assert stopped.returncode == 0, stopped.stdout[-2000:] + stopped.stderr[-2000:]


def _interrupt(work: Path, run: subprocess.Popen, log: Path) -> None:
    """Ctrl-C (SIGINT) to `deploy run`, as in a terminal: it stops the Flower run on the SuperLink
    (``flwr stop``), so the ServerApp ends, and exits 130 with the command that resumes."""
    from fedunlearn.deploy.local import serverapp_pids

    wait_for("a ServerApp process", lambda: serverapp_pids(work), timeout=30)
    os.kill(run.pid, signal.SIGINT)
    code = run.wait(timeout=90)
    out = log.read_text(errors="replace")
    assert code == 130, out[-3000:]
    assert re.search(r"stopped: Flower run \d+ was stopped on the SuperLink", out), out[-3000:]
    assert "Resume with: fedunlearn deploy run --work" in out, out[-3000:]
    wait_for("the stopped run's ServerApp to end", lambda: not serverapp_pids(work), timeout=60)


def _served(run_dir: Path) -> str:
    with Ledger.open(run_dir) as ledger:
        return ledger.served()["served_hash"]


def _never_had(orgs: tuple[str, ...], run_dir: Path, model_dir: Path, data: dict[str, Path]) -> Path:
    """The deployment's settings and organizations' data folders, trained without ``orgs`` (the
    exact-erasure reference)."""
    from fedunlearn.config import settings_from_flat
    from tests.unlearning.conftest import train

    flat = {k: v for k, v in _settings(run_dir, model_dir).items() if not k.startswith("run.")}
    settings = settings_from_flat({**flat, "organizations.data": ",".join(f"{o}={d}" for o, d in data.items())})
    return train(settings, run_dir, without=orgs)


def _received(work: Path, org: str, kind: str) -> int:
    log = work / "logs" / f"supernode-{org}.log"
    return log.read_text(errors="replace").count(f"Receiving: {kind} message") if log.exists() else 0


def test_operator_cli_on_a_secure_deployment_survives_kills_and_ctrl_c(deployed, processes, tiny_model_dir, tmp_path,
                                                                     consortium_dirs):
    from fedunlearn.deploy import LocalDeployment, make_node_keys

    work, run_dir = deployed, tmp_path / "run"
    started = time.monotonic()
    timings: dict[str, float] = {}

    def lap(name: str) -> None:
        timings[name] = round(time.monotonic() - started - sum(timings.values()), 1)

    # 1. a stranger's SuperNode (key never registered) knocks during everything that follows
    stranger = LocalDeployment.from_record(work, ROOT)
    key = make_node_keys("stranger", tmp_path / "unregistered").private_key
    intruder = stranger.start_supernode("stranger", key=key, executor=False)  # it must never get a task
    processes.adopt({"supernode-stranger": intruder.pid})

    # 2. training killed after round 1 (its ServerApp, by PID), then resumed by the same command
    config = _config(run_dir, tiny_model_dir)
    log = tmp_path / "train-killed.log"
    training = processes.start("deploy-run", [FEDUNLEARN, "deploy", "run", "--work", str(work), *config], log)

    def round_one_evaluated() -> bool:  # every shard committed round 1 (evaluation follows the last shard)
        metrics = run_dir / "metrics.jsonl"
        for line in metrics.read_text().splitlines() if metrics.exists() else []:
            try:
                row = json.loads(line)
            except json.JSONDecodeError:  # a line being written
                continue
            if row.get("kind") == "evaluate" and row.get("round") == 1:
                return True
        return False

    wait_for("round 1 to be committed and evaluated", round_one_evaluated, timeout=240)
    _kill_serverapp(work, training, log)
    heads = _consistent(run_dir)
    assert heads[1] == 1 and heads[0] in (1, 2), (heads, log.read_text()[-2000:])
    lap("train-killed")
    # 2'. meanwhile org-1 asks to be erased from its own side: its enrolled key signs a request that it
    # drops in its SuperNode's outbox; its next evaluation reply carries it to the ServerApp
    org_keys = tmp_path / "org-1-keys"
    assert cli("keys", "generate", "--name", "org-1.example/erasure", "--out", str(org_keys)).returncode == 0
    assert cli("keys", "enrol", "--run", str(run_dir), "--org", "org-1", "--public-key",
               str(org_keys / "erasure.pub")).returncode == 0
    signed = cli("keys", "sign-request", "--key", str(org_keys / "erasure.pem"), "--name", "org-1.example/erasure",
                 "--run", str(run_dir), "--subject", "org-1", "--out", str(tmp_path / "org-1-request.json"))
    assert signed.returncode == 0, signed.stdout[-2000:]
    os.replace(tmp_path / "org-1-request.json", work / "outbox" / "org-1" / "request.json")  # `deploy up`'s outbox
    resumed = _run(work, config)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + tail(work, "superlink")
    assert _consistent(run_dir) == {0: 2, 1: 2}
    with Ledger.open(run_dir) as ledger:
        # organizations are known by their registered names, never by Flower node ids
        assert sorted(o.name for o in ledger.organizations()) == list(ORGS)
        assert {d.shard for d in ledger.dependents("org-2")} == {0}
        assert all(len(ledger.contributions(c.id)) == 2 for c in ledger.chain(0)[1:])
        # the live request came with round 2's replies and was applied before the training ended (SISA:
        # org-1 was alone in shard 1, which no longer serves); shard 0 is untouched
        assert ledger.organization("org-1").status == "erased" and ledger.dependents("org-1") == []
        assert ledger.served()["components"] == [ledger.head(0).id]
    rows = json.loads(cli("requests", "--run", str(run_dir), "--json").stdout)
    assert [(r["subjects"], r["state"], r["via"]) for r in rows] == [(["org-1"], "applied", "node of org-1")], rows
    # ... and the deployment now serves what a consortium that never had org-1 serves, bit for bit
    # (the same settings trained without org-1 by the real ClientApp in this process)
    assert _served(run_dir) == _served(_never_had(("org-1",), tmp_path / "never-1", tiny_model_dir, consortium_dirs))
    assert (work / "outbox" / "org-1" / "sent" / "request.json").is_file()
    lap("train-resumed-live-request")

    # 3. an erasure of org-2 stopped by Ctrl-C once retraining has started leaves the run as it was; re-run completes
    before = _snapshot(run_dir)
    erase_config = _config(run_dir, tiny_model_dir, **{"run.workflow": "erase", "run.erase-orgs": "org-2"})
    trained = _received(work, "org-0", "train")
    log = tmp_path / "erase-killed.log"
    erasing = processes.start("deploy-run-erase", [FEDUNLEARN, "deploy", "run", "--work", str(work), *erase_config],
                              log)
    wait_for("the erasure's retraining to reach org-0", lambda: _received(work, "org-0", "train") > trained,
             timeout=180)
    # org-0's node (its process group) is paused so that the erasure cannot finish before the Ctrl-C
    # lands, however loaded the machine: the ServerApp waits for its reply
    node = json.loads((work / "deployment.json").read_text())["pids"]["supernode-org-0"]
    os.killpg(node, signal.SIGSTOP)
    try:
        _interrupt(work, erasing, log)  # Ctrl-C mid-erasure: a graceful stop (step 2 was a hard kill)
    finally:
        os.killpg(node, signal.SIGCONT)
    assert _snapshot(run_dir) == before
    lap("erase-interrupted")
    erased = _run(work, erase_config)
    assert erased.returncode == 0, erased.stdout[-3000:]
    with Ledger.open(run_dir) as ledger:
        assert ledger.organization("org-2").status == "erased", tail(work, "superlink")
        assert ledger.dependents("org-2") == []
        assert [c.round for c in ledger.chain(0)] == [0, 1, 2]
        assert all(c.org == "org-0" for ck in ledger.chain(0)[1:] for c in ledger.contributions(ck.id))
        assert ledger.served()["served_hash"] != before["served"]
    assert _served(run_dir) == _served(_never_had(("org-1", "org-2"), tmp_path / "never-1-2", tiny_model_dir,
                                        consortium_dirs))
    lap("erase-completed")

    # 4. the operator's own erasure command refuses org-1, already erased by its live request (and logs it)
    forgot = cli("forget", "--run", str(run_dir), "--org", "org-1", timeout=120)
    assert forgot.returncode == 2 and "already erased" in forgot.stdout + forgot.stderr, forgot.stdout[-3000:]
    with Ledger.open(run_dir) as ledger:
        assert ledger.organization("org-1").status == "erased"
        assert ledger.organization("org-0").status == "active"
    assert len(list((run_dir / "certificates").glob("*.json"))) == 2  # the live request's and org-2's
    lap("forget-refused")

    # 5. the run verifies from its log, public key and artifacts alone
    verified = cli("verify", "--run", str(run_dir), timeout=120)
    assert verified.returncode == 0, verified.stdout[-3000:]
    lap("verify")

    # 1'. the stranger never joined: refused by the SuperLink, it gave up; only the three were activated
    with contextlib.suppress(subprocess.TimeoutExpired):  # still running: the assertion below fails with its log
        intruder.wait(timeout=60)
    assert intruder.poll() is not None and intruder.returncode != 0, tail(work, "supernode-stranger")
    stranger.stop_all(grace=2)  # its process group, by PID
    activated = set(re.findall(r"Activated node_id=(\d+)", tail(work, "superlink", 10**7)))
    assert len(activated) == len(ORGS), tail(work, "superlink", 6000)
    lap("stranger")
    print(f"deployment test timings (s): {timings}")
