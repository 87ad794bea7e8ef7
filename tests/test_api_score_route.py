"""`POST /caphuman/v1/score` as the script installs it: answers, 422 naming the field, 413 for huge bodies."""

from __future__ import annotations

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
