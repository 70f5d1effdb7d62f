"""The pieces of a local deployment that need no SuperLink: staging the app, PIDs, the warm executor's checks."""

from __future__ import annotations

import subprocess
import sys
import time
import zipfile
from io import BytesIO

import psutil
import pytest

from fedunlearn.deploy import LocalDeployment
from fedunlearn.errors import ConfigError, FederationError
from tests.deployment.conftest import ROOT


def test_the_staged_app_holds_only_the_components_and_packs_fast(tmp_path):
    from flwr.cli.build import build_fab_from_disk

    dep = LocalDeployment(tmp_path / "w", ROOT, secure=False)
    stage = dep.stage_app()
    assert sorted(p.name for p in stage.iterdir()) == ["clients", "pyproject.toml", "server"]
    started = time.perf_counter()
    fab = build_fab_from_disk(stage)
    seconds = time.perf_counter() - started
    names = zipfile.ZipFile(BytesIO(fab)).namelist()
    assert {"clients/app.py", "server/app.py"} <= set(names)
    assert not [n for n in names if n.startswith(("fedunlearn/", "tests/", "benchmarks/"))]
    assert seconds < 5.0, f"packing the staged app took {seconds:.1f} s"


def test_an_app_folder_without_components_is_refused(tmp_path):
    (tmp_path / "app").mkdir()
    (tmp_path / "app" / "pyproject.toml").write_text("[project]\nname = 'x'\n")
    with pytest.raises(ConfigError, match=r"is not a Flower app.*\[tool.flwr.app.components\].*--app"):
        LocalDeployment(tmp_path / "w", tmp_path / "app", secure=False).stage_app()


def test_recorded_processes_are_stopped_by_pid_with_their_group(tmp_path):
    from fedunlearn.deploy.local import stop_recorded

    dep = LocalDeployment(tmp_path / "w", ROOT, secure=False)
    script = "import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); time.sleep(60)"
    leader = dep._start("sleeper", [sys.executable, "-c", script])
    deadline = time.monotonic() + 20
    while not psutil.Process(leader.pid).children() and time.monotonic() < deadline:
        time.sleep(0.05)
    child = psutil.Process(leader.pid).children()[0]
    dep.record()
    again = LocalDeployment.from_record(dep.work, ROOT)
    assert (again.port, again.isolation, again.secure) == (dep.port, "subprocess", False)
    assert stop_recorded(dep.work, grace=5) == ["sleeper"]
    leader.wait(timeout=5)
    child.wait(timeout=5)  # the group went with its leader
    assert not (dep.work / "deployment.json").exists()
    with pytest.raises(ConfigError, match=r"deployment.json.*does not exist.*deploy up"):
        LocalDeployment.from_record(dep.work, ROOT)


def test_the_warm_executor_runs_what_flowers_subprocess_executor_would(monkeypatch):
    """Same command line as Flower's SubprocessExecutor (minus dependency installation) for both app kinds."""
    from flwr.supercore.constant import TaskType
    from flwr.supercore.superexec.executor import subprocess_executor
    from flwr.supercore.superexec.executor.types import ExecutionSpec

    from fedunlearn.deploy.warm import check_flower, task_argv

    check_flower()  # the installed Flower is the one the warm executor was written for
    launched = []
    monkeypatch.setattr(subprocess_executor.subprocess, "Popen", lambda args, **kw: launched.append(args))
    for task, tls in [(TaskType.SERVER_APP, "/pki/ca.crt"), (TaskType.CLIENT_APP, None)]:
        spec = ExecutionSpec(task_type=task, runtime_api_address="127.0.0.1:9091", token="t0k", insecure=tls is None,
                             root_certificates_path=tls, runtime_dependency_install=False, parent_pid=42,
                             suppress_output=False, task_id=7)
        subprocess_executor.SubprocessExecutor().launch(spec)
        assert task_argv(spec) == launched[-1]


def test_the_warm_executor_refuses_a_flower_it_was_not_checked_against(monkeypatch):
    import flwr
    import flwr.supercore.superexec.run_superexec as superexec

    from fedunlearn.deploy import warm

    monkeypatch.setattr(flwr, "__version__", "1.43.0")
    monkeypatch.delattr(superexec, "get_executor")
    with pytest.raises(FederationError, match=r"version 1\.43\.0.*get_executor is gone.*--isolation subprocess"):
        warm.check_flower()


def test_a_process_that_died_at_start_is_reported_with_its_log(tmp_path):
    dep = LocalDeployment(tmp_path / "w", ROOT, secure=False)
    dep._start("warm", [sys.executable, "-c", "import sys; sys.exit('error: this Flower does not match')"])
    dep.procs["warm"].wait(timeout=20)
    with pytest.raises(FederationError, match=r"(?s)warm \(exit 1\) stopped right after starting.*\nerror: this Flower does not match"):
        dep.check_running()
    dep.stop_all(grace=1)
