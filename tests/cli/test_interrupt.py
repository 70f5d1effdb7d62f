"""Ctrl-C stops `fedunlearn simulate` within seconds, kills the engine, and the rerun resumes."""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import sys
import time

import psutil
import pytest

from fedunlearn.ledger import Ledger

pytestmark = [pytest.mark.slow, pytest.mark.simulation]

SCENARIO = """
[run]
name = "interrupted"
discovery-timeout = 180.0
[model]
path = "{model}"
device = "cpu"
[data]
records-per-org = 24
holdout-per-org = 8
canaries-per-org = 1
canary-repeats = 2
never-inserted = 5
public-documents = 20
max-length = 48
[train]
rounds = 5
local-epochs = 2
batch-size = 8
lr = 0.02
[topology]
shards = 2
[[organizations]]
name = "org-0"
[[organizations]]
name = "org-1"
[[organizations]]
name = "org-2"
"""

CLI = [sys.executable, "-c", "from fedunlearn.cli import run; run()"]


def _evaluated_rounds(run) -> int:
    metrics = run / "metrics.jsonl"
    if not metrics.is_file():
        return 0
    rows = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    return len({r["round"] for r in rows if r.get("kind") == "evaluate"})


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_stops_simulate_and_the_rerun_resumes(sig, tiny_model_dir, tmp_path):
    scenario = tmp_path / "scenario.toml"
    scenario.write_text(SCENARIO.format(model=tiny_model_dir))
    run = tmp_path / "run"
    args = CLI + ["simulate", "--scenario", str(scenario), "--out", str(run)]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240
    while _evaluated_rounds(run) < 1:  # mid-training: round 1 committed and evaluated
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "round 1 never finished"
        time.sleep(0.2)
    started = psutil.Process(proc.pid).children(recursive=True)
    assert started, "the simulation engine started no processes"
    sent = time.monotonic()
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=60)
    took = time.monotonic() - sent
    assert proc.returncode == 130, (out, err)
    assert took < 20, took  # measured here: 4-8 s (3 s grace for the ServerApp, then the engine is killed)
    assert f"stopped by {sig.name}" in err and "Resume with: fedunlearn simulate --scenario" in err, err
    assert "Traceback" not in out + err and "Exception ignored" not in err, err
    _, alive = psutil.wait_procs(started, timeout=10)
    assert not alive, [p.pid for p in alive]
    with Ledger.open(run) as ledger:
        stopped_at = min(ledger.head(s).round for s in range(2))
    assert 1 <= stopped_at < 5

    if sig != signal.SIGINT:  # the resume is the same after either signal: checked once
        return
    again = subprocess.run(args, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr
    with Ledger.open(run) as ledger:
        assert all(ledger.head(s).round == 5 for s in range(2))
        resumed = ledger.served()["served_hash"]
    # the same scenario never interrupted (in-process: the same bits as Flower's engine, tested elsewhere)
    from clients.app import make_app
    from fedunlearn.config import load_scenario, settings_to_flat
    from fedunlearn.federation.workflow import train_workflow
    from tests.localgrid import LocalGrid

    settings = load_scenario(scenario).replace(run={"dir": str(tmp_path / "reference")})
    grid = LocalGrid(make_app(), len(settings.organizations), run_config=settings_to_flat(settings))
    assert train_workflow(grid, settings).served.hash == resumed


def test_a_rerun_after_kill_9_stops_the_engine_processes_the_killed_run_left(tiny_model_dir, tmp_path):
    from fedunlearn.federation.simulation import ENGINE_PIDS, stop_strays

    scenario = tmp_path / "scenario.toml"
    scenario.write_text(SCENARIO.format(model=tiny_model_dir))
    run = tmp_path / "run"
    proc = subprocess.Popen(CLI + ["simulate", "--scenario", str(scenario), "--out", str(run)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 240
    while _evaluated_rounds(run) < 1:
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.2)
    recorded = json.loads((run / ENGINE_PIDS).read_text())
    assert recorded, "the engine's processes were not recorded"
    proc.kill()  # kill -9: no cleanup runs
    proc.wait(timeout=30)
    procs = []
    for row in recorded:
        with contextlib.suppress(psutil.NoSuchProcess):  # already gone with the killed driver
            p = psutil.Process(row["pid"])
            if abs(p.create_time() - row["started"]) < 0.01:
                procs.append(p)
    print(f"{len(procs)} of {len(recorded)} recorded engine processes outlived the kill")
    assert stop_strays(run) == len(procs)
    _, alive = psutil.wait_procs(procs, timeout=10)
    assert not alive and not (run / ENGINE_PIDS).exists()


def test_sigterm_stops_bench_and_its_suite_without_writing_results(tmp_path):
    out = tmp_path / "R.md"
    proc = subprocess.Popen(CLI + ["bench", "--only", "erasure", "--quick", "--out", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    children: list[psutil.Process] = []
    while not children:
        assert proc.poll() is None and time.monotonic() < deadline
        children = psutil.Process(proc.pid).children(recursive=True)
        time.sleep(0.1)
    time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    stdout, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, (stdout, err)
    assert "benchmark stopped" in stdout + err and "Run it again with: fedunlearn bench" in err
    assert not out.exists() and "Traceback" not in err
    _, alive = psutil.wait_procs(children, timeout=10)
    assert not alive
