"""Ctrl-C and SIGTERM stop `fedunlearn evaluate` and `forget` within seconds: status 130, a message with the
command that runs it again, no traceback, and its retrain worker process gone."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import psutil
import pytest

from fedunlearn.unlearning import EraseRequest
from fedunlearn.unlearning.service import certified_erase
from tests.unlearning.conftest import SHARDED, base_settings, copy_run, grid_for

pytestmark = pytest.mark.slow

CLI = [sys.executable, "-c", "from fedunlearn.cli import run; run()"]


@pytest.mark.parametrize("sig", [signal.SIGTERM])  # SIGINT takes the same path (tests/cli/test_entry.py)
def test_a_signal_stops_evaluate(sig, run_factory, tiny_model_dir, tmp_path):
    run = copy_run(run_factory("sharded", **SHARDED), tmp_path / "run")
    certified_erase(run, EraseRequest(("org-2",), method="sisa"), grid=grid_for(base_settings(tiny_model_dir, **SHARDED)))
    proc = subprocess.Popen(CLI + ["evaluate", "--run", str(run), "--org", "org-2", "--retrain-seeds", "3"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    children: list[psutil.Process] = []
    while not children:  # the retrain worker has started: the evaluation is under way
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline
        children = psutil.Process(proc.pid).children(recursive=True)
        time.sleep(0.2)
    time.sleep(1.0)
    sent = time.monotonic()
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, (out, err)
    assert time.monotonic() - sent < 15
    assert "stopped" in err and "fedunlearn evaluate --run" in err and "Traceback" not in err, err
    _, alive = psutil.wait_procs(children, timeout=10)
    assert not alive, [p.pid for p in alive]


@pytest.mark.parametrize("sig", [signal.SIGINT])
def test_a_signal_stops_forget_and_the_same_command_completes_it(sig, run_factory, tiny_model_dir, tmp_path):
    """Ctrl-C while `forget` retrains: status 130, a message with the command that resumes, no
    traceback; that command completes the erasure (one certificate, the model a run without the
    interruption gives, a run that verifies)."""
    from fedunlearn.certify import verify_run
    from fedunlearn.ledger import Ledger

    src = run_factory("long", shards=1, rounds=6)
    reference = copy_run(src, tmp_path / "reference")
    expected, _ = certified_erase(reference, EraseRequest(("org-1",), method="retrain"),
                                  grid=grid_for(base_settings(tiny_model_dir, shards=1, rounds=6)))
    run = copy_run(src, tmp_path / "run")
    args = ["forget", "--run", str(run), "--org", "org-1", "--method", "retrain", "--no-capture-before"]
    proc = subprocess.Popen(CLI + args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while True:  # authorized and logged: the retraining is under way
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline
        with Ledger.open(run) as ledger:
            if ledger.meta.get("certification.pending"):
                break
        time.sleep(0.05)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, (out, err)
    text = " ".join(err.split())
    assert "stopped" in text and "fedunlearn forget --run" in text and "Traceback" not in err, err
    again = subprocess.run(CLI + args, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-2000:]
    with Ledger.open(run) as ledger:
        assert ledger.organization("org-1").status == "erased"
        assert ledger.served()["served_hash"] == expected.served_hash
    assert len(list((run / "certificates").glob("*.json"))) == 1
    assert verify_run(run).ok
