"""A real deployment on 127.0.0.1 (SuperLink + SuperNodes, TLS, node auth), stopped by PID always."""

from __future__ import annotations

from pathlib import Path

import psutil
import pytest

ROOT = Path(__file__).resolve().parents[2]
ORGS = ("org-0", "org-1", "org-2")


@pytest.fixture()
def consortium_dirs(tmp_path) -> dict[str, Path]:
    """Each organization's own data folder (small synthetic records)."""
    from fedunlearn.data.io import save_consortium
    from fedunlearn.data.synthetic import generate_consortium

    c = generate_consortium(organizations=ORGS, records_per_org=16, holdout_per_org=6, canaries_per_org=1,
                            canary_repeats=2, never_inserted=5, public_documents=20, seed=0)
    save_consortium(c, tmp_path / "orgs")
    return {o: tmp_path / "orgs" / o for o in ORGS}


@pytest.fixture()
def deployment(tmp_path, request):
    """A secure LocalDeployment whose every process is stopped by its PID at teardown (also on failure)."""
    from fedunlearn.deploy import LocalDeployment

    dep = LocalDeployment(tmp_path / "deploy", ROOT, secure=True, isolation="warm")
    started: list[int] = []

    def finalize() -> None:
        started.extend(p.pid for p in dep.procs.values())
        dep.stop_all()
        leftovers = [pid for pid in started if psutil.pid_exists(pid) and psutil.Process(pid).status() != "zombie"]
        if leftovers:  # pragma: no cover - reported, never left running
            pytest.fail(f"processes still running after stop: {leftovers}")

    request.addfinalizer(finalize)
    dep.prepare()
    return dep


def tail(dep, name: str, n: int = 2500) -> str:
    """The end of one process log, for assertion messages."""
    path = dep.work / "logs" / f"{name}.log"
    return path.read_text(errors="replace")[-n:] if path.exists() else f"(no log {path})"
