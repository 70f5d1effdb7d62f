"""Short scripted GPU check of the benchmark suite: the same code as on the CPU, on CUDA (bf16).

Runs on one GPU in well under 5 minutes with a small local model folder (default: the embedded
default model; pass a larger Hugging Face causal-LM folder with ``--model``):

1. CUDA is present and the base model loads in bf16 on it (fails loudly otherwise);
2. ``benchmarks/run.py --device cuda`` with ``training`` (fit_local against a plain PyTorch loop, both
   on the GPU) and, in ``--quick`` form, ``erasure`` (retrain, SISA, negate; SISA must equal
   retraining), ``dp`` and ``scale`` (in-process grid), written to ``benchmarks/results/gpu/RESULTS.md``.

Usage::

    .venv/bin/python benchmarks/gpu_check.py [--model /models/qwen2.5-0.5b] [--out benchmarks/results/gpu]

Exit status 0 when every check passed. This file was written without a GPU at hand: the CUDA path is
the CPU path with ``device = cuda`` (see benchmarks/suite.py), it has not been run on a GPU yet.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="", help="local model folder (default: the embedded default)")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "gpu")
    args = ap.parse_args()
    import torch

    if not torch.cuda.is_available():
        print("gpu_check: no CUDA device visible to torch (torch.cuda.is_available() is False); "
              "run it on a machine with a GPU and a CUDA build of torch", file=sys.stderr)
        return 2
    from fedunlearn.models import load_base_model, pick_device, resolve_model_path

    start = time.perf_counter()
    base = load_base_model(str(resolve_model_path(args.model or None)), device=pick_device("cuda"))
    dtype = next(base.model.parameters()).dtype
    print(f"base model on {base.device.device} in {dtype} ({torch.cuda.get_device_name(0)})", flush=True)
    if base.device.device.type != "cuda" or dtype not in (torch.bfloat16, torch.float16):
        print(f"gpu_check: expected the base on CUDA in bf16/fp16, got {base.device.device} {dtype}", file=sys.stderr)
        return 1
    import run

    doc = run.main(["--device", "cuda", "--model", args.model, "--grid", "local", "--only", "training",
                    "--out", str(args.out / "RESULTS.md")])
    doc = run.main(["--device", "cuda", "--model", args.model, "--grid", "local", "--quick", "--merge",
                    "--only", "erasure,dp,scale", "--scale-points", "4:1.0:1:2,8:0.5:2:2",
                    "--out", str(args.out / "RESULTS.md")])
    sections = doc["sections"]
    problems = []
    if sections["erasure"]["methods"]["sisa"]["kl_to_retrain"] > 1e-3:
        problems.append("SISA differs from retraining on the GPU")
    problems += [f"scale point {p['orgs']}: verify failed" for p in sections["scale"]["points"]
                 if not (p["verify_before"] and p["verify_after"])]
    problems += [f"scale point {f['orgs']} failed: {f['error'][-200:]}" for f in sections["scale"]["failed"]]
    print(f"gpu_check: {time.perf_counter() - start:.0f} s; training ratio {doc['sections'].get('training', {}).get('ratio')}",
          flush=True)
    for p in problems:
        print(f"FAIL {p}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
