#!/usr/bin/env bash
# Issue 14 on a lent GPU: build both sizes of the embedded default on CUDA (bf16), then
# benchmarks/bench_realtext.py at both sizes. Needs torch, transformers, peft, tokenizers, typer
# and rich (not Flower: the benchmark runs the coordinator's FedAvg arithmetic in process).
# Usage: scripts/gpu-realtext.sh [OUT_DIR]   (default benchmarks/results/gpu)
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-benchmarks/results/gpu}"
export FEDUNLEARN_CACHE="${FEDUNLEARN_CACHE:-/tmp/fedunlearn-cache}" PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
py="${PYTHON:-python3}"
fedunlearn() { "$py" -c 'import sys; from fedunlearn.cli import run; sys.argv = ["fedunlearn", *sys.argv[1:]]; run()' "$@"; }
nvidia-smi -L || true
for size in small large; do
    start=$(date +%s)
    fedunlearn model build --size "$size"
    echo "model build --size $size: $(( $(date +%s) - start )) s by the clock"
done
"$py" benchmarks/bench_realtext.py --sizes small,large --device cuda --out "$out/realtext.json"
