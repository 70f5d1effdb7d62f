#!/usr/bin/env bash
# Run the fedunlearn Flower app with Flower's own CLI (`flwr run`) in simulation mode.
#
#   scripts/flwr-run-local.sh [--num-supernodes N] [flwr run options, e.g. --run-config 'train.rounds=2']
#
# `flwr run .` against Flower's managed local SuperLink would `uv sync` the app's dependencies
# (torch, transformers, ...) into a fresh environment for every run. This script starts a
# SuperLink in simulation mode with that installation disabled (the app runs in this venv),
# points a private FLWR_HOME at it, runs the app, and on exit stops the SuperLink and every process
# it started (SuperExec, simulation) by their PIDs.
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
descendants() {  # PIDs of every process below $1, by parent PID (children first listed)
    local child
    for child in $(ps -o pid= --ppid "$1" 2>/dev/null); do echo "$child"; descendants "$child"; done
}
running() {  # is any of these PIDs a live process (not a zombie)?
    local pid
    for pid in "$@"; do ps -o stat= -p "$pid" 2>/dev/null | grep -qv Z && return 0; done
    return 1
}
cleanup() {
    # The SuperLink's SuperExec runs detached (its own session and process group, PID = group id)
    # and starts the simulation inside that group: stop the SuperLink and every process below it by
    # PID, and each detached group by its id; SIGKILL whatever is left after 10 s.
    local pids pid
    pids="$(descendants "$LINK")"
    kill "$LINK" $pids 2>/dev/null || true
    for pid in $pids; do
        [ "$(ps -o pgid= -p "$pid" 2>/dev/null | tr -d ' ')" = "$pid" ] && kill -- "-$pid" 2>/dev/null || true
    done
    for _ in $(seq 1 50); do
        running "$LINK" $pids || break
        sleep 0.2
    done
    kill -9 "$LINK" $pids 2>/dev/null || true
    wait "$LINK" 2>/dev/null || true
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
# the app's pyproject.toml and component packages only: `flwr run .` would pack (and first walk)
# the whole repository, .venv included, into the FAB
APP="$(python -c 'import sys; from pathlib import Path; from fedunlearn.deploy import LocalDeployment
print(LocalDeployment(Path(sys.argv[1]), Path.cwd(), secure=False).stage_app())' "$WORK")"
flwr run "$APP" fedunlearn-local --stream --federation-config "num-supernodes=$NODES" "$@"
