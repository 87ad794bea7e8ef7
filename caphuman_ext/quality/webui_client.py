"""Talking to a running webui over HTTP (standard library only): txt2img with a CapHuman unit, and the score route."""

from __future__ import annotations

import base64
import io
import json
import urllib.error
import urllib.request
from dataclasses import dataclass

from PIL import Image


class WebuiError(RuntimeError):
    """The webui answered with an error (or not at all: `unreachable`); the message carries status and detail."""

    def __init__(self, message: str, unreachable: bool = False, status: int | None = None) -> None:
        super().__init__(message)
        self.unreachable = unreachable
        self.status = status

    @property
    def fatal(self) -> bool:
        """Every further request would fail the same way (no webui, no such route)."""
        return self.unreachable or self.status in (401, 404)


@dataclass
class Webui:
    url: str  # e.g. http://127.0.0.1:7860
    auth: str | None = None  # "user:password" for --api-auth
    timeout: float = 900.0

    def post(self, route: str, payload: dict) -> dict:
        """POST JSON to `route`, the decoded JSON answer; WebuiError on HTTP errors or an unreachable webui."""
        request = urllib.request.Request(self.url.rstrip("/") + route, data=json.dumps(payload).encode(),
                                         headers={"Content-Type": "application/json"}, method="POST")
        if self.auth:
            request.add_header("Authorization", "Basic " + base64.b64encode(self.auth.encode()).decode())
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return json.loads(response.read().decode())
        except urllib.error.HTTPError as error:
            detail = error.read().decode(errors="replace")[:2000]
            hint = {404: " (no such route: is the webui started with --api, and is the extension up to date? "
                         "Without the score route, score here: --score local --models DIR)",
                    401: " (the webui wants --auth user:password)"}.get(error.code, "")
            raise WebuiError(f"{route}: HTTP {error.code}: {detail}{hint}", status=error.code) from error
        except (urllib.error.URLError, TimeoutError, ConnectionError) as error:
            raise WebuiError(f"{route}: the webui at {self.url} did not answer ({error}); is it running with --api?",
                             unreachable=True) from error

    def txt2img(self, payload: dict) -> Image.Image:
        """The first image of a txt2img answer."""
        answer = self.post("/sdapi/v1/txt2img", payload)
        images = answer.get("images") or []
        if not images:
            raise WebuiError("/sdapi/v1/txt2img: the answer holds no image")
        return Image.open(io.BytesIO(base64.b64decode(images[0]))).convert("RGB")

    def score(self, payload: dict) -> dict:
        """POST /caphuman/v1/score (see caphuman_ext.quality.api)."""
        return self.post("/caphuman/v1/score", payload)


def txt2img_payload(prompt: str, unit: dict, seed: int, steps: int, width: int, height: int, cfg_scale: float,
                    sampler: str | None, negative_prompt: str = "") -> dict:
    """One fixed-seed image with one CapHuman unit (the unit object as in the README's API section)."""
    payload = {"prompt": prompt, "negative_prompt": negative_prompt, "seed": seed, "steps": steps, "width": width,
               "height": height, "cfg_scale": cfg_scale, "batch_size": 1, "n_iter": 1, "send_images": True,
               "save_images": False, "alwayson_scripts": {"CapHuman": {"args": [unit]}}}
    if sampler:
        payload["sampler_name"] = sampler
    return payload
