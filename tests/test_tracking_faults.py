"""MLflow faults: a tracking server that does not answer is given up on within seconds, once."""

from __future__ import annotations

import http.server
import socket
import threading
import time
import warnings
from pathlib import Path


from segpipe import tracking
from segpipe.training.stage import train_stage
from tests.helpers import tiny_params, tiny_samples, train_outputs_in


def closed_port() -> int:
    """A port on 127.0.0.1 that nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_a_closed_port_is_not_reachable():
    assert tracking.reachable(f"http://127.0.0.1:{closed_port()}") is False


def test_a_server_that_accepts_but_never_answers_is_given_up_on_after_the_timeout():
    with socket.socket() as silent:  # listens, so connections are accepted by the kernel, but never replies
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        started = time.monotonic()
        assert tracking.reachable(f"http://127.0.0.1:{silent.getsockname()[1]}", timeout=0.3) is False
        assert time.monotonic() - started < 5


def test_any_http_answer_counts_as_a_live_server_and_local_stores_need_none():
    server = http.server.HTTPServer(("127.0.0.1", 0), http.server.BaseHTTPRequestHandler)  # answers 501
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        assert tracking.reachable(f"http://127.0.0.1:{server.server_port}/") is True
    finally:
        server.shutdown()
        server.server_close()
    assert tracking.reachable("sqlite:///nowhere/mlflow.db") is True


def test_training_with_a_dead_server_warns_once_and_runs_without_tracking(tmp_path: Path, mlflow_env, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{closed_port()}")
    samples = tiny_samples(tmp_path / "processed")
    outputs = train_outputs_in(tmp_path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        report = train_stage(tiny_params({"epochs": 1}), samples, samples, outputs, progress=False)
    messages = [str(w.message) for w in caught if "MLflow" in str(w.message) or "tracking" in str(w.message)]
    assert len(messages) == 1 and "did not answer within 3 s; going on without tracking" in messages[0]
    assert report.info["epochs"] == 1 and (outputs.models_dir / "best.pt").exists()
    assert (outputs.models_dir / tracking.RUN_ID_FILE).read_text() == "\n"  # no run to evaluate into
