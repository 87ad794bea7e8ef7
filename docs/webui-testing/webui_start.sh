#!/usr/bin/env bash
# Start the local test webui (CPU, offline, API). Extra arguments pass through (e.g. --lowvram, --medvram).
cd "${WEBUI_DIR:-/work/webui}"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1
# On a loaded 2-core machine two OpenMP threads wait on each other at every op (tiny UNet: 20-70 s a forward
# instead of ~1 s); one thread each keeps the tiny models fast.
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
exec "${WEBUI_VENV:-$HOME/.venvs/webui}/bin/python" launch.py --skip-torch-cuda-test --no-half --no-half-vae \
  --use-cpu all --skip-prepare-environment --skip-install --skip-version-check --api --no-download-sd-model \
  --do-not-download-clip --ckpt models/Stable-diffusion/tiny-sd15.safetensors --port 7860 "$@"
