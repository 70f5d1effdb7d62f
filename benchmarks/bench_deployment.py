"""Per-message cost of a real Flower deployment against simulation, for the same work.

Three organizations, the tiny test model, ``--rounds`` rounds of one local epoch each, run:

1. ``simulation``: Flower's simulation engine (Ray), one process for every ClientApp;
2. ``deployment``: SuperLink + 3 SuperNodes on 127.0.0.1 with TLS and node authentication,
   Flower's default isolation (a fresh ``flwr-clientapp`` process per message);
3. ``deployment-warm``: the same, with the SuperLink and the SuperNodes started with
   ``--isolation process`` and one ``fedunlearn.deploy.warm`` process serving all of them
   (torch/transformers/peft imported once; a fork per ServerApp run and per message).

A round's wall time is the interval between two consecutive commits of the shard in the ledger
(rounds 2..R: one ``train`` and one ``evaluate`` exchange with every organization); its client
compute is the longest local fit of that round (the ``seconds`` the organizations report);
overhead = wall time - client compute. Usage::

    .venv/bin/python benchmarks/bench_deployment.py [--rounds 4] [--modes simulation,deployment,deployment-warm]

Writes ``benchmarks/results/deployment.md`` and ``.json`` with the machine description.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

sys.path.insert(0, str(ROOT / "benchmarks"))
from bench_training import machine  # noqa: E402

ORGS = ("org-0", "org-1", "org-2")


def _config(run_dir: Path, model: Path, rounds: int) -> dict:
    return {"run.dir": str(run_dir), "model.path": str(model), "model.device": "cpu", "model.threads": 1,
            "organizations.names": ",".join(ORGS), "train.rounds": rounds, "train.local-epochs": 1,
            "train.batch-size": 8, "data.records-per-org": 32, "data.holdout-per-org": 8, "data.max-length": 32,
            "run.discovery-timeout": 300.0}


def _rounds(run_dir: Path) -> list[dict]:
    from fedunlearn.ledger import Ledger

    rows = []
    with Ledger.open(run_dir) as ledger:
        chain = ledger.chain(0)
        times = [dt.datetime.fromisoformat(c.created) for c in chain]
        for i in range(2, len(chain)):
            compute = [c.metrics.get("seconds", 0.0) for c in ledger.contributions(chain[i].id)]
            wall = (times[i] - times[i - 1]).total_seconds()
            rows.append({"round": chain[i].round, "wall_s": wall, "client_compute_max_s": max(compute),
                         "overhead_s": wall - max(compute)})
    return rows


def run_mode(mode: str, model: Path, work: Path, rounds: int) -> dict:
    """Run one mode in ``work`` and return its timings."""
    from fedunlearn.config import settings_from_flat

    run_dir = work / "run"
    start = time.perf_counter()
    if mode == "simulation":
        from fedunlearn.federation.simulation import simulate

        simulate(settings_from_flat(_config(run_dir, model, rounds)), run_dir)
    else:
        from fedunlearn.data.io import save_consortium
        from fedunlearn.data.synthetic import generate_consortium
        from fedunlearn.deploy import LocalDeployment
        settings = settings_from_flat(_config(run_dir, model, rounds))
        d = settings.data
        save_consortium(generate_consortium(organizations=ORGS, records_per_org=d.records_per_org,
                                            holdout_per_org=d.holdout_per_org, seed=0), work / "orgs")
        isolation = "warm" if mode.endswith("warm") else "subprocess"
        with LocalDeployment(work / "deploy", ROOT, secure=True, isolation=isolation) as dep:
            dep.prepare()
            dep.start_superlink()
            dep.register(*ORGS)
            for org in ORGS:
                dep.start_supernode(org, work / "orgs" / org)
            done = dep.run(_config(run_dir, model, rounds), timeout=1800)
            if done.returncode != 0:
                raise RuntimeError(f"{mode}: flwr run failed: {done.stdout[-1500:]}{done.stderr[-1500:]}")
    rows = _rounds(run_dir)
    return {"mode": mode, "total_s": time.perf_counter() - start, "rounds": rows,
            "mean_wall_s": statistics.mean(r["wall_s"] for r in rows),
            "mean_client_compute_s": statistics.mean(r["client_compute_max_s"] for r in rows),
            "mean_overhead_s": statistics.mean(r["overhead_s"] for r in rows)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--modes", default="simulation,deployment,deployment-warm")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "deployment.md")
    args = parser.parse_args()
    from fedunlearn.models import DefaultModelSpec, ensure_default_model
    from tests.conftest import TINY_SPEC_KW

    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    os.environ.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-deploy-") as tmp:
        model = ensure_default_model(DefaultModelSpec(**TINY_SPEC_KW), cache_dir=Path(tmp) / "cache", progress=False)
        for mode in args.modes.split(","):
            res = run_mode(mode, model, Path(tmp) / mode, args.rounds)
            results.append(res)
            print(f"{mode}: round wall {res['mean_wall_s']:.2f} s, client compute {res['mean_client_compute_s']:.2f} s, "
                  f"overhead {res['mean_overhead_s']:.2f} s; whole run {res['total_s']:.1f} s", flush=True)
    load = os.getloadavg()
    doc = {"machine": machine(), "load_average_after": load, "rounds": args.rounds, "organizations": len(ORGS),
           "results": results}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    args.out.write_text(markdown(doc), encoding="utf-8")
    print(json.dumps(doc["machine"]))


def markdown(doc: dict) -> str:
    """The results as a Markdown report."""
    lines = ["# Deployment vs simulation: per-round and per-message cost", "",
             f"Machine: `{json.dumps(doc['machine'])}`; load average after the runs: "
             f"{', '.join(f'{x:.1f}' for x in doc['load_average_after'])} (a shared machine: other jobs ran too).",
             f"{doc['organizations']} organizations, tiny model, {doc['rounds']} rounds of one local epoch; "
             "rounds 2.. measured (each: one train and one evaluate exchange).", "",
             "| mode | round wall s | client compute s | overhead s | per message s | whole run s |",
             "|---|---|---|---|---|---|"]
    for r in doc["results"]:
        lines.append(f"| {r['mode']} | {r['mean_wall_s']:.2f} | {r['mean_client_compute_s']:.2f} | "
                     f"{r['mean_overhead_s']:.2f} | {r['mean_overhead_s'] / 2:.2f} | {r['total_s']:.1f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
