"""Full evaluation of one erasure on the demo scenario (bar: at most 2 minutes on 2 CPU cores).

Builds the demo run (``fedunlearn demo``: 4 organizations, 3 rounds, 1 shard), erases org-1 with
``fedunlearn forget`` (sisa; the erasure also captures the pre-erasure model's metrics), then times
``evaluate_erasure`` with the default options on a fresh copy (no cached retrain references):
wall time, CPU seconds of this process and of the retrain process, and the load average (the
machine may be shared: CPU seconds are what a dedicated 2-core machine would need, about,
since each process runs one thread). Usage::

    ./dev python benchmarks/bench_evaluate.py [--run ERASED_DEMO_RUN] [--out benchmarks/results/evaluate.md]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SUBJECT = "org-1"
BAR_SECONDS = 120.0


def erased_demo(work: Path) -> Path:
    """The demo run with org-1 erased, made with the CLI as in the README."""
    run = work / "demo"
    exe = [str(Path(sys.executable).parent / "fedunlearn")]
    subprocess.run(exe + ["demo", "--out", str(run)], check=True)
    subprocess.run(exe + ["forget", "--run", str(run), "--org", SUBJECT], check=True)
    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, help="an erased demo run (default: build one, ~4 min)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "evaluate.md")
    args = parser.parse_args()

    from fedunlearn.evaluate.suite import EvaluationOptions, evaluate_erasure

    with tempfile.TemporaryDirectory() as tmp:
        source = args.run or erased_demo(Path(tmp))
        run = Path(tmp) / "copy"
        shutil.copytree(source, run)
        shutil.rmtree(run / "evaluation" / "retrain", ignore_errors=True)  # time the retrains too
        load_start = os.getloadavg()
        wall, cpu = time.perf_counter(), time.process_time()
        result = evaluate_erasure(run, SUBJECT, EvaluationOptions())
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        child = resource.getrusage(resource.RUSAGE_CHILDREN)
        child_cpu = child.ru_utime + child.ru_stime
        load_end = os.getloadavg()
    from bench_training import machine  # this script's folder is on sys.path

    info = machine() | {"load_average_start": list(load_start), "load_average_end": list(load_end)}
    numbers = {"wall_seconds": wall, "cpu_seconds_main": cpu, "cpu_seconds_retrain_process": child_cpu,
               "bar_seconds": BAR_SECONDS, "timings": dict(result.timings),
               "models": {m.name: m.seconds for m in result.models},
               "captured_before": [c["name"] for c in result.captured]}
    print(json.dumps(numbers | {"machine": info}, indent=1))
    rows = "\n".join(f"| {k} | {v:.1f} |" for k, v in result.timings.items())
    models = "\n".join(f"| {k} | {v:.1f} |" for k, v in numbers["models"].items())
    verdict = "met" if wall <= BAR_SECONDS else "NOT met on this run"
    text = f"""# Full evaluation of one erasure on the demo scenario

`./dev python benchmarks/bench_evaluate.py` — `fedunlearn demo` (4 organizations, 3 rounds, 1 shard),
`fedunlearn forget --org {SUBJECT}` (sisa), then `evaluate_erasure` with the default options
(3 retrain seeds, 10 never-inserted canaries, relearning and 8/4-bit quantization attacks), retrain
references not cached.

Machine: {info['cores']} cores ({info['cpu']}), Python {info['python']}, torch {info['torch']}; load average
{load_start[0]:.1f} at the start, {load_end[0]:.1f} at the end (a shared machine: other jobs ran meanwhile).

| measure | seconds |
|---|---|
| wall time | {wall:.1f} |
| CPU, main process | {cpu:.1f} |
| CPU, retrain process (in parallel) | {child_cpu:.1f} |

Bar: at most {BAR_SECONDS:.0f} s on 2 CPU cores — {verdict} (wall time). Each process runs one
intra-op thread, so on a dedicated 2-core machine the wall time is about the larger of the two CPU
figures plus start-up.

Phases (wall seconds, main process):

| phase | seconds |
|---|---|
{rows}

Models (wall seconds each):

| model | seconds |
|---|---|
{models}
"""
    args.out.write_text(text, encoding="utf-8")
    args.out.with_suffix(".json").write_text(json.dumps(numbers | {"machine": info}, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
