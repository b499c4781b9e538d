"""What keeps the server usable and private under hostile traffic, below and around the app.

- `timed_h11`: uvicorn's HTTP/1.1 protocol with deadlines. uvicorn 0.54 times out only idle
  keep-alive connections between requests; a connection that never finishes its headers
  (slowloris) or stops sending its body is held forever. Here the headers must arrive within
  `header_timeout` seconds of the connection (or of the first byte of the next request on a
  kept-alive one), however slowly they trickle, and the body may pause at most `body_timeout`.
- `RequestLimit`: at most `limit` requests in the app at once (each may hold one upload in
  memory); the rest get 503. It counts requests, not connections, so sockets that never finish
  their headers take no slot from real requests (uvicorn's own `limit_concurrency` counts open
  connections and is kept only as a high cap on file descriptors).
- `HostCheck`: refuse requests whose Host header is not one of this server's names, so that a web
  page elsewhere whose DNS name is rebound to 127.0.0.1 cannot drive the API from a browser.
- `NoSniff`: `X-Content-Type-Options: nosniff` on every response the app sends, errors included.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging

import h11
from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.protocols.http.h11_impl import H11Protocol

log = logging.getLogger(__name__)

HEADER_TIMEOUT = 10.0  # seconds for a request's headers to arrive, in all
BODY_TIMEOUT = 30.0  # seconds a request body may pause between two pieces
LOOPBACK_NAMES = ("127.0.0.1", "localhost", "[::1]")
ANY_HOST = "*"
_TIMEOUT_RESPONSE = b"HTTP/1.1 408 Request Timeout\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"


def timed_h11(header_timeout: float = HEADER_TIMEOUT, body_timeout: float = BODY_TIMEOUT) -> type[H11Protocol]:
    """uvicorn's h11 protocol class with these deadlines (pass it as `uvicorn.Config(http=...)`)."""

    class TimedH11Protocol(H11Protocol):
        def connection_made(self, transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._deadline: asyncio.TimerHandle | None = None
            self._waiting_for = ""
            self._watch()

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            self._watch()

        def on_response_complete(self) -> None:
            self._stop()  # uvicorn's keep-alive timeout now governs the idle connection
            super().on_response_complete()

        def connection_lost(self, exc: Exception | None) -> None:
            self._stop()
            super().connection_lost(exc)

        def _watch(self) -> None:
            state = self.conn.their_state
            if state is h11.IDLE and self.timeout_keep_alive_task is None and self._waiting_for != "headers":
                # A new connection, or the first bytes of the next request: the deadline does not
                # move while the headers trickle in.
                self._arm("headers", header_timeout)
            elif state is h11.SEND_BODY:
                self._arm("body", body_timeout)  # moves with every piece of the body
            elif state is not h11.IDLE:
                self._stop()

        def _arm(self, what: str, seconds: float) -> None:
            self._stop()
            self._waiting_for = what
            self._deadline = self.loop.call_later(seconds, self._expire)

        def _stop(self) -> None:
            if getattr(self, "_deadline", None) is not None:
                self._deadline.cancel()
            self._deadline, self._waiting_for = None, ""

        def _expire(self) -> None:
            log.warning("closing a connection from %s: its request %s did not arrive in time", self.client, self._waiting_for)
            if self._waiting_for == "headers" and not self.transport.is_closing():
                self.transport.write(_TIMEOUT_RESPONSE)  # no request yet, so h11 cannot answer it
            self._deadline = None
            self.transport.close()

    return TimedH11Protocol


def allowed_hosts(host: str, extra: tuple[str, ...] = ()) -> frozenset[str]:
    """The Host header names the server answers to: its loopback names when bound to loopback
    (or to every address), the bound address itself, and `extra` (serve.allowed_hosts; "*": any)."""
    names = {name.lower() for name in extra}
    if is_loopback(host) or host in ("0.0.0.0", "::"):
        names.update(LOOPBACK_NAMES)
    if host not in ("0.0.0.0", "::"):
        names.add(f"[{host.lower()}]" if ":" in host else host.lower())
    return frozenset(names)


def is_loopback(host: str) -> bool:
    """Whether `host` is a loopback address or `localhost`."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def host_name(header: str) -> str:
    """The host of a Host header without its port: `[::1]:8000` -> `[::1]`, `Example.org:80` -> `example.org`."""
    header = header.strip().lower()
    if header.startswith("["):
        return header[: header.find("]") + 1] if "]" in header else header
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


class HostCheck:
    """ASGI middleware: 400 for requests whose Host header names none of `allowed` (see `allowed_hosts`)."""

    def __init__(self, app: ASGIApp, allowed: frozenset[str]) -> None:
        self.app = app
        self.allowed = allowed

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or ANY_HOST in self.allowed:
            await self.app(scope, receive, send)
            return
        header = dict(scope["headers"]).get(b"host", b"").decode("latin-1")
        if host_name(header) in self.allowed:
            await self.app(scope, receive, send)
            return
        shown = ", ".join(sorted(self.allowed))
        response = JSONResponse(
            {"detail": f"Host {header[:80]!r} is not one of this server's names ({shown}); "
                       "add it to serve.allowed_hosts in params.yaml to accept it"},
            status_code=400,
            headers={"Connection": "close"},
        )
        await response(scope, receive, send)


class RequestLimit:
    """ASGI middleware: at most `limit` HTTP requests in the app at once; others get 503 at once."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit
        self.active = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self.active >= self.limit:
            response = JSONResponse(
                {"detail": f"the server is busy ({self.limit} requests in progress); try again shortly"},
                status_code=503,
                headers={"Connection": "close", "Retry-After": "1"},
            )
            await response(scope, receive, send)
            return
        self.active += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.active -= 1


class NoSniff:
    """ASGI middleware: `X-Content-Type-Options: nosniff` on every response, so a browser never
    runs an answer (an error quoting an upload's name, say) as a script or page of another type."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_header(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"x-content-type-options"]
                message = {**message, "headers": [*headers, (b"x-content-type-options", b"nosniff")]}
            await send(message)

        await self.app(scope, receive, send_with_header)
