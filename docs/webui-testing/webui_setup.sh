#!/usr/bin/env bash
# Local, offline AUTOMATIC1111 v1.10.1 (CPU) for testing the extension. Lives outside the repo.
set -x
W=${WEBUI_DIR:-/work/webui}
V=${WEBUI_VENV:-$HOME/.venvs/webui}
M=${MIRROR_DIR:-/work/.mirror}  # local git mirrors of the repositories below
[ -d $W ] || git clone -q $M/kklouzal+stable-diffusion-webui/repo $W
git -C $W checkout -q 82a973c0
mkdir -p $W/repositories
clone() { [ -d $W/repositories/$2 ] || { git clone -q $M/$1/repo $W/repositories/$2; git -C $W/repositories/$2 checkout -q $3 2>/dev/null || echo "no commit $3 in $1, using HEAD"; }; }
clone Stability-AI+stablediffusion stable-diffusion-stability-ai cf1d67a6fd5ea1aa600c4df58e5b47da45f6bdbf
clone Stability-AI+generative-models generative-models 45c443b316737a4ab6e40413d7794a7f5657c19f
clone crowsonkb+k-diffusion k-diffusion ab527a9a6d347f364e3d185ba6d714e22d80cb3c
clone AUTOMATIC1111+stable-diffusion-webui-assets stable-diffusion-webui-assets 6f7db241d2f8ba7457bac5ca9753331f0c266917
[ -x $V/bin/python ] || python3 -m venv $V
$V/bin/pip install -q torch==2.14.1 torchvision==0.29.1
grep -v -E "^torch$|^setuptools" $W/requirements_versions.txt > /tmp/webui_reqs.txt
printf "torch==2.14.1\ntorchvision==0.29.1\n" > /tmp/webui_constraints.txt
$V/bin/pip install -q -c /tmp/webui_constraints.txt -r /tmp/webui_reqs.txt
$V/bin/pip install -q --no-deps openai-clip facenet-pytorch==2.6.0
$V/bin/pip install -q -c /tmp/webui_constraints.txt ftfy regex "setuptools==69.5.1"
echo SETUP_DONE
