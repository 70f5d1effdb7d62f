#!/usr/bin/env bash
# Scripted GPU check of the benchmark suite (< 5 min on one H200): see benchmarks/gpu_check.py.
# Usage: scripts/gpu-check.sh [--model /path/to/local/hf-model]
set -euo pipefail
cd "$(dirname "$0")/.."
exec timeout 300 .venv/bin/python benchmarks/gpu_check.py "$@"
