#!/usr/bin/env bash
# A real Flower deployment on this machine: SuperLink (TLS, SuperNode authentication) and one
# SuperNode per organization, then `flwr run` of the fedunlearn app against it.
#
#   scripts/deploy/local.sh WORK ORG=DATA_FOLDER [ORG=DATA_FOLDER ...] -- [run config, e.g. 'run.dir="runs/x"' 'train.rounds=2']
#
# Keys and certificates are generated into WORK (never commit them). Every process is stopped by
# its PID (process group) when the script exits, also on error or Ctrl-C.
# FEDUNLEARN_ISOLATION=warm keeps ClientApp processes warm (see fedunlearn/deploy/warm.py).
set -euo pipefail
cd "$(dirname "$0")/../.."
VENV="${FEDUNLEARN_VENV:-.venv}"
export FLWR_TELEMETRY_ENABLED=0 FLWR_DISABLE_UPDATE_CHECK=1
WORK="$1"; shift
ORGS=()
while [ $# -gt 0 ] && [ "$1" != "--" ]; do ORGS+=(--org "$1"); shift; done
[ "${1:-}" = "--" ] && shift
CONFIG=()
for kv in "$@"; do CONFIG+=(-c "$kv"); done
trap '"$VENV/bin/fedunlearn" deploy down --work "$WORK" || true' EXIT
"$VENV/bin/fedunlearn" deploy up --work "$WORK" "${ORGS[@]}" --isolation "${FEDUNLEARN_ISOLATION:-subprocess}"
"$VENV/bin/fedunlearn" deploy run --work "$WORK" "${CONFIG[@]}"
