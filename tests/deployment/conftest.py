"""A real deployment on 127.0.0.1 (SuperLink + SuperNodes, TLS, node auth) driven by the `fedunlearn` CLI.

Every process is stopped by its PID, also when a test fails: ``fedunlearn deploy down`` stops the
process groups recorded in ``WORK/deployment.json``; the finalizer then SIGKILLs every group this
module started or recorded that is still alive (and fails the test if one was).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

ROOT = Path(__file__).resolve().parents[2]
ORGS = ("org-0", "org-1", "org-2")
FEDUNLEARN = str(Path(sys.executable).parent / "fedunlearn")


class Processes:
    """Process groups started by the tests (each with ``start_new_session``), stopped by PID."""

    def __init__(self) -> None:
        self.groups: dict[int, str] = {}

    def start(self, name: str, args: list[str], log: Path) -> subprocess.Popen:
        with open(log, "ab") as out:
            proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, cwd=ROOT)
        self.groups[proc.pid] = name
        return proc

    def adopt(self, pids: dict[str, int]) -> None:
        for name, pid in pids.items():
            self.groups.setdefault(pid, name)

    def alive(self) -> dict[int, str]:
        """Every live process (not a zombie) in one of the groups, by PID -> group name."""
        out = {}
        for proc in psutil.process_iter(["pid", "status"]):
            with contextlib.suppress(psutil.NoSuchProcess, ProcessLookupError):
                group = os.getpgid(proc.pid)
                if group in self.groups and proc.info["status"] != psutil.STATUS_ZOMBIE:
                    out[proc.pid] = self.groups[group]
        return out

    def kill_all(self) -> dict[int, str]:
        """SIGKILL every group (leader gone or not); return the processes that were still alive."""
        alive = self.alive()
        for group in self.groups:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(group, signal.SIGKILL)
        for pid in alive:
            with contextlib.suppress(psutil.NoSuchProcess, psutil.TimeoutExpired):
                psutil.Process(pid).wait(timeout=5)
        return alive


def cli(*args: str, timeout: float = 180.0) -> subprocess.CompletedProcess:
    """Run ``fedunlearn ARGS`` in its own process group; killed (by its group id) after ``timeout``."""
    proc = subprocess.Popen([FEDUNLEARN, *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True, cwd=ROOT)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        pytest.fail(f"`fedunlearn {' '.join(args)}` did not end within {timeout:.0f} s:\n{out[-3000:]}")
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, "")


def wait_for(what: str, check, *, timeout: float, poll: float = 0.2):
    """Poll ``check()`` until it returns something truthy; fail naming ``what`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(poll)
    pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")


def tail(work: Path, name: str, n: int = 2500) -> str:
    """The end of one process log of the deployment in ``work``, for assertion messages."""
    path = work / "logs" / f"{name}.log"
    return path.read_text(errors="replace")[-n:] if path.exists() else f"(no log {path})"


@pytest.fixture(scope="module")
def consortium_dirs(tmp_path_factory) -> dict[str, Path]:
    """Each organization's own data folder (small synthetic records)."""
    from fedunlearn.data.io import save_consortium
    from fedunlearn.data.synthetic import generate_consortium

    folder = tmp_path_factory.mktemp("orgs")
    c = generate_consortium(organizations=ORGS, records_per_org=16, holdout_per_org=6, canaries_per_org=1,
                            canary_repeats=2, never_inserted=5, public_documents=20, seed=0)
    save_consortium(c, folder)
    return {o: folder / o for o in ORGS}


@pytest.fixture(scope="module")
def processes(request):
    """The process groups of this module; whatever is still alive at the end is killed and reported."""
    procs = Processes()

    def finalize() -> None:
        leftovers = procs.kill_all()
        if leftovers:  # pragma: no cover - reported, never left running
            pytest.fail(f"processes still running at teardown (killed now): {leftovers}")

    request.addfinalizer(finalize)
    return procs


@pytest.fixture(scope="module")
def deployed(request, tmp_path_factory, consortium_dirs, processes):
    """``fedunlearn deploy up`` (warm, TLS, node auth) at setup; ``fedunlearn deploy down`` at teardown.

    While ``deploy up`` starts the processes, this process builds the tiny model (both take seconds).
    """
    work = tmp_path_factory.mktemp("deploy")
    orgs = [a for o in ORGS for a in ("--org", f"{o}={consortium_dirs[o]}")]
    up = processes.start("deploy-up", [FEDUNLEARN, "deploy", "up", "--work", str(work), *orgs, "--isolation", "warm"],
                         work.parent / "deploy-up.log")
    request.getfixturevalue("tiny_model_dir")
    try:
        up.wait(timeout=180)
    finally:
        state = work / "deployment.json"
        if state.is_file():
            processes.adopt(json.loads(state.read_text())["pids"])
    assert up.returncode == 0, (work.parent / "deploy-up.log").read_text()[-3000:] + tail(work, "superlink")
    yield work
    if state.is_file():
        down = cli("deploy", "down", "--work", str(work), timeout=120)
        assert down.returncode == 0, down.stdout[-2000:]
        assert not state.exists()
        assert processes.alive() == {}, f"still running after `deploy down`: {processes.alive()}"
