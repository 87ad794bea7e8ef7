"""Property-based fuzzing of everything a client or a pasted image hands the unit: unit dicts (direct and over HTTP),
raw request bodies, infotext, model names and image files (crafted oddities plus random corruptions).

The properties: validation either returns a unit whose every value is in range, or raises UnitValidationError naming
a field; the HTTP API answers 200/413/422, never 500; `from_infotext` never raises and returns only values
`unit_from_dict` accepts; the photo decoder returns an RGB image within the size cap or raises ImageError.

CI runs a fixed, derandomized set (about a minute on two cores). A longer, random run:

    CAPHUMAN_FUZZ_EXAMPLES=5000 python -m pytest -q tests/test_api_fuzz.py

(`CAPHUMAN_FUZZ_EXAMPLES` multiplies nothing: it is the example count of the main properties; the HTTP properties
run a quarter of it. Random runs print a `@reproduce_failure` line for any failure.)
"""

from __future__ import annotations

import base64
import io
import math
import os
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from caphuman_ext.unit import infotext, params  # noqa: E402
from caphuman_ext.unit.params import FIELD_ORDER, RANGES, UnitValidationError, unit_from_dict  # noqa: E402
from preprocessors.head.codes import MODES  # noqa: E402
from preprocessors.head.frames import RESIZE_MODES  # noqa: E402
from preprocessors.identity.errors import ImageError  # noqa: E402
from preprocessors.identity.image_io import MAX_SIDE, decode_photo  # noqa: E402

EXAMPLES = int(os.environ.get("CAPHUMAN_FUZZ_EXAMPLES", "0"))
LONG_RUN = EXAMPLES > 0
fuzz = settings(max_examples=EXAMPLES or 150, deadline=None, derandomize=not LONG_RUN, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                                       HealthCheck.data_too_large])
fuzz_http = settings(fuzz, max_examples=max(1, (EXAMPLES or 200) // 4))


def encoded(image: Image.Image, format: str = "PNG", **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=format, **options)
    return buffer.getvalue()


SMALL_PHOTO = base64.b64encode(encoded(Image.new("RGB", (24, 20), (90, 140, 200)))).decode()

# JSON-like values, hostile ones included: NaN/Infinity, huge integers, lone surrogates, deep and wide containers.
any_text = st.text(st.characters(exclude_categories=()), max_size=30)
scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.integers(min_value=10**20, max_value=10**400),
                    st.floats(allow_nan=True, allow_infinity=True), any_text,
                    st.sampled_from(["nan", "inf", "-Infinity", "1e999", "0x10", " 1 ", "", "all", "none"]))
json_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(any_text, inner, max_size=4), max_leaves=12)
field_values = {
    "modes": st.one_of(st.lists(st.sampled_from([*MODES, "all", "tilt", "", " pose "]), max_size=6),
                       st.sampled_from(["position,pose", "position+expression", "all", "", ",", "Pose"])),
    "resize_mode": st.sampled_from([*RESIZE_MODES, "just resize", ""]),
    "reference_images": st.lists(st.sampled_from([SMALL_PHOTO, "data:image/png;base64," + SMALL_PHOTO, "!!",
                                                  None]), max_size=3),
    "face_index": st.one_of(st.integers(-3, 40), st.floats(-1, 40)),
    **{name: st.floats(low - 1, high + 1) for name, (low, high) in RANGES.items()},
}
unit_dicts = st.dictionaries(
    st.one_of(st.sampled_from([*FIELD_ORDER, "reference_image", "unknown_field", "", "\ud800", "\x00", "é"]),
              any_text),
    json_values, max_size=8,
).flatmap(lambda base: st.fixed_dictionaries(
    {name: st.one_of(field_values[name], json_values) if name in field_values else json_values for name in base}))


def check_unit(unit: params.UnitParams) -> None:
    for name, (low, high) in RANGES.items():
        value = getattr(unit, name)
        assert isinstance(value, float) and math.isfinite(value) and low <= value <= high, name
    assert isinstance(unit.face_index, int) and 0 <= unit.face_index <= params.MAX_FACE_INDEX
    assert unit.modes and set(unit.modes) <= set(MODES)
    assert unit.resize_mode in RESIZE_MODES and isinstance(unit.model, str)
    assert all(image.mode == "RGB" for image in unit.reference_images)
    assert len(unit.reference_images) <= params.MAX_PHOTOS and unit.start <= unit.end


@fuzz
@given(unit_dicts)
def test_unit_dicts_validate_or_name_a_field(data):
    try:
        unit = unit_from_dict(data)
    except UnitValidationError as error:
        assert isinstance(error.field, str) and error.reason  # the field, or the unknown key as sent ("" too)
        assert error.field in (*FIELD_ORDER, "unit") or error.field[:60] in {str(k)[:60] for k in data}
        return
    check_unit(unit)


@fuzz
@given(json_values)
def test_any_json_value_as_a_unit(data):
    try:
        check_unit(unit_from_dict(data))
    except UnitValidationError:
        pass


@fuzz
@given(st.text(max_size=300))
def test_model_names_are_accepted_exactly_or_refused(name):
    try:
        accepted = params.check_model_name(name)
    except UnitValidationError as error:
        assert error.field == "model"
        return
    unit = params.UnitParams(model=accepted)
    assert infotext.from_infotext(infotext.to_infotext(unit))["model"] == accepted


saved_part = st.tuples(st.sampled_from([*infotext.SAVED, "photos", "pose", "junk"]),
                       st.one_of(st.text(max_size=20), st.sampled_from(["nan", "inf", "1e400", "none", "default"]),
                                 st.floats().map(str)))


@fuzz
@given(st.one_of(st.text(max_size=400), st.lists(saved_part, max_size=10).map(
    lambda parts: "; ".join(f"{name} {value}" for name, value in parts))))
def test_from_infotext_never_raises_and_pastes_valid_values(text):
    values = infotext.from_infotext(text)
    assert values["enabled"] is True
    check_unit(unit_from_dict({k: v for k, v in values.items() if k != "enabled"}))
    for digest in (infotext.photos_hash_from_infotext(text), infotext.pose_hash_from_infotext(text)):
        assert digest is None or len(digest) == 12


@fuzz
@given(st.fixed_dictionaries({name: strategy for name, strategy in field_values.items()
                              if name not in ("reference_images",)}))
def test_infotext_round_trip(values):
    try:
        unit = unit_from_dict(values)
    except UnitValidationError:
        return
    back = unit_from_dict({k: v for k, v in infotext.from_infotext(infotext.to_infotext(unit)).items()
                           if k != "enabled"})
    for name in infotext.SAVED:
        before, after = getattr(unit, name), getattr(back, name)
        if isinstance(before, float):
            assert after == pytest.approx(before, rel=1e-5, abs=1e-9), name
        else:
            assert after == before, name


# HTTP: the real FastAPI app of test_api (tests/api_helpers.py), one per module.
@pytest.fixture(scope="module")
def client():
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from tests.api_helpers import install, make_webui

    app, _ = make_webui()
    install(app)
    with TestClient(app) as test_client:
        yield test_client


def answered(response) -> None:
    assert response.status_code in (200, 413, 422), response.text
    if response.status_code != 200:
        detail = response.json()["detail"]
        assert detail[0]["loc"] and detail[0]["msg"]


def as_json(value) -> bytes:
    import json

    return json.dumps(value).encode()  # NaN/Infinity written as JSON's non-standard literals, as clients do


@fuzz_http
@given(st.lists(unit_dicts, max_size=5), st.sampled_from(["CapHuman", "caphuman"]), st.booleans())
def test_http_generation_payloads_never_500(client, units, title, wrapped):
    entry = {"args": units} if wrapped else units
    answered(client.post("/sdapi/v1/txt2img", content=as_json({"alwayson_scripts": {title: entry}}),
                         headers={"content-type": "application/json"}))


@fuzz_http
@given(st.one_of(any_text, st.sampled_from(["", "\ud800", "\x00"])), json_values)
def test_http_any_key_or_model_name_is_answered(client, key, value):
    for unit in ({key: value}, {"model": key}, {"modes": [key]}):
        answered(client.post("/sdapi/v1/txt2img", content=as_json({"alwayson_scripts": {"CapHuman": [unit]}}),
                             headers={"content-type": "application/json"}))


@fuzz_http
@given(unit_dicts, st.dictionaries(st.sampled_from(["width", "height"]), json_values))
def test_http_preview_payloads_never_500(client, unit, size):
    body = {**unit, **size, "reference_image": SMALL_PHOTO}
    answered(client.post("/caphuman/v1/preview", content=as_json(body), headers={"content-type": "application/json"}))


@fuzz_http
@given(st.one_of(st.binary(max_size=200), json_values.map(as_json),
                 st.integers(1, 3000).map(lambda depth: ("[" * depth).encode())))
def test_http_raw_bodies_never_500(client, body):
    for path in ("/sdapi/v1/txt2img", "/caphuman/v1/preview"):
        wrapped = b'{"alwayson_scripts": {"CapHuman": {"args": [' + body + b"]}}}"
        for content in (body, wrapped):
            response = client.post(path, content=content, headers={"content-type": "application/json"})
            assert response.status_code != 500, response.text


# Image files: crafted oddities, then random corruptions of valid files.
def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_declaring(width: int, height: int, depth: int = 8, color: int = 2) -> bytes:
    header = struct.pack(">IIBBBBB", width, height, depth, color, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + png_chunk(b"IDAT", zlib.compress(b"\x00" * 64))
            + png_chunk(b"IEND", b""))


def bmp_declaring(width: int, height: int) -> bytes:
    info = struct.pack("<IiiHHIIiiII", 40, width, height, 1, 24, 0, 0, 2835, 2835, 0, 0)
    return b"BM" + struct.pack("<IHHI", 14 + len(info) + 12, 0, 0, 54) + info + b"\x00" * 12


def jpeg_declaring(width: int, height: int) -> bytes:
    data = bytearray(encoded(Image.new("RGB", (16, 16)), "JPEG"))
    marker = data.index(b"\xff\xc0")
    data[marker + 5: marker + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def animated(format: str) -> bytes:
    frames = [Image.new("RGB", (20, 16), color) for color in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]
    return encoded(frames[0], format, save_all=True, append_images=frames[1:], duration=50, loop=0)


def oddities() -> dict[str, tuple[bytes, str]]:
    """name -> (file bytes, 'ok' | 'refused' | 'too large')."""
    photo = Image.fromarray(np.random.default_rng(1).integers(0, 256, (48, 40, 3), dtype=np.uint8))
    palette = photo.convert("P", palette=Image.ADAPTIVE, colors=16)
    palette.info["transparency"] = 0
    return {
        "truncated png": (encoded(photo)[:-40], "refused"),
        "png header only": (encoded(photo)[:33], "refused"),
        "16-bit png": (encoded(Image.fromarray(np.full((20, 30), 40000, dtype=np.uint16))), "ok"),
        "palette png with transparency": (encoded(palette, transparency=0), "ok"),
        "cmyk jpeg": (encoded(photo.convert("CMYK"), "JPEG"), "ok"),
        "progressive jpeg": (encoded(photo, "JPEG", progressive=True), "ok"),
        "grayscale alpha png": (encoded(photo.convert("LA")), "ok"),
        "1-bit bmp": (encoded(photo.convert("1"), "BMP"), "ok"),
        "1x1 png": (encoded(Image.new("RGB", (1, 1))), "ok"),
        "1x1 webp": (encoded(Image.new("RGB", (1, 1)), "WEBP"), "ok"),
        "animated webp": (animated("WEBP"), "ok"),
        "animated gif": (animated("GIF"), "refused"),
        "tiff": (encoded(photo, "TIFF"), "refused"),
        "ico": (encoded(photo, "ICO"), "refused"),
        "eps": (b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n", "refused"),
        "eps binary header": (b"\xc5\xd0\xd3\xc6" + b"\x00" * 40, "refused"),
        "png declaring 100000x100000": (png_declaring(100000, 100000), "too large"),
        "png declaring 2^31-1 wide": (png_declaring(2**31 - 1, 1), "too large"),
        "png declaring 0x0": (png_declaring(0, 0), "refused"),
        "16-bit png declaring 60000x60000": (png_declaring(60000, 60000, 16, 2), "too large"),
        "bmp declaring 50000x50000": (bmp_declaring(50000, 50000), "too large"),
        "jpeg declaring 65000x65000": (jpeg_declaring(65000, 65000), "too large"),
        "empty": (b"", "refused"),
        "text": (b"hello", "refused"),
    }


def check_decoded(data: bytes) -> Image.Image | None:
    try:
        image = decode_photo(data)
    except ImageError:
        return None
    assert image.mode == "RGB" and 1 <= min(image.size) and max(image.size) <= MAX_SIDE
    return image


@pytest.mark.parametrize("name", list(oddities()))
def test_image_oddities(name, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)  # our limits must hold without Pillow's
    data, expected = oddities()[name]
    if expected == "ok":
        assert check_decoded(data) is not None
        return
    kind = params.UnitTooLargeError if expected == "too large" else UnitValidationError
    with pytest.raises(UnitValidationError) as info:
        unit_from_dict({"reference_images": [base64.b64encode(data).decode()]})
    assert type(info.value) is kind and info.value.field == "reference_images"


def _valid_files() -> list[bytes]:
    photo = Image.fromarray(np.random.default_rng(2).integers(0, 256, (24, 32, 3), dtype=np.uint8))
    return [encoded(photo, fmt) for fmt in ("PNG", "JPEG", "WEBP", "BMP")] + [animated("WEBP")]


VALID_FILES = _valid_files()


@fuzz
@given(st.sampled_from(range(len(VALID_FILES))), st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)),
                                                          max_size=8), st.integers(0, 10**6))
def test_corrupted_photos_decode_or_are_refused(index, flips, cut):
    data = bytearray(VALID_FILES[index])
    for position, value in flips:
        data[position % len(data)] = value
    check_decoded(bytes(data[: max(1, cut % (len(data) + 1))]))
