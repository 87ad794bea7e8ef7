"""Drive a real AUTOMATIC1111 v1.10.1 over HTTP (see docs/webui_testing.md). Skipped unless CAPHUMAN_WEBUI_DIR is set
and the webui answers at CAPHUMAN_WEBUI_URL (default http://127.0.0.1:7860) with this extension, a tiny SD1.5
checkpoint and tiny CapHuman files in models/CapHuman; CAPHUMAN_TEST_PHOTO is a reference photo with a face."""

from __future__ import annotations

import base64
import io
import json
import os
import urllib.error
import urllib.request

import pytest

URL = os.environ.get("CAPHUMAN_WEBUI_URL", "http://127.0.0.1:7860")
pytestmark = pytest.mark.skipif(not os.environ.get("CAPHUMAN_WEBUI_DIR"), reason="needs CAPHUMAN_WEBUI_DIR")


def call(path: str, payload: dict | None = None) -> tuple[int, dict]:
    data = None if payload is None else json.dumps(payload).encode()
    request = urllib.request.Request(URL + path, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=900) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"{}")


@pytest.fixture(scope="module")
def photo() -> str:
    path = os.environ.get("CAPHUMAN_TEST_PHOTO")
    if path:
        return base64.b64encode(open(path, "rb").read()).decode()
    from PIL import Image
    from skimage import data

    buffer = io.BytesIO()
    Image.fromarray(data.astronaut()).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


BASE = {"prompt": "a portrait photo", "steps": 4, "width": 128, "height": 128, "seed": 1234, "sampler_name": "Euler a",
        "cfg_scale": 7}


def with_unit(payload: dict, *units: dict) -> dict:
    return {**payload, "alwayson_scripts": {"CapHuman": {"args": list(units)}}}


def test_version_and_models():
    assert call("/caphuman/v1/version")[1]["version"]
    status, models = call("/caphuman/v1/models")
    assert status == 200 and models["models"] and models["head_assets"] == "ok"


@pytest.mark.parametrize("extra", [
    {"batch_size": 2},
    {"n_iter": 2},
    {"enable_hr": True, "hr_scale": 1.5, "hr_upscaler": "Latent", "denoising_strength": 0.6, "hr_second_pass_steps": 2},
    {"sampler_name": "DPM++ 2M", "scheduler": "Karras"},
])
def test_txt2img_paths_apply_and_leave_no_trace(photo, extra):
    payload = {**BASE, **extra}
    status, before = call("/sdapi/v1/txt2img", payload)
    assert status == 200
    unit = {"enabled": True, "reference_images": [photo], "yaw": 20}
    status, steered = call("/sdapi/v1/txt2img", with_unit(payload, unit))
    assert status == 200, steered
    assert steered["images"] != before["images"]
    assert "CapHuman 1" in json.loads(steered["info"])["extra_generation_params"]
    status, after = call("/sdapi/v1/txt2img", payload)
    assert after["images"] == before["images"]  # bit-identical: no hook left behind


def test_two_units_and_img2img(photo):
    units = [{"enabled": True, "reference_images": [photo], "center_x": 0.3},
             {"enabled": True, "reference_images": [photo], "center_x": 0.7, "strength": 0.7}]
    status, result = call("/sdapi/v1/txt2img", with_unit(BASE, *units))
    assert status == 200, result
    status, result = call("/sdapi/v1/img2img", with_unit({**BASE, "init_images": [photo], "denoising_strength": 0.7},
                                                         units[0]))
    assert status == 200, result


@pytest.mark.parametrize(("unit", "field"), [
    ({"enabled": True, "strength": 9}, "strength"),
    ({"enabled": True, "reference_images": ["@@@"]}, "reference_images"),
    ({"enabled": True, "modes": ["tilt"], "reference_images": []}, "modes"),
])
def test_bad_payloads_get_422_naming_the_field(unit, field):
    status, body = call("/sdapi/v1/txt2img", with_unit(BASE, unit))
    assert status == 422 and body["detail"][0]["loc"][-1] == field


def test_no_face_is_a_readable_error_and_the_webui_recovers(photo):
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (128, 128), (90, 140, 200)).save(buffer, format="PNG")
    blank = base64.b64encode(buffer.getvalue()).decode()
    status, body = call("/sdapi/v1/txt2img", with_unit(BASE, {"enabled": True, "reference_images": [blank]}))
    assert status >= 400 and "face" in json.dumps(body).lower()
    assert call("/sdapi/v1/txt2img", BASE)[0] == 200


def test_preview_route(photo):
    status, body = call("/caphuman/v1/preview", {"reference_images": [photo], "width": 160, "height": 96, "yaw": 30})
    assert status == 200 and set(body["images"]) == {"normal", "albedo", "shading", "alpha", "landmarks"}


def test_inpainting_with_a_nine_channel_checkpoint(photo):
    """Needs tiny-sd15-inpainting (docs/webui-testing/make_tiny_webui_models.py) next to tiny-sd15."""
    call("/sdapi/v1/refresh-checkpoints", {})
    status, checkpoints = call("/sdapi/v1/sd-models")
    names = [c["model_name"] for c in checkpoints]
    if "tiny-sd15-inpainting" not in names:
        pytest.skip("no tiny-sd15-inpainting checkpoint")
    from PIL import Image

    buffer = io.BytesIO()
    mask = Image.new("L", (128, 128), 0)
    mask.paste(255, (32, 16, 96, 112))
    mask.save(buffer, format="PNG")
    payload = {**BASE, "init_images": [photo], "mask": base64.b64encode(buffer.getvalue()).decode(),
               "denoising_strength": 0.8, "inpainting_fill": 1,
               "override_settings": {"sd_model_checkpoint": "tiny-sd15-inpainting"},
               "override_settings_restore_afterwards": True}
    status, before = call("/sdapi/v1/img2img", payload)
    assert status == 200, before
    status, steered = call("/sdapi/v1/img2img", with_unit(payload, {"enabled": True, "reference_images": [photo]}))
    assert status == 200, steered
    assert steered["images"] != before["images"]
    assert call("/sdapi/v1/img2img", payload)[1]["images"] == before["images"]


def test_xyz_plot_axis_sets_the_unit_strength(photo):
    status, infos = call("/sdapi/v1/script-info")
    xyz = next(s for s in infos if s["name"] == "x/y/z plot" and not s["is_img2img"])
    axis = xyz["args"][0]["choices"].index("[CapHuman] Strength")
    script_args = [axis, "0.5, 1.5", [], 0, "", [], 0, "", [], True, True, False, False, 0, 0, 0, 0, False]
    payload = with_unit({**BASE, "script_name": "x/y/z plot", "script_args": script_args},
                        {"enabled": True, "reference_images": [photo]})
    status, result = call("/sdapi/v1/txt2img", payload)
    assert status == 200, result
    infotexts = json.loads(result["info"])["infotexts"]
    assert any("strength 0.5" in text for text in infotexts) and any("strength 1.5" in text for text in infotexts)


def test_infotext_reaches_png_info(photo):
    status, result = call("/sdapi/v1/txt2img", with_unit(BASE, {"enabled": True, "reference_images": [photo],
                                                                "strength": 0.7, "modes": ["position"]}))
    assert status == 200
    status, info = call("/sdapi/v1/png-info", {"image": "data:image/png;base64," + result["images"][0]})
    parameters = info["parameters"]["CapHuman 1"]
    from caphuman_ext.unit.infotext import from_infotext

    restored = from_infotext(parameters)
    assert restored["strength"] == 0.7 and restored["modes"] == ["position"]


def test_next_to_sd_webui_controlnet(photo):
    """Needs sd-webui-controlnet, an SD1.5-width checkpoint `mid-sd15` (320 channels), a ControlNet and a CapHuman
    model of that width (docs/webui_testing.md)."""
    status, models = call("/controlnet/model_list")
    call("/sdapi/v1/refresh-checkpoints", {})
    checkpoints = [c["model_name"] for c in call("/sdapi/v1/sd-models")[1]]
    if status != 200 or not models.get("model_list") or "mid-sd15" not in checkpoints:
        pytest.skip("no sd-webui-controlnet / mid-sd15 setup")
    payload = {**BASE, "width": 64, "height": 64, "steps": 2,
               "override_settings": {"sd_model_checkpoint": "mid-sd15"}, "override_settings_restore_afterwards": True}
    controlnet = {"enabled": True, "model": models["model_list"][0], "image": photo, "module": "none", "weight": 1.0}
    caphuman = {"enabled": True, "model": "caphuman_mid.safetensors", "reference_images": [photo]}

    def run(cn: bool, ch: bool) -> list:
        scripts = {}
        if cn:
            scripts["controlnet"] = {"args": [controlnet]}
        if ch:
            scripts["CapHuman"] = {"args": [caphuman]}
        status, result = call("/sdapi/v1/txt2img", {**payload, "alwayson_scripts": scripts})
        assert status == 200, result
        return result["images"]

    plain, only_cn, only_ch, both = run(False, False), run(True, False), run(False, True), run(True, True)
    assert len({plain[0], only_cn[0], only_ch[0], both[0]}) == 4  # each control changes the image, and together
    assert run(False, False) == plain


def test_sd2_checkpoint_gets_a_clear_message(photo):
    """Needs a tiny SD2-architecture checkpoint `tiny-sd2` (OpenCLIP text encoder)."""
    call("/sdapi/v1/refresh-checkpoints", {})
    if "tiny-sd2" not in [c["model_name"] for c in call("/sdapi/v1/sd-models")[1]]:
        pytest.skip("no tiny-sd2 checkpoint")
    payload = {**BASE, "override_settings": {"sd_model_checkpoint": "tiny-sd2"},
               "override_settings_restore_afterwards": True}
    status, plain = call("/sdapi/v1/txt2img", payload)
    assert status == 200, plain
    status, body = call("/sdapi/v1/txt2img", with_unit(payload, {"enabled": True, "reference_images": [photo]}))
    assert status >= 400 and "SD1.x checkpoints only" in json.dumps(body)
    status, again = call("/sdapi/v1/txt2img", payload)
    assert status == 200 and again["images"] == plain["images"]
