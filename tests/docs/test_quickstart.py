"""The README's quickstart, run as written, in order, on small settings: every command succeeds on
the run that the first one creates (`simulations/consortium.toml` made small: the tiny test model,
fewer records and rounds; everything else as documented)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.docs.test_docs import README, bash_blocks, shell_commands

pytestmark = [pytest.mark.slow, pytest.mark.simulation]

ROOT = Path(__file__).resolve().parents[2]
CLI = [sys.executable, "-c", "from fedunlearn.cli import run; run()"]


def _small_scenario(model_dir: Path, out: Path) -> Path:
    text = (ROOT / "simulations" / "consortium.toml").read_text()
    replace = {"path": f'"{model_dir}"', "records-per-org": "24", "holdout-per-org": "8", "canaries-per-org": "1",
               "canary-repeats": "2", "max-length": "40", "rounds": "3", "local-epochs": "1", "batch-size": "8"}
    for key, value in replace.items():
        text = re.sub(rf"(?m)^{re.escape(key)}\s*=\s*[^#\n]*", f"{key} = {value} ", text, count=1)
    out.write_text(text)
    return out


def test_the_quickstart_runs_in_order(tiny_model_dir, tmp_path):
    quickstart = next(b for b in bash_blocks(README) if "simulate --scenario simulations/consortium.toml" in b)
    commands = shell_commands(quickstart)
    assert len(commands) >= 5
    (tmp_path / "simulations").mkdir()
    _small_scenario(tiny_model_dir, tmp_path / "simulations" / "consortium.toml")
    for tokens in commands:
        assert tokens[:2] == ["./dev", "fedunlearn"], tokens
        args = tokens[2:]
        if args[0] == "evaluate":  # the documented defaults train 3 retrains; keep the same command, fewer
            args += ["--retrain-seeds", "1", "--baseline-canaries", "1", "--relearn-steps", "1"]
        done = subprocess.run(CLI + args, cwd=tmp_path, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, (args, done.stdout[-2000:], done.stderr[-2000:])
    assert (tmp_path / "served-adapter" / "adapter_config.json").is_file()
    assert (tmp_path / "runs" / "consortium" / "report.html").is_file()
