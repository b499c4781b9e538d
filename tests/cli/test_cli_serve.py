"""`python -m pipeline serve`: what it says at start-up, where it binds, and a clean error for a bad MODEL."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request

from typer.testing import CliRunner

from pipeline.app import app
from tests.helpers import REPO, free_port, tiny_checkpoint


def test_serve_binds_loopback_by_default_says_so_and_answers(tmp_path):
    checkpoint = tiny_checkpoint(tmp_path / "best.pt")
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    command = [sys.executable, "-m", "pipeline", "serve", str(checkpoint), "--port", str(port),
               "--params", str(REPO / "params.yaml")]
    server = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        lines = []
        deadline = time.monotonic() + 60
        while not any("bound to" in line for line in lines):
            assert time.monotonic() < deadline and server.poll() is None, "".join(lines)
            lines.append(server.stdout.readline())
        assert "bound to 127.0.0.1: reachable from this machine only" in "".join(lines)
        assert f"http://127.0.0.1:{port}/" in "".join(lines)
        health = None
        while health is None:
            assert time.monotonic() < deadline and server.poll() is None, "the server did not answer"
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as response:
                    health = json.loads(response.read())
            except OSError:
                time.sleep(0.2)
        assert health["status"] == "ok" and health["model"] == str(checkpoint)
    finally:
        server.send_signal(signal.SIGINT)
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def test_serve_a_missing_checkpoint_exits_1_with_how_to_fix_it(tmp_path):
    result = CliRunner().invoke(app, ["serve", str(tmp_path / "none.pt"), "--params", str(REPO / "params.yaml")])
    assert result.exit_code == 1
    assert "no such checkpoint" in result.output and "models:/" in result.output
