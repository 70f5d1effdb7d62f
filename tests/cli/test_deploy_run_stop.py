"""How `fedunlearn deploy run` stops: the Flower run on the SuperLink, then `flwr run` (no deployment needed:
a stand-in process prints what `flwr run` prints; the real stop is in tests/deployment/test_deployment.py)."""

from __future__ import annotations

import subprocess
import sys
import time

from fedunlearn.cli.deploy import _stop_run, _Stream
from fedunlearn.deploy import CONNECTION


class _FakeDeployment:
    flwr_home = "/nowhere"

    def __init__(self, returncode: int = 0) -> None:
        self.calls: list[tuple[str, ...]] = []
        self.returncode = returncode

    def flwr(self, *args: str, timeout: float = 120.0) -> subprocess.CompletedProcess:
        self.calls.append(args)
        return subprocess.CompletedProcess(args, self.returncode, stdout="", stderr="refused")


def _flwr_run(script: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, encoding="utf-8", errors="replace", start_new_session=True)


def _wait_for_run_id(streamed: _Stream) -> None:
    deadline = time.monotonic() + 10
    while streamed.run_id is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert streamed.run_id is not None


def test_a_started_run_is_stopped_on_the_superlink_then_flwr_run_ends():
    proc = _flwr_run("import time; print('Successfully started run 4242', flush=True); time.sleep(60)")
    streamed = _Stream(proc)
    _wait_for_run_id(streamed)
    dep = _FakeDeployment()
    said = _stop_run(dep, proc, streamed, grace=0.5)
    assert dep.calls == [("stop", "4242", CONNECTION)]
    assert said == "Flower run 4242 was stopped on the SuperLink (flwr stop)"
    assert proc.poll() is not None  # flwr run did not outlive the stop


def test_a_failed_stop_says_how_to_stop_the_run_by_hand():
    proc = _flwr_run("import time; print('Successfully started run 7', flush=True); time.sleep(60)")
    streamed = _Stream(proc)
    _wait_for_run_id(streamed)
    said = _stop_run(_FakeDeployment(returncode=1), proc, streamed, grace=0.5)
    assert "may still run" in said and "flwr stop 7" in said and proc.poll() is not None


def test_before_the_run_started_flwr_run_is_ended_and_nothing_is_stopped():
    proc = _flwr_run("import time; time.sleep(60)")
    dep = _FakeDeployment()
    said = _stop_run(dep, proc, _Stream(proc), grace=0.5)
    assert dep.calls == [] and said == "the SuperLink had not started the run" and proc.poll() is not None


def test_output_that_cannot_be_written_is_dropped_and_reading_goes_on(monkeypatch):
    class Closed:
        def write(self, text):
            raise BrokenPipeError

        def flush(self):
            raise BrokenPipeError

    monkeypatch.setattr(sys, "stdout", Closed())
    proc = _flwr_run("print('x' * 100000); print('Successfully started run 9'); print('y' * 100000)")
    streamed = _Stream(proc)
    assert proc.wait(timeout=20) == 0  # never blocked on a full pipe
    streamed.join()
    assert streamed.run_id == "9"
