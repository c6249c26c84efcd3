#!/usr/bin/env bash
# Trains LGNet on every GPU of one host: one process, the global batch split over the GPUs.
# Usage: launch/single_host_gpu.sh [extra --config.* flags]
# Set CONFIG, WORKDIR and GPUS below (or in the environment); run from the repository root.
set -euo pipefail

CONFIG="${CONFIG:-configs/places2.py}"
WORKDIR="${WORKDIR:-workdirs/$(basename "${CONFIG}" .py)}"
GPUS="${GPUS:-}"  # e.g. 0,1,2,3; empty: all visible GPUs

if [[ -n "${GPUS}" ]]; then
  export CUDA_VISIBLE_DEVICES="${GPUS}"
fi
# Let XLA take most of each GPU's memory up front, as it does by default, but leave room
# for cuDNN workspaces.
export XLA_PYTHON_CLIENT_MEM_FRACTION="${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.9}"

exec python -m lgnet_jax.main --config="${CONFIG}" --workdir="${WORKDIR}" "$@"
