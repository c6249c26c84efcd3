#!/usr/bin/env bash
# Runs LGNet as several JAX processes on this machine, on CPU devices: the multi-process
# program of a cluster run (coordinator, one batch shard per process, collective
# checkpoints) without a cluster.
#
# Usage: launch/multi_process_local.sh [extra lgnet_jax.main flags]
# It starts NUM_PROCESSES processes of `python -m lgnet_jax.main`, each with
# DEVICES_PER_PROCESS CPU devices, joined through a coordinator on localhost:PORT, and waits
# for all of them. When one fails it stops the others and exits with that one's status.
# Process 0 prints to the terminal, the others to LOG_DIR/process_I.log. Relative paths are
# relative to the repository root; running it again resumes from the last checkpoint.
#
# Settings, from the environment (defaults in brackets):
#   NUM_PROCESSES [2]  DEVICES_PER_PROCESS [1]  PORT [12355]
#   CONFIG [configs/demo.py]  WORKDIR [workdirs/multi_process_local]
#   LOG_DIR [WORKDIR/process_logs]  GRACE_S [30]  seconds between SIGTERM and SIGKILL
# config.train.batch_size must divide by NUM_PROCESSES x DEVICES_PER_PROCESS (the demo's
# batch of 2 fits the default 2 x 1).
set -euo pipefail

case "${1:-}" in
  -h | --help)
    sed -n '2,18s/^# \{0,1\}//p' "${BASH_SOURCE[0]}"
    exit 0
    ;;
esac

NUM_PROCESSES="${NUM_PROCESSES:-2}"
DEVICES_PER_PROCESS="${DEVICES_PER_PROCESS:-1}"
PORT="${PORT:-12355}"
CONFIG="${CONFIG:-configs/demo.py}"
WORKDIR="${WORKDIR:-workdirs/multi_process_local}"
LOG_DIR="${LOG_DIR:-${WORKDIR}/process_logs}"
GRACE_S="${GRACE_S:-30}"

die() {
  echo "multi_process_local.sh: $*" >&2
  exit 2
}

for setting in NUM_PROCESSES DEVICES_PER_PROCESS PORT GRACE_S; do
  [[ "${!setting}" =~ ^[0-9]+$ ]] || die "${setting}=${!setting} is not a whole number"
done
((NUM_PROCESSES >= 1)) || die "NUM_PROCESSES must be at least 1"
((DEVICES_PER_PROCESS >= 1)) || die "DEVICES_PER_PROCESS must be at least 1"
((PORT >= 1 && PORT <= 65535)) || die "PORT=${PORT} is not a TCP port"

cd "$(dirname "${BASH_SOURCE[0]}")/.."
mkdir -p "${LOG_DIR}"

pids=()         # by process id; emptied once reaped
stop_deadline=0 # when set (SECONDS), SIGKILL whatever still runs after it
interrupted=0

# SIGTERM to every process still running (they save and exit); SIGKILL after GRACE_S.
stop_all() {
  local pid
  if ((stop_deadline == 0)); then
    stop_deadline=$((SECONDS + GRACE_S))
    for pid in "${pids[@]}"; do
      if [[ -n "${pid}" ]]; then
        kill -TERM "${pid}" 2>/dev/null || true
      fi
    done
  fi
}

kill_all() {
  local pid
  for pid in "${pids[@]}"; do
    if [[ -n "${pid}" ]]; then
      kill -KILL "${pid}" 2>/dev/null || true
    fi
  done
}

main() {
  local i pid code status=0 remaining=${NUM_PROCESSES}
  local xla_flags="${XLA_FLAGS:+${XLA_FLAGS} }--xla_force_host_platform_device_count=${DEVICES_PER_PROCESS}"
  echo "multi_process_local.sh: ${NUM_PROCESSES} processes x ${DEVICES_PER_PROCESS} CPU devices," \
    "coordinator localhost:${PORT}, workdir ${WORKDIR}, logs of processes 1.. in ${LOG_DIR}"
  for ((i = 0; i < NUM_PROCESSES; i++)); do
    local command=(env JAX_PLATFORMS=cpu "XLA_FLAGS=${xla_flags}"
      python -m lgnet_jax.main "--config=${CONFIG}" "--workdir=${WORKDIR}" --distributed=on
      "--coordinator_address=localhost:${PORT}" "--num_processes=${NUM_PROCESSES}"
      "--process_id=${i}" "$@")
    if ((i == 0)); then
      "${command[@]}" &
    else
      "${command[@]}" >"${LOG_DIR}/process_${i}.log" 2>&1 &
    fi
    pids+=("$!")
  done

  while ((remaining > 0)); do
    for i in "${!pids[@]}"; do
      pid=${pids[i]}
      if [[ -z "${pid}" ]] || kill -0 "${pid}" 2>/dev/null; then
        continue
      fi
      code=0
      wait "${pid}" || code=$?
      pids[i]=""
      remaining=$((remaining - 1))
      if ((code != 0 && status == 0)); then
        status=${code}
        echo "multi_process_local.sh: process ${i} exited with status ${code}; stopping the others" >&2
        if ((i > 0)); then
          echo "multi_process_local.sh: last lines of ${LOG_DIR}/process_${i}.log:" >&2
          tail -n 20 "${LOG_DIR}/process_${i}.log" >&2 || true
        fi
        stop_all
      fi
    done
    if ((stop_deadline > 0 && SECONDS >= stop_deadline)); then
      kill_all
    fi
    if ((remaining > 0)); then
      sleep 1
    fi
  done
  if ((status == 0 && interrupted)); then
    status=130
  fi
  return "${status}"
}

# Ctrl-C or SIGTERM: stop the processes gracefully (main keeps waiting for them); whatever
# is left when this script exits is killed.
trap 'interrupted=1; echo "multi_process_local.sh: stopping" >&2; stop_all' INT TERM
trap kill_all EXIT

main "$@"
