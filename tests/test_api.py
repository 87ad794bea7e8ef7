"""The unit's HTTP API against a real FastAPI app (TestClient): every hostile value gets 422/413 naming the field,
never 500 or a silent pass; limits on photos, units and preview size; installing after the app has started; the
event loop stays free while a payload is validated. Also the one photo decoder, infotext by position, the photo store.
"""

from __future__ import annotations

import base64
import io
import json
import threading

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi")
pytest.importorskip("httpx")
from fastapi.testclient import TestClient  # noqa: E402

from caphuman_ext.unit import api, infotext, params  # noqa: E402
from caphuman_ext.unit.params import UnitParams, UnitValidationError  # noqa: E402
from tests.api_helpers import install, make_webui, preview_images  # noqa: E402
from tests.inputs import b64, encode, png_bomb  # noqa: E402

TXT2IMG, PREVIEW = "/sdapi/v1/txt2img", "/caphuman/v1/preview"


PHOTO = b64(encode(Image.new("RGB", (40, 32), (200, 120, 90))))


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
    real = api.check_unit
    entered, answered, seen = threading.Event(), threading.Event(), {}

    def slow_validation(data):
        entered.set()
        seen["answered meanwhile"] = answered.wait(timeout=10)
        return real(data)

    monkeypatch.setattr(api, "check_unit", slow_validation)
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
    from caphuman_ext.unit.photo_store import PhotoStore, _entry_bytes, photos_hash

    rng = np.random.default_rng(0)
    noise = [Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)) for _ in range(4)]
    store = PhotoStore(tmp_path / "photos")
    digest = store.save(noise[:1])
    store.max_bytes = 3 * _entry_bytes(tmp_path / "photos" / digest) + 1000  # a 64² noise PNG is ~12.4 kB
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


def test_photo_store_counts_disk_blocks_and_entries(tmp_path):
    """Tiny photos take a whole block each: the bound is on disk use (st_blocks), and on the number of entries."""
    from caphuman_ext.unit.photo_store import PhotoStore

    folder = tmp_path / "photos"
    pixels = [Image.new("RGB", (1, 1), (i, 0, 0)) for i in range(12)]
    store = PhotoStore(folder, max_bytes=6 * 4096)  # six blocks: by file size (~70 bytes each) all twelve fit
    digests = [store.save([image]) for image in pixels]
    used = sum(path.lstat().st_blocks * 512 for path in folder.rglob("*"))  # entries and their files
    assert used <= 6 * 4096 and 0 < len(list(folder.iterdir())) < 12
    assert store.lookup(digests[-1]) is not None and store.lookup(digests[0]) is None
    counted = PhotoStore(tmp_path / "counted", max_entries=3)
    kept = [counted.save([image]) for image in pixels[:5]]
    assert sorted(p.name for p in (tmp_path / "counted").iterdir()) == sorted(kept[-3:])


def test_photo_store_removes_folders_left_by_a_killed_save(tmp_path):
    import os
    import subprocess
    import sys

    from caphuman_ext.unit.photo_store import PhotoStore

    folder = tmp_path / "photos"
    folder.mkdir()
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    killed = folder / f".staging-{int(gone.stdout)}-{'a' * 32}"  # its process has exited
    old = folder / f".staging-{'b' * 32}"  # the old naming, untouched for two hours
    running = folder / f".staging-{os.getpid()}-{'c' * 32}"  # a save of this process in progress
    for staging in (killed, old, running):
        staging.mkdir()
        (staging / "0.png").write_bytes(encode(Image.new("RGB", (4, 4))))
    os.utime(old, (0, 0))
    store = PhotoStore(folder)
    digest = store.save([Image.new("RGB", (2, 2))])
    assert sorted(p.name for p in folder.iterdir()) == sorted([digest, running.name])
    killed.mkdir()
    PhotoStore(folder).save([Image.new("RGB", (2, 2))])  # the same photos again, in a new process: swept too
    assert not killed.exists()


# GET /caphuman/v1/models: unreadable files reported, reads cached, no server paths ------------------------------
MODELS = "/caphuman/v1/models"


def models_webui(folder):
    from caphuman_ext.model_files import model_status

    app, _ = make_webui()
    api.install_api(app, folders=lambda: [folder], preview=preview_images, version="test",
                    model_files=lambda verify: model_status([folder], hub_caches=[], verify=verify))
    return app


def truncated_checkpoint(path, size: int) -> None:
    import torch

    torch.save({"state_dict": {"control_model.input_hint_block.0.weight": torch.zeros(2, 9, 3, 3)}}, path)
    path.write_bytes(path.read_bytes()[:size])


@pytest.mark.parametrize("size", [104, 0])
def test_models_route_reports_an_unreadable_caphuman_file(tmp_path, monkeypatch, size):
    """A truncated download (104 bytes) or an empty file: 200 with the row saying so; read once per change."""
    import os

    from caphuman_ext import model_files
    from safe_files import weights

    model_files.READS.clear()
    folder = tmp_path / "CapHuman"
    folder.mkdir()
    truncated_checkpoint(folder / "caphuman.ckpt", size)
    reads = []
    real = weights.load_pickled_weights
    monkeypatch.setattr(weights, "load_pickled_weights", lambda *a, **k: reads.append(a) or real(*a, **k))
    with TestClient(models_webui(folder)) as client:
        answers = [client.get(MODELS) for _ in range(3)]
        assert [a.status_code for a in answers] == [200] * 3, answers[0].text
        row = {r["name"]: r for r in answers[0].json()["files"]}["caphuman"]
        assert row["status"] == "unreadable" and "cannot be read" in row["note"] and row["path"]
        assert len(reads) == 1  # the failure is remembered by path, size and mtime
        os.utime(folder / "caphuman.ckpt", ns=(1, 1))
        assert client.get(MODELS).status_code == 200 and len(reads) == 2  # changed: read again


def test_models_route_shows_no_server_paths(tmp_path):
    import torch

    folder = tmp_path / "webui" / "models" / "CapHuman"
    (folder / "deca").mkdir(parents=True)
    torch.save({"state_dict": {"control_model.x": torch.zeros(1)}}, folder / "caphuman.ckpt")
    (folder / "deca" / "deca_model.tar").write_bytes(b"tar")
    (folder / "20180402-114759-vggface2.pt").write_bytes(b"a re-saved copy")
    with TestClient(models_webui(folder)) as client:
        answer = client.get(MODELS, params={"verify": "1"})
    assert answer.status_code == 200, answer.text
    assert str(tmp_path) not in answer.text and str(tmp_path.resolve()) not in answer.text
    rows = {r["name"]: r for r in answer.json()["files"]}
    assert rows["caphuman"]["path"] == "CapHuman/caphuman.ckpt"
    assert rows["deca_model"]["path"] == "CapHuman/deca/deca_model.tar"
    assert rows["facenet"]["status"] == "differs" and answer.json()["folders"] == ["CapHuman"]
    assert answer.json()["models"] == ["caphuman.ckpt"] and "CapHuman" in answer.json()["head_assets"]


def test_models_route_never_answers_500(tmp_path):
    def broken(verify):
        raise RuntimeError("a disk that fails")

    app, _ = make_webui()
    api.install_api(app, folders=lambda: [tmp_path], preview=preview_images, version="test", model_files=broken)
    with TestClient(app) as client:
        answer = client.get(MODELS)
    assert answer.status_code == 503 and "could not be listed" in answer.text


# one validation: structure and headers in the guard, pixels once at generation, bounded work, 429 at once -------
@pytest.fixture
def pixel_loads(monkeypatch):
    """Every decode of pixels (Pillow's `ImageFile.load`), by image size."""
    from PIL import ImageFile

    loads = []
    real = ImageFile.ImageFile.load

    def load(self):
        if getattr(self, "_im", None) is None:  # not decoded yet
            loads.append(self.size)
        return real(self)

    monkeypatch.setattr(ImageFile.ImageFile, "load", load)
    return loads


def test_the_guard_decodes_no_pixels_and_generation_decodes_each_photo_once(webui, pixel_loads):
    client, received = webui
    pose = b64(encode(Image.new("RGB", (24, 20), (1, 2, 3)), "JPEG"))
    assert client.post(TXT2IMG, json=unit_body(enabled(pose_image=pose))).status_code == 200
    assert pixel_loads == []  # headers only
    args = json.loads(received[0])["alwayson_scripts"]["CapHuman"]["args"]
    units = params.units_from_args(args)  # what the script does at generation
    assert sorted(pixel_loads) == [(24, 20), (40, 32)]
    assert units[0].pose_image.size == (24, 20) and units[0].reference_images[0].size == (40, 32)


def test_a_photo_whose_pixels_are_damaged_is_refused_at_generation(webui):
    client, received = webui
    data = bytearray(encode(Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8))))
    start = data.index(b"IDAT") + 8
    data[start: start + 200] = b"\xff" * 200  # the header is fine, the compressed pixels are not
    assert client.post(TXT2IMG, json=unit_body(enabled(reference_images=[b64(bytes(data))]))).status_code == 200
    with pytest.raises(UnitValidationError) as error:
        params.units_from_args(json.loads(received[0])["alwayson_scripts"]["CapHuman"]["args"])
    assert error.value.field == "reference_images"


def test_the_script_key_given_twice_is_refused(webui):
    client, received = webui
    hidden = {"enabled": True, "reference_images": [PHOTO], "strength": 9}  # would be run unchecked
    body = {"prompt": "x", "alwayson_scripts": {"caphuman": {"args": [enabled()]}, "CapHuman": {"args": [hidden]}}}
    response = client.post(TXT2IMG, json=body)
    assert_refused(response, "CapHuman")
    assert "2 times" in response.json()["detail"][0]["msg"] and received == []


def test_the_work_of_one_request_is_bounded(webui, pixel_loads):
    client, received = webui
    full = b64(png_bomb(2048))  # a full working-size photo in a few kB
    many = unit_body([enabled(reference_images=[full] * 8)] * 4)  # 32 photos: each unit within its own limit
    response = client.post(TXT2IMG, json=many)
    assert_refused(response, "reference_images", 413)
    assert "32 photos" in response.json()["detail"][0]["msg"]
    pixels = unit_body([enabled(reference_images=[full] * 5), enabled(reference_images=[full] * 4)])  # 9 × 4.2 MP
    response = client.post(TXT2IMG, json=pixels)
    assert_refused(response, "reference_images", 413)
    assert "pixels at their working size" in response.json()["detail"][0]["msg"]
    wide = b64(encode(Image.new("1", (20000, 100))))  # 2 MP declared, 0.2 MP of work
    assert client.post(TXT2IMG, json=unit_body([enabled(reference_images=[wide] * 8)] * 2)).status_code == 200
    assert pixel_loads == [] and len(received) == 1
    with pytest.raises(params.UnitTooLargeError):  # the script checks the same before decoding
        params.units_from_args(many["alwayson_scripts"]["CapHuman"]["args"])
    assert pixel_loads == []


def _blocking_checks(monkeypatch, count: int):
    """Guard checks that wait until released; `entered` is released once per check that started."""
    entered, release = threading.Semaphore(0), threading.Event()
    real = api.check_unit

    def check(data):
        entered.release()
        release.wait(timeout=30)
        return real(data)

    monkeypatch.setattr(api, "check_unit", check, raising=False)
    return entered, release


def test_a_client_over_its_share_gets_429_at_once(monkeypatch):
    entered, release = _blocking_checks(monkeypatch, 2)
    app, received = make_webui()
    install(app)
    with TestClient(app) as client:
        results = []
        held = [threading.Thread(target=lambda: results.append(client.post(TXT2IMG, json=unit_body(enabled()))))
                for _ in range(2)]
        for thread in held:
            thread.start()
        started = [entered.acquire(timeout=10) for _ in held]
        extra = []
        third = threading.Thread(target=lambda: extra.append(client.post(TXT2IMG, json=unit_body(enabled()))))
        third.start()
        third.join(timeout=10)  # answered without waiting for a slot (old code: it waits for the release)
        answered_at_once = not third.is_alive()
        assert client.get("/internal/ping").status_code == 200
        release.set()
        for thread in [*held, third]:
            thread.join(timeout=30)
    assert started == [True, True] and answered_at_once
    assert extra[0].status_code == 429 and extra[0].headers["retry-after"] == "1"
    assert [r.status_code for r in results] == [200, 200] and len(received) == 2


def test_when_every_slot_and_the_queue_are_taken_the_answer_is_503(monkeypatch):
    entered, release = _blocking_checks(monkeypatch, 1)
    app, received = make_webui()
    install(app, concurrent_checks=1, waiting_checks=0, checks_per_client=5)
    with TestClient(app) as client:
        results = []
        held = threading.Thread(target=lambda: results.append(client.post(TXT2IMG, json=unit_body(enabled()))))
        held.start()
        assert entered.acquire(timeout=10)
        busy = client.post(TXT2IMG, json=unit_body(enabled()))  # would wait forever for the held slot before
        release.set()
        held.join(timeout=30)
    assert busy.status_code == 503 and results[0].status_code == 200
