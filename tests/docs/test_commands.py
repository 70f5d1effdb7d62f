"""Every documented command runs: the shell blocks of README.md and docs/*.md, as written, in order,
on small settings, so that no documented command can rot.

Each group of pages shares one working folder (pages that use ``runs/consortium`` run after the
README's quickstart that creates it); there ``./dev`` and ``.venv/bin/fedunlearn`` are shims that run
this checkout's CLI, and ``simulations/consortium.toml`` is the documented scenario made small (the
tiny test model, fewer records and rounds; every other line as documented). Each logical line of a
block runs through ``bash`` and must exit 0. Commands that this test does not run are listed in
:data:`NOT_RUN` with the reason and the test that covers them; a key there that no page uses fails.
"""

from __future__ import annotations

import os
import re
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.docs.test_docs import PAGES, README, bash_blocks

pytestmark = [pytest.mark.slow, pytest.mark.simulation]

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"

#: A documented command containing the key is not run here; the value says why and what covers it.
NOT_RUN = {
    "./dev demo": "the README's main command (minutes); tests/cli/test_model_cli.py runs the demo's schedule",
    "./dev test": "the README's test command: CI runs it (.ci/run)",
    "bench --quick": "writes benchmarks/RESULTS.md of this checkout; tests/benchmarks/test_bench_suite.py runs "
                     "every section in quick mode",
    "bench --only": "full benchmark sections take many minutes; their results are committed in benchmarks/",
    "model build --size large": "about 50 minutes on 2 cores (docs/real-text.md)",
    "simulations/real-text.toml": "trains the small default on real text for minutes; tests/cli/test_model_cli.py "
                                  "trains the same schedule",
    "deploy ": "starts a SuperLink and SuperNodes; tests/deployment/test_deployment.py runs deploy up (TLS, node "
               "auth), run, erase, forget, verify and down",
    "generate_consortium(organizations=['org-0','org-1','org-2'])": "the deployment's data (see deploy)",
    "--run runs/dep": "the deployment's run (see deploy)",
    "scenarios.md: simulate --scenario simulations/consortium.toml --out runs/consortium":
        "the README quickstart's first command, run just before on the same folder",
}

#: Pages run in one folder, in this order (later pages use runs the earlier ones created).
GROUPS = {
    "consortium": ["README.md", "scenarios.md", "evaluation.md", "ledger.md", "certificates.md", "live-requests.md"],
    "erasure": ["erasure.md"],
    "others": [p.name for p in sorted(DOCS.glob("*.md"))
               if p.name not in ("scenarios.md", "evaluation.md", "ledger.md", "live-requests.md", "erasure.md",
                                 "certificates.md")],
}

#: Options appended to a command so that it runs on small settings (same command, less work).
SMALLER = {
    " evaluate ": "--retrain-seeds 1 --baseline-canaries 1 --relearn-steps 1",
}

_SHIM = """#!/bin/bash
case "$1" in
  fedunlearn) shift; exec {python} -c 'from fedunlearn.cli import run; run()' "$@" ;;
  python) shift; exec {python} "$@" ;;
  *) echo "./dev $1: not run by tests/docs/test_commands.py" >&2; exit 3 ;;
esac
"""


def _page(name: str) -> Path:
    return README if name == "README.md" else DOCS / name


def logical_lines(block: str) -> list[str]:
    """The commands of a bash block: continuation lines joined, blank and comment lines dropped."""
    return [line.strip() for line in block.replace("\\\n", " ").splitlines()
            if line.strip() and not line.strip().startswith("#")]


def documented_commands(page: Path) -> list[str]:
    return [line for block in bash_blocks(page) for line in logical_lines(block)]


def skipped(line: str, page: str = "") -> str | None:
    """The :data:`NOT_RUN` key that applies to ``line`` of ``page`` (a key ``"page.md: text"`` only there)."""
    for key in NOT_RUN:
        where, sep, text = key.partition(".md: ")
        if (text in line and page == where + ".md") if sep else key in line:
            return key
    return None


def smaller(line: str) -> str:
    command = re.sub(r"\s+#\s.*$", "", line)  # a trailing comment (the docs put spaces before it)
    for key, extra in SMALLER.items():
        if key in f" {command} ":
            command = f"{command} {extra}"
    return command


def _small_scenario(model_dir: Path, out: Path) -> Path:
    text = (ROOT / "simulations" / "consortium.toml").read_text()
    replace = {"path": f'"{model_dir}"', "records-per-org": "24", "holdout-per-org": "8", "canaries-per-org": "1",
               "max-length": "40", "rounds": "3", "local-epochs": "1", "batch-size": "8"}
    for key, value in replace.items():
        text, n = re.subn(rf"(?m)^{re.escape(key)}\s*=\s*[^#\n]*", f"{key} = {value} ", text, count=1)
        assert n == 1, f"simulations/consortium.toml has no {key!r} line any more: update this test"
    out.write_text(text)
    return out


def _workdir(tmp_path: Path, model_dir: Path) -> Path:
    (tmp_path / "simulations").mkdir()
    _small_scenario(model_dir, tmp_path / "simulations" / "consortium.toml")
    shim = _SHIM.format(python=sys.executable)
    for path in (tmp_path / "dev", tmp_path / ".venv" / "bin" / "fedunlearn"):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(shim if path.name == "dev" else shim.replace('case "$1" in', 'set -- fedunlearn "$@"\ncase "$1" in'))
        path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return tmp_path


def test_every_page_with_commands_is_in_a_group():
    named = {n for names in GROUPS.values() for n in names}
    assert {p.name for p in PAGES if bash_blocks(p)} <= named


def test_every_not_run_entry_is_documented():
    """A reason for not running a command that no page has any more must go."""
    lines = [(p.name, line) for p in PAGES for line in documented_commands(p)]
    assert [key for key in NOT_RUN if not any(skipped(line, page) == key for page, line in lines)] == []


def test_a_trailing_comment_goes_before_options_are_appended():
    assert smaller("./dev fedunlearn evaluate --run r --org a   # MIAs") == (
        "./dev fedunlearn evaluate --run r --org a " + SMALLER[" evaluate "])
    assert smaller("printf 'canary-b-0#%s\\n' 1 2 > f.txt") == "printf 'canary-b-0#%s\\n' 1 2 > f.txt"


@pytest.mark.parametrize("group", list(GROUPS))
def test_documented_commands_run_in_order(group, tiny_model_dir, tmp_path):
    work = _workdir(tmp_path, tiny_model_dir)
    env = dict(os.environ, COLUMNS="200")
    ran = 0
    for name in GROUPS[group]:
        for line in documented_commands(_page(name)):
            if skipped(line, name):
                continue
            start = time.perf_counter()
            done = subprocess.run(["bash", "-euo", "pipefail", "-c", smaller(line)], cwd=work, env=env,
                                  capture_output=True, text=True, timeout=600)
            print(f"{time.perf_counter() - start:6.1f} s  {name}: {line[:100]}")  # shown with pytest -s
            assert done.returncode == 0, (name, line, done.stdout[-2000:], done.stderr[-3000:])
            ran += 1
    if group == "consortium":  # the quickstart's products, and the live request the resumed training applied
        assert (work / "served-adapter" / "adapter_config.json").is_file()
        assert (work / "runs" / "consortium" / "report.html").is_file()
        listed = subprocess.run(["bash", "-c", "./dev fedunlearn requests --run runs/consortium --json"], cwd=work,
                                capture_output=True, text=True, timeout=120)
        import json

        assert [(r["subjects"], r["state"]) for r in json.loads(listed.stdout)] == [(["hospital-a"], "applied")]
    assert ran or group == "others"
