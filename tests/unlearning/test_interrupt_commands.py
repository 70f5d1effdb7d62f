"""Ctrl-C and SIGTERM stop `fedunlearn evaluate` within seconds: status 130, a message with the
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
