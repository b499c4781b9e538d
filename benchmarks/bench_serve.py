"""The web server under load: latency of one 1024 x 768 photo tiled and blended, and 20 concurrent requests.

    python benchmarks/bench_serve.py [--checkpoint models/best.pt] [--concurrency 20] [--goal 2.0]

Starts `python -m pipeline serve` as its own process on a free 127.0.0.1 port (as a person would)
and talks to it over loopback only. The test photo is a bundled sample image enlarged to
1024 x 768 and saved as JPEG. Latency is wall time per request seen by the client (upload,
decode, prediction, PNG encoding, answer), the median of --repeats sequential requests with
tiling on, compared with --goal seconds; the server's CPU time per request is printed beside it,
as it does not grow when other processes compete for the cores. The load run sends --concurrency requests at once, each
with a different sample image at its own size (default options), and checks every answer against
the mask `predict` writes; it prints requests/s, p50 and p95 latency and the error count. Every
request has a timeout and the server is stopped at the end, whatever happens.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from segpipe.inference.prediction import PredictOptions, predict_paths  # noqa: E402
from segpipe.serving.client import post_image  # noqa: E402

SAMPLE = ROOT / "data" / "sample"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, default=ROOT / "models" / "best.pt")
    parser.add_argument("--concurrency", type=int, default=20, help="requests sent at once in the load run")
    parser.add_argument("--repeats", type=int, default=5, help="sequential requests for the latency median")
    parser.add_argument("--goal", type=float, default=2.0, help="latency goal in seconds for 1024 x 768, tiled")
    parser.add_argument("--timeout", type=float, default=300, help="seconds any one request may take")
    parser.add_argument("--threads", type=int, help="torch threads of the server (OMP_NUM_THREADS); default: torch's")
    return parser.parse_args()


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(checkpoint: Path, port: int, threads: int | None) -> subprocess.Popen:
    command = [sys.executable, "-m", "pipeline", "serve", str(checkpoint), "--host", "127.0.0.1", "--port", str(port)]
    env = {**os.environ, **({"OMP_NUM_THREADS": str(threads)} if threads else {})}
    server = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"the server exited: {server.stderr.read()[-2000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2):
                return server
        except OSError:
            time.sleep(0.3)
    server.kill()
    raise SystemExit("the server did not answer /health within 120 s")


def photo_1024x768() -> bytes:
    image = Image.open(sorted(SAMPLE.glob("*.jpg"))[0]).convert("RGB").resize((1024, 768), Image.Resampling.BICUBIC)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def expected_masks(checkpoint: Path, images: list[Path], options: PredictOptions) -> dict[str, bytes]:
    """What `python -m pipeline predict` writes for each image."""
    with tempfile.TemporaryDirectory() as out:
        report = predict_paths(checkpoint, [str(p) for p in images], Path(out), options, progress=False)
        assert report.ok, report.failed
        return {path.stem: (Path(out) / f"{path.stem}.png").read_bytes() for path in images}


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of a process so far (Linux /proc; None elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime


def bench_latency(url: str, args: argparse.Namespace, tile: int, pid: int) -> None:
    data = photo_1024x768()
    for mode in ("on", "off"):
        post_image(url, data, "warm-up.jpg", {"tile": mode}, timeout=args.timeout)
        walls, server = [], []
        cpu_before = cpu_seconds(pid)
        for _ in range(args.repeats):
            start = time.perf_counter()
            status, headers, body = post_image(url, data, "photo.jpg", {"tile": mode}, timeout=args.timeout)
            walls.append(time.perf_counter() - start)
            assert status == 200 and Image.open(io.BytesIO(body)).size == (1024, 768), (status, body[:200])
            server.append(float(headers["x-segpipe-seconds"]))
        cpu_after = cpu_seconds(pid)
        median = float(np.median(walls))
        how = f"tiled in {tile} px windows, overlap 0.25" if mode == "on" else "whole (letterboxed)"
        goal = f"; goal <= {args.goal:.1f} s: {'met' if median <= args.goal else 'MISSED'}" if mode == "on" else ""
        print(f"latency, 1024 x 768 JPEG ({len(data) / 1024:.0f} KiB), {how}:")
        print(f"  median {median:.2f} s, min {min(walls):.2f} s, max {max(walls):.2f} s over {args.repeats} requests "
              f"(server-side median {np.median(server):.2f} s){goal}")
        if cpu_before is not None and cpu_after is not None:
            # CPU time does not grow when other processes take turns on the cores, so it says what
            # an idle machine would take (divided by the threads that really run in parallel).
            print(f"  server CPU time per request {(cpu_after - cpu_before) / args.repeats:.2f} s (all its threads)")


def bench_load(url: str, args: argparse.Namespace) -> None:
    images = sorted(SAMPLE.glob("*.jpg"))[: args.concurrency]
    images = (images * (args.concurrency // len(images) + 1))[: args.concurrency]
    expected = expected_masks(args.checkpoint, sorted(set(images)), PredictOptions())

    def one(path: Path) -> tuple[float, int, bool]:
        start = time.perf_counter()
        try:
            status, _, body = post_image(url, path.read_bytes(), path.name, timeout=args.timeout)
        except OSError:
            return time.perf_counter() - start, 0, False
        return time.perf_counter() - start, status, body == expected[path.stem]

    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=args.concurrency) as pool:
        results = list(pool.map(one, images))
    total = time.perf_counter() - start
    latencies = [seconds for seconds, _, _ in results]
    errors = sum(status != 200 for _, status, _ in results)
    wrong = sum(status == 200 and not same for _, status, same in results)
    print(f"load, {args.concurrency} concurrent requests ({Image.open(images[0]).size[0]} px sample JPEGs, default options):")
    print(f"  {len(results)} answered in {total:.2f} s: {len(results) / total:.1f} requests/s, "
          f"p50 {np.percentile(latencies, 50):.2f} s, p95 {np.percentile(latencies, 95):.2f} s; "
          f"{errors} errors, {wrong} masks differing from predict's")


def main() -> None:
    args = parse_args()
    if not args.checkpoint.is_file():
        raise SystemExit(f"{args.checkpoint}: no checkpoint; run `dvc repro` first or pass --checkpoint")
    port = free_port()
    server = start_server(args.checkpoint, port, args.threads)
    url = f"http://127.0.0.1:{port}"
    try:
        with urllib.request.urlopen(url + "/health", timeout=10) as response:
            health = json.loads(response.read())
        threads = args.threads or "torch's default"
        load = ", ".join(f"{value:.1f}" for value in os.getloadavg())
        print(f"server: {health['model']}, {len(health['classes'])} classes, {health['image_size']} px input; "
              f"{os.cpu_count()} CPUs, threads: {threads}; load average before: {load}")
        bench_latency(url, args, health["tile"], server.pid)
        bench_load(url, args)
    finally:
        server.send_signal(signal.SIGINT)
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()


if __name__ == "__main__":
    main()
