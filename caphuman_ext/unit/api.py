"""The unit's HTTP API: CapHuman payloads of the webui's txt2img/img2img checked before the webui runs them, and the
`/caphuman/v1/*` routes. The script calls `install_api(app, ...)` from `on_app_started`; nothing here imports the
webui.

- Safe to install after the app has served requests: the check is a plain ASGI middleware put into
  `app.user_middleware` and the middleware stack is rebuilt in place (as the webui's own `setup_middleware` does),
  never `app.middleware("http")`, which Starlette refuses once the app has started.
- Never blocks the event loop: JSON parsing, image decoding and validation run in the thread pool, at most
  `ApiLimits.concurrent_checks` at a time (and one preview render at a time).
- Clear answers: a malformed body or value -> 422 naming the field (`{"detail": [{"loc": [...], "msg": ...}]}`), a
  photo over the byte/pixel limits or a body over its limit -> 413. A generation request too large to inspect
  (over `max_generation_body_bytes`) passes through to the webui unchecked: the script validates it again with the
  same limits before anything runs.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import logging
import math
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from ..model_files import public_answer
from .models import list_capface_models
from .params import UnitParams, UnitTooLargeError, UnitValidationError, describe, unit_from_dict

logger = logging.getLogger(__name__)

GENERATION_PATHS = ("/sdapi/v1/txt2img", "/sdapi/v1/img2img")
VERSION_PATH, MODELS_PATH, PREVIEW_PATH = "/caphuman/v1/version", "/caphuman/v1/models", "/caphuman/v1/preview"
SCORE_PATH = "/caphuman/v1/score"

PreviewFunction = Callable[[UnitParams, int, int], "dict[str, Any]"]


@dataclass(frozen=True)
class ApiLimits:
    max_generation_body_bytes: int = 256 * 2**20  # inspected up to this size; larger bodies pass through unchecked
    max_preview_body_bytes: int = 64 * 2**20  # refused with 413 above this
    max_units: int = 4  # units in one request (the webui's unit-count setting goes up to 4)
    preview_min_side: int = 64
    preview_max_side: int = 2048
    concurrent_checks: int = 2  # payload validations running in threads at the same time
    concurrent_previews: int = 1


class ApiError(Exception):
    """An answer other than success: HTTP status, where in the request, and why."""

    def __init__(self, status: int, loc: list, message: str) -> None:
        super().__init__(message)
        self.status, self.loc, self.message = status, loc, message

    def response(self) -> JSONResponse:
        kind = "value_error.too_large" if self.status == 413 else "value_error.caphuman"
        loc = [part if isinstance(part, int) else _printable(part) for part in self.loc]
        return JSONResponse(status_code=self.status, content={"detail": [{"loc": loc, "msg": _printable(self.message),
                                                                          "type": kind}]})


def _printable(text: object) -> str:
    """`text` as valid UTF-8 (a client's key may hold lone surrogates, which cannot be encoded), at most 2000 chars."""
    return str(text)[:2000].encode("utf-8", "backslashreplace").decode("utf-8")


def parse_json(body: bytes) -> Any:
    """JSON -> Python, or ApiError 422 (invalid, nested too deeply, integers past Python's digit limit)."""
    try:
        return json.loads(body or b"null")
    except RecursionError as error:
        raise ApiError(422, ["body"], "the JSON body is nested too deeply") from error
    except (ValueError, UnicodeDecodeError) as error:  # JSONDecodeError, too many digits, bad encoding
        raise ApiError(422, ["body"], f"the body is not valid JSON ({str(error)[:200]})") from error


def _unit_error(error: UnitValidationError, loc: list) -> ApiError:
    return ApiError(413 if isinstance(error, UnitTooLargeError) else 422, [*loc, error.field], error.reason)


def _validate_unit(data: Any, loc: list) -> UnitParams:
    try:
        return unit_from_dict(data)
    except UnitValidationError as error:
        raise _unit_error(error, loc) from error
    except Exception as error:  # noqa: BLE001 - a hostile value must give an answer, never a 500
        logger.exception("CapHuman: unexpected error validating %s", loc)
        raise ApiError(422, loc, f"could not be validated ({type(error).__name__}: {str(error)[:200]})") from error


def check_generation_body(body: bytes, script_title: str, limits: ApiLimits) -> None:
    """Validate the CapHuman units of a txt2img/img2img body (raises ApiError); other content is the webui's."""
    data = parse_json(body)
    scripts = data.get("alwayson_scripts") if isinstance(data, dict) else None
    if not isinstance(scripts, dict):
        return
    name = next((k for k in scripts if isinstance(k, str) and k.lower() == script_title.lower()), None)
    if name is None:
        return
    entry, loc = scripts[name], ["body", "alwayson_scripts", name]
    if isinstance(entry, dict):
        units, loc = entry.get("args", []), [*loc, "args"]
    else:
        units = entry
    if not isinstance(units, list):
        raise ApiError(422, loc, f"expected a list of unit objects, got {describe(units)}")
    if len(units) > limits.max_units:
        raise ApiError(422, loc, f"{len(units)} units; at most {limits.max_units} are accepted")
    for index, unit in enumerate(units):
        _validate_unit(unit, [*loc, index])


def preview_side(payload: dict, name: str, limits: ApiLimits) -> int:
    """`width`/`height` of a preview request: a whole number of pixels within the limits (default 512)."""
    value = payload.pop(name, 512)
    low, high = limits.preview_min_side, limits.preview_max_side
    number = None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        try:
            number = float(value)
        except OverflowError:
            number = None
    if number is None or not math.isfinite(number) or not number.is_integer() or not low <= number <= high:
        raise ApiError(422, ["body", name], f"expected a whole number of pixels from {low} to {high}, got "
                       f"{describe(value)}")
    return int(number)


def _encode_png(image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def _models_answer(folders: list[Path]) -> dict:
    """Models found, the folders (shown by name: `public_answer` hides server paths) and the head files' state."""
    from preprocessors.head.assets import HeadAssets, MissingHeadAssetError

    try:
        HeadAssets.find(folders)
        head = "ok"
    except (MissingHeadAssetError, OSError) as error:
        head = str(error)
    return {"models": list(list_capface_models(folders)), "folders": [str(f) for f in folders], "head_assets": head}


class _LoopSemaphores:
    """One asyncio.Semaphore per event loop (asyncio primitives belong to the loop that first waits on them)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.by_loop: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

    def get(self) -> asyncio.Semaphore:
        loop = asyncio.get_running_loop()
        if loop not in self.by_loop:
            self.by_loop[loop] = asyncio.Semaphore(self.size)
        return self.by_loop[loop]


async def _read_body(receive, limit: int) -> tuple[list[dict], bool]:
    """The request's body messages, up to `limit` bytes: (messages, complete). Incomplete: over the limit, or the
    client went away (then the last message is the disconnect)."""
    messages, size = [], 0
    while True:
        message = await receive()
        messages.append(message)
        if message["type"] != "http.request":
            return messages, False
        size += len(message.get("body", b""))
        if size > limit:
            return messages, False
        if not message.get("more_body", False):
            return messages, True


def _replaying(messages: list[dict], receive):
    """A `receive` that hands back already-read messages first, then the client's."""
    pending = list(messages)

    async def replay():
        return pending.pop(0) if pending else await receive()

    return replay


def _declared_length(scope) -> int | None:
    for key, value in scope.get("headers", []):
        if key.lower() == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


class CapHumanPayloadGuard:
    """Pure ASGI middleware: checks CapHuman units in txt2img/img2img bodies, answers 422/413 or passes the
    request (its body replayed) to the app."""

    def __init__(self, app, script_title: str = "CapHuman", limits: ApiLimits = ApiLimits(),
                 checks: _LoopSemaphores | None = None) -> None:
        self.app = app
        self.script_title = script_title
        self.limits = limits
        self.checks = checks or _LoopSemaphores(limits.concurrent_checks)  # shared with the routes and rebuilt stacks

    async def __call__(self, scope, receive, send) -> None:
        path = scope.get("path", "") if scope.get("type") == "http" else ""
        if scope.get("method") != "POST" or not path.rstrip("/").endswith(GENERATION_PATHS):
            return await self.app(scope, receive, send)
        declared = _declared_length(scope)
        if declared is not None and declared > self.limits.max_generation_body_bytes:
            return await self.app(scope, receive, send)
        messages, complete = await _read_body(receive, self.limits.max_generation_body_bytes)
        if complete:
            body = b"".join(m.get("body", b"") for m in messages)
            try:
                async with self.checks.get():
                    await run_in_threadpool(check_generation_body, body, self.script_title, self.limits)
            except ApiError as error:
                return await error.response()(scope, receive, send)
            messages = [{"type": "http.request", "body": body, "more_body": False}]
        await self.app(scope, _replaying(messages, receive), send)


def _error_response(error: Exception) -> Response:
    if isinstance(error, ApiError):
        return error.response()
    if isinstance(error, UnitValidationError):
        return _unit_error(error, ["body"]).response()
    return JSONResponse(status_code=400, content={"detail": _printable(error)})


def _install_middleware(app, script_title: str, limits: ApiLimits, checks: _LoopSemaphores) -> None:
    """Add the guard innermost among the user middleware (so the webui's CORS/GZip wrap its answers) and rebuild a
    stack that was already built, without ever setting it to None while requests may be running."""
    app.user_middleware[:] = [m for m in app.user_middleware if m.cls is not CapHumanPayloadGuard]
    app.user_middleware.append(Middleware(CapHumanPayloadGuard, script_title=script_title, limits=limits,
                                          checks=checks))
    if getattr(app, "middleware_stack", None) is not None:
        app.middleware_stack = app.build_middleware_stack()


def _install_routes(app, folders: Callable[[], list[Path]], preview: PreviewFunction, version: str,
                    limits: ApiLimits, checks: _LoopSemaphores,
                    model_files: Callable[[bool], list[dict]] | None = None,
                    score: Callable[[dict], dict] | None = None) -> None:
    renders = _LoopSemaphores(limits.concurrent_previews)

    async def version_route(request: Request) -> Response:
        return JSONResponse({"version": version})

    def models_answer(verify: bool) -> dict:
        found = folders()
        answer = _models_answer(found)
        if model_files is not None:
            answer["files"] = model_files(verify)
        return public_answer(answer, found)

    async def models_route(request: Request) -> Response:
        verify = request.query_params.get("verify", "").lower() in ("1", "true", "yes")
        try:
            return JSONResponse(await run_in_threadpool(models_answer, verify))
        except Exception as error:  # noqa: BLE001 - a listing answers whatever the disk holds, never 500
            logger.warning("CapHuman: listing the model files failed: %s", error)
            return JSONResponse(status_code=503, content={"detail": _printable(
                f"the model files could not be listed ({type(error).__name__})")})

    def validate_preview(body: bytes) -> tuple[UnitParams, int, int]:
        payload = parse_json(body)
        if not isinstance(payload, dict):
            raise ApiError(422, ["body"], f"expected a JSON object, got {describe(payload)}")
        width, height = preview_side(payload, "width", limits), preview_side(payload, "height", limits)
        payload.pop("enabled", None)
        return _validate_unit({**payload, "enabled": True}, ["body"]), width, height

    def render(unit: UnitParams, width: int, height: int) -> dict:
        return {name: _encode_png(image) for name, image in preview(unit, width, height).items()}

    async def read_limited_body(request: Request) -> bytes:
        declared = _declared_length(request.scope)
        if declared is not None and declared > limits.max_preview_body_bytes:
            raise ApiError(413, ["body"], f"the body is over {limits.max_preview_body_bytes} bytes")
        messages, complete = await _read_body(request.receive, limits.max_preview_body_bytes)
        if not complete:
            raise ApiError(413, ["body"], f"the body is over {limits.max_preview_body_bytes} bytes")
        return b"".join(m.get("body", b"") for m in messages)

    async def preview_route(request: Request) -> Response:
        try:
            body = await read_limited_body(request)
            async with checks.get():
                unit, width, height = await run_in_threadpool(validate_preview, body)
            async with renders.get():
                images = await run_in_threadpool(render, unit, width, height)
        except Exception as error:  # noqa: BLE001 - every failure becomes a readable answer
            if not isinstance(error, (ApiError, UnitValidationError)):
                logger.warning("CapHuman preview failed: %s", error)
            return _error_response(error)
        return JSONResponse({"images": images})

    def score_json(body: bytes) -> dict:
        payload = parse_json(body)
        if not isinstance(payload, dict):
            raise ApiError(422, ["body"], f"expected a JSON object, got {describe(payload)}")
        return score(payload)

    async def score_route(request: Request) -> Response:
        try:
            body = await read_limited_body(request)
            async with renders.get():  # one model-heavy request at a time, like previews
                answer = await run_in_threadpool(score_json, body)
        except Exception as error:  # noqa: BLE001 - every failure becomes a readable answer
            if not isinstance(error, (ApiError, UnitValidationError)):
                logger.warning("CapHuman scoring failed: %s", error)
            return _error_response(error)
        return JSONResponse(answer)

    paths = {VERSION_PATH, MODELS_PATH, PREVIEW_PATH, SCORE_PATH}
    app.router.routes[:] = [r for r in app.router.routes if getattr(r, "path", None) not in paths]
    add = getattr(app, "add_api_route", None) or app.add_route
    add(VERSION_PATH, version_route, methods=["GET"])
    add(MODELS_PATH, models_route, methods=["GET"])
    add(PREVIEW_PATH, preview_route, methods=["POST"])
    if score is not None:
        add(SCORE_PATH, score_route, methods=["POST"])


def install_api(app, *, folders: Callable[[], list[Path]], preview: PreviewFunction, version: str,
                script_title: str = "CapHuman", limits: ApiLimits = ApiLimits(),
                model_files: Callable[[bool], list[dict]] | None = None,
                score: Callable[[dict], dict] | None = None) -> None:
    """Install the payload guard and the routes on a Starlette/FastAPI `app`, before or after it started serving;
    installing again replaces both. `folders()` gives the model folders, `preview(unit, width, height)` the preview
    images (name -> PIL image) and may raise UnitValidationError (-> 422) or any error (-> 400 with its message);
    `model_files(verify)` the model-files status listed by `GET /caphuman/v1/models` (`?verify=1` hashes files);
    `score(payload)` answers `POST /caphuman/v1/score` (caphuman_ext.quality.api.score_request)."""
    checks = _LoopSemaphores(limits.concurrent_checks)
    _install_middleware(app, script_title, limits, checks)
    _install_routes(app, folders, preview, version, limits, checks, model_files, score)
