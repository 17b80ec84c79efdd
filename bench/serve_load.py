"""Load check of ``pansight serve``: concurrent clients on loopback against a real server.

The server runs in its own process (``python -m pansight serve``, ``OMP_NUM_THREADS=--threads``)
with the given checkpoints, or with a Mask R-CNN trained for a few iterations on the synthetic
world when none is given. After ``--warmup`` requests, ``--clients`` threads, each holding one
keep-alive connection, send ``--requests`` predictions in all (synthetic 128 px scenes, the
models taken in turn), stopping early after ``--max-seconds``. Reported: requests per second,
p50/p95 latency, answers by status (503s are the work queue refusing a burst, on purpose; any
other 5xx is a failure), and the server's resident memory (``VmRSS``) before and after the load.

    python bench/serve_load.py [CHECKPOINT ...] [--clients 8 --requests 200]

Ends with ``result: rps=... p50_ms=... p95_ms=... errors_5xx=... errors_503=... rss_growth_mb=...``.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np
from arguments import bench_parser
from report import print_result, set_threads_and_print_header
from rss import MIB, proc_status_bytes

from pansight.data.shapes import render_sample
from pansight.serve.encoding import encode_png

RSS_GROWTH_LIMIT_MB = 100


def main() -> int:
    parser = bench_parser(__doc__, threads_help="the server's torch threads")
    parser.add_argument("checkpoints", nargs="*", type=Path)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=4)
    parser.add_argument("--max-seconds", type=float, default=300.0)
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--queue-size", type=int, default=8)
    args = parser.parse_args()
    onnx = any(path.suffix == ".onnx" for path in args.checkpoints)
    set_threads_and_print_header(args.threads, onnxruntime=onnx)  # the server's thread count
    with tempfile.TemporaryDirectory() as folder:
        checkpoints = args.checkpoints or [train_tiny_instance(Path(folder))]
        with running_server(checkpoints, args.queue_size, args.threads) as (port, pid):
            return measure(args, port, pid)


def train_tiny_instance(folder: Path) -> Path:
    """A Mask R-CNN trained for a few iterations on 128 px scenes (it detects, poorly)."""
    from pansight.api import train

    out = folder / "instance"
    train("instance", out=str(out), data__num_train=8, data__num_val=2, max_iters=2, amp=False)
    return out / "model.pt"


class running_server:
    """``pansight serve`` in a subprocess on a free loopback port: ``(port, pid)`` once ready."""

    def __init__(self, checkpoints: list[Path], queue_size: int, threads: int) -> None:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        command = [sys.executable, "-m", "pansight", "serve", *map(str, checkpoints)]
        command += ["--port", str(self.port), "--queue-size", str(queue_size)]
        self.command = command
        self.env = {**os.environ, "OMP_NUM_THREADS": str(threads)}

    def __enter__(self) -> tuple[int, int]:
        self.process = subprocess.Popen(self.command, env=self.env, stdout=subprocess.DEVNULL)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the server exited with status {self.process.returncode}")
            try:
                status, _ = request(self.port, "GET", "/api/models")
                if status == 200:
                    return self.port, self.process.pid
            except OSError:
                time.sleep(0.2)
        raise RuntimeError("the server did not start within 120 s")

    def __exit__(self, *exc: object) -> None:
        self.process.terminate()
        self.process.wait(timeout=30)


def request(port: int, method: str, path: str, body: bytes | None = None) -> tuple[int, bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    try:
        return send(connection, method, path, body)
    finally:
        connection.close()


def send(connection: http.client.HTTPConnection, method: str, path: str, body: bytes | None):
    headers = {"Content-Type": "image/png"} if body is not None else {}
    connection.request(method, path, body=body, headers=headers)
    answer = connection.getresponse()
    return answer.status, answer.read()


def rss_mb(pid: int) -> float:
    """The resident memory of process ``pid`` in MB (MiB)."""
    return proc_status_bytes("VmRSS", pid) / MIB


def measure(args: argparse.Namespace, port: int, pid: int) -> int:
    _, listing = request(port, "GET", "/api/models")
    models = [model["name"] for model in json.loads(listing)["models"]]
    images = [
        encode_png(render_sample(i, mode="multi", image_size=args.image_size, split="val")[0])
        for i in range(16)
    ]
    jobs = [(f"/api/predict?model={models[i % len(models)]}", images[i % 16]) for i in range(400)]
    for path, body in jobs[: args.warmup]:
        request(port, "POST", path, body)
    rss_before = rss_mb(pid)
    latencies, statuses, elapsed = run_clients(args, port, jobs)
    rss_after = rss_mb(pid)
    report(args, models, latencies, statuses, elapsed, rss_before, rss_after)
    errors_5xx = sum(n for status, n in statuses.items() if status >= 500 and status != 503)
    return 0 if errors_5xx == 0 and rss_after - rss_before < RSS_GROWTH_LIMIT_MB else 1


def run_clients(args, port, jobs) -> tuple[list[float], Counter, float]:
    """Send ``args.requests`` requests from ``args.clients`` threads; latencies in ms."""
    latencies: list[float] = []
    statuses: Counter = Counter()
    lock, counter = threading.Lock(), iter(range(args.requests))
    deadline = time.monotonic() + args.max_seconds

    def client() -> None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        while time.monotonic() < deadline:
            with lock:
                index = next(counter, None)
            if index is None:
                break
            path, body = jobs[index % len(jobs)]
            started = time.perf_counter()
            try:
                status, _ = send(connection, "POST", path, body)
            except (OSError, http.client.HTTPException):
                status = 0
                connection.close()
            with lock:
                latencies.append((time.perf_counter() - started) * 1000)
                statuses[status] += 1
        connection.close()

    threads = [threading.Thread(target=client) for _ in range(args.clients)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return latencies, statuses, time.perf_counter() - started


def report(args, models, latencies, statuses, elapsed, rss_before, rss_after) -> None:
    p50, p95 = np.percentile(latencies, [50, 95])
    errors_5xx = sum(n for status, n in statuses.items() if status >= 500 and status != 503)
    print(f"models: {', '.join(models)}; {args.clients} clients, {len(latencies)} requests")
    print(f"{'requests/s':>14s}: {len(latencies) / elapsed:.2f}")
    print(f"{'latency p50':>14s}: {p50:.1f} ms")
    print(f"{'latency p95':>14s}: {p95:.1f} ms")
    for status, count in sorted(statuses.items()):
        print(f"{'status ' + (str(status) if status else 'no answer'):>14s}: {count}")
    print(f"{'server RSS':>14s}: {rss_before:.1f} MB before, {rss_after:.1f} MB after")
    print_result(
        {
            "rps": f"{len(latencies) / elapsed:.2f}",
            "p50_ms": f"{p50:.1f}",
            "p95_ms": f"{p95:.1f}",
            "errors_5xx": errors_5xx,
            "errors_503": statuses.get(503, 0),
            "rss_growth_mb": f"{rss_after - rss_before:.1f}",
        }
    )


if __name__ == "__main__":
    sys.exit(main())
