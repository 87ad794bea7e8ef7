"""Talking to a running webui over HTTP (standard library only): txt2img with a CapHuman unit, and the score route.

Whatever the server sends is bounded: an answer is read up to `Webui.max_answer_bytes`, an error body up to 2000
bytes, an image is decoded only after its header declares at most `MAX_IMAGE_PIXELS`; an answer of the wrong shape
is a (non-fatal) `WebuiError`, so the runner records it for that case and goes on."""

from __future__ import annotations

import base64
import io
import json
import urllib.error
import urllib.request
from dataclasses import dataclass

from PIL import Image, UnidentifiedImageError

from preprocessors.identity.image_io import PHOTO_FORMATS

MAX_ANSWER_BYTES = 256 * 2**20  # a txt2img answer with one PNG is a few MB
MAX_IMAGE_PIXELS = 50_000_000  # as for photos sent to the extension (image_io.MAX_PHOTO_PIXELS)
_ERROR_BYTES = 2000


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
    max_answer_bytes: int = MAX_ANSWER_BYTES

    def post(self, route: str, payload: dict) -> dict:
        """POST JSON to `route`, the decoded JSON answer; WebuiError on HTTP errors or an unreachable webui."""
        request = urllib.request.Request(self.url.rstrip("/") + route, data=json.dumps(payload).encode(),
                                         headers={"Content-Type": "application/json"}, method="POST")
        if self.auth:
            request.add_header("Authorization", "Basic " + base64.b64encode(self.auth.encode()).decode())
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                body = response.read(self.max_answer_bytes + 1)
        except urllib.error.HTTPError as error:
            detail = error.read(_ERROR_BYTES).decode(errors="replace")
            hint = {404: " (no such route: is the webui started with --api, and is the extension up to date? "
                         "Without the score route, score here: --score local --models DIR)",
                    401: " (the webui wants --auth user:password)"}.get(error.code, "")
            raise WebuiError(f"{route}: HTTP {error.code}: {detail}{hint}", status=error.code) from error
        except (urllib.error.URLError, TimeoutError, ConnectionError) as error:
            raise WebuiError(f"{route}: the webui at {self.url} did not answer ({error}); is it running with --api?",
                             unreachable=True) from error
        if len(body) > self.max_answer_bytes:
            raise WebuiError(f"{route}: the answer is over {self.max_answer_bytes:,} bytes; not read")
        try:
            answer = json.loads(body.decode())
        except (ValueError, UnicodeDecodeError, RecursionError) as error:
            raise WebuiError(f"{route}: the answer is not JSON ({str(error)[:200]})") from error
        if not isinstance(answer, dict):
            raise WebuiError(f"{route}: expected a JSON object, got {type(answer).__name__}")
        return answer

    def txt2img(self, payload: dict) -> Image.Image:
        """The first image of a txt2img answer."""
        answer = self.post("/sdapi/v1/txt2img", payload)
        images = answer.get("images") or []
        if not isinstance(images, list) or not images or not isinstance(images[0], str):
            raise WebuiError("/sdapi/v1/txt2img: the answer holds no image")
        return decode_answer_image(images[0], "/sdapi/v1/txt2img")

    def score(self, payload: dict) -> dict:
        """POST /caphuman/v1/score (see caphuman_ext.quality.api)."""
        return self.post("/caphuman/v1/score", payload)


def decode_answer_image(text: str, route: str, max_pixels: int = MAX_IMAGE_PIXELS) -> Image.Image:
    """An RGB image from a base64 answer: PNG/JPEG/WebP/BMP, its declared size checked before any pixel is decoded
    (never downscaled: it is saved as the generated image)."""
    try:
        image = Image.open(io.BytesIO(base64.b64decode(text)), formats=PHOTO_FORMATS)
        width, height = image.size
        if width * height > max_pixels:
            raise WebuiError(f"{route}: the image declares {width}×{height} pixels; at most {max_pixels:,} are read")
        return image.convert("RGB")
    except WebuiError:
        raise
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
        raise WebuiError(f"{route}: the image could not be read ({str(error)[:200]})") from error


def txt2img_payload(prompt: str, unit: dict, seed: int, steps: int, width: int, height: int, cfg_scale: float,
                    sampler: str | None, negative_prompt: str = "") -> dict:
    """One fixed-seed image with one CapHuman unit (the unit object as in the README's API section)."""
    payload = {"prompt": prompt, "negative_prompt": negative_prompt, "seed": seed, "steps": steps, "width": width,
               "height": height, "cfg_scale": cfg_scale, "batch_size": 1, "n_iter": 1, "send_images": True,
               "save_images": False, "alwayson_scripts": {"CapHuman": {"args": [unit]}}}
    if sampler:
        payload["sampler_name"] = sampler
    return payload
