"""Scale: simulated organizations through Flower's simulation engine (Ray), sampled per round.

One *point* = N organizations, a per-round sample fraction f (``topology.sample-fraction``), S
shards and R rounds, trained by :func:`fedunlearn.federation.simulation.simulate` in a fresh
process (so that its peak memory is its own). Measured per point:

- wall time per round (from the ledger's commit times: training, commit and the evaluation of
  the previous round) and of the whole run including Ray's start-up;
- peak RSS of the server process (ServerApp, ledger, audit log and Flower's simulation driver
  all live in it; sampled every 0.2 s) and of the Ray actors (the simulated organizations);
- ledger storage (blobs and SQLite) after training, per round, and after a compaction with the
  default policy (drop the client updates; only ``subtract``, ``negate`` and ``influence`` read
  them), with ``fedunlearn verify`` run before and after the compaction.

Usage (one point, JSON on stdout's last line)::

    .venv/bin/python benchmarks/bench_scale.py --orgs 100 --fraction 1.0 --shards 1 --rounds 5
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def scale_settings(orgs: int, fraction: float, shards: int, rounds: int, run_dir: Path, *,
                   model: str = "", device: str = "cpu"):
    """Small organizations (16 records, 8 held out), one local epoch: the cost is the federation's."""
    from fedunlearn.config import OrganizationSettings, Settings
    from fedunlearn.models import resolve_model_path

    names = tuple(OrganizationSettings(name=f"org-{i:04d}") for i in range(orgs))
    return Settings(organizations=names).replace(
        run={"dir": str(run_dir), "name": f"scale-{orgs}", "discovery_timeout": 120.0 + 2.0 * orgs},
        model={"path": str(resolve_model_path(model or None)), "device": device},
        data={"records_per_org": 16, "holdout_per_org": 8, "canaries_per_org": 1, "canary_repeats": 1,
              "never_inserted": 5, "public_documents": 20, "max_length": 48},
        train={"rounds": rounds, "local_epochs": 1, "batch_size": 16},
        topology={"shards": shards, "sample_fraction": fraction},
    )


class _Peak:
    """Peak RSS of this process and of its descendants (Ray actors), polled in a thread."""

    def __init__(self, interval: float = 0.2) -> None:
        import psutil

        self._me = psutil.Process()
        self.server = self._me.memory_info().rss
        self.start = self.server
        self.children = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(interval,), daemon=True)

    def _run(self, interval: float) -> None:
        import psutil

        while not self._stop.wait(interval):
            self.server = max(self.server, self._me.memory_info().rss)
            total = 0
            for p in self._me.children(recursive=True):
                try:
                    if "ray::" in " ".join(p.cmdline()[:1]) or "ClientAppActor" in p.name():
                        total += p.memory_info().rss
                except psutil.Error:
                    continue
            self.children = max(self.children, total)

    def __enter__(self) -> _Peak:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def _round_walls(ledger, shards: int) -> list[float]:
    """Seconds between consecutive round commits (max over shards), from the ledger's timestamps."""
    walls = []
    chains = [ledger.chain(s) for s in range(shards)]
    rounds = min(len(c) for c in chains) - 1
    for r in range(1, rounds + 1):
        walls.append(max((datetime.fromisoformat(c[r].created) - datetime.fromisoformat(c[r - 1].created))
                         .total_seconds() for c in chains))
    return walls


def run_point(orgs: int, fraction: float, shards: int, rounds: int, work: Path, *, model: str = "",
              device: str = "cpu", compact: bool = True, grid=None) -> dict:
    """Train one scale point into ``work`` (in this process) and measure it.

    ``grid``: None runs Flower's simulation engine (Ray); a callable ``grid(settings)`` returning a
    Flower Grid (e.g. the in-process grid of ``tests/localgrid.py``) trains over it instead.
    """
    from fedunlearn.certify.verify_run import verify_run
    from fedunlearn.federation.simulation import simulate
    from fedunlearn.certify.compaction import compact_run
    from fedunlearn.ledger import CompactionPolicy, Ledger

    run_dir = work / f"scale-{orgs}-{shards}-{fraction}"
    settings = scale_settings(orgs, fraction, shards, rounds, run_dir, model=model, device=device)
    load_start = os.getloadavg()
    with _Peak() as peak:
        start = time.perf_counter()
        if grid is None:
            report = simulate(settings, run_dir)
        else:
            from fedunlearn.federation.simulation import prepare_simulation
            from fedunlearn.federation.workflow import train_workflow

            settings = prepare_simulation(settings, run_dir)
            report = train_workflow(grid(settings), settings)
        total = time.perf_counter() - start
    out: dict = {"grid": "ray" if grid is None else "local", "orgs": orgs, "fraction": fraction, "shards": shards, "rounds": rounds, "device": device,
                 "total_s": total, "server_rss_start_mb": peak.start / 2**20, "server_rss_peak_mb": peak.server / 2**20,
                 "actors_rss_peak_mb": peak.children / 2**20, "load_average_start": list(load_start),
                 "load_average_end": list(os.getloadavg())}
    with Ledger.open(report.run_dir) as ledger:
        walls = _round_walls(ledger, shards)
        stats = ledger.stats()
        trained = [len(ledger.contributions(c.id)) for s in range(shards) for c in ledger.chain(s)[1:]]
    out |= {"round_wall_s": walls, "round_wall_mean_s": sum(walls[1:] or walls) / len(walls[1:] or walls),
            "updates": stats["updates"], "trained_per_round": sum(trained) / rounds,
            "blob_bytes": stats["blob_bytes"], "database_bytes": stats["database_bytes"],
            "ledger_bytes": stats["blob_bytes"] + stats["database_bytes"],
            "ledger_bytes_per_round": (stats["blob_bytes"] + stats["database_bytes"]) / rounds}
    if compact:
        before = verify_run(report.run_dir)
        done = compact_run(report.run_dir, CompactionPolicy())  # what `fedunlearn ledger compact` does: logged
        with Ledger.open(report.run_dir) as ledger:
            database = ledger.stats()["database_bytes"]
        after = verify_run(report.run_dir)
        out |= {"compaction": done.as_dict() | {"ledger_bytes_after": done.bytes_after + database},
                "verify_before": before.ok, "verify_after": after.ok,
                "verify_problems": before.problems + after.problems}
    return out


def run_point_subprocess(orgs: int, fraction: float, shards: int, rounds: int, *, model: str = "",
                         device: str = "cpu", timeout: float = 3600.0) -> dict:
    """:func:`run_point` in a fresh Python process (its own peak memory and its own Ray)."""
    import subprocess

    cmd = [sys.executable, str(Path(__file__).resolve()), "--orgs", str(orgs), "--fraction", str(fraction),
           "--shards", str(shards), "--rounds", str(rounds), "--device", device]
    if model:
        cmd += ["--model", model]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stdout + proc.stderr)[-3000:]
        raise RuntimeError(f"scale point {orgs} orgs failed (exit {proc.returncode}):\n{tail}")
    return json.loads(lines[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--orgs", type=int, required=True)
    ap.add_argument("--fraction", type=float, default=1.0)
    ap.add_argument("--shards", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--model", default="")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--work", type=Path, default=None)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-scale-", dir=args.work) as tmp:
        point = run_point(args.orgs, args.fraction, args.shards, args.rounds, Path(tmp), model=args.model,
                          device=args.device)
    print(json.dumps(point), flush=True)


if __name__ == "__main__":
    main()
