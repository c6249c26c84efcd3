#!/usr/bin/env bash
# The per-worker half of launch/tpu_pod.sh. tpu_pod.sh copies the repository to every TPU VM
# worker and runs this script there (over `gcloud compute tpus tpu-vm ssh --worker=all`),
# from the root of that copy. You do not normally run it yourself.
#
#   tpu_worker.sh setup PYTHON JAX_VERSION  Python venv in .venv: requirements.txt + jax[tpu].
#   tpu_worker.sh fetch-dir GS_URL DIR      Copies a gs:// folder to DIR (rsync; reruns are cheap).
#   tpu_worker.sh fetch-file GS_URL FILE    Copies one gs:// object to FILE.
#   tpu_worker.sh train [main flags...]     Runs `python -m lgnet_jax.main` with the flags; refuses
#                                           to start while an earlier one still runs here.
#   tpu_worker.sh stop                      Sends SIGTERM to the training process started here.
set -euo pipefail

VENV=.venv
PID_FILE=.lgnet_main.pid

usage() {
  sed -n '2,11s/^# \{0,1\}//p' "${BASH_SOURCE[0]}"
}

die() {
  echo "tpu_worker.sh ($(hostname)): $*" >&2
  exit 2
}

log() {
  echo "tpu_worker.sh ($(hostname)): $*" >&2
}

# True when PID is a live `lgnet_jax.main` process (a stale PID file may name a reused PID).
is_main_process() {
  local pid=$1 command_line
  [[ "${pid}" =~ ^[0-9]+$ && -r "/proc/${pid}/cmdline" ]] || return 1
  command_line=$(tr '\0' ' ' <"/proc/${pid}/cmdline" 2>/dev/null) || return 1
  [[ "${command_line}" == *lgnet_jax.main* ]]
}

setup() {
  local python=$1 jax_version=$2
  if ! command -v "${python}" >/dev/null 2>&1; then
    log "installing ${python} with apt"
    # A fresh VM may still be running its own apt jobs: wait for the lock instead of failing.
    sudo apt-get -o DPkg::Lock::Timeout=600 update -q
    sudo DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -q \
      "${python}" "${python}-venv"
  fi
  if [[ ! -x "${VENV}/bin/python" ]]; then
    "${python}" -m venv "${VENV}"
  fi
  "${VENV}/bin/python" -m pip install -q --upgrade pip
  "${VENV}/bin/python" -m pip install -q -r requirements.txt
  "${VENV}/bin/python" -m pip install -q "jax[tpu]==${jax_version}"
  # Importing only: touching the TPU here would wait for the other workers.
  log "ready: $("${VENV}/bin/python" -c 'import jax; print("jax", jax.__version__)')"
}

fetch_dir() {
  local source=$1 destination=$2
  mkdir -p "${destination}"
  gcloud storage rsync --recursive "${source}" "${destination}"
}

fetch_file() {
  local source=$1 destination=$2
  mkdir -p "$(dirname "${destination}")"
  gcloud storage cp "${source}" "${destination}"
}

train() {
  if [[ -f "${PID_FILE}" ]]; then
    local previous
    previous=$(<"${PID_FILE}")
    if is_main_process "${previous}"; then
      die "lgnet_jax.main is still running here (pid ${previous}); end it with 'launch/tpu_pod.sh stop'"
    fi
  fi
  echo "$$" >"${PID_FILE}"
  export PYTHONUNBUFFERED=1
  # exec keeps this PID, so PID_FILE names the training process itself.
  exec "${VENV}/bin/python" -m lgnet_jax.main "$@"
}

stop() {
  local pid
  if [[ -f "${PID_FILE}" ]]; then
    pid=$(<"${PID_FILE}")
    if is_main_process "${pid}"; then
      log "sending SIGTERM to lgnet_jax.main (pid ${pid}): it saves a checkpoint and exits"
      kill -TERM "${pid}"
      return
    fi
  fi
  log "no lgnet_jax.main running here"
}

case "${1:-}" in
  setup)
    (($# == 3)) || die "usage: tpu_worker.sh setup PYTHON JAX_VERSION"
    setup "$2" "$3"
    ;;
  fetch-dir)
    (($# == 3)) || die "usage: tpu_worker.sh fetch-dir GS_URL DIR"
    fetch_dir "$2" "$3"
    ;;
  fetch-file)
    (($# == 3)) || die "usage: tpu_worker.sh fetch-file GS_URL FILE"
    fetch_file "$2" "$3"
    ;;
  train)
    shift
    train "$@"
    ;;
  stop)
    stop
    ;;
  -h | --help | help | '')
    usage
    ;;
  *)
    die "unknown subcommand '$1' (see --help)"
    ;;
esac
