#!/usr/bin/env bash
# The cost of `fedunlearn forget` as a user pays it: the whole command, by the clock, per method, on
# the real-text scenario (simulations/real-text.toml: 4 organizations, 2 shards, 8 rounds x 2 epochs).
# Usage: benchmarks/clock.sh [WORK_DIR]   (default /tmp/fedunlearn-clock; ~7 minutes on 2 cores)
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
work="${1:-/tmp/fedunlearn-clock}"
F="$here/.venv/bin/fedunlearn"
mkdir -p "$work" && cd "$work" && rm -rf base
/usr/bin/time -f "simulate %e s" "$F" simulate --scenario "$here/simulations/real-text.toml" --out base > sim.log 2>&1
tail -1 sim.log
for m in retrain sisa influence subtract negate; do
  rm -rf "r-$m"; cp -r base "r-$m"
  /usr/bin/time -f "forget $m %e s (capture on)" "$F" forget --run "r-$m" --org licenses --method "$m" > "f-$m.log" 2>&1
  tail -1 "f-$m.log"
  grep -E "this erasure|full retraining" "f-$m.log" | tr -s ' ' | cut -c1-120
done
for m in influence subtract negate; do
  rm -rf "n-$m"; cp -r base "n-$m"
  /usr/bin/time -f "forget $m %e s (--no-capture-before)" "$F" forget --run "n-$m" --org licenses --method "$m" --no-capture-before > "g-$m.log" 2>&1
  tail -1 "g-$m.log"
done
