"""A FastAPI app standing in for the webui, with the unit's API installed (for the API test modules)."""

from __future__ import annotations

from fastapi import FastAPI, Request

from caphuman_ext.unit import api
from caphuman_ext.unit.params import UnitParams


def preview_images(unit: UnitParams, width: int, height: int) -> dict:
    """Stands in for the builder's render: what the script passes as `preview=`."""
    return {"reference": unit.reference_images[0].resize((width, height))}


def make_webui() -> tuple[FastAPI, list]:
    """A FastAPI app with the two webui routes the guard watches; `received` collects the bodies they got."""
    app = FastAPI()
    received: list = []

    @app.post("/sdapi/v1/txt2img")
    @app.post("/sdapi/v1/img2img")
    async def generate(request: Request):
        received.append(await request.body())
        return {"images": []}

    @app.get("/internal/ping")
    async def ping():
        return {"ok": True}

    return app, received


def install(app, **limits) -> None:
    kwargs = {"limits": api.ApiLimits(**limits)} if limits else {}
    api.install_api(app, folders=lambda: [], preview=preview_images, version="test", **kwargs)
