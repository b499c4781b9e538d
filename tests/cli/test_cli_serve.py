"""`python -m pipeline serve`: what it says at start-up, where it binds, and a clean error for a bad MODEL."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request

from typer.testing import CliRunner

from pipeline.app import app
from segpipe.serving.app import SHUTDOWN_GRACE
from segpipe.serving.client import post_image
from tests.helpers import REPO, free_port, png_bytes, random_image, tiny_checkpoint


def start_serve(checkpoint, tmp_path) -> tuple[subprocess.Popen, int, list[str], dict]:
    """`python -m pipeline serve CHECKPOINT` on a free port, once it answers: (process, port, its
    start-up lines, its /health)."""
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    command = [sys.executable, "-m", "pipeline", "serve", str(checkpoint), "--port", str(port),
               "--params", str(REPO / "params.yaml")]
    server = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []
    deadline = time.monotonic() + 120
    while not any("answers requests addressed to" in line for line in lines):
        assert time.monotonic() < deadline and server.poll() is None, "".join(lines)
        lines.append(server.stdout.readline())
    health = None
    while health is None:
        assert time.monotonic() < deadline and server.poll() is None, "the server did not answer"
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as response:
                health = json.loads(response.read())
        except OSError:
            time.sleep(0.2)
    return server, port, lines, health


def stop(server: subprocess.Popen) -> None:
    if server.poll() is None:
        server.kill()
    server.wait()


def test_serve_binds_loopback_by_default_says_so_and_answers(tmp_path):
    checkpoint = tiny_checkpoint(tmp_path / "best.pt")
    server, port, lines, health = start_serve(checkpoint, tmp_path)
    try:
        assert "bound to 127.0.0.1: reachable from this machine only" in "".join(lines)
        assert f"http://127.0.0.1:{port}/" in "".join(lines)
        assert "answers requests addressed to 127.0.0.1, [::1], localhost" in "".join(lines)
        assert health["status"] == "ok" and health["model"] == "best.pt"  # no path of this machine
    finally:
        server.send_signal(signal.SIGINT)
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            stop(server)


def test_sigterm_stops_the_server_promptly_with_a_long_prediction_in_flight(tmp_path):
    checkpoint = tiny_checkpoint(tmp_path / "best.pt")
    server, port, _, _ = start_serve(checkpoint, tmp_path)
    # 32-pixel windows of a 1200 x 1200 image, each predicted 8 times (TTA): 30 s or more of work.
    image = png_bytes(random_image(1200, 1200))

    def predict() -> None:
        with contextlib.suppress(OSError):  # the server goes away mid-request: that is the point
            post_image(f"http://127.0.0.1:{port}", image, "big.png", fields={"tile": "on", "tta": "true"}, timeout=60)

    request = threading.Thread(target=predict, daemon=True)
    try:
        request.start()
        time.sleep(1.5)  # the prediction is running
        assert server.poll() is None
        started = time.monotonic()
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=SHUTDOWN_GRACE + 6)
        seconds = time.monotonic() - started
        print(f"SIGTERM to exit: {seconds:.2f} s")
        assert seconds < SHUTDOWN_GRACE + 6
    finally:
        stop(server)


def test_serve_a_missing_checkpoint_exits_1_with_how_to_fix_it(tmp_path):
    result = CliRunner().invoke(app, ["serve", str(tmp_path / "none.pt"), "--params", str(REPO / "params.yaml")])
    assert result.exit_code == 1
    assert "no such checkpoint" in result.output and "models:/" in result.output
