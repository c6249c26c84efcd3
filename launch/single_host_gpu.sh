#!/usr/bin/env bash
# Trains LGNet on every GPU of one host: one process, the global batch split over the GPUs.
#
# Usage: launch/single_host_gpu.sh [extra lgnet_jax.main flags, e.g. --config.train.batch_size=32]
# Run from the repository root. Running it again resumes from the last checkpoint in WORKDIR.
#
# Settings, from the environment (defaults in brackets):
#   CONFIG [configs/places2.py]  WORKDIR [workdirs/<config name>]
#   GPUS  GPUs to use, e.g. 0,1,2,3 (sets CUDA_VISIBLE_DEVICES); empty: every visible GPU
#   XLA_PYTHON_CLIENT_MEM_FRACTION [0.9]  share of each GPU's memory JAX takes up front
set -euo pipefail

case "${1:-}" in
  -h | --help)
    sed -n '2,10s/^# \{0,1\}//p' "${BASH_SOURCE[0]}"
    exit 0
    ;;
esac

CONFIG="${CONFIG:-configs/places2.py}"
WORKDIR="${WORKDIR:-workdirs/$(basename "${CONFIG}" .py)}"
GPUS="${GPUS:-}" # e.g. 0,1,2,3; empty: all visible GPUs

if [[ -n "${GPUS}" ]]; then
  export CUDA_VISIBLE_DEVICES="${GPUS}"
fi
# Let XLA take most of each GPU's memory up front, as it does by default, but leave room
# for cuDNN workspaces.
export XLA_PYTHON_CLIENT_MEM_FRACTION="${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.9}"

# --distributed=off: one process even inside a SLURM allocation of several tasks.
exec python -m lgnet_jax.main --config="${CONFIG}" --workdir="${WORKDIR}" --distributed=off "$@"
