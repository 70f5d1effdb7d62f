"""`flwr run .` — Flower's own CLI, SuperLink and simulation runtime — trains the app."""

from __future__ import annotations

import subprocess
from pathlib import Path

import psutil
import pytest

from fedunlearn.runs import RunFolder

pytestmark = [pytest.mark.slow, pytest.mark.simulation]
ROOT = Path(__file__).resolve().parents[1]


def _flower_processes() -> set[int]:
    found = set()
    for p in psutil.process_iter(["cmdline"]):
        cmd = " ".join(p.info["cmdline"] or [])
        if any(k in cmd for k in ("flower-superlink", "flwr-simulation", "flwr-serverapp", "flwr-clientapp")):
            found.add(p.pid)
    return found


def test_flwr_run_trains_the_app(tiny_model_dir, tmp_path):
    before = _flower_processes()
    run_dir = tmp_path / "run"
    config = (
        f'run.dir="{run_dir}" model.path="{tiny_model_dir}" organizations.names="org-0,org-1" '
        "train.rounds=1 train.local-epochs=1 data.records-per-org=20 data.holdout-per-org=5"
    )
    proc = subprocess.run(
        ["bash", str(ROOT / "scripts" / "flwr-run-local.sh"), "--num-supernodes", "2", "--run-config", config],
        cwd=ROOT, capture_output=True, text=True, timeout=400,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    run = RunFolder.open(run_dir)
    assert run.settings.organization_names == ["org-0", "org-1"]
    assert (run.served_dir / "adapter_model.safetensors").is_file()
    assert _flower_processes() - before == set()
