#!/usr/bin/env bash
# Trains LGNet on a Cloud TPU pod slice: one JAX process per TPU VM worker, all started at
# once with `gcloud compute tpus tpu-vm ssh --worker=all` and joined by --distributed=on
# (JAX finds the other workers of the slice itself).
#
# Usage: launch/tpu_pod.sh SUBCOMMAND [extra lgnet_jax.main flags, for run, eval and all]
#
#   create   create the TPU VM slice
#   install  copy this working tree (tracked and untracked, not ignored, files) to every
#            worker, make a venv there (requirements.txt + jax[tpu]), fetch DATA_DIR and
#            VGG_WEIGHTS when they are gs:// URLs (or VGG_WEIGHTS is a file here)
#   run      train on every worker at once; running it again resumes from the last checkpoint
#   eval     score the latest checkpoint in WORKDIR (--mode=eval) on every worker at once
#   stop     send SIGTERM to the training process on every worker (it saves and exits)
#   delete   delete the TPU VM slice
#   all      create, install, run, delete (deletes also when install or run fails,
#            unless KEEP_TPU=1)
#
# Settings, from the environment (defaults in brackets):
#   TPU_NAME [lgnet]  ZONE [us-west4-a]  ACCELERATOR_TYPE [v5litepod-32]
#   RUNTIME_VERSION [v2-alpha-tpuv5-lite]  PROJECT [gcloud's default project]
#   CONFIG [configs/places2.py]  config file, relative to the repository root
#   WORKDIR (required for run, eval, all)  gs://BUCKET/PATH: every worker writes there
#   DATA_DIR  TFDS data dir: gs://... (copied to each worker by install) or a path on
#             the workers; empty: the config's own
#   VGG_WEIGHTS  vgg16-397923af.pth: gs://... or a file here (copied to each worker by
#                install), else a path on the workers; empty: the config's own
#   REPO_DIR [lgnet_jax]  the copy on each worker, relative to the worker's home directory
#   EXTRA  more lgnet_jax.main flags, split at whitespace (e.g. --config.train.batch_size=256)
#   PYTHON [python3.11]  interpreter for the workers' venv (installed with apt if missing)
#   CREATE_FLAGS  more `tpu-vm create` flags, split at whitespace (e.g. --spot)
#   KEEP_TPU [0]  1: `all` keeps the slice
#   DRY_RUN [0]  1: print each gcloud command (prefixed "+ ") instead of running it
set -euo pipefail

TPU_NAME="${TPU_NAME:-lgnet}"
ZONE="${ZONE:-us-west4-a}"
ACCELERATOR_TYPE="${ACCELERATOR_TYPE:-v5litepod-32}"
RUNTIME_VERSION="${RUNTIME_VERSION:-v2-alpha-tpuv5-lite}"
PROJECT="${PROJECT:-}"
CONFIG="${CONFIG:-configs/places2.py}"
WORKDIR="${WORKDIR:-}"
DATA_DIR="${DATA_DIR:-}"
VGG_WEIGHTS="${VGG_WEIGHTS:-}"
REPO_DIR="${REPO_DIR:-lgnet_jax}"
EXTRA="${EXTRA:-}"
PYTHON="${PYTHON:-python3.11}"
CREATE_FLAGS="${CREATE_FLAGS:-}"
KEEP_TPU="${KEEP_TPU:-0}"
DRY_RUN="${DRY_RUN:-0}"

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# Where install puts gs:// data and weights on each worker, relative to REPO_DIR.
WORKER_DATA_DIR=assets/tensorflow_datasets
WORKER_ASSETS=assets
# The source archive in each worker's home directory while install unpacks it.
WORKER_ARCHIVE=lgnet_jax_source.tar.gz

LOCAL_ARCHIVE=""
DELETE_ON_EXIT=0

usage() {
  sed -n '2,35s/^# \{0,1\}//p' "${BASH_SOURCE[0]}"
}

die() {
  echo "tpu_pod.sh: $*" >&2
  exit 2
}

# Prints the words as one line of shell input that reproduces them (single quotes where needed).
quote_words() {
  local word quoted=()
  for word in "$@"; do
    if [[ "${word}" =~ ^[[:alnum:]_@%+=:,./-]+$ ]]; then
      quoted+=("${word}")
    else
      quoted+=("'${word//\'/\'\\\'\'}'")
    fi
  done
  printf '%s\n' "${quoted[*]}"
}

# gcloud compute tpus tpu-vm ARGS... --zone=ZONE [--project=PROJECT]; printed, and run
# unless DRY_RUN=1.
tpu_vm() {
  local command=(gcloud compute tpus tpu-vm "$@" "--zone=${ZONE}")
  if [[ -n "${PROJECT}" ]]; then
    command+=("--project=${PROJECT}")
  fi
  if [[ "${DRY_RUN}" == 1 ]]; then
    printf '+ %s\n' "$(quote_words "${command[@]}")"
  else
    printf '+ %s\n' "$(quote_words "${command[@]}")" >&2
    "${command[@]}"
  fi
}

# Runs a shell command line on every worker at once.
on_all_workers() {
  tpu_vm ssh "${TPU_NAME}" --worker=all "--command=$1"
}

is_gcs() {
  [[ "$1" == gs://* ]]
}

# The VGG16 weights' path as the workers' processes see it (relative to REPO_DIR), or empty.
worker_vgg_weights() {
  if [[ -z "${VGG_WEIGHTS}" ]]; then
    return
  elif is_gcs "${VGG_WEIGHTS}" || [[ -f "${VGG_WEIGHTS}" ]]; then
    echo "${WORKER_ASSETS}/$(basename "${VGG_WEIGHTS}")"
  else
    echo "${VGG_WEIGHTS}"
  fi
}

# The TFDS data dir as the workers' processes see it, or empty.
worker_data_dir() {
  if is_gcs "${DATA_DIR}"; then
    echo "${WORKER_DATA_DIR}"
  else
    echo "${DATA_DIR}"
  fi
}

# The files to copy: git's view of the working tree (tracked and untracked files that are
# not ignored, deleted ones left out), NUL-separated; every file outside git.
list_source_files() {
  local file
  if git -C "${ROOT}" rev-parse --is-inside-work-tree >/dev/null 2>&1; then
    while IFS= read -r -d '' file; do
      if [[ -f "${ROOT}/${file}" ]]; then
        printf '%s\0' "${file}"
      fi
    done < <(git -C "${ROOT}" ls-files -z --cached --others --exclude-standard)
  else
    (cd "${ROOT}" && find . -path ./workdirs -prune -o -type f -print0)
  fi
}

pack_source() {
  local archive=$1 file_list
  if [[ "${DRY_RUN}" == 1 ]]; then
    echo "# pack the working tree of ${ROOT} into ${archive}"
    return
  fi
  file_list="${archive}.files"
  list_source_files >"${file_list}"
  tar -C "${ROOT}" --null -T "${file_list}" -czf "${archive}"
  rm -f "${file_list}"
}

cleanup() {
  local status=$?
  if [[ -n "${LOCAL_ARCHIVE}" ]]; then
    rm -f "${LOCAL_ARCHIVE}" "${LOCAL_ARCHIVE}.files"
  fi
  if [[ "${DELETE_ON_EXIT}" == 1 ]]; then
    DELETE_ON_EXIT=0
    if ((status != 0)); then
      echo "tpu_pod.sh: failed (exit ${status}); deleting ${TPU_NAME} (KEEP_TPU=1 keeps it)" >&2
    fi
    cmd_delete || status=$?
  fi
  exit "${status}"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

jax_version() {
  local version
  version=$(sed -n 's/^jax==\([^[:space:]#]*\).*/\1/p' "${ROOT}/requirements.txt")
  [[ -n "${version}" ]] || die "no 'jax==VERSION' line in ${ROOT}/requirements.txt"
  echo "${version}"
}

# Stops (exit 2) on settings that run and eval cannot work with; checks once.
SETTINGS_CHECKED=0
check_main_settings() {
  if ((SETTINGS_CHECKED)); then
    return
  fi
  [[ -n "${WORKDIR}" ]] || die "WORKDIR is not set: give a gs://BUCKET/PATH every worker can write"
  if ! is_gcs "${WORKDIR}"; then
    echo "tpu_pod.sh: warning: WORKDIR=${WORKDIR} is not gs://; every worker must see the same" \
      "directory there" >&2
  fi
  [[ -f "${ROOT}/${CONFIG%%:*}" ]] || die "CONFIG=${CONFIG} is not a file under ${ROOT}"
  SETTINGS_CHECKED=1
}

# The flags every worker's lgnet_jax.main gets, then $@, as one line of shell words.
main_flags() {
  local data_dir vgg extra
  data_dir=$(worker_data_dir)
  vgg=$(worker_vgg_weights)
  read -r -a extra <<<"${EXTRA}"
  local flags=("--config=${CONFIG}" "--workdir=${WORKDIR}" --distributed=on)
  if [[ -n "${data_dir}" ]]; then
    flags+=("--config.data.tfds_data_dir=${data_dir}")
  fi
  if [[ -n "${vgg}" ]]; then
    flags+=("--config.loss.vgg_weights=${vgg}")
  fi
  quote_words "${flags[@]}" "${extra[@]}" "$@"
}

cmd_create() {
  local create_flags
  read -r -a create_flags <<<"${CREATE_FLAGS}"
  tpu_vm create "${TPU_NAME}" "--accelerator-type=${ACCELERATOR_TYPE}" \
    "--version=${RUNTIME_VERSION}" "${create_flags[@]}"
}

cmd_install() {
  local repo worker_setup jax
  repo=$(quote_words "${REPO_DIR}")
  jax=$(jax_version)
  if [[ "${DRY_RUN}" == 1 ]]; then
    LOCAL_ARCHIVE="${TMPDIR:-/tmp}/lgnet_jax_source.XXXXXX.tar.gz"
  else
    LOCAL_ARCHIVE=$(mktemp "${TMPDIR:-/tmp}/lgnet_jax_source.XXXXXX")
  fi
  pack_source "${LOCAL_ARCHIVE}"
  tpu_vm scp "${LOCAL_ARCHIVE}" "${TPU_NAME}:${WORKER_ARCHIVE}" --worker=all

  worker_setup="mkdir -p ${repo} && tar -xzf ${WORKER_ARCHIVE} -C ${repo} && rm -f ${WORKER_ARCHIVE}"
  worker_setup+=" && cd ${repo} && $(quote_words bash launch/tpu_worker.sh setup "${PYTHON}" "${jax}")"
  if is_gcs "${DATA_DIR}"; then
    worker_setup+=" && $(quote_words bash launch/tpu_worker.sh fetch-dir "${DATA_DIR}" "${WORKER_DATA_DIR}")"
  fi
  local vgg_here=0
  if is_gcs "${VGG_WEIGHTS}"; then
    worker_setup+=" && $(quote_words bash launch/tpu_worker.sh fetch-file "${VGG_WEIGHTS}" "$(worker_vgg_weights)")"
  elif [[ -n "${VGG_WEIGHTS}" && -f "${VGG_WEIGHTS}" ]]; then
    vgg_here=1
    worker_setup+=" && mkdir -p ${WORKER_ASSETS}"
  fi
  on_all_workers "${worker_setup}"
  if ((vgg_here)); then
    tpu_vm scp "${VGG_WEIGHTS}" "${TPU_NAME}:${REPO_DIR}/$(worker_vgg_weights)" --worker=all
  fi
}

# Runs lgnet_jax.main on every worker at once with the shared flags and then $@.
run_main() {
  local flags
  check_main_settings
  flags=$(main_flags "$@")
  on_all_workers "cd $(quote_words "${REPO_DIR}") && bash launch/tpu_worker.sh train ${flags}"
}

cmd_stop() {
  on_all_workers "cd $(quote_words "${REPO_DIR}") && bash launch/tpu_worker.sh stop"
}

cmd_delete() {
  tpu_vm delete "${TPU_NAME}" --quiet
}

cmd_all() {
  check_main_settings # before paying for a slice
  cmd_create
  if [[ "${KEEP_TPU}" != 1 ]]; then
    DELETE_ON_EXIT=1
  fi
  cmd_install
  run_main "$@"
}

subcommand="${1:-}"
case "${subcommand}" in
  '' | -h | --help | help)
    usage
    exit 0
    ;;
  create | install | run | eval | stop | delete | all) shift ;;
  *) die "unknown subcommand '${subcommand}' (see --help)" ;;
esac

case "${subcommand}" in
  create) cmd_create ;;
  install) cmd_install ;;
  run) run_main "$@" ;;
  eval) run_main --mode=eval "$@" ;;
  stop) cmd_stop ;;
  delete) cmd_delete ;;
  all) cmd_all "$@" ;;
esac
