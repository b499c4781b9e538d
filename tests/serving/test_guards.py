"""The server under hostile traffic, over real HTTP on 127.0.0.1: foreign Host headers, nosniff on
every answer, connections that never finish their headers (slowloris) or their body."""

from __future__ import annotations

import http.client
import json
import socket
import time
import urllib.request

import pytest

from segpipe.serving.app import create_app
from segpipe.serving.client import post_image
from segpipe.serving.guards import allowed_hosts, host_name
from segpipe.serving.service import ModelService
from tests.helpers import png_bytes, random_image, running_server, tiny_checkpoint

HEADER_TIMEOUT = 1.0  # the test server's deadlines, seconds
BODY_TIMEOUT = 1.0


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    return ModelService(tiny_checkpoint(tmp_path_factory.mktemp("guards") / "best.pt"))


@pytest.fixture(scope="module")
def server(service):
    app = create_app(service, 200_000, max_pixels=10_000)
    with running_server(app, header_timeout=HEADER_TIMEOUT, body_timeout=BODY_TIMEOUT) as url:
        yield url


def address(url: str) -> tuple[str, int]:
    host, port = url.removeprefix("http://").split(":")
    return host, int(port)


def get(url: str, path: str, host: str | None = None, method: str = "GET", body: bytes | None = None) -> tuple[int, dict, bytes]:
    """(status, lower-cased headers, body) of one request, with the Host header given (default: the URL's)."""
    connection = http.client.HTTPConnection(*address(url), timeout=10)
    connection.putrequest(method, path, skip_host=host is not None)
    if host is not None:
        connection.putheader("Host", host)
    if body is not None:
        connection.putheader("Content-Length", str(len(body)))
        connection.putheader("Content-Type", "multipart/form-data; boundary=x")
    connection.endheaders(body)
    response = connection.getresponse()
    answer = response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    connection.close()
    return answer


def test_a_foreign_host_header_is_refused_and_loopback_names_are_answered(server):
    port = address(server)[1]
    for host in ("evil.example", f"evil.example:{port}", "127.0.0.1.evil.example", ""):
        status, _, body = get(server, "/health", host=host)
        assert status == 400, host
        assert "serve.allowed_hosts" in json.loads(body)["detail"]
    for host in (f"127.0.0.1:{port}", "127.0.0.1", f"localhost:{port}", f"LOCALHOST:{port}", f"[::1]:{port}"):
        status, _, _ = get(server, "/health", host=host)
        assert status == 200, host


def test_a_refused_host_never_reaches_the_model(server):
    status, _, body = get(server, "/predict", host="evil.example", method="POST", body=b"--x--\r\n")
    assert status == 400 and "is not one of this server's names" in json.loads(body)["detail"]


def test_allowed_hosts_follow_the_bound_address_and_the_setting():
    assert allowed_hosts("127.0.0.1") == {"127.0.0.1", "localhost", "[::1]"}
    assert allowed_hosts("::1") == {"127.0.0.1", "localhost", "[::1]"}
    assert allowed_hosts("192.168.1.5") == {"192.168.1.5"}
    assert allowed_hosts("0.0.0.0", ("Seg.Lab",)) == {"127.0.0.1", "localhost", "[::1]", "seg.lab"}
    assert host_name("[::1]:8000") == "[::1]" and host_name("Seg.Lab:80") == "seg.lab" and host_name("x") == "x"


def test_other_names_are_answered_when_allowed_hosts_names_them(service):
    app = create_app(service, 200_000, hosts=allowed_hosts("0.0.0.0", ("seg.lab",)))
    with running_server(app) as url:
        assert get(url, "/health", host="seg.lab:8000")[0] == 200
        assert get(url, "/health", host="other.lab")[0] == 400
    with running_server(create_app(service, 200_000, hosts=allowed_hosts("0.0.0.0", ("*",)))) as url:
        assert get(url, "/health", host="anything.example")[0] == 200


def test_every_answer_says_nosniff_errors_and_static_files_included(server):
    answers = {
        "page": get(server, "/"),
        "script": get(server, "/static/app.js"),
        "unknown static file": get(server, "/static/nope.js"),
        "unknown route": get(server, "/no/such/route"),
        "health": get(server, "/health"),
        "foreign host": get(server, "/health", host="evil.example"),
        "bad upload": post_image(server, b"not an image"),
        "too many pixels": post_image(server, png_bytes(random_image(101, 100))),
        "body over the limit": get(server, "/predict", method="POST", body=b"\0" * 300_000),
        "prediction": post_image(server, png_bytes(random_image(20, 20))),
    }
    statuses = {name: status for name, (status, _, _) in answers.items()}
    assert statuses == {
        "page": 200, "script": 200, "unknown static file": 404, "unknown route": 404, "health": 200,
        "foreign host": 400, "bad upload": 400, "too many pixels": 413, "body over the limit": 413, "prediction": 200,
    }
    for name, (_, headers, _) in answers.items():
        headers = {k.lower(): v for k, v in headers.items()}
        assert headers.get("x-content-type-options") == "nosniff", name


def partial_request(url: str) -> socket.socket:
    """A connection that has sent the start of a request's headers and nothing more."""
    sock = socket.create_connection(address(url), timeout=10)
    sock.sendall(b"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: multipart/form-data\r\n")
    return sock


def closed_by_server(sock: socket.socket, within: float) -> bool:
    """Whether the server closes `sock` within `within` seconds (whatever it sends first)."""
    sock.settimeout(within)
    deadline = time.monotonic() + within
    try:
        while time.monotonic() < deadline:
            if not sock.recv(4096):
                return True
    except (TimeoutError, socket.timeout):
        return False
    except ConnectionResetError:
        return True
    return False


def test_connections_that_never_finish_their_headers_do_not_starve_real_requests(server):
    idle = [partial_request(server) for _ in range(80)]  # more than the 64 requests served at once
    try:
        started = time.monotonic()
        status, _, body = post_image(server, png_bytes(random_image(20, 20)), timeout=10)
        assert status == 200 and body.startswith(b"\x89PNG")
        assert time.monotonic() - started < 5
        # and the server drops them after its header deadline
        assert all(closed_by_server(sock, HEADER_TIMEOUT + 4) for sock in idle)
    finally:
        for sock in idle:
            sock.close()


def test_headers_sent_a_byte_at_a_time_do_not_move_the_deadline(server):
    sock = socket.create_connection(address(server), timeout=10)
    request = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Padding: " + b"a" * 100
    started, closed = time.monotonic(), False
    try:
        for byte in request:  # 100+ bytes, one per 50 ms: 5 s, if the server let it
            sock.sendall(bytes([byte]))
            time.sleep(0.05)
            if time.monotonic() - started > HEADER_TIMEOUT + 0.5:
                closed = closed_by_server(sock, 2)
                break
    except (BrokenPipeError, ConnectionResetError):
        closed = True
    finally:
        sock.close()
    assert closed and time.monotonic() - started < HEADER_TIMEOUT + 3


def test_a_body_that_stops_coming_is_dropped_after_the_body_timeout(server):
    sock = socket.create_connection(address(server), timeout=10)
    try:
        sock.sendall(b"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: multipart/form-data; boundary=x\r\n"
                     b"Content-Length: 1000\r\n\r\n--x\r\n")
        started = time.monotonic()
        assert closed_by_server(sock, BODY_TIMEOUT + 4)
        assert time.monotonic() - started < BODY_TIMEOUT + 4
    finally:
        sock.close()
    assert post_image(server, png_bytes(random_image(20, 20)))[0] == 200
