"""Helpers of the live-webui tests (tests/test_webui_integration.py, tests/test_webui_detail_live.py): the host and
its payloads, HTTP calls, decoded pictures, and the plain / CapHuman / plain case with its head-region check."""

from __future__ import annotations

import base64
import io
import json
import os
import urllib.error
import urllib.request

import numpy as np

URL = os.environ.get("CAPHUMAN_WEBUI_URL", "http://127.0.0.1:7860")

STEERABLE = "caphuman_steerable.safetensors"
RANDOM = "caphuman_tiny.safetensors"


def detect_host() -> str:
    """a1111, neo or classic: CAPHUMAN_WEBUI_HOST, else the flags the running webui accepts (Neo's launcher has
    `--uv`, Classic's `--forge-ref-a1111-home` and no `--uv`, A1111 neither)."""
    if os.environ.get("CAPHUMAN_WEBUI_HOST"):
        return os.environ["CAPHUMAN_WEBUI_HOST"]
    if not os.environ.get("CAPHUMAN_WEBUI_DIR"):
        return "a1111"
    try:
        with urllib.request.urlopen(URL + "/sdapi/v1/cmd-flags", timeout=30) as response:
            flags = json.loads(response.read())
    except (OSError, ValueError):
        return "a1111"
    if "uv" in flags:
        return "neo"
    return "classic" if "forge_ref_a1111_home" in flags else "a1111"


HOST = detect_host()
FORGE = HOST in ("neo", "classic")
CHECKPOINT = os.environ.get("CAPHUMAN_WEBUI_CHECKPOINT") or ("rand-sd15" if FORGE else "tiny-sd15")
CHECKPOINT_B = "rand-sd15-b" if FORGE else "tiny-sd15-b"  # same shapes, other weights: refiner / hires checkpoint
INPAINTING = "rand-sd15-inpainting" if FORGE else "tiny-sd15-inpainting"
REAL_WIDTH = CHECKPOINT if FORGE else "mid-sd15"  # a checkpoint with SD1.5's widths
# Neo v3.5 lists only the upscalers "None" (a plain Lanczos resize) and ESRGAN: no latent modes, no "Lanczos"
LATENT = "None" if HOST == "neo" else "Latent"
LANCZOS = "None" if HOST == "neo" else "Lanczos"
HIRES_EXTRA = {"hr_additional_modules": ["Use same choices"]} if HOST == "neo" else {}  # else Neo's hires is a 500


def size(pixels: int) -> int:
    """A size the host takes: Neo's are multiples of 64."""
    return -(-pixels // 64) * 64 if HOST == "neo" else pixels


def hires(**fields) -> dict:
    return {"enable_hr": True, "denoising_strength": 0.6, "hr_second_pass_steps": 2, "hr_upscaler": LATENT,
            **HIRES_EXTRA, **fields}


# Forge Classic, random CLIP-L: the empty prompt's conditioning makes every CFG > 1 image NaN (black; cfg 1 or a
# non-empty negative prompt give finite images), so Forge hosts get a negative prompt.
NEGATIVE = "blurry" if FORGE else ""
BASE = {"prompt": "a portrait photo", "negative_prompt": NEGATIVE, "steps": 4, "width": 128, "height": 128, "seed": 1234,
        "sampler_name": "Euler a", "cfg_scale": 7, "override_settings": {"sd_model_checkpoint": CHECKPOINT}}


def call(path: str, payload: dict | None = None) -> tuple[int, dict]:
    data = None if payload is None else json.dumps(payload).encode()
    request = urllib.request.Request(URL + path, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=1800) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        body = error.read() or b"{}"
        try:
            return error.code, json.loads(body)
        except ValueError:
            return error.code, {"detail": body.decode(errors="replace")}


def decode(image: str) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(base64.b64decode(image.split(",", 1)[-1]))).convert("RGB"))


def encode(image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def generate(route: str, payload: dict) -> tuple[list[np.ndarray], dict]:
    status, body = call(f"/sdapi/v1/{route}", payload)
    assert status == 200, body
    return [decode(image) for image in body["images"]], json.loads(body["info"])


_PLAIN: dict[str, list[np.ndarray]] = {}


def plain_images(route: str, payload: dict) -> list[np.ndarray]:
    """A plain generation, made once per payload in this test session (the CPU is slow; each case re-runs its plain
    generation after CapHuman and compares it with this one)."""
    key = route + json.dumps(payload, sort_keys=True)
    if key not in _PLAIN:
        _PLAIN[key] = generate(route, payload)[0]
    return _PLAIN[key]


def with_scripts(payload: dict, units: list[dict] = (), probe: bool = False) -> dict:
    scripts = {}
    if units:
        scripts["CapHuman"] = {"args": list(units)}
    if probe:
        scripts["CapHuman probe"] = {"args": [True]}
    return {**payload, "alwayson_scripts": scripts}


def head_mask(unit: dict, width: int, height: int) -> np.ndarray:
    """Where the unit's rendered head covers the frame (the preview route's alpha, same renderer as the hint)."""
    status, body = call("/caphuman/v1/preview", {**unit, "width": width, "height": height})
    assert status == 200, body
    return decode(body["images"]["alpha"])[..., 0] > 127


def changed(before: np.ndarray, after: np.ndarray) -> np.ndarray:
    return np.abs(after.astype(np.int16) - before.astype(np.int16)).sum(-1)


def assert_head_steers(diff: np.ndarray, mask: np.ndarray, what: str) -> None:
    inside, outside = diff[mask].mean(), diff[~mask].mean() if (~mask).any() else 0.0
    assert inside > 2 * outside, f"{what}: mean change inside the head {inside:.2f}, outside {outside:.2f}"


def caphuman_case(route: str, payload: dict, units: list[dict], model: str, region=None) -> dict:
    """Plain, CapHuman, plain again: CapHuman changed every image and the plain runs are bit-identical.
    `region(image_index, shape)` gives the head mask for an image (None: no head-region assertion)."""
    units = [{**u, "model": model} for u in units]
    before = plain_images(route, with_scripts(payload))
    steered, info = generate(route, with_scripts(payload, units))
    after, _ = generate(route, with_scripts(payload))
    assert [a.shape for a in steered] == [b.shape for b in before]
    for index, (plain, again) in enumerate(zip(before, after)):
        assert np.array_equal(plain, again), f"image {index}: the plain run after CapHuman differs from the one before"
    diffs = [changed(b, s) for b, s in zip(before, steered)]
    for index, diff in enumerate(diffs):
        assert diff.max() > 0, f"image {index}: CapHuman did not change the pixels"
        if region is not None and model == STEERABLE:
            mask = region(index, diff.shape)
            if mask is not None:
                assert_head_steers(diff, mask, f"image {index}")
    assert "CapHuman 1" in info["extra_generation_params"], info["extra_generation_params"]
    return {"before": before, "steered": steered, "diffs": diffs, "info": info, "units": units}


def frame_region(unit: dict):
    def region(index: int, shape: tuple) -> np.ndarray:
        return head_mask(unit, shape[1], shape[0])
    return region


def square_image(size: int = 128) -> str:
    from PIL import Image

    rng = np.random.default_rng(3)
    return encode(Image.fromarray(rng.integers(60, 200, (size, size, 3), dtype=np.uint8)))


def box_mask(box: tuple[int, int, int, int], size: int = 128) -> str:
    from PIL import Image

    mask = Image.new("L", (size, size), 0)
    mask.paste(255, box)
    return encode(mask)
