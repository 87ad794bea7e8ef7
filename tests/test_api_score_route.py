"""`POST /caphuman/v1/score` as the script installs it: answers, 422 naming the field, 413 for huge bodies."""

from __future__ import annotations

import base64
import io

import pytest

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from caphuman_ext.quality.api import parse_request  # noqa: E402
from caphuman_ext.unit import api  # noqa: E402
from tests.api_helpers import make_webui, preview_images  # noqa: E402
from tests.inputs import b64_png  # noqa: E402


def fake_score(payload: dict) -> dict:
    image, units, overlay = parse_request(payload)  # the real request validation
    return {"width": image.width, "units": [{"face_found": False} for _ in units], "overlay": None}


@pytest.fixture
def client():
    app, _ = make_webui()
    api.install_api(app, folders=lambda: [], preview=preview_images, version="test", score=fake_score,
                    limits=api.ApiLimits(max_preview_body_bytes=4096))
    with TestClient(app) as client:
        yield client


def test_score_route_answers(client):
    answer = client.post(api.SCORE_PATH, json={"image": b64_png((40, 30)), "units": [{"reference_images":
                                                                                      [b64_png()]}]})
    assert answer.status_code == 200 and answer.json()["width"] == 40 and len(answer.json()["units"]) == 1


def test_score_route_names_the_bad_field(client):
    answer = client.post(api.SCORE_PATH, json={"image": b64_png(), "units": [{"reference_images": [b64_png()],
                                                                               "strength": "abc"}]})
    assert answer.status_code == 422 and "strength" in str(answer.json()["detail"][0]["loc"])
    assert client.post(api.SCORE_PATH, content=b"[1, 2]").status_code == 422
    assert client.post(api.SCORE_PATH, content=b"x" * 5000).status_code == 413


def test_score_requests_are_bounded_before_any_pixel_is_decoded(client, monkeypatch):
    from PIL import Image, ImageFile

    from tests.inputs import b64, png_bomb


    loads = []
    real = ImageFile.ImageFile.load
    monkeypatch.setattr(ImageFile.ImageFile, "load",
                        lambda self: (loads.append(self.size) if getattr(self, "_im", None) is None else None,
                                      real(self))[1])
    full = b64(png_bomb(2048))
    units = [{"reference_images": [full] * 6}] * 3  # 18 photos, each unit within its own limit
    app, _ = make_webui()
    api.install_api(app, folders=lambda: [], preview=preview_images, version="test", score=fake_score)
    with TestClient(app) as big:
        answer = big.post(api.SCORE_PATH, json={"image": b64_png(), "units": units})
        assert answer.status_code == 413 and "19 photos" in answer.text and loads == []  # 18 + the image
        answer = big.post(api.SCORE_PATH, json={"image": full, "units": [{"reference_images": [full] * 8}]})
        assert answer.status_code == 413 and "working size" in answer.text and loads == []
        assert big.post(api.SCORE_PATH, json={"image": b64_png((40, 30)), "units": [
            {"reference_images": [b64_png()]}]}).status_code == 200
    reference = Image.open(io.BytesIO(base64.b64decode(b64_png()))).size
    assert sorted(loads) == sorted([(40, 30), reference])  # accepted: each image decoded once


def test_a_second_score_of_one_client_gets_429_at_once():
    import threading



    entered, release = threading.Event(), threading.Event()

    def slow_score(payload: dict) -> dict:
        entered.set()
        release.wait(timeout=30)
        return fake_score(payload)

    app, _ = make_webui()
    api.install_api(app, folders=lambda: [], preview=preview_images, version="test", score=slow_score)
    body = {"image": b64_png((40, 30)), "units": [{"reference_images": [b64_png()]}]}
    with TestClient(app) as client:
        first = []
        thread = threading.Thread(target=lambda: first.append(client.post(api.SCORE_PATH, json=body)))
        thread.start()
        assert entered.wait(timeout=10)
        second = []
        waiting = threading.Thread(target=lambda: second.append(client.post(api.SCORE_PATH, json=body)))
        waiting.start()
        waiting.join(timeout=10)  # answered without waiting for the first (old code: it waits)
        at_once = not waiting.is_alive()
        release.set()
        for t in (thread, waiting):
            t.join(timeout=30)
    assert at_once and second[0].status_code == 429 and first[0].status_code == 200


def test_a_score_request_keeps_nothing_of_its_photos(scorer, astronaut):  # noqa: F811
    """The route's memory returns to its level before the request: no hint, DECA code or reference embedding of
    the request stays cached (the webui's own scoring after a generation keeps them: its hints are reused)."""
    from caphuman_ext.quality.api import score_request
    from tests.inputs import b64, encode

    head = scorer.builder.head_pipeline(scorer.device)
    sizes = lambda: (len(head.hints), len(head.cache), len(scorer.references))  # noqa: E731
    before = sizes()
    for turn in (5, 10):
        photo = b64(encode(astronaut.rotate(turn)))
        answer = score_request({"image": photo, "units": [{"reference_images": [photo], "pose_image": photo}]},
                               scorer)
        assert answer["units"][0]["face_found"]
        assert sizes() == before
    scorer.score(astronaut.rotate(15), [{"reference_images": [astronaut.rotate(15)]}])
    assert sizes() > before  # direct scoring still caches
