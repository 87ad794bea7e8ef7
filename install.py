"""Installed by the webui on start: only what is missing, never torch/torchvision/numpy, never compiling."""

import importlib.util

import launch

# module -> (pip name, install without dependencies?) — facenet-pytorch and facexlib pin old torch versions.
# Each module is imported by the extension (tests/test_unit_install.py checks it); the webui brings the rest
# (transformers, einops, omegaconf, requests, tqdm, scipy).
REQUIREMENTS = {
    "facenet_pytorch": ("facenet-pytorch==2.6.0", True),
    "facexlib": ("facexlib==0.3.0", True),
    "skimage": ("scikit-image", False),
    "safetensors": ("safetensors", False),
    "cv2": ("opencv-python-headless", False),
}

for module, (package, no_deps) in REQUIREMENTS.items():
    if importlib.util.find_spec(module) is None:
        args = f"install {'--no-deps ' if no_deps else ''}{package}"
        launch.run_pip(args, f"sd-webui-caphuman requirement: {package}")
