"""Live cases of issues 18 and 19 in a real webui (docs/webui_testing.md): a refiner of another model family, the
RNG after CapHuman's first model build, ADetailer's face pass (Bing-su/adetailer, mediapipe_face_full, "Skip img2img"
on a face photo) and the built-in face refine. Every assertion is on decoded pixels; the numbers are printed (-s).

Skipped unless CAPHUMAN_WEBUI_DIR is set. Each case needs what it names: `tiny-sd2` (make_tiny_sd2.py), ADetailer in
the webui's extensions (else its cases skip). `CAPHUMAN_FRESH=1` marks a webui that has made no CapHuman picture yet
(the first-build RNG case runs only then; restart the webui for it, and set `CAPHUMAN_FRESH_SCORE=1` to run it with
"Score CapHuman results" on).
"""

from __future__ import annotations

import base64
import io
import json
import os

import numpy as np
import pytest

from tests.live_webui import (
    BASE,
    CHECKPOINT,
    HIRES_EXTRA,
    LATENT,
    STEERABLE,
    call,
    changed,
    decode,
    encode,
    generate,
    head_mask,
    square_image,
    with_scripts,
)

pytestmark = pytest.mark.skipif(not os.environ.get("CAPHUMAN_WEBUI_DIR"), reason="needs CAPHUMAN_WEBUI_DIR")


def face_photo(side: int) -> str:
    from PIL import Image
    from skimage import data

    return encode(Image.fromarray(data.astronaut()).resize((side, side), Image.LANCZOS))


def report(name: str, **numbers) -> None:
    print(f"\n[live] {name}: " + ", ".join(f"{k}={v}" for k, v in numbers.items()), flush=True)


def digest(image: np.ndarray) -> str:
    import hashlib

    return hashlib.sha256(image.tobytes()).hexdigest()[:8]


# -- issue 18: a refiner of another family ------------------------------------------------------------------------


def _sd2_present() -> bool:
    call("/sdapi/v1/refresh-checkpoints", {})
    return "tiny-sd2" in [c["model_name"] for c in call("/sdapi/v1/sd-models")[1]]


@pytest.mark.parametrize("end", [0.4, 1.0])
def test_sd2_refiner_after_sd15_keeps_the_first_pass(end):
    if not _sd2_present():
        pytest.skip("no tiny-sd2 checkpoint")
    photo = face_photo(256)
    payload = {**BASE, "steps": 6, "refiner_checkpoint": "tiny-sd2", "refiner_switch_at": 0.5}
    plain, _ = generate("txt2img", with_scripts(payload))
    unit = {"enabled": True, "reference_images": [photo], "model": STEERABLE, "end": end}
    status, body = call("/sdapi/v1/txt2img", with_scripts(payload, [unit]))
    assert status == 200, body
    info = json.loads(body["info"])
    note = info["extra_generation_params"].get("CapHuman note", "")
    steered = decode(body["images"][0])
    again, _ = generate("txt2img", with_scripts(payload))
    report(f"sd2 refiner end={end}", status=status, note=note, changed_max=int(changed(plain[0], steered).max()),
           plain_after_equal=bool(np.array_equal(plain[0], again[0])))
    assert "CapHuman 1" in info["extra_generation_params"]
    assert changed(plain[0], steered).max() > 0  # the first pass (with CapHuman) is kept, refined by SD2
    assert np.array_equal(plain[0], again[0])
    assert "SDXL" not in note
    if end > 0.5:  # still acting at the switch: stopped there, said so
        assert "refiner" in note and "SD1" in note, note


# -- issue 18: the first model build does not move the webui's RNG ---------------------------------------------------


@pytest.mark.skipif(not os.environ.get("CAPHUMAN_FRESH"), reason="needs a webui that has made no CapHuman picture")
def test_first_caphuman_img2img_of_a_process_repeats():
    if os.environ.get("CAPHUMAN_FRESH_SCORE"):
        assert call("/sdapi/v1/options", {"caphuman_score": True})[0] == 200
    payload = {**BASE, "init_images": [square_image()], "denoising_strength": 0.7}
    unit = {"enabled": True, "reference_images": [face_photo(256)], "model": STEERABLE}
    # A1111 draws img2img's VAE-encode noise from torch's global generator, which only its first sampling seeds: the
    # first img2img of a process differs from every later one with or without CapHuman, so one plain run comes first
    warm = generate("img2img", with_scripts(payload))[0][0]
    runs = []
    for units in ([], [unit], [], [], [unit]):
        runs.append(generate("img2img", with_scripts(payload, units))[0][0])
    if os.environ.get("CAPHUMAN_FRESH_SCORE"):
        call("/sdapi/v1/options", {"caphuman_score": False})
    report("fresh img2img plain, CapHuman, plain, plain, CapHuman", score=bool(os.environ.get("CAPHUMAN_FRESH_SCORE")),
           warm=digest(warm), digests=[digest(r) for r in runs])
    assert np.array_equal(runs[0], runs[2]) and np.array_equal(runs[0], runs[3])
    assert np.array_equal(runs[1], runs[4])
    assert changed(runs[0], runs[1]).max() > 0


# -- issue 19: ADetailer's face pass ------------------------------------------------------------------------------

SIDE = 256
ADETAILER_ARGS = {"ad_model": "mediapipe_face_full", "ad_denoising_strength": 0.5, "ad_inpaint_only_masked": True,
                  "ad_mask_blur": 4, "ad_use_inpaint_width_height": True, "ad_inpaint_width": 128,
                  "ad_inpaint_height": 128, "ad_steps": 4, "ad_use_steps": True}
# the astronaut's face at 256²: the unit's head placed over it (the first pass's head is cut to ADetailer's crop)
FACE_UNIT = {"center_x": 0.44, "center_y": 0.24, "scale": 0.25}


def _adetailer_present() -> bool:
    status, body = call("/adetailer/v1/ad_model")
    return status == 200 and "mediapipe_face_full" in body.get("ad_model", [])


def _set_script_names(listed: bool) -> None:
    names = "dynamic_prompting,dynamic_thresholding,lora_block_weight,negpip,wildcard_recursive,wildcards"
    status, body = call("/sdapi/v1/options", {"ad_script_names": names + (",caphuman_unit" if listed else "")})
    assert status == 200, body


def prime() -> None:
    """A1111 VAE-encodes img2img's input (ADetailer's crop too) with noise from torch's global generator as the job
    before left it (`rng.randn` seeds it at sampling): the same plain txt2img before every measured img2img makes
    its pixels independent of what ran earlier."""
    generate("txt2img", with_scripts(BASE))


def _img2img(photo: str, units: list[dict], adetailer: bool) -> tuple[np.ndarray, dict]:
    prime()
    payload = {**BASE, "init_images": [photo], "width": SIDE, "height": SIDE, "denoising_strength": 0.5,
               "alwayson_scripts": {}}
    if adetailer:
        payload["alwayson_scripts"]["ADetailer"] = {"args": [True, True, dict(ADETAILER_ARGS)]}
    if units:
        payload["alwayson_scripts"]["CapHuman"] = {"args": units}
    images, info = generate("img2img", payload)
    return images[0], info


def _box(mask: np.ndarray) -> tuple[int, int, int, int]:
    ys, xs = np.nonzero(mask)
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


@pytest.fixture(scope="module")
def adetailer_runs():
    if not _adetailer_present():
        pytest.skip("no ADetailer with mediapipe_face_full")
    photo = face_photo(SIDE)
    unit = {"enabled": True, "reference_images": [photo], "model": STEERABLE, **FACE_UNIT}
    runs = {}
    _set_script_names(False)
    runs["plain_before"] = _img2img(photo, [], False)
    runs["ad_only"] = _img2img(photo, [], True)
    runs["ad_unlisted"] = _img2img(photo, [unit], True)
    _set_script_names(True)
    runs["ad_head"] = _img2img(photo, [{**unit, "detail_passes": "head"}], True)
    runs["ad_identity"] = _img2img(photo, [{**unit, "detail_passes": "identity"}], True)
    runs["ad_off"] = _img2img(photo, [{**unit, "detail_passes": "off"}], True)
    runs["ad_only_after"] = _img2img(photo, [], True)
    runs["plain_after"] = _img2img(photo, [], False)
    yield photo, unit, runs
    _set_script_names(False)


def test_adetailer_face_pass_with_caphuman(adetailer_runs):
    photo, _, runs = adetailer_runs
    source = decode(photo)
    ad_only = runs["ad_only"][0]
    detected = changed(source, ad_only) > 0  # ADetailer's inpaint changes only its mask (blurred) over the face
    assert detected.any(), "ADetailer found no face"
    left, top, right, bottom = _box(detected)
    box = np.zeros(detected.shape, bool)
    box[top:bottom, left:right] = True
    for name in ("ad_head", "ad_identity"):
        diff = changed(ad_only, runs[name][0])
        inside, outside = diff[box].mean(), diff[~box].mean()
        report(f"ADetailer {name}", box=(left, top, right, bottom), inside=round(float(inside), 2),
               outside=round(float(outside), 2), changed_inside=int((diff[box] > 0).sum()), box_pixels=int(box.sum()),
               changed_outside=int((diff[~box] > 0).sum()),
               detail_key=runs[name][1]["extra_generation_params"].get("CapHuman detail passes"))
        assert inside > 2 * outside and inside > 0, (name, inside, outside)
    assert runs["ad_head"][1]["extra_generation_params"].get("CapHuman detail passes") == "1 head"
    assert runs["ad_identity"][1]["extra_generation_params"].get("CapHuman detail passes") == "1 identity"
    if os.environ.get("CAPHUMAN_LIVE_PICTURES"):  # the README's picture: photo | ADetailer alone | head | identity
        from PIL import Image

        strip = np.concatenate([source, ad_only, runs["ad_head"][0], runs["ad_identity"][0]], axis=1)
        Image.fromarray(strip).save(os.path.join(os.environ["CAPHUMAN_LIVE_PICTURES"], "adetailer_live.png"))


def test_adetailer_detail_passes_off_and_unlisted_equal_adetailer_alone(adetailer_runs):
    _, _, runs = adetailer_runs
    ad_only = runs["ad_only"][0]
    report("ADetailer off/unlisted", off_equal=bool(np.array_equal(runs["ad_off"][0], ad_only)),
           unlisted_equal=bool(np.array_equal(runs["ad_unlisted"][0], ad_only)),
           ad_only_after_equal=bool(np.array_equal(runs["ad_only_after"][0], ad_only)),
           plain_after_equal=bool(np.array_equal(runs["plain_after"][0], runs["plain_before"][0])),
           off_key=runs["ad_off"][1]["extra_generation_params"].get("CapHuman detail passes"),
           unlisted_key=runs["ad_unlisted"][1]["extra_generation_params"].get("CapHuman detail passes"))
    assert np.array_equal(runs["ad_off"][0], ad_only)
    assert np.array_equal(runs["ad_unlisted"][0], ad_only)
    assert np.array_equal(runs["ad_only_after"][0], ad_only)
    assert np.array_equal(runs["plain_after"][0], runs["plain_before"][0])
    assert "CapHuman detail passes" not in runs["ad_off"][1]["extra_generation_params"]
    assert "CapHuman detail passes" not in runs["ad_unlisted"][1]["extra_generation_params"]


@pytest.mark.parametrize("name", ["ad_head", "ad_identity", "ad_unlisted"])
def test_adetailer_infotext_paste_reproduces_the_picture(adetailer_runs, name):
    """PNG info → the infotext → a unit from the paste (plus the photo: the infotext carries its hash) → same
    pixels, with caphuman_unit listed (an unlisted run's paste says "off")."""
    from caphuman_ext.unit.paste import pasted_unit

    photo, unit, runs = adetailer_runs
    image, info = runs[name]
    from PIL import Image
    from PIL.PngImagePlugin import PngInfo

    buffer = io.BytesIO()
    meta = PngInfo()
    meta.add_text("parameters", info["infotexts"][0])
    Image.fromarray(image).save(buffer, format="PNG", pnginfo=meta)
    status, parsed = call("/sdapi/v1/png-info", {"image": "data:image/png;base64,"
                                                 + base64.b64encode(buffer.getvalue()).decode()})
    assert status == 200, parsed
    pasted = pasted_unit(parsed["parameters"], 0, None)
    assert pasted is not None
    settings = {k: v for k, v in pasted.settings.items() if k not in ("reference_images",)}
    settings["modes"] = list(settings.get("modes", ()))
    _set_script_names(True)
    again, _ = _img2img(photo, [{**settings, "enabled": True, "reference_images": [photo]}], True)
    report(f"paste {name}", detail_passes=settings.get("detail_passes"),
           equal=bool(np.array_equal(again, image)), max_diff=int(changed(image, again).max()))
    assert np.array_equal(again, image)


# -- issue 19: the built-in face refine ----------------------------------------------------------------------------

REFINE_UNIT = {"center_x": 0.5, "center_y": 0.45, "scale": 0.35, "refine_size": 128, "refine_denoise": 0.5,
               "refine_padding": 16}


@pytest.mark.parametrize("case", ["txt2img", "hires"])
def test_face_refine_changes_the_head_box_only(case):
    photo = face_photo(256)
    payload = dict(BASE)
    if case == "hires":
        payload.update(enable_hr=True, denoising_strength=0.6, hr_second_pass_steps=2, hr_upscaler=LATENT,
                       hr_scale=1.5, **HIRES_EXTRA)
    unit = {"enabled": True, "reference_images": [photo], "model": STEERABLE, **REFINE_UNIT}
    plain, _ = generate("txt2img", with_scripts(payload))
    unrefined, _ = generate("txt2img", with_scripts(payload, [unit]))
    refined, info = generate("txt2img", with_scripts(payload, [{**unit, "refine": True}]))
    again, _ = generate("txt2img", with_scripts(payload))
    height, width = refined[0].shape[:2]
    head = head_mask(unit, width, height)
    left, top, right, bottom = _box(head)
    feather = max(4, round(0.08 * max(right - left, bottom - top)))
    box = np.zeros(head.shape, bool)
    box[top:bottom, left:right] = True
    # the blend mask: the box grown by the feather, blurred by A1111 with mask blur = feather (a Gaussian kernel of
    # 2 * int(2.5 * blur + 0.5) + 1 pixels)
    reach = np.zeros(head.shape, bool)
    grow = feather + int(2.5 * feather + 0.5)
    reach[max(0, top - grow):bottom + grow, max(0, left - grow):right + grow] = True
    diff = changed(unrefined[0], refined[0])
    report(f"refine {case}", size=(width, height), box=(left, top, right, bottom), feather=feather,
           inside_box=round(float(diff[box].mean()), 2), outside_reach=round(float(diff[~reach].mean()), 2),
           changed_outside_reach=int((diff[~reach] > 0).sum()), head_inside=round(float(diff[head].mean()), 2),
           plain_after_equal=bool(np.array_equal(plain[0], again[0])),
           refine_info={k: v for k, v in info["extra_generation_params"].items() if "CapHuman" in k})
    if os.environ.get("CAPHUMAN_IMAGES"):
        from PIL import Image

        folder = os.environ["CAPHUMAN_IMAGES"]
        os.makedirs(folder, exist_ok=True)
        Image.fromarray(unrefined[0]).save(f"{folder}/refine_{case}_before.png")
        Image.fromarray(refined[0]).save(f"{folder}/refine_{case}_after.png")
        Image.fromarray(plain[0]).save(f"{folder}/refine_{case}_plain.png")
    assert diff[box].mean() > 0
    assert not diff[~reach].any()
    assert np.array_equal(plain[0], again[0])
    assert CHECKPOINT
