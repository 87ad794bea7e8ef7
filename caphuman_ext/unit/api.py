"""The unit's HTTP API: CapHuman payloads of the webui's txt2img/img2img checked before the webui runs them, and the
`/caphuman/v1/*` routes. The script calls `install_api(app, ...)` from `on_app_started`; nothing here imports the
webui.

- Safe to install after the app has served requests: the check is a plain ASGI middleware put into
  `app.user_middleware` and the middleware stack is rebuilt in place (as the webui's own `setup_middleware` does),
  never `app.middleware("http")`, which Starlette refuses once the app has started.
- One validation, no pixels: the guard checks structure and bounds (types, counts, base64, each photo's header:
  format and declared size) and the work the request asks for (`params.check_request_work`: photos and pixels at
  their working size over all units); photos are decoded once, at generation.
- Never blocks the event loop: JSON parsing and validation run in the thread pool, at most
  `ApiLimits.concurrent_checks` at a time (and one preview or score at a time). A client (by address) with
  `checks_per_client` requests already in the guard, or `renders_per_client` previews/scores, gets 429 at once; when
  every slot and the short queue behind them are taken, 503 at once: nobody holds the slots by queueing.
- Clear answers: a malformed body or value -> 422 naming the field (`{"detail": [{"loc": [...], "msg": ...}]}`), a
  photo over the byte/pixel limits, a request over its work bound or a body over its limit -> 413. A generation
  request too large to inspect (over `max_generation_body_bytes`) passes through to the webui unchecked: the script
  validates it again with the same limits before anything runs.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import json
import logging
import math
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from ..model_files import public_answer
from .model_work import run_in_thread
from .models import list_capface_models
from .params import (
    UnitParams,
    UnitTooLargeError,
    UnitValidationError,
    check_request_work,
    check_unit,
    describe,
    unit_from_dict,
)

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
    waiting_checks: int = 8  # requests waiting for a check slot; more -> 503 at once
    checks_per_client: int = 2  # one client's requests in the guard (checking or waiting); more -> 429 at once
    concurrent_previews: int = 1  # previews and scores (model work) at the same time
    waiting_previews: int = 2
    renders_per_client: int = 1


class ApiError(Exception):
    """An answer other than success: HTTP status, where in the request, and why."""

    def __init__(self, status: int, loc: list, message: str) -> None:
        super().__init__(message)
        self.status, self.loc, self.message = status, loc, message

    def response(self) -> JSONResponse:
        kind = {413: "value_error.too_large", 429: "too_many_requests", 503: "busy"}.get(self.status,
                                                                                          "value_error.caphuman")
        loc = [part if isinstance(part, int) else _printable(part) for part in self.loc]
        headers = {"Retry-After": "1"} if self.status in (429, 503) else None
        return JSONResponse(status_code=self.status, headers=headers,
                            content={"detail": [{"loc": loc, "msg": _printable(self.message), "type": kind}]})


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


def _validate_unit(data: Any, loc: list, decode: bool = False) -> UnitParams:
    """`check_unit` (no pixels; `decode=True`: `unit_from_dict`, for a preview that renders the photos now)."""
    try:
        return unit_from_dict(data) if decode else check_unit(data)
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
    names = [k for k in scripts if isinstance(k, str) and k.lower() == script_title.lower()]
    if not names:
        return
    if len(names) > 1:  # the webui matches script names case-insensitively and would run only one of them
        raise ApiError(422, ["body", "alwayson_scripts", names[1]], f"{script_title} is given {len(names)} times "
                       f"({', '.join(map(repr, names))}); give it once")
    name = names[0]
    entry, loc = scripts[name], ["body", "alwayson_scripts", name]
    if isinstance(entry, dict):
        units, loc = entry.get("args", []), [*loc, "args"]
    else:
        units = entry
    if not isinstance(units, list):
        raise ApiError(422, loc, f"expected a list of unit objects, got {describe(units)}")
    if len(units) > limits.max_units:
        raise ApiError(422, loc, f"{len(units)} units; at most {limits.max_units} are accepted")
    checked = [_validate_unit(unit, [*loc, index]) for index, unit in enumerate(units)]
    try:
        check_request_work(checked)
    except UnitValidationError as error:
        raise _unit_error(error, loc) from error


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


@dataclass
class _SlotState:
    semaphore: asyncio.Semaphore
    admitted: int = 0  # running or waiting
    clients: dict = field(default_factory=dict)  # client -> its requests running or waiting


class _Slots:
    """`size` slots per event loop (asyncio primitives belong to the loop that first waits on them), a queue of
    `waiting` behind them, and at most `per_client` requests of one client in both: beyond either, an ApiError
    (429 for the client over its share, 503 when full) at once, never a wait."""

    def __init__(self, size: int, waiting: int = 1 << 30, per_client: int = 1 << 30, what: str = "requests") -> None:
        self.size, self.waiting, self.per_client, self.what = size, waiting, per_client, what
        self.by_loop: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

    def _state(self) -> _SlotState:
        loop = asyncio.get_running_loop()
        if loop not in self.by_loop:
            self.by_loop[loop] = _SlotState(asyncio.Semaphore(self.size))
        return self.by_loop[loop]

    @contextlib.asynccontextmanager
    async def admitted(self, client: str = ""):
        state = self._state()
        if state.clients.get(client, 0) >= self.per_client:
            raise ApiError(429, ["body"], f"this client already has {self.per_client} {self.what} running or "
                           "waiting; send the next when one has been answered")
        if state.admitted >= self.size + self.waiting:
            raise ApiError(503, ["body"], f"the server is busy with other {self.what}; try again shortly")
        state.admitted += 1
        state.clients[client] = state.clients.get(client, 0) + 1
        try:
            async with state.semaphore:
                yield
        finally:
            state.admitted -= 1
            state.clients[client] -= 1
            if not state.clients[client]:
                del state.clients[client]


def _client(scope) -> str:
    client = scope.get("client")
    return str(client[0]) if client else ""


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
                 checks: _Slots | None = None) -> None:
        self.app = app
        self.script_title = script_title
        self.limits = limits
        self.checks = checks or _check_slots(limits)  # shared with the routes and rebuilt stacks

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
                async with self.checks.admitted(_client(scope)):
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


def _check_slots(limits: ApiLimits) -> _Slots:
    return _Slots(limits.concurrent_checks, limits.waiting_checks, limits.checks_per_client, "requests to check")


def _install_middleware(app, script_title: str, limits: ApiLimits, checks: _Slots) -> None:
    """Add the guard innermost among the user middleware (so the webui's CORS/GZip wrap its answers) and rebuild a
    stack that was already built, without ever setting it to None while requests may be running."""
    app.user_middleware[:] = [m for m in app.user_middleware if m.cls is not CapHumanPayloadGuard]
    app.user_middleware.append(Middleware(CapHumanPayloadGuard, script_title=script_title, limits=limits,
                                          checks=checks))
    if getattr(app, "middleware_stack", None) is not None:
        app.middleware_stack = app.build_middleware_stack()


def _install_routes(app, folders: Callable[[], list[Path]], preview: PreviewFunction, version: str,
                    limits: ApiLimits, checks: _Slots,
                    model_files: Callable[[bool], list[dict]] | None = None,
                    score: Callable[[dict], dict] | None = None) -> None:
    renders = _Slots(limits.concurrent_previews, limits.waiting_previews, limits.renders_per_client,
                     "previews or scores")

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
        return _validate_unit({**payload, "enabled": True}, ["body"], decode=True), width, height

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
            client = _client(request.scope)
            async with checks.admitted(client):
                unit, width, height = await run_in_threadpool(validate_preview, body)
            async with renders.admitted(client):
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
            async with renders.admitted(_client(request.scope)):  # one model-heavy request at a time, like previews
                answer = await run_in_thread(score_json, body)
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
    checks = _check_slots(limits)
    _install_middleware(app, script_title, limits, checks)
    _install_routes(app, folders, preview, version, limits, checks, model_files, score)
