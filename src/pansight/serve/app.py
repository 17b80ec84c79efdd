"""The ASGI app: one static page and a small JSON API over a :class:`ModelRegistry`.

:func:`create_app` serves the page (``GET /`` and its script and style sheet), the loaded models
(``GET /api/models``), synthetic samples (``GET /api/sample``) and predictions
(``POST /api/predict?model=NAME``, an image file in the body). Errors answer
``{"error": message}``. With ``allowed_hosts`` the app answers only requests whose ``Host``
header names one of them (against DNS rebinding).

See docs/serving.md for the routes, the error statuses and the host check.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from importlib.resources import files
from time import perf_counter
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from pansight.data.shapes import render_sample
from pansight.serve.encoding import (
    IMAGE_CONTENT_TYPES,
    ImageError,
    decode_image,
    encode_png,
    result_payload,
)
from pansight.serve.registry import ModelRegistry, Predictor
from pansight.serve.work import QueueFull, WorkQueue
from pansight.viz import DRAW_MIN_SCORE, palette

PALETTE_SIZE = 256
"""Colors sent to the page: class ``k`` and instance ``k`` use color ``k mod PALETTE_SIZE``."""

SAMPLE_SIZES = (32, 512)
"""Smallest and largest side of ``/api/sample`` images."""

STATIC_FILES = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/static/app.js": ("app.js", "text/javascript; charset=utf-8"),
    "/static/style.css": ("style.css", "text/css; charset=utf-8"),
}
"""Route -> (file in the package's ``static`` folder, content type)."""

SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data: blob:",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-store",
}


@dataclass(frozen=True)
class ServeLimits:
    """What one server accepts.

    Attributes:
        max_upload_bytes: the largest request body of ``/api/predict`` (larger: 413).
        max_pixels: the most pixels an uploaded image may have (more: 400).
        queue_size: predictions waiting for a worker at most (one more: 503).
        workers: threads running predictions.
    """

    max_upload_bytes: int = 8 * 2**20
    max_pixels: int = 4096 * 4096
    queue_size: int = 8
    workers: int = 1


class ApiError(Exception):
    """An answer ``{"error": message}`` with HTTP status ``status``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


def create_app(
    registry: ModelRegistry,
    limits: ServeLimits | None = None,
    allowed_hosts: list[str] | None = None,
) -> Starlette:
    """The app serving ``registry``'s models within ``limits``; its work queue runs while the
    app's lifespan does (``uvicorn`` and ``TestClient`` as a context manager start it).

    ``allowed_hosts``: the host names (without port) requests may address; ``None`` accepts
    any."""
    limits = limits or ServeLimits()
    work = WorkQueue(limits.queue_size, limits.workers)
    api = _Api(registry, limits, work)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        work.start()
        try:
            yield
        finally:
            work.stop()

    routes = [Route(path, _static_endpoint(*entry)) for path, entry in STATIC_FILES.items()]
    routes += [
        Route("/api/models", api.models),
        Route("/api/sample", api.sample),
        Route("/api/predict", api.predict, methods=["POST"]),
    ]
    middleware = []
    if allowed_hosts is not None:
        middleware.append(Middleware(TrustedHostMiddleware, allowed_hosts=allowed_hosts))
    app = Starlette(
        routes=routes,
        middleware=middleware,
        lifespan=lifespan,
        exception_handlers={ApiError: _api_error, HTTPException: _http_error},
    )
    app.state.work = work
    return app


class _Api:
    """The JSON endpoints, sharing the registry, the limits and the work queue."""

    def __init__(self, registry: ModelRegistry, limits: ServeLimits, work: WorkQueue) -> None:
        self.registry, self.limits, self.work = registry, limits, work

    async def models(self, request: Request) -> Response:
        models = [
            {
                "name": predictor.name,
                "task": predictor.task,
                "backend": predictor.backend,
                "class_names": list(predictor.class_names),
            }
            for predictor in self.registry
        ]
        payload = {
            "models": models,
            "palette": [list(color) for color in palette(PALETTE_SIZE)],
            "draw_min_score": DRAW_MIN_SCORE,
            "max_upload_bytes": self.limits.max_upload_bytes,
            "content_types": list(IMAGE_CONTENT_TYPES),
        }
        return JSONResponse(payload, headers=SECURITY_HEADERS)

    def sample(self, request: Request) -> Response:
        index = _int_parameter(request, "index", 0, (0, 10**6))
        size = _int_parameter(request, "size", 128, SAMPLE_SIZES)
        image, _ = render_sample(index, mode="multi", image_size=size, split="val")
        return Response(encode_png(image), media_type="image/png", headers=SECURITY_HEADERS)

    async def predict(self, request: Request) -> Response:
        started = perf_counter()
        _check_declared_length(request, self.limits.max_upload_bytes)
        predictor = self._predictor(request.query_params.get("model"))
        _check_content_type(request.headers.get("content-type", ""))
        data = await _read_body(request, self.limits.max_upload_bytes)
        queued = perf_counter()
        try:
            future = self.work.submit(lambda: _predict(predictor, data, self.limits, queued))
        except QueueFull as error:
            raise ApiError(503, f"the server is busy ({error}); try again shortly") from None
        payload = await asyncio.wrap_future(future)
        payload["timing_ms"]["total"] = _ms_since(started)
        return JSONResponse(payload, headers=SECURITY_HEADERS)

    def _predictor(self, name: str | None) -> Predictor:
        names = ", ".join(self.registry.names())
        if not name:
            raise ApiError(400, f"name a model with ?model=NAME; loaded: {names}")
        predictor = self.registry.get(name)
        if predictor is None:
            raise ApiError(404, f"no model named {name!r}; loaded: {names}")
        return predictor


def _predict(
    predictor: Predictor, data: bytes, limits: ServeLimits, queued: float
) -> dict[str, Any]:
    """Decode, predict and encode one upload (in a worker thread); times in milliseconds."""
    started = perf_counter()
    try:
        image = decode_image(data, limits.max_pixels)
    except ImageError as error:
        raise ApiError(400, str(error)) from None
    decoded = perf_counter()
    try:
        result = predictor.predict(image)
    except Exception as error:
        raise ApiError(500, f"model {predictor.name!r} failed: {error}") from None
    predicted = perf_counter()
    payload = result_payload(result, list(predictor.class_names))
    timing = {
        "queue": (started - queued) * 1000,
        "decode": (decoded - started) * 1000,
        "inference": (predicted - decoded) * 1000,
        "encode": _ms_since(predicted),
    }
    return {
        "model": predictor.name,
        "task": predictor.task,
        "backend": predictor.backend,
        "height": int(image.shape[-2]),
        "width": int(image.shape[-1]),
        "result": payload,
        "timing_ms": timing,
    }


def _ms_since(start: float) -> float:
    return (perf_counter() - start) * 1000


def _check_declared_length(request: Request, limit: int) -> None:
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise ApiError(413, _too_large(limit))


def _check_content_type(content_type: str) -> None:
    media_type = content_type.split(";")[0].strip().lower()
    if media_type not in IMAGE_CONTENT_TYPES:
        raise ApiError(
            400,
            f"send the image file as the request body with Content-Type one of "
            f"{', '.join(IMAGE_CONTENT_TYPES)}; got {media_type or 'none'!r}",
        )


async def _read_body(request: Request, limit: int) -> bytes:
    """The request body, refused (413) as soon as it grows past ``limit`` bytes."""
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ApiError(413, _too_large(limit))
        chunks.append(chunk)
    return b"".join(chunks)


def _too_large(limit: int) -> str:
    return (
        f"the upload is larger than {limit} bytes ({limit / 2**20:.1f} MiB); send a smaller image"
    )


def _int_parameter(request: Request, name: str, default: int, bounds: tuple[int, int]) -> int:
    text = request.query_params.get(name)
    low, high = bounds
    if text is None:
        return default
    if not text.isdigit() or not low <= int(text) <= high:
        raise ApiError(400, f"{name}={text!r} must be a whole number in {low}..{high}")
    return int(text)


def _static_endpoint(file_name: str, media_type: str):
    content = (files("pansight.serve") / "static" / file_name).read_bytes()

    async def endpoint(request: Request) -> Response:
        return Response(content, media_type=media_type, headers=SECURITY_HEADERS)

    return endpoint


async def _api_error(request: Request, error: Exception) -> Response:
    assert isinstance(error, ApiError)
    return JSONResponse({"error": error.message}, status_code=error.status)


async def _http_error(request: Request, error: Exception) -> Response:
    assert isinstance(error, HTTPException)
    return JSONResponse({"error": error.detail}, status_code=error.status_code)
