"""The web page and its HTTP API, on one FastAPI app.

    GET  /                  the page (static HTML, JS and CSS from this folder; nothing from the internet)
    GET  /health            {"status": "ok", "model": ..., "classes": [{name, colour}], ...}
    POST /predict           multipart `image` (+ optional `tile` auto|on|off, `tta` true|false):
                            the mask PNG `predict` writes for it
    POST /predict/details   the same, as JSON for the page: the mask, a colour layer, pixel
                            shares per class and the time taken

Safety: request bodies over `max_upload_bytes` get 413 without being read whole (the limit is
checked against Content-Length and again while the body streams in); an image of more than
`max_pixels` pixels gets 413 from its header, before it is decoded; an upload that is not an
image, is truncated or is a decompression bomb gets 400 with the reason; nothing a request sends
is used as a path (the page's three files are read once at start-up, by fixed names), and no
answer carries a path of the server's machine. `guards` adds the Host check, the request limit,
`nosniff` and the header/body deadlines.
"""

from __future__ import annotations

import base64
import functools
import io
import warnings
from collections.abc import Callable
from importlib import resources
from pathlib import Path

import anyio.to_thread
from fastapi import FastAPI, File, Form, UploadFile
from fastapi.responses import HTMLResponse, JSONResponse, Response
from starlette.concurrency import run_in_threadpool
from PIL import Image
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from segpipe.config import ServeSection
from segpipe.errors import SegpipeError
from segpipe.serving.guards import HostCheck, NoSniff, RequestLimit, allowed_hosts, is_loopback, timed_h11
from segpipe.serving.service import URI_SCHEMES, ModelService, Prediction, load_service

STATIC_FILES = {"app.js": "text/javascript", "style.css": "text/css"}
MAX_NAME_CHARS = 80  # of an upload's file name, quoted in error messages
# The browser itself refuses to load anything but this server's own files (and the images the
# page makes from the user's file and the answers).
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data: blob:; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
}
# Body bytes past the upload limit read (and dropped) before answering 413; see BodyLimit.
DRAIN_BYTES = 16 * 2**20
# Requests in the app beyond this get 503: each may hold up to one upload in memory.
MAX_REQUESTS = 64
# Open connections beyond this get 503 from uvicorn: a cap on file descriptors. Connections that
# never finish their headers are closed after guards.HEADER_TIMEOUT and hold no request slot.
MAX_CONNECTIONS = 512
# Seconds requests in progress get to finish after SIGTERM or Ctrl+C before they are dropped.
SHUTDOWN_GRACE = 2
DEFAULT_MAX_PIXELS = 25_000_000  # serve.max_pixels' default


def create_app(
    service: ModelService,
    max_upload_bytes: int,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    hosts: frozenset[str] = allowed_hosts("127.0.0.1"),
) -> FastAPI:
    """The app serving `service`: request bodies above `max_upload_bytes` and images above
    `max_pixels` are refused with 413, and requests whose Host header is not in `hosts` with 400."""
    app = FastAPI(title="segpipe", docs_url=None, redoc_url=None, openapi_url=None)
    page = _static("index.html")
    assets = {name: (_static(name), media_type) for name, media_type in STATIC_FILES.items()}

    @app.get("/", response_class=HTMLResponse)
    def index() -> HTMLResponse:
        return HTMLResponse(page, headers=PAGE_HEADERS)

    @app.get("/static/{name}")
    def static(name: str) -> Response:
        if name not in assets:  # a fixed set of names: the request never becomes a path
            return JSONResponse({"detail": f"no static file {name[:MAX_NAME_CHARS]!r}"}, status_code=404)
        text, media_type = assets[name]
        return Response(text, media_type=media_type, headers=PAGE_HEADERS)

    @app.get("/health")
    def health() -> dict:
        described = service.describe()
        limits = {"max_upload_bytes": max_upload_bytes, "max_pixels": max_pixels}
        return {"status": "ok", **described, "model": public_name(described["model"]), **limits}

    @app.post("/predict", responses={200: {"content": {"image/png": {}}}})
    async def predict(image: UploadFile = File(...), tile: str = Form("auto"), tta: bool = Form(False)) -> Response:
        result = await _run(service, image, tile, tta, max_pixels)
        if isinstance(result, Response):
            return result
        headers = {"X-Segpipe-Seconds": f"{result.seconds:.3f}", "X-Segpipe-Tiled": str(result.tiled).lower()}
        return Response(result.mask_png, media_type="image/png", headers=headers)

    @app.post("/predict/details")
    async def details(image: UploadFile = File(...), tile: str = Form("auto"), tta: bool = Form(False)) -> Response:
        result = await _run(service, image, tile, tta, max_pixels)
        if isinstance(result, Response):
            return result
        layer = await run_in_threadpool(service.colour_layer_png, result.labels)
        total = max(1, sum(result.pixels))
        return JSONResponse(
            {
                "mask_png": base64.b64encode(result.mask_png).decode("ascii"),
                "layer_png": base64.b64encode(layer).decode("ascii"),
                "width": int(result.labels.shape[1]),
                "height": int(result.labels.shape[0]),
                "shares": [count / total for count in result.pixels],
                "seconds": result.seconds,
                "tiled": result.tiled,
            }
        )

    # Outermost first: every answer gets nosniff, a foreign Host is refused before its body is read.
    return NoSniff(HostCheck(RequestLimit(BodyLimit(app, max_upload_bytes), MAX_REQUESTS), hosts))  # type: ignore[return-value]


async def _run(service: ModelService, upload: UploadFile, tile: str, tta: bool, max_pixels: int) -> Prediction | Response:
    """The prediction for an upload, or the 400/413 response that says why there is none."""
    name = f"upload {(upload.filename or 'image')[:MAX_NAME_CHARS]!r}"
    data = await upload.read()
    if not data:
        return JSONResponse({"detail": f"{name} is empty; send the image file's bytes as the `image` field"}, status_code=400)
    size = _header_size(data)
    if size is not None and size[0] * size[1] > max_pixels:
        return JSONResponse(
            {"detail": f"{name} is {size[0]} x {size[1]} = {size[0] * size[1]:,} pixels, over the server's limit "
                       f"of {max_pixels:,} pixels (serve.max_pixels); send a smaller image"},
            status_code=413,
        )
    try:
        # Abandoned (not awaited) when the server stops, so SIGTERM is not held up by a long prediction.
        work = functools.partial(service.predict, data, name, tile, tta)
        return await anyio.to_thread.run_sync(work, abandon_on_cancel=True)
    except SegpipeError as exc:
        return JSONResponse({"detail": str(exc)}, status_code=400)


def _header_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from the image's header, without decoding its pixels; None when Pillow
    cannot read it (the prediction then says why)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # bomb warnings: decoding refuses those with a reason
            with Image.open(io.BytesIO(data)) as image:
                return image.size
    except Exception:
        return None


def public_name(model: str) -> str:
    """How to name the model to clients: an MLflow URI as it is, a checkpoint by its file name only."""
    return model if model.startswith(URI_SCHEMES) else Path(model).name


def _static(name: str) -> str:
    return resources.files("segpipe.serving").joinpath("static", name).read_text(encoding="utf-8")


class BodyLimit:
    """ASGI middleware: refuse request bodies over `limit` bytes with 413, keeping at most `limit` bytes.

    Bodies within the limit are buffered and handed on whole, so the app never sees a stream it
    must cap itself. Up to `DRAIN_BYTES` past the limit are read and dropped before the 413 goes
    out, so that a client still sending sees the answer rather than a reset connection.
    """

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in ("POST", "PUT", "PATCH"):
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        declared = int(headers.get(b"content-length", b"0"))  # the server has checked it is a number
        if declared > self.limit:
            # curl asks first (Expect: 100-continue) and sends nothing after a 413: no need to drain.
            if declared <= self.limit + DRAIN_BYTES and b"100-continue" not in headers.get(b"expect", b"").lower():
                await _drain(receive, declared)
            await self._refuse(scope, send)
            return
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.limit:
                if message.get("more_body", False):
                    await _drain(receive, DRAIN_BYTES)
                await self._refuse(scope, send)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        await self.app(scope, _replay(b"".join(chunks), receive), send)

    async def _refuse(self, scope: Scope, send: Send) -> None:
        response = JSONResponse(
            {"detail": f"request body over the upload limit of {self.limit / 2**20:g} MiB (serve.max_upload_mb)"},
            status_code=413,
            headers={"Connection": "close"},
        )
        await response(scope, _never, send)


async def _drain(receive: Receive, most: int) -> None:
    """Read and drop up to `most` more bytes of the request body."""
    dropped = 0
    while dropped <= most:
        message = await receive()
        dropped += len(message.get("body", b""))
        if message["type"] == "http.disconnect" or not message.get("more_body", False):
            return


def _replay(body: bytes, receive: Receive) -> Receive:
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if sent:
            return await receive()  # after the body: wait for the client to disconnect
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replay


async def _never() -> Message:
    return {"type": "http.disconnect"}


def serve(model: str, settings: ServeSection, announce: Callable[[str], None] = print) -> None:
    """Load MODEL (a checkpoint path or an MLflow model URI) and serve the page and API until
    interrupted, on `settings.host`:`settings.port`."""
    import uvicorn

    from segpipe.runtime import resolve_device

    service = load_service(model, resolve_device(settings.device, "serve.device"))
    hosts = allowed_hosts(settings.host, tuple(settings.allowed_hosts))
    app = create_app(service, int(settings.max_upload_mb * 2**20), max_pixels=settings.max_pixels, hosts=hosts)
    names = ", ".join(service.classes)
    announce(f"serve: {service.source} ({len(service.classes)} classes: {names}; {service.predictor.image_size} px input)")
    announce(f"serve: open http://{_url_host(settings.host)}:{settings.port}/ (Ctrl+C stops)")
    if is_loopback(settings.host):
        announce(f"serve: bound to {settings.host}: reachable from this machine only (--host 0.0.0.0 opens it to the network)")
    else:
        announce(f"serve: bound to {settings.host}: reachable from other machines, with no authentication")
    announce(f"serve: answers requests addressed to {', '.join(sorted(hosts))} (serve.allowed_hosts adds names)")
    uvicorn.Server(server_config(app, settings.host, settings.port)).run()


def server_config(app: ASGIApp, host: str = "127.0.0.1", port: int = 8000, **deadlines: float):
    """uvicorn's settings for this app: the timed h11 protocol (`deadlines`: header_timeout,
    body_timeout, see guards.timed_h11), the connection cap and the grace period on shutdown."""
    import uvicorn

    return uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level="warning",
        http=timed_h11(**deadlines),
        limit_concurrency=MAX_CONNECTIONS,
        timeout_graceful_shutdown=SHUTDOWN_GRACE,
    )


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host
