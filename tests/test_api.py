"""The unit's HTTP API against a real FastAPI app (TestClient): every hostile value gets 422/413 naming the field,
never 500 or a silent pass; limits on photos, units and preview size; installing after the app has started; the
event loop stays free while a payload is validated. Also the one photo decoder, infotext by position, the photo store.
"""

from __future__ import annotations

import base64
import io
import json
import struct
import threading
import zlib

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi")
pytest.importorskip("httpx")
from fastapi.testclient import TestClient  # noqa: E402

from caphuman_ext.unit import api, infotext, params  # noqa: E402
from caphuman_ext.unit.params import UnitParams, UnitValidationError  # noqa: E402
from tests.api_helpers import install, make_webui  # noqa: E402

TXT2IMG, PREVIEW = "/sdapi/v1/txt2img", "/caphuman/v1/preview"


def encode(image: Image.Image, format: str = "PNG", **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=format, **options)
    return buffer.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


PHOTO = b64(encode(Image.new("RGB", (40, 32), (200, 120, 90))))


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_bomb(side: int = 20000) -> bytes:
    """A valid 1-bit PNG of side² pixels in ~50 kB (all black): decodable if nothing checks the declared size."""
    row = b"\x00" + b"\x00" * ((side + 7) // 8)
    compressor = zlib.compressobj(9)
    data = b"".join(compressor.compress(row) for _ in range(side)) + compressor.flush()
    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + png_chunk(b"IDAT", data) + png_chunk(b"IEND", b"")


EPS = (b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 16 16\n%%EndComments\n"
       b"0 0 moveto 16 16 lineto stroke\nshowpage\n%%EOF\n")


@pytest.fixture
def webui():
    app, received = make_webui()
    install(app)
    with TestClient(app) as client:
        yield client, received


def unit_body(unit: dict | list, title: str = "CapHuman") -> dict:
    units = unit if isinstance(unit, list) else [unit]
    return {"prompt": "a person", "alwayson_scripts": {title: {"args": units}}}


def post_raw(client, text: str, path: str = TXT2IMG):
    return client.post(path, content=text.encode(), headers={"content-type": "application/json"})


def assert_refused(response, field: str | int, status: int = 422) -> None:
    assert response.status_code == status, response.text
    detail = response.json()["detail"]
    assert detail[0]["loc"][-1] == field and detail[0]["msg"], detail


def enabled(**values) -> dict:
    return {"enabled": True, "reference_images": [PHOTO], **values}


@pytest.mark.parametrize(("literal", "field"), [
    ('"face_index": NaN', "face_index"),
    ('"face_index": Infinity', "face_index"),
    ('"face_index": -Infinity', "face_index"),
    ('"face_index": 1e30', "face_index"),
    ('"face_index": 2.5', "face_index"),
    ('"strength": Infinity', "strength"),
    ('"yaw": NaN', "yaw"),
    ('"strength": ' + "9" * 400, "strength"),
    ('"face_index": ' + "9" * 400, "face_index"),
    ('"modes": 5', "modes"),
    ('"modes": 123', "modes"),
    ('"modes": []', "modes"),
    ('"modes": ""', "modes"),
    ('"modes": [1, 2]', "modes"),
    ('"model": 7', "model"),
    ('"model": "../../etc/passwd"', "model"),
    ('"resize_mode": ["Just Resize"]', "resize_mode"),
    ('"strength": ' + "[" * 500 + "]" * 500, "strength"),
    ('"reference_images": [' + "[" * 500 + "]" * 500 + "]", "reference_images"),
    ('"enabled": 1', "enabled"),
    ('"\\ud800": 1', "\\ud800"),  # a key no UTF-8 answer can hold as is
])
def test_hostile_values_are_422_naming_the_field(webui, literal, field):
    client, received = webui
    head = json.dumps(unit_body(enabled()))[:-5]  # open the unit object again: ...{"enabled": true, ...}
    response = post_raw(client, head + ", " + literal + "}]}}}")
    assert_refused(response, field)
    assert received == []


@pytest.mark.parametrize("text", [
    "[" * 100000,  # nested far past Python's recursion limit
    '{"alwayson_scripts": {"CapHuman": {"args": [' + "{" * 3000,
    '{"prompt": ' + "1" * 5000 + "}",  # past Python's integer digit limit
    "{not json",
])
def test_bodies_that_are_not_json_are_422(webui, text):
    client, received = webui
    assert_refused(post_raw(client, text), "body")
    assert received == []


def test_a_valid_unit_reaches_the_webui_with_its_body_intact(webui):
    client, received = webui
    body = json.dumps(unit_body(enabled(modes="position,expression", face_index=1.0)))
    response = post_raw(client, body)
    assert response.status_code == 200 and received == [body.encode()]


def test_requests_without_caphuman_pass_untouched(webui):
    client, received = webui
    text = '{"prompt": "x", "cfg_scale": Infinity, "alwayson_scripts": {"other": {"args": [NaN]}}}'
    assert post_raw(client, text).status_code == 200 and received == [text.encode()]


def test_more_units_than_allowed_are_refused(webui):
    client, _ = webui
    response = client.post(TXT2IMG, json=unit_body([{"enabled": False}] * 5))
    assert_refused(response, "args")


def test_more_photos_than_allowed_are_refused(webui):
    client, _ = webui
    response = client.post(TXT2IMG, json=unit_body({"enabled": True, "reference_images": [PHOTO] * 6,
                                                    "more_reference_images": [PHOTO] * 3}))
    assert_refused(response, "reference_images")


def test_pixel_bomb_is_413_even_when_pillow_limit_is_off(webui, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)  # what the webui's X/Y/Z plot does
    client, received = webui
    response = client.post(TXT2IMG, json=unit_body(enabled(reference_images=[PHOTO, b64(png_bomb())])))
    assert_refused(response, "reference_images", 413)
    assert "pixels" in response.json()["detail"][0]["msg"] and received == []


def test_photo_over_the_byte_limit_is_413(webui):
    client, _ = webui
    huge = "A" * (params.MAX_PHOTO_BYTES * 4 // 3 + 1000)
    assert_refused(client.post(TXT2IMG, json=unit_body(enabled(pose_image=huge))), "pose_image", 413)


def test_eps_is_never_handed_to_ghostscript(webui, monkeypatch):
    from PIL import EpsImagePlugin

    calls = []

    def ghostscript(*args, **kwargs):
        calls.append(args)
        raise OSError("Ghostscript would run here")

    monkeypatch.setattr(EpsImagePlugin, "Ghostscript", ghostscript)
    client, _ = webui
    response = client.post(TXT2IMG, json=unit_body(enabled(reference_images=[b64(EPS)])))
    assert_refused(response, "reference_images")
    assert calls == []


@pytest.mark.parametrize(("payload", "field"), [
    ({"width": "abc"}, "width"),
    ({"width": 4096}, "width"),
    ({"height": 4096, "width": 4096}, "width"),
    ({"height": 8}, "height"),
    ({"height": 1e300}, "height"),
    ({"width": True}, "width"),
    ({"width": [512]}, "width"),
    ({"face_index": "Infinity"}, "face_index"),
    ({"modes": []}, "modes"),
])
def test_preview_values_are_422(webui, payload, field):
    client, _ = webui
    assert_refused(client.post(PREVIEW, json={"reference_image": PHOTO, **payload}), field)


def test_preview_json_oddities_are_422(webui):
    client, _ = webui
    assert_refused(post_raw(client, '{"reference_image": "' + PHOTO + '", "width": Infinity}', PREVIEW), "width")
    assert_refused(post_raw(client, "[" * 100000, PREVIEW), "body")
    assert_refused(post_raw(client, '{"width": ' + "9" * 400 + "}", PREVIEW), "width")
    assert_refused(post_raw(client, "[1, 2]", PREVIEW), "body")


def test_preview_renders_within_the_size_bounds(webui):
    client, _ = webui
    response = client.post(PREVIEW, json={"reference_image": PHOTO, "width": 200, "height": 64})
    assert response.status_code == 200, response.text
    image = Image.open(io.BytesIO(base64.b64decode(response.json()["images"]["reference"])))
    assert image.size == (200, 64)


def test_preview_body_over_the_limit_is_413():
    app, _ = make_webui()
    install(app, max_preview_body_bytes=100)
    with TestClient(app) as client:
        response = client.post(PREVIEW, json={"reference_image": PHOTO})
        assert response.status_code == 413


def test_install_after_requests_arrived(monkeypatch):
    """The webui's page polls while extensions start: the app has served requests before on_app_started."""
    app, received = make_webui()
    with TestClient(app) as client:
        assert client.get("/internal/ping").status_code == 200
        assert client.post(TXT2IMG, json={"prompt": "early"}).status_code == 200
        install(app)
        assert client.get("/caphuman/v1/version").json() == {"version": "test"}
        assert_refused(post_raw(client, json.dumps(unit_body(enabled(face_index=float("inf"))))), "face_index")
        assert client.post(TXT2IMG, json=unit_body(enabled())).status_code == 200
        install(app)  # installing again (a UI reload) replaces, never stacks
        guards = [m for m in app.user_middleware if m.cls.__name__ == "CapHumanPayloadGuard"]
        assert len(guards) == 1 and len([r for r in app.routes if getattr(r, "path", "") == PREVIEW]) == 1
        assert client.post(TXT2IMG, json=unit_body(enabled())).status_code == 200
    assert len(received) == 3


def test_validation_does_not_block_the_event_loop(monkeypatch):
    """While one payload is being validated, another request is answered (the validation waits for it)."""
    real = api.unit_from_dict
    entered, answered, seen = threading.Event(), threading.Event(), {}

    def slow_validation(data):
        entered.set()
        seen["answered meanwhile"] = answered.wait(timeout=10)
        return real(data)

    monkeypatch.setattr(api, "unit_from_dict", slow_validation)
    app, received = make_webui()
    install(app)
    with TestClient(app) as client:
        results = []
        post = threading.Thread(target=lambda: results.append(client.post(TXT2IMG, json=unit_body(enabled()))))
        post.start()
        assert entered.wait(timeout=10)
        assert client.get("/internal/ping").status_code == 200
        answered.set()
        post.join(timeout=30)
    assert seen["answered meanwhile"] and results[0].status_code == 200


def test_api_photos_are_upright_for_every_stage():
    photo = Image.new("RGB", (60, 40), (10, 20, 30))
    photo.paste((250, 0, 0), (0, 0, 10, 10))  # a red corner: top-left as stored
    exif = Image.Exif()
    exif[0x0112] = 6  # stored rotated: display turned 90° clockwise
    unit = params.unit_from_dict({"enabled": True, "reference_images": [b64(encode(photo, "JPEG", exif=exif,
                                                                                        quality=95))],
                                  "pose_image": b64(encode(photo, "PNG", exif=exif))})
    for image in (unit.reference_images[0], unit.pose_image):
        assert image.size == (40, 60) and image.mode == "RGB"
        assert np.asarray(image)[2, 35, 0] > 200  # the red corner is now top-right


def test_uploaded_files_go_through_the_same_decoder(tmp_path, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)
    bomb, eps = tmp_path / "bomb.png", tmp_path / "photo.png"
    bomb.write_bytes(png_bomb())
    eps.write_bytes(EPS)
    upload = type("Upload", (), {})
    for path, error in ((bomb, params.UnitTooLargeError), (eps, UnitValidationError)):
        file = upload()
        file.name = str(path)
        with pytest.raises(error) as info:
            params.unit_from_dict({"enabled": True, "reference_images": [PHOTO], "more_reference_images": [file]})
        assert info.value.field == "more_reference_images"


def test_infotext_is_keyed_by_unit_position():
    units = [UnitParams(), UnitParams(enabled=True, strength=0.5, reference_images=[Image.new("RGB", (8, 8))])]
    entries = infotext.infotext_entries(units)
    assert list(entries) == ["CapHuman 2"]
    pasted = infotext.from_infotext(entries["CapHuman 2"])
    assert pasted["strength"] == 0.5


@pytest.mark.parametrize("text", ["face_index inf", "face_index nan", "face_index 1e400", "strength nan",
                                  "modes tilt", "modes ", "yaw 1e999", None, 42, "model a/b", "resize_mode x"])
def test_from_infotext_never_raises_and_keeps_only_valid_values(text):
    values = infotext.from_infotext(text)
    params.unit_from_dict({k: v for k, v in values.items() if k != "enabled"})


def test_old_infotext_without_modes_means_the_defaults():
    assert infotext.from_infotext("modes none")["modes"] == ["position", "pose"]
    assert "modes position+pose" in infotext.to_infotext(UnitParams(modes=()))


def test_photo_store_round_trip_and_bound(tmp_path):
    from caphuman_ext.unit.photo_store import PhotoStore, photos_hash

    rng = np.random.default_rng(0)
    noise = [Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)) for _ in range(4)]
    store = PhotoStore(tmp_path / "photos", max_bytes=3 * 13000)  # a 64² noise PNG is ~12.4 kB
    digest = store.save(noise[:1])
    text = infotext.to_infotext(UnitParams(enabled=True, reference_images=noise[:1]))
    assert infotext.photos_hash_from_infotext(text) == digest == photos_hash(noise[:1])
    restored = store.lookup(digest)
    assert restored is not None and np.array_equal(np.asarray(restored[0]), np.asarray(noise[0]))
    assert [path.name for path in store.paths(digest)] == ["0.png"]
    posed = UnitParams(reference_images=noise[:1], pose_image=noise[1])
    assert infotext.pose_hash_from_infotext(infotext.to_infotext(posed)) == photos_hash(noise[1:2])
    assert infotext.pose_hash_from_infotext(text) is None and infotext.pose_hash_from_infotext("pose photo yes") is None
    assert infotext.to_infotext(UnitParams(reference_images=restored)) == text  # restored photos: same hash
    digests = [store.save([image]) for image in noise[1:]]
    assert store.lookup(digest) is None and all(store.lookup(d) is not None for d in digests)  # oldest evicted
    (tmp_path / "photos" / digests[0] / "0.png").write_bytes(encode(noise[0]))  # tampered: hash no longer matches
    assert store.lookup(digests[0]) is None
    assert store.lookup("../../etc") is None and store.lookup("0" * 12) is None


def test_pixel_guard_reads_the_header_before_decoding():
    from preprocessors.identity.image_io import PhotoTooLargeError, decode_photo

    data = encode(Image.new("RGB", (10, 10)))
    assert decode_photo(data, max_pixels=100).size == (10, 10)
    with pytest.raises(PhotoTooLargeError, match="10×10"):
        decode_photo(data, max_pixels=99)


def test_an_empty_image_editor_is_no_image():
    unit = params.unit_from_dict({"pose_image": {"image": None}, "reference_images": [{"image": PHOTO}, None]})
    assert unit.pose_image is None and len(unit.reference_images) == 1
