#!/usr/bin/env bash
# A multi-host run on one machine: N lmim processes on this machine's CPU, D virtual devices each,
# joined by JAX's distributed runtime over 127.0.0.1 (how tests/test_multihost.py checks that two
# processes x 4 devices train exactly like one process x 8).
#
#   bash launch/local.sh [--dry-run] [--processes N] [--devices D] [--port P] [--logs DIR] -- \
#       .venv/bin/python -m lmim.train --config configs/lmim_demo.py --workdir workdirs/demo2
#
# Process 0 streams to this terminal; process i>0 writes DIR/process_<i>.log (DIR defaults to a new
# temporary folder). SIGTERM/SIGINT are forwarded to every process (each saves and exits 0). The
# exit status is the first non-zero one of the processes (0 when all succeed).
set -euo pipefail
processes=2 devices=4 port="" logs="" dry_run=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    --dry-run) dry_run=1; shift ;;
    --processes) processes="$2"; shift 2 ;;
    --devices) devices="$2"; shift 2 ;;
    --port) port="$2"; shift 2 ;;
    --logs) logs="$2"; shift 2 ;;
    --) shift; break ;;
    *) echo "launch/local.sh: unknown option $1 (put the command after --)" >&2; exit 2 ;;
  esac
done
if [[ $# -eq 0 ]]; then
  echo "launch/local.sh: no command given; usage: bash launch/local.sh [options] -- python -m lmim.train ..." >&2
  exit 2
fi
if ! [[ "$processes" =~ ^[1-9][0-9]*$ && "$devices" =~ ^[1-9][0-9]*$ ]]; then
  echo "launch/local.sh: --processes and --devices must be positive integers (got $processes, $devices)" >&2
  exit 2
fi
if [[ -z "$port" ]]; then
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
fi

env_of() {  # the environment of process $1
  echo "JAX_PLATFORMS=cpu JAX_NUM_CPU_DEVICES=$devices LMIM_COORDINATOR=127.0.0.1:$port" \
       "LMIM_NUM_PROCESSES=$processes LMIM_PROCESS_ID=$1"
}

if [[ $dry_run -eq 1 ]]; then
  logs=${logs:-<a new temporary folder>}
  for ((i = 0; i < processes; i++)); do
    out=$([[ $i -eq 0 ]] && echo "(this terminal)" || echo "> $logs/process_$i.log")
    echo "$(env_of "$i") $* $out"
  done
  exit 0
fi

logs=${logs:-$(mktemp -d -t lmim_local.XXXXXX)}
mkdir -p "$logs"
pids=()
for ((i = 0; i < processes; i++)); do
  if [[ $i -eq 0 ]]; then
    env $(env_of "$i") "$@" &
  else
    env $(env_of "$i") "$@" > "$logs/process_$i.log" 2>&1 &
  fi
  pids+=($!)
done
forward() { kill -s "$1" "${pids[@]}" 2>/dev/null || true; }
trap 'forward TERM' TERM
trap 'forward INT' INT

status=0
for ((i = 0; i < processes; i++)); do
  # `wait` returns early when a trapped signal arrives: wait again until the process is gone.
  while true; do
    set +e
    wait "${pids[$i]}"
    rc=$?
    set -e
    kill -0 "${pids[$i]}" 2>/dev/null || break
  done
  if [[ $rc -ne 0 && $status -eq 0 ]]; then
    status=$rc
    echo "launch/local.sh: process $i exited with status $rc (logs: $logs); stopping the others" >&2
    forward TERM
  fi
done
exit $status
