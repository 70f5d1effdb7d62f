#!/usr/bin/env bash
# Run the fedunlearn Flower app with Flower's own CLI (`flwr run .`) in simulation mode.
#
#   scripts/flwr-run-local.sh [--num-supernodes N] [flwr run options, e.g. --run-config 'train.rounds=2']
#
# `flwr run .` against Flower's managed local SuperLink would `uv sync` the app's dependencies
# (torch, transformers, ...) into a fresh environment for every run. This script starts a
# SuperLink in simulation mode with that installation disabled (the app runs in this venv),
# points a private FLWR_HOME at it, runs the app, and stops the SuperLink by its PID on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${FEDUNLEARN_VENV:-.venv}"
export PATH="$PWD/$VENV/bin:$PATH"
export FLWR_TELEMETRY_ENABLED=0 FLWR_DISABLE_UPDATE_CHECK=1
NODES=4
if [ "${1:-}" = "--num-supernodes" ]; then NODES="$2"; shift 2; fi
WORK="$(mktemp -d "${TMPDIR:-/tmp}/fedunlearn-flwr.XXXXXX")"
export FLWR_HOME="$WORK/flwr-home"
mkdir -p "$FLWR_HOME"
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
HTTP="$(free_port)"  # Flower 1.42 serves every SuperLink API on this one HTTP port
cat > "$FLWR_HOME/config.toml" <<TOML
[superlink]
default = "fedunlearn-local"

[superlink.fedunlearn-local]
address = "127.0.0.1:$HTTP"
insecure = true
TOML
flower-superlink --insecure --simulation --isolation subprocess --disable-runtime-dependency-installation \
    --host 127.0.0.1 --port "$HTTP" \
    --database "$WORK/superlink.db" > "$WORK/superlink.log" 2>&1 &
LINK=$!
cleanup() {
    # the SuperLink and the simulation/app processes it detached (found by this run's port)
    kill "$LINK" 2>/dev/null || true
    wait "$LINK" 2>/dev/null || true
    pkill -f -- "127.0.0.1:$HTTP" 2>/dev/null || true
}
finish() {
    local rc=$?
    cleanup
    if [ "$rc" -eq 0 ]; then rm -rf "$WORK"; else echo "SuperLink log kept in $WORK/superlink.log" >&2; fi
}
trap finish EXIT
for _ in $(seq 1 60); do
    if python3 -c "import socket,sys; s=socket.socket(); sys.exit(s.connect_ex(('127.0.0.1',$HTTP)))"; then break; fi
    sleep 0.5
done
flwr run . fedunlearn-local --stream --federation-config "num-supernodes=$NODES" "$@"
