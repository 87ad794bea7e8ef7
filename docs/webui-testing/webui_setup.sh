#!/usr/bin/env bash
# Local, offline AUTOMATIC1111 v1.10.1 (CPU) for testing the extension. Lives outside the repo.
# MIRROR_DIR holds local git mirrors (<owner>+<name>/repo) of the webui and of the repositories its launcher clones.
set -ex
W=${WEBUI_DIR:-/work/webui}
V=${WEBUI_VENV:-$HOME/.venvs/webui}
M=${MIRROR_DIR:-/work/.mirror}
C=${TORCH_CONSTRAINTS:-$(dirname "$0")/../../.ci/constraints.txt}  # torch==2.14.1, torchvision==0.29.1
[ -d $W ] || git clone -q $M/kklouzal+stable-diffusion-webui/repo $W
git -C $W checkout -q 82a973c0
mkdir -p $W/repositories
clone() {  # mirror, folder, the commit modules/launch_utils.py names; files whose blobs a mirror lacks are skipped
  local d=$W/repositories/$2
  [ -d $d ] || git clone -q --no-checkout $M/$1/repo $d
  git -C $d update-ref --no-deref HEAD $3
  git -C $d ls-tree -r $3 | awk '$2 == "blob" {print $3}' | git -C $d cat-file --batch-check='%(objectname) %(objecttype)' \
    | paste -d' ' - <(git -C $d ls-tree -r --name-only $3) | awk '$2 == "blob" {print $3}' > /tmp/present_$2
  git -C $d checkout -q $3 --pathspec-from-file=/tmp/present_$2
}
clone Stability-AI+stablediffusion stable-diffusion-stability-ai cf1d67a6fd5ea1aa600c4df58e5b47da45f6bdbf
clone Stability-AI+generative-models generative-models 45c443b316737a4ab6e40413d7794a7f5657c19f
clone crowsonkb+k-diffusion k-diffusion ab527a9a6d347f364e3d185ba6d714e22d80cb3c
clone AUTOMATIC1111+stable-diffusion-webui-assets stable-diffusion-webui-assets 6f7db241d2f8ba7457bac5ca9753331f0c266917
clone salesforce+BLIP BLIP 48211a1594f1321b00f14c9f7a5b4813144b2fb9
[ -x $V/bin/python ] || python3 -m venv $V
$V/bin/pip install -q -c $C torch torchvision
# torch 2.14.1 needs setuptools>=77, the webui pins 69.5.1 for pkg_resources: 80.9.0 satisfies both
grep -v -E "^torch$|^setuptools" $W/requirements_versions.txt > /tmp/webui_reqs.txt
echo "setuptools==80.9.0" >> /tmp/webui_reqs.txt
$V/bin/pip install -q -c $C -r /tmp/webui_reqs.txt
# what launch.py would install itself (prepare_environment is skipped: it needs the network)
$V/bin/pip install -q -c $C --no-deps openai-clip
$V/bin/pip install -q -c $C ftfy regex
$V/bin/python -c "import torch, ldm" 2>/dev/null || true
echo SETUP_DONE
