"""Drive a real AUTOMATIC1111 v1.10.1, Forge Neo or Forge Classic over HTTP (docs/webui_testing.md, docs/forge.md);
every assertion is on decoded pixels.

Skipped unless CAPHUMAN_WEBUI_DIR is set. The webui answers at CAPHUMAN_WEBUI_URL (default http://127.0.0.1:7860)
with this extension, the test-only `caphuman-probe` extension (docs/webui-testing/caphuman-probe), the tiny
checkpoints of docs/webui-testing/make_tiny_webui_models.py (tiny-sd15 loaded, tiny-sd15-b, tiny-sd15-inpainting)
and the tiny CapHuman files in models/CapHuman. CAPHUMAN_TEST_PHOTO is a reference photo with a face (default:
scikit-image's astronaut).

The host is CAPHUMAN_WEBUI_HOST (a1111, neo, classic), else read from `/sdapi/v1/cmd-flags`. Forge detects the
model type from the tensors, so a Forge host runs on full-size random SD1.5 checkpoints (make_rand_sd15.py:
`rand-sd15`, `rand-sd15-b`, `rand-sd15-inpainting`; CAPHUMAN_WEBUI_CHECKPOINT overrides the first) with an
SD1.5-width steerable CapFace. Neo's payloads differ where Neo does: hires needs `hr_additional_modules`, there is
no "Latent" and no "Lanczos" upscaler (only "None", a plain resize, and ESRGAN), sizes are multiples of 64.

Every CapHuman case checks the two things a user relies on: CapHuman changed the picture (with the steerable CapFace,
inside the rendered head region more than outside), and the plain generation right after is bit-identical to the plain
one before (nothing left behind). Bit-identity holds because both plain runs are on this machine, in one process.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from tests.live_webui import (
    BASE,
    CHECKPOINT,
    CHECKPOINT_B,
    INPAINTING,
    LANCZOS,
    RANDOM,
    REAL_WIDTH,
    STEERABLE,
    box_mask,
    call,
    caphuman_case,
    changed,
    decode,
    encode,
    frame_region,
    generate,
    head_mask,
    hires,
    plain_images,
    size,
    square_image,
    with_scripts,
)

pytestmark = pytest.mark.skipif(not os.environ.get("CAPHUMAN_WEBUI_DIR"), reason="needs CAPHUMAN_WEBUI_DIR")

@pytest.fixture(scope="module")
def photo() -> str:
    from PIL import Image

    path = os.environ.get("CAPHUMAN_TEST_PHOTO")
    if path:
        return encode(Image.open(path).convert("RGB"))
    from skimage import data

    return encode(Image.fromarray(data.astronaut()))


@pytest.fixture(scope="module")
def model_name() -> str:
    """The steerable CapFace when the webui has it (head-region assertions), else the random tiny one."""
    status, models = call("/caphuman/v1/models")
    assert status == 200, models
    return STEERABLE if STEERABLE in models["models"] else RANDOM


def test_version_and_models():
    assert call("/caphuman/v1/version")[1]["version"]
    status, models = call("/caphuman/v1/models")
    assert status == 200 and models["models"] and models["head_assets"] == "ok"


TXT2IMG = {
    "batch_size_2": {"batch_size": 2},
    "batch_count_2": {"n_iter": 2},
    "hires_latent_x1.5": hires(hr_scale=1.5),
    "hires_x1.3": hires(hr_scale=1.3),
    "hires_lanczos_x1.5": hires(hr_scale=1.5, hr_upscaler=LANCZOS),
    "hires_resize_to_192x128": hires(hr_resize_x=192, hr_resize_y=128),
    "hires_batch_count_2": hires(hr_scale=1.5, n_iter=2),
    "width_132": {"width": size(132)},
    "dpmpp_2m_karras": {"sampler_name": "DPM++ 2M", "scheduler": "Karras"},
}


@pytest.mark.parametrize("case", list(TXT2IMG))
def test_txt2img_paths(photo, model_name, case):
    unit = {"enabled": True, "reference_images": [photo], "yaw": 20}
    caphuman_case("txt2img", {**BASE, **TXT2IMG[case]}, [unit], model_name, frame_region(unit))


def test_batch_images_match_single_generations(photo, model_name):
    """Image 2 of a batch of 2 (seed 1235) equals a batch-of-1 generation of seed 1235, with CapHuman as without
    (to float noise: batched and single matmuls may round differently)."""
    unit = {"enabled": True, "reference_images": [photo], "model": model_name}
    batch_plain = plain_images("txt2img", with_scripts({**BASE, "batch_size": 2}))
    single_plain, _ = generate("txt2img", with_scripts({**BASE, "seed": 1235}))
    batch, _ = generate("txt2img", with_scripts({**BASE, "batch_size": 2}, [unit]))
    single, _ = generate("txt2img", with_scripts({**BASE, "seed": 1235}, [unit]))
    noise = changed(batch_plain[1], single_plain[0]).max()
    assert noise <= 6, noise
    assert changed(batch[1], single[0]).max() <= max(6, 2 * noise)
    assert changed(single_plain[0], single[0]).max() > 0


def test_moving_the_head_moves_the_change(photo, model_name):
    if model_name != STEERABLE:
        pytest.skip("needs the steerable CapFace")
    plain = plain_images("txt2img", with_scripts(BASE))
    centres = []
    for x in (0.3, 0.7):
        unit = {"enabled": True, "reference_images": [photo], "model": model_name, "center_x": x, "scale": 0.35}
        steered, _ = generate("txt2img", with_scripts(BASE, [unit]))
        diff = changed(plain[0], steered[0]).astype(float)
        centres.append((diff.sum(0) * np.arange(diff.shape[1])).sum() / diff.sum())
    assert centres[1] - centres[0] > 20, centres


def test_two_units(photo, model_name):
    units = [{"enabled": True, "reference_images": [photo], "center_x": 0.3, "scale": 0.3},
             {"enabled": True, "reference_images": [photo], "center_x": 0.7, "scale": 0.3, "strength": 0.7}]

    def region(index, shape):
        return head_mask(units[0], shape[1], shape[0]) | head_mask(units[1], shape[1], shape[0])

    result = caphuman_case("txt2img", BASE, units, model_name, region)
    assert "CapHuman 2" in result["info"]["extra_generation_params"]


IMG2IMG = {
    "img2img": {},
    "img2img_resize_by_1.3": {"width": size(int(128 * 1.3)), "height": size(int(128 * 1.3))},  # img2img.py's sums
    "img2img_just_resize_to_96x160": {"width": size(96), "height": size(160), "resize_mode": 0},
    "inpaint_whole_picture": {"mask": box_mask((32, 16, 96, 112)), "inpainting_fill": 1, "inpaint_full_res": False},
}


@pytest.mark.parametrize("case", list(IMG2IMG))
def test_img2img_paths(photo, model_name, case):
    payload = {**BASE, "init_images": [square_image()], "denoising_strength": 0.7, **IMG2IMG[case]}
    unit = {"enabled": True, "reference_images": [photo]}
    region = frame_region(unit) if "mask" not in payload else None
    caphuman_case("img2img", payload, [unit], model_name, region)


def test_inpaint_only_masked_places_the_head_in_the_whole_frame(photo, model_name):
    """'Only masked' samples a crop (mask box padded by 8: (56, 8)-(120, 72), 64² sampled at 128²). The hint must be
    the whole frame's head cropped the same way (as sd-webui-controlnet crops control images), not a head laid out in
    the crop's own frame: the change inside the mask follows the whole-frame head more than the crop-frame one."""
    box, crop = (64, 16, 112, 64), (56, 8, 120, 72)
    payload = {**BASE, "init_images": [square_image()], "denoising_strength": 0.7, "mask": box_mask(box),
               "inpainting_fill": 1, "inpaint_full_res": True, "inpaint_full_res_padding": 8, "mask_blur": 0}
    unit = {"enabled": True, "reference_images": [photo], "scale": 0.6}
    result = caphuman_case("img2img", payload, [unit], model_name, None)
    if model_name != STEERABLE:
        return
    diff = result["diffs"][0].astype(float)
    in_box = np.zeros(diff.shape, bool)
    in_box[box[1]:box[3], box[0]:box[2]] = True
    whole_frame = head_mask(unit, 128, 128)
    crop_frame = np.zeros(diff.shape, bool)
    crop_frame[crop[1]:crop[3], crop[0]:crop[2]] = head_mask(unit, crop[2] - crop[0], crop[3] - crop[1])

    def contrast(head: np.ndarray) -> float:
        return diff[head & in_box].mean() / diff[in_box & ~head].mean()

    assert contrast(whole_frame) > max(1.3, contrast(crop_frame)), (contrast(whole_frame), contrast(crop_frame))


@pytest.fixture
def loaded_checkpoint():
    """Load a checkpoint through the settings for a whole test, and tiny-sd15 back afterwards. The webui's first
    img2img after loading tiny-sd15-inpainting differs from every later plain one (seen with no CapHuman run
    anywhere: 0, 338, 338, ... max pixel difference), so the test runs one warm-up generation itself."""
    names = []

    def load(name: str) -> None:
        names.append(name)
        status, body = call("/sdapi/v1/options", {"sd_model_checkpoint": name})
        assert status == 200, body

    yield load
    if names:
        call("/sdapi/v1/options", {"sd_model_checkpoint": CHECKPOINT})


def test_inpainting_checkpoint(photo, model_name, loaded_checkpoint):
    call("/sdapi/v1/refresh-checkpoints", {})
    if INPAINTING not in [c["model_name"] for c in call("/sdapi/v1/sd-models")[1]]:
        pytest.skip(f"no {INPAINTING} checkpoint")
    loaded_checkpoint(INPAINTING)
    payload = {**BASE, "init_images": [square_image()], "mask": box_mask((32, 16, 96, 112)),
               "denoising_strength": 0.8, "inpainting_fill": 1, "override_settings": {}}
    generate("img2img", with_scripts(payload))  # warm-up (see loaded_checkpoint)
    caphuman_case("img2img", payload, [{"enabled": True, "reference_images": [photo]}], model_name)


def test_prompt_matrix_with_different_sub_prompt_counts(photo, model_name):
    """Prompt matrix makes 'a portrait photo' (1 sub-prompt) and '..., red hair AND blue eyes AND a hat' (3) in one
    batch (4 cond rows for 2 images: a count-based guess pairs rows 0,0,1,1 instead of 0,1,1,1): each image must get
    its own latent's residuals, i.e. equal the image generated alone with the same prompt."""
    unit = {"enabled": True, "reference_images": [photo]}
    payload = {**BASE, "prompt": "a portrait photo|red hair AND blue eyes AND a hat", "batch_size": 2,
               "script_name": "prompt matrix", "script_args": [False, False, "positive", "comma", 0]}
    result = caphuman_case("txt2img", payload, [unit], model_name)
    images = [image for image in result["steered"] if image.shape == (128, 128, 3)]  # without the grid
    plain_cells = [image for image in result["before"] if image.shape == (128, 128, 3)]
    assert len(images) == 2
    alone = {**BASE, "prompt": "a portrait photo, red hair AND blue eyes AND a hat"}
    alone_plain, _ = generate("txt2img", with_scripts(alone))
    alone_steered, _ = generate("txt2img", with_scripts(alone, result["units"]))
    noise = changed(plain_cells[1], alone_plain[0]).max()
    assert noise <= 6, noise
    assert changed(images[1], alone_steered[0]).max() <= max(6, 2 * noise)


def xyz_args(xyz: dict, axis: int, values: str) -> list:
    """X/Y/Z plot's arguments as script-info lists them (Neo adds a row count): the X axis set, no Y or Z, every
    cell returned as an image of its own, the rest at their defaults."""
    args = [arg.get("value") for arg in xyz["args"]]
    args[:9] = [axis, values, [], 0, "", [], 0, "", []]
    wanted = {"Draw legend": True, "Include Sub Images": True, "Include Sub Grids": False, "Keep -1 for seeds": False}
    for index, arg in enumerate(xyz["args"]):
        if arg.get("label") in wanted:
            args[index] = wanted[arg["label"]]
    return args


def test_xyz_plot_strength_axis(photo, model_name):
    status, infos = call("/sdapi/v1/script-info")
    xyz = next(s for s in infos if s["name"] == "x/y/z plot" and not s["is_img2img"])
    axis = xyz["args"][0]["choices"].index("[CapHuman] Strength")
    script_args = xyz_args(xyz, axis, "0, 0.5, 1.5")
    payload = {**BASE, "script_name": "x/y/z plot", "script_args": script_args}
    unit = {"enabled": True, "reference_images": [photo], "model": model_name}
    plain = plain_images("txt2img", with_scripts(BASE))
    images, info = generate("txt2img", with_scripts(payload, [unit]))
    cells = [image for image in images if image.shape == (128, 128, 3)]
    assert len(cells) == 3
    texts = info["infotexts"][-3:]
    assert "strength 0.5" in texts[1] and "strength 1.5" in texts[2], texts
    assert np.array_equal(cells[0], plain[0]) or changed(cells[0], plain[0]).max() <= 6  # strength 0: as plain
    weak, strong = changed(plain[0], cells[1]).mean(), changed(plain[0], cells[2]).mean()
    assert 0 < weak < strong, (weak, strong)
    assert np.array_equal(generate("txt2img", with_scripts(BASE))[0][0], plain[0])


@pytest.mark.parametrize(("unit", "field"), [
    ({"enabled": True, "strength": 9}, "strength"),
    ({"enabled": True, "reference_images": ["@@@"]}, "reference_images"),
    ({"enabled": True, "modes": ["tilt"], "reference_images": []}, "modes"),
])
def test_bad_payloads_get_422_naming_the_field(unit, field):
    status, body = call("/sdapi/v1/txt2img", with_scripts(BASE, [unit]))
    assert status == 422 and body["detail"][0]["loc"][-1] == field, body


def test_no_face_is_a_readable_error_and_the_next_generation_is_plain(model_name):
    from PIL import Image

    plain = plain_images("txt2img", with_scripts(BASE))
    blank = encode(Image.new("RGB", (128, 128), (90, 140, 200)))
    unit = {"enabled": True, "reference_images": [blank], "model": model_name}
    status, body = call("/sdapi/v1/txt2img", with_scripts(BASE, [unit]))
    assert status >= 400 and "face" in json.dumps(body).lower(), body
    assert np.array_equal(generate("txt2img", with_scripts(BASE))[0][0], plain[0])


def test_a_capface_that_does_not_fit_the_checkpoint_says_so(photo):
    """caphuman_mid (320 channels, for mid-sd15) with tiny-sd15 (32 channels) loaded."""
    status, models = call("/caphuman/v1/models")
    if "caphuman_mid.safetensors" not in models["models"]:
        pytest.skip("no caphuman_mid.safetensors (docs/webui-testing/make_mid_controls.py)")
    plain = plain_images("txt2img", with_scripts(BASE))
    unit = {"enabled": True, "reference_images": [photo], "model": "caphuman_mid.safetensors"}
    status, body = call("/sdapi/v1/txt2img", with_scripts(BASE, [unit]))
    text = json.dumps(body)
    assert status >= 400 and "caphuman_mid" in text, (status, text[:500])
    assert np.array_equal(generate("txt2img", with_scripts(BASE))[0][0], plain[0])


def test_a_small_capface_on_a_real_width_sd15_names_the_model(photo):
    """caphuman_tiny (32 channels) with mid-sd15 (SD1.5's widths) loaded: the message names the model that does not
    fit, and does not ask for an SD1.x checkpoint (one is loaded)."""
    call("/sdapi/v1/refresh-checkpoints", {})
    if REAL_WIDTH not in [c["model_name"] for c in call("/sdapi/v1/sd-models")[1]]:
        pytest.skip(f"no {REAL_WIDTH} checkpoint (docs/webui-testing/make_mid_sd15.py)")
    if RANDOM not in call("/caphuman/v1/models")[1]["models"]:
        pytest.skip(f"no {RANDOM} (docs/webui-testing/make_tiny_caphuman_files.py)")
    payload = {**BASE, "width": 64, "height": 64, "steps": 2, "override_settings": {"sd_model_checkpoint": REAL_WIDTH}}
    plain = plain_images("txt2img", with_scripts(payload))
    status, body = call("/sdapi/v1/txt2img", with_scripts(payload, [{"enabled": True, "reference_images": [photo],
                                                                     "model": RANDOM}]))
    text = json.dumps(body)
    assert status >= 400 and RANDOM in text and "load an SD1.x checkpoint" not in text, (status, text[:600])
    assert np.array_equal(generate("txt2img", with_scripts(payload))[0][0], plain[0])


def test_default_model_is_never_a_silent_no_op(photo):
    """Model "" with several CapFaces in the folder (caphuman_mid first by name, which does not fit tiny-sd15): either
    CapHuman acts, or the generation stops with a message saying the model does not fit."""
    plain = plain_images("txt2img", with_scripts(BASE))
    status, body = call("/sdapi/v1/txt2img", with_scripts(BASE, [{"enabled": True, "reference_images": [photo]}]))
    if status == 200:
        assert changed(plain[0], decode(body["images"][0])).max() > 0
        assert "CapHuman 1" in json.loads(body["info"])["extra_generation_params"]
    else:
        assert "fit" in json.dumps(body), body
    assert np.array_equal(generate("txt2img", with_scripts(BASE))[0][0], plain[0])


def test_refiner_gets_the_capface_residuals(photo, model_name):
    """Refiner tiny-sd15-b / rand-sd15-b (the webui builds a new model object) from 0.5; the unit acts from step 0.6
    on only, so every pixel change comes from the refiner's UNet."""
    payload = {**BASE, "steps": 6, "refiner_checkpoint": CHECKPOINT_B, "refiner_switch_at": 0.5}
    unit = {"enabled": True, "reference_images": [photo], "start": 0.6}
    call("/caphuman-probe/v1/log")
    result = caphuman_case("txt2img", payload, [unit], model_name, frame_region(unit))
    assert "Refiner" in result["info"]["extra_generation_params"]
    generate("txt2img", with_scripts(payload, result["units"], probe=True))
    log = call("/caphuman-probe/v1/log")[1]["log"]
    refined = [r for r in log if r["checkpoint"].startswith(CHECKPOINT_B)]
    assert refined and all(r["hooks"] for r in refined), log


def test_hires_checkpoint_gets_the_capface_residuals(photo, model_name):
    payload = {**BASE, **hires(hr_scale=1.5, hr_checkpoint_name=CHECKPOINT_B)}
    unit = {"enabled": True, "reference_images": [photo]}
    result = caphuman_case("txt2img", payload, [unit], model_name, frame_region(unit))
    call("/caphuman-probe/v1/log")
    generate("txt2img", with_scripts(payload, result["units"], probe=True))
    log = call("/caphuman-probe/v1/log")[1]["log"]
    first = [r for r in log if r["phase"] == "first"]
    second = [r for r in log if r["phase"] == "hires"]
    assert first and all(r["hooks"] for r in first), log
    assert second and all(r["checkpoint"].startswith(CHECKPOINT_B) and r["hooks"] for r in second), log
    assert {r["unet"] for r in second}.isdisjoint({r["unet"] for r in first}), log  # a new model object


def test_a_second_pass_from_postprocess_image_sees_no_capface(photo, model_name):
    """An ADetailer-like img2img pass run from postprocess_image (its own p, no CapHuman unit): the same input gives
    bit-identical output whether the main generation used CapHuman or not, and no CapHuman hook is on its UNet."""
    unit = {"enabled": True, "reference_images": [photo], "model": model_name}
    call("/caphuman-probe/v1/log")
    plain, _ = generate("txt2img", with_scripts(BASE, probe=True))
    plain_log = call("/caphuman-probe/v1/log")[1]
    steered, _ = generate("txt2img", with_scripts(BASE, [unit], probe=True))
    steered_log = call("/caphuman-probe/v1/log")[1]
    assert changed(plain[0], steered[0]).max() > 0
    second = [r for r in steered_log["log"] if r["phase"] == "second_pass"]
    assert second and not any(r["hooks"] for r in second), steered_log["log"]
    assert np.array_equal(decode(plain_log["second_pass_images"][0]), decode(steered_log["second_pass_images"][0]))


def test_plain_generation_has_no_caphuman_hook():
    call("/caphuman-probe/v1/log")
    generate("txt2img", with_scripts({**BASE, **hires(hr_scale=1.5)}, probe=True))
    log = call("/caphuman-probe/v1/log")[1]["log"]
    assert log and not any(r["hooks"] for r in log), log


def test_preview_route(photo):
    status, body = call("/caphuman/v1/preview", {"reference_images": [photo], "width": 160, "height": 96, "yaw": 30})
    assert status == 200 and set(body["images"]) == {"normal", "albedo", "shading", "alpha", "landmarks"}
    alpha = decode(body["images"]["alpha"])
    assert alpha.shape[:2] == (96, 160) and 0 < (alpha[..., 0] > 127).mean() < 0.9


def test_infotext_round_trip_through_png_info(photo, model_name):
    unit = {"enabled": True, "reference_images": [photo], "strength": 0.7, "modes": ["position"], "yaw": 15,
            "model": model_name}
    status, result = call("/sdapi/v1/txt2img", with_scripts(BASE, [unit]))
    assert status == 200, result
    status, info = call("/sdapi/v1/png-info", {"image": "data:image/png;base64," + result["images"][0]})
    assert status == 200, info
    from caphuman_ext.unit.infotext import from_infotext

    restored = from_infotext(info["parameters"]["CapHuman 1"])
    assert restored["strength"] == 0.7 and list(restored["modes"]) == ["position"] and restored["yaw"] == 15


def test_next_to_sd_webui_controlnet(photo):
    """sd-webui-controlnet v1.1.455 with mid-sd15 (SD1.5 widths, random), control_mid_random and caphuman_mid."""
    status, models = call("/controlnet/model_list")
    call("/sdapi/v1/refresh-checkpoints", {})
    checkpoints = [c["model_name"] for c in call("/sdapi/v1/sd-models")[1]]
    if status != 200 or not models.get("model_list") or "mid-sd15" not in checkpoints:
        pytest.skip("no sd-webui-controlnet / mid-sd15 setup")
    payload = {**BASE, "width": 64, "height": 64, "steps": 2, "override_settings": {"sd_model_checkpoint": "mid-sd15"}}
    controlnet = {"enabled": True, "model": models["model_list"][0], "image": photo, "module": "none", "weight": 1.0}
    caphuman = {"enabled": True, "model": "caphuman_mid.safetensors", "reference_images": [photo]}

    def run(cn: bool, ch: bool) -> np.ndarray:
        scripts = {}
        if cn:
            scripts["controlnet"] = {"args": [controlnet]}
        if ch:
            scripts["CapHuman"] = {"args": [caphuman]}
        return generate("txt2img", {**payload, "alwayson_scripts": scripts})[0][0]

    plain, only_cn, only_ch, both = run(False, False), run(True, False), run(False, True), run(True, True)
    assert changed(plain, only_cn).max() > 0 and changed(plain, only_ch).max() > 0
    assert changed(only_cn, both).max() > 0 and changed(only_ch, both).max() > 0
    assert np.array_equal(run(False, False), plain)
    assert np.array_equal(run(True, False), only_cn)


def test_sd2_checkpoint_gets_a_clear_message(photo):
    """A tiny SD2-architecture checkpoint `tiny-sd2` (OpenCLIP text encoder)."""
    call("/sdapi/v1/refresh-checkpoints", {})
    if "tiny-sd2" not in [c["model_name"] for c in call("/sdapi/v1/sd-models")[1]]:
        pytest.skip("no tiny-sd2 checkpoint")
    payload = {**BASE, "override_settings": {"sd_model_checkpoint": "tiny-sd2"}}
    plain, _ = generate("txt2img", with_scripts(payload))
    unit = {"enabled": True, "reference_images": [photo], "model": RANDOM}
    status, body = call("/sdapi/v1/txt2img", with_scripts(payload, [unit]))
    assert status >= 400 and "SD1" in json.dumps(body), body
    assert np.array_equal(generate("txt2img", with_scripts(payload))[0][0], plain[0])


@pytest.mark.skipif(not os.environ.get("CAPHUMAN_WEBUI_RELOAD"), reason="reloads the UI: set CAPHUMAN_WEBUI_RELOAD=1")
def test_routes_survive_reload_ui_with_a_poller():
    """Settings' "Reload UI" rebuilds the app in-process while a client polls every 0.5 s (as the webui's page does):
    the extension's routes and its 422 answers are there afterwards. Runs last: it reloads the UI."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "docs" / "webui-testing" / "reload_race.py"
    spec = importlib.util.spec_from_file_location("reload_race", path)
    race = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(race)
    result = race.one_round()
    assert result["version_after"] == 200 and result["bad_strength_after"] == 422, result
