"""What the embedded default learns of real text, at each model size: the conditions for measuring forgetting.

For each size (``small``, ``large``): build (or load) the default model and read its manifest
(bits per byte on held-out and never-seen text against uniform and unigram baselines), write the
real-text consortium (:func:`fedunlearn.data.realorgs.real_text_consortium`), fine-tune LoRA with
FedAvg on it with the demo's schedule (:data:`fedunlearn.data.realorgs.DEMO_SCHEDULE`) and measure,
per organization, holdout loss base -> served, bits per byte, and canary exposure against the
never-inserted level (:func:`fedunlearn.cli._learned.learned_rows`).

The fine-tuning is the coordinator's arithmetic without Flower's messaging: each round every
organization trains from the global LoRA state with :func:`~fedunlearn.training.local.fit_local`
(seeded as the ClientApp seeds it) and the states are averaged with
:func:`~fedunlearn.models.average_states` weighted by example counts, as
:mod:`fedunlearn.federation.coordinator` does. So it runs where Flower is not installed (a lent
GPU machine) and its figures say what the model learns, not what Flower costs.

Usage::

    .venv/bin/python benchmarks/bench_realtext.py [--sizes small,large] [--device auto] [--out FILE.json]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))


def fedavg(base, consortium, *, rounds: int, epochs: int, lr: float, targets: str, max_length: int, seed: int = 0,
           batch_size: int = 16, log=print):
    """FedAvg of LoRA over every organization of `consortium`; returns the trained PEFT model."""
    from fedunlearn.models import LoraSpec, average_states, get_lora_state, set_lora_state, wrap_lora
    from fedunlearn.training.local import encode_texts, fit_local

    spec = LoraSpec(r=8, alpha=16, dropout=0.0, target_modules=tuple(targets.split(",")))
    model = wrap_lora(base, spec, seed=seed)
    data = {o.name: encode_texts(base.tokenizer, [r.text for r in o.train], max_length=max_length)
            for o in consortium.organizations}
    state = get_lora_state(model)
    for rnd in range(1, rounds + 1):
        start = time.perf_counter()
        states, weights, losses = [], [], []
        for index, org in enumerate(consortium.organizations):
            set_lora_state(model, state)
            fit = fit_local(model, data[org.name], epochs=epochs, batch_size=batch_size, lr=lr,
                            seed=seed * 1_000_003 + rnd * 1_009 + index)
            states.append(get_lora_state(model))
            weights.append(fit.num_examples)
            losses.append(fit.loss_last_epoch)
        state = average_states(states, weights)
        log(f"  round {rnd}/{rounds}: train loss {sum(losses) / len(losses):.3f} ({time.perf_counter() - start:.1f} s)")
    set_lora_state(model, state)
    return model


DEMO_RECORDS = 400  # fedunlearn.data.realorgs.DEMO_SCHEDULE["records"] (not imported at module load)


def run_size(size: str, device: str, *, rounds: int | None, records: int, log=print) -> dict:
    import torch

    from fedunlearn.cli._learned import learned_rows
    from fedunlearn.data.realorgs import DEMO_SCHEDULE, real_text_consortium
    from fedunlearn.models import BUILD_INFO_FILE, ensure_default_model, load_base_model, pick_device, spec_for_size

    start = time.perf_counter()
    folder = ensure_default_model(spec_for_size(size))
    build_seconds = time.perf_counter() - start
    info = json.loads((folder / BUILD_INFO_FILE).read_text())
    base = load_base_model(folder, device=pick_device(device))
    schedule = dict(DEMO_SCHEDULE)
    consortium = real_text_consortium(records_per_org=records, canaries_per_org=schedule["canaries"],
                                      canary_repeats=schedule["repeats"])
    rounds = rounds or schedule["rounds"]
    log(f"{size}: {info['parameters']:,} parameters on {base.device.device} ({base.device.dtype}); "
        f"{len(consortium.organizations)} organizations x {records} records; {rounds} rounds x "
        f"{schedule['epochs']} epochs at lr {schedule['lr']}")
    start = time.perf_counter()
    served = fedavg(base, consortium, rounds=rounds, epochs=schedule["epochs"], lr=schedule["lr"],
                    targets=schedule["target_modules"], max_length=64, log=log)
    train_seconds = time.perf_counter() - start
    served = served.merge_and_unload() if hasattr(served, "merge_and_unload") else served
    served.eval()
    rows = learned_rows(base.model, served, base.tokenizer, consortium, max_length=64)
    return {
        "size": size,
        "parameters": info["parameters"],
        "device": str(base.device.device),
        "dtype": str(base.device.dtype),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "build": {"seconds_this_call": build_seconds, "pretrain_seconds": info["pretrain"]["seconds"],
                  "pretrain_device": info["pretrain"].get("device", "cpu"), "steps": info["pretrain"]["steps"],
                  "tokens_seen": info["pretrain"]["tokens_seen"], "corpus_bytes": info["corpus"].get("bytes_utf8"),
                  "bits_per_byte": info["bits_per_byte"]},
        "schedule": {**schedule, "rounds": rounds, "records_per_org": records},
        "train_seconds": train_seconds,
        "organizations": [dataclasses.asdict(r) for r in rows],
        "mean_exposure": sum(r.exposure for r in rows) / len(rows),
        "mean_holdout_drop_nats": sum(r.base_loss - r.served_loss for r in rows) / len(rows),
    }


def markdown(results: list[dict]) -> str:
    lines = []
    for res in results:
        lines += [f"### {res['size']}: {res['parameters']:,} parameters, {res['device']} ({res['dtype']})", ""]
        bpb = res["build"]["bits_per_byte"]
        lines += ["| text | uniform | unigram | model |", "|---|---|---|---|"]
        lines += [f"| {k} | {v['uniform']:.3f} | {v['unigram']:.3f} | {v['model']:.3f} |"
                  for k, v in bpb.items() if isinstance(v, dict)]
        lines += ["", f"Pre-training: {res['build']['steps']} steps, {res['build']['tokens_seen']:,} tokens, "
                      f"{res['build']['pretrain_seconds']:.0f} s on {res['build']['pretrain_device']}. FedAvg "
                      f"({res['schedule']['rounds']} rounds x {res['schedule']['epochs']} epochs): "
                      f"{res['train_seconds']:.0f} s.", ""]
        lines += ["| organization | holdout loss base -> served (nats/token) | bits/byte unigram / base -> served "
                  "| canary exposure | never-inserted mean / p95 |", "|---|---|---|---|---|"]
        for r in res["organizations"]:
            lines.append(f"| {r['org']} | {r['base_loss']:.3f} -> {r['served_loss']:.3f} | {r['unigram_bpb']:.2f} / "
                         f"{r['base_bpb']:.2f} -> {r['served_bpb']:.2f} | {r['exposure']:.1f} | "
                         f"{r['never_mean']:.1f} / {r['never_p95']:.1f} |")
        lines += ["", f"Mean exposure {res['mean_exposure']:.1f} bits; mean holdout drop "
                      f"{res['mean_holdout_drop_nats']:.3f} nats/token.", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="small", help="comma-separated: small,large")
    ap.add_argument("--device", default="auto", help="auto | cpu | cuda")
    ap.add_argument("--rounds", type=int, default=None, help="FedAvg rounds (default: the demo's)")
    ap.add_argument("--records", type=int, default=DEMO_RECORDS, help="training records per organization")
    ap.add_argument("--out", type=Path, default=None, help="write JSON here (and .md beside it)")
    args = ap.parse_args(argv)
    results = [run_size(size, args.device, rounds=args.rounds, records=args.records)
               for size in args.sizes.split(",")]
    doc = {"machine": {"platform": platform.platform(), "python": platform.python_version(),
                       "processor": platform.processor()}, "results": results}
    text = markdown(results)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")
        args.out.with_suffix(".md").write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
