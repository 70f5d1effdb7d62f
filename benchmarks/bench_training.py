"""Local training throughput and Flower's per-round overhead (foundation benchmark).

1. tokens/s of the client's local LoRA training (``fedunlearn.training.local.fit_local`` through
   ``OrganizationClient``) against a plain PyTorch loop (HF ``labels=`` loss, AdamW) on the same
   model, LoRA shape, data and batches. Bar: ratio >= 0.8.
2. Flower's per-round overhead in simulation: round wall time minus client compute, from a real
   run through Flower's simulation engine (Ray), 4 organizations, 3 rounds.

Usage::

    ./dev python benchmarks/bench_training.py [--out benchmarks/results/training.md]

Prints the numbers and writes them (with the machine description) as Markdown and JSON.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def machine() -> dict:
    cpu = platform.processor() or "unknown"
    with contextlib.suppress(OSError):  # no /proc/cpuinfo (not Linux): keep platform.processor()
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    import os

    import flwr
    import peft
    import transformers

    return {
        "cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__,
        "transformers": transformers.__version__, "peft": peft.__version__, "flwr": flwr.__version__,
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
    }


def plain_loop(model, data, *, epochs: int, batch_size: int, lr: float, seed: int) -> float:
    """The reference: the textbook loop, HF's token-averaged loss, no per-sequence bookkeeping."""
    params = [p for p in model.parameters() if p.requires_grad]
    device = params[0].device
    opt = torch.optim.AdamW(params, lr=lr)
    gen = torch.Generator().manual_seed(seed)
    model.train()
    n = len(data)
    start = time.perf_counter()
    for _ in range(epochs):
        order = torch.randperm(n, generator=gen)
        for i in range(0, n, batch_size):
            idx = order[i : i + batch_size]
            mask = data.attention_mask[idx]
            width = int(mask.sum(dim=1).max())
            ids = data.input_ids[idx, :width]
            mask = mask[:, :width]
            labels = ids.masked_fill(mask == 0, -100)
            ids, mask, labels = ids.to(device), mask.to(device), labels.to(device)
            loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def bench_local(repeats: int = 3, settings=None) -> dict:
    """fit_local against :func:`plain_loop` on organization 0 of ``settings`` (default: the defaults).

    ``settings.model`` picks the base (a local folder, or the embedded default) and the device
    (``cuda`` runs both loops on the GPU in the model's dtype, e.g. bf16).
    """
    from fedunlearn.config import Settings
    from fedunlearn.federation.coordinator import initial_state
    from fedunlearn.models import resolve_model_path, set_cpu_threads
    from fedunlearn.runs import RunFolder
    from fedunlearn.training.client import OrganizationClient
    from fedunlearn.training.local import fit_local

    settings = settings or Settings()
    base_path = resolve_model_path(settings.model.path or None)
    settings = settings.replace(model={"path": str(base_path)})
    with tempfile.TemporaryDirectory() as tmp:
        run = RunFolder.create_or_resume(Path(tmp) / "run", settings, base_path)
        state = initial_state(run, 0)
    client = OrganizationClient.from_node(settings, {"partition-id": 0})
    data = client.train_data
    t = settings.train
    ours, plain = [], []
    for r in range(repeats):
        model = client.model_with(state)
        if client.base.device.device.type == "cpu":
            set_cpu_threads(model, settings.model.threads)
        res = fit_local(model, data, epochs=t.local_epochs, batch_size=t.batch_size, lr=t.lr, seed=r)
        ours.append(res.tokens / res.seconds)
        model = client.model_with(state)
        seconds = plain_loop(model, data, epochs=t.local_epochs, batch_size=t.batch_size, lr=t.lr, seed=r)
        plain.append(res.tokens / seconds)  # same batches, so the same tokens
    return {
        "device": str(client.base.device.device), "model": str(base_path),
        "records": len(data), "epochs": t.local_epochs, "batch_size": t.batch_size,
        "threads": torch.get_num_threads(),
        "fedunlearn_tokens_per_s": statistics.median(ours), "plain_tokens_per_s": statistics.median(plain),
        "ratio": statistics.median(ours) / statistics.median(plain),
        "all_fedunlearn": ours, "all_plain": plain,
    }


def bench_rounds(rounds: int = 3) -> dict:
    from fedunlearn.config import Settings
    from fedunlearn.federation.simulation import simulate
    from fedunlearn.ledger import Ledger

    settings = Settings().replace(train={"rounds": rounds})
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        report = simulate(settings, Path(tmp) / "run")
        total = time.perf_counter() - start
        rows = []
        with Ledger.open(report.run_dir) as ledger:
            for summary in report.rounds:
                ckpt = [c for c in ledger.chain(summary.shard) if c.round == summary.round][0]
                compute = [c.metrics.get("seconds", 0.0) for c in ledger.contributions(ckpt.id)]
                rows.append({
                    "round": summary.round, "wall_s": summary.seconds, "client_compute_sum_s": sum(compute),
                    "client_compute_max_s": max(compute), "overhead_s": summary.seconds - sum(compute),
                })
    return {"organizations": len(settings.organizations), "rounds": rows, "run_total_s": total,
            "mean_overhead_s": statistics.mean(r["overhead_s"] for r in rows),
            "mean_overhead_warm_s": statistics.mean(r["overhead_s"] for r in rows[1:]) if len(rows) > 1 else None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "training.md")
    parser.add_argument("--skip-simulation", action="store_true")
    args = parser.parse_args()
    result = {"machine": machine(), "date": time.strftime("%Y-%m-%d"), "local": bench_local()}
    loc = result["local"]
    print(f"local LoRA training: fedunlearn {loc['fedunlearn_tokens_per_s']:.0f} tok/s, plain loop "
          f"{loc['plain_tokens_per_s']:.0f} tok/s, ratio {loc['ratio']:.2f} (bar >= 0.8)")
    if not args.skip_simulation:
        result["simulation"] = bench_rounds()
        sim = result["simulation"]
        for r in sim["rounds"]:
            print(f"round {r['round']}: wall {r['wall_s']:.2f} s, client compute {r['client_compute_sum_s']:.2f} s, "
                  f"overhead {r['overhead_s']:.2f} s")
        print(f"whole simulated run (Ray start-up included): {sim['run_total_s']:.1f} s")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    m = result["machine"]
    lines = [
        "# Local training throughput and Flower round overhead",
        "",
        f"Measured {result['date']} on {m['cpu']} ({m['cores']} cores), Python {m['python']}, torch {m['torch']}, "
        f"transformers {m['transformers']}, peft {m['peft']}, flwr {m['flwr']}; GPU: {m['cuda'] or 'none'}; "
        f"load average at start {m['load_average_at_start']} (other work shared the 2 cores).",
        "Command: `./dev python benchmarks/bench_training.py`. Model: the embedded default (0.39M parameters), "
        f"LoRA r=8 on q/k/v/o; one organization's {loc['records']} records, {loc['epochs']} epochs, batch "
        f"{loc['batch_size']}, torch threads {loc['threads']}.",
        "",
        "| loop | tokens/s (median of 3) |",
        "|---|---|",
        f"| fedunlearn `fit_local` (per-sequence loss) | {loc['fedunlearn_tokens_per_s']:.0f} |",
        f"| plain PyTorch loop (HF `labels=` loss) | {loc['plain_tokens_per_s']:.0f} |",
        f"| **ratio** (bar >= 0.8) | **{loc['ratio']:.2f}** |",
    ]
    if "simulation" in result:
        sim = result["simulation"]
        lines += [
            "",
            f"Flower simulation engine (Ray, one actor), {sim['organizations']} organizations, default settings:",
            "",
            "| round | round wall s | client compute s (sum) | overhead s |",
            "|---|---|---|---|",
        ]
        lines += [f"| {r['round']} | {r['wall_s']:.2f} | {r['client_compute_sum_s']:.2f} | {r['overhead_s']:.2f} |"
                  for r in sim["rounds"]]
        lines += [
            "",
            f"Overhead = round wall time (send, client work, receive, aggregate, commit to the ledger) minus the "
            f"clients' own training seconds. Mean {sim['mean_overhead_s']:.2f} s per round; the first round "
            "includes each ClientApp's first import and model load. The whole run including Ray start-up took "
            f"{sim['run_total_s']:.1f} s.",
        ]
    args.out.write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
