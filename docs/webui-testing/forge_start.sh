#!/usr/bin/env bash
# Start a local test Forge (CPU, offline, API): forge_start.sh neo|classic [extra flags, e.g. --lowvram (Neo),
# --always-low-vram (Classic)]. FORGE_ROOT / FORGE_VENV as for the setup; the webui answers on port 7860.
HOST=$1; shift
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1
# one OpenMP thread: on a busy 2-core machine two threads wait on each other at every op (docs/webui_testing.md)
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
CKPT=${FORGE_CKPT:-rand-sd15}
case $HOST in
neo)
  cd "${FORGE_ROOT:-/work/forge-neo}/webui" || exit 1
  # requirements without torch, setuptools and audioop-lts (a Python >= 3.13 backport): with the full file the
  # launcher reinstalls requirements on Python < 3.13 and pip replaces torch
  export REQS_FILE=requirements_local.txt
  # no --port: Neo's /sdapi/v1/cmd-flags types every flag whose default is None as a string, so an int --port makes
  # that route a 500 (ResponseValidationError on 'port'); gradio's default port is 7860
  exec "${FORGE_VENV:-$HOME/.venvs/neo}/bin/python" launch.py --skip-python-version-check --skip-torch-cuda-test \
    --cpu --api --skip-install --skip-version-check \
    --ckpt-dirs models/Stable-diffusion "$@"
  ;;
classic)
  cd "${FORGE_ROOT:-/work/forge-classic}" || exit 1
  export REQS_FILE=requirements_local.txt
  exec "${FORGE_VENV:-$HOME/.venvs/classic}/bin/python" launch.py --skip-torch-cuda-test --always-cpu \
    --skip-prepare-environment --skip-install --skip-version-check --api --no-download-sd-model \
    --ckpt models/Stable-diffusion/$CKPT.safetensors --port 7860 "$@"
  ;;
*) echo "usage: $0 neo|classic [flags]" >&2; exit 2 ;;
esac
