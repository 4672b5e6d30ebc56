#!/usr/bin/env bash
# A local multi-node Ray for development: a head plus N worker "nodes" on this machine.
#   cluster/local_cluster.sh start [N]   (default N=2)   prints the address to use
#   cluster/local_cluster.sh stop
# Then: geoseg predict ... --address 127.0.0.1:6379, or geoseg submit --address http://127.0.0.1:8265 -- ...
set -euo pipefail
cd "$(dirname "$0")/.."
RAY=${RAY:-.venv/bin/ray}
# Jobs run `python -m ...` with the PATH of the head: make it this environment's python.
[[ -d .venv/bin ]] && export PATH="$PWD/.venv/bin:$PATH"
PORT=${GEOSEG_RAY_PORT:-6379}
DASH=${GEOSEG_DASHBOARD_PORT:-8265}
case "${1:-start}" in
  start)
    n=${2:-2}
    "$RAY" start --head --node-ip-address=127.0.0.1 --port="$PORT" --dashboard-host=127.0.0.1 \
      --dashboard-port="$DASH" --num-cpus="${GEOSEG_HEAD_CPUS:-1}" --disable-usage-stats
    for i in $(seq 1 "$n"); do
      "$RAY" start --address="127.0.0.1:$PORT" --node-ip-address=127.0.0.1 \
        --num-cpus="${GEOSEG_WORKER_CPUS:-1}" --disable-usage-stats
    done
    echo "Ray address: 127.0.0.1:$PORT   dashboard / jobs: http://127.0.0.1:$DASH"
    ;;
  stop)
    "$RAY" stop --force
    ;;
  *)
    echo "usage: $0 start [N] | stop" >&2; exit 2 ;;
esac
