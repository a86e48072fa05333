"""A packaged model behind `mlflow models serve`, timed as a client sees it: for benchmarks/serving.py.

One client posts the same request again and again (base64 BMPs in the `image` column, as the docs
show): one image per request, then 32. Each request's latency from sending to the parsed JSON
answer; the server records every answer (the audit trail), as a real one does.
"""

from __future__ import annotations

import base64
import json
import os
import statistics
import sys
import time
import urllib.request
from pathlib import Path

from page_server import free_port, serving


def served_speed(store: str, model: str, runtime: str, images: list[Path], requests: int, work: Path) -> dict:
    """For 1 image and for a batch of 32 (or all `images`, if fewer) per request: median (p50) and
    95th-percentile latency in ms, requests and images a second, over `requests` requests after three
    to warm up."""
    port = free_port()
    env = {**os.environ, "MLFLOW_TRACKING_URI": store, "ALLCLS_RUNTIME": runtime, "TQDM_DISABLE": "1",
           "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}  # mlflow starts uvicorn by name
    command = [sys.executable, "-m", "mlflow", "models", "serve", "-m", model, "--env-manager", "local",
               "-h", "127.0.0.1", "-p", str(port)]
    encoded = [base64.b64encode(path.read_bytes()).decode() for path in images[:32]]
    with serving(command, port, work, env, health="/ping"):
        return {label: timed(port, batch, requests) for label, batch in (("1 image", encoded[:1]),
                                                                         (f"{len(encoded)} images", encoded))}


def timed(port: int, batch: list[str], requests: int) -> dict[str, float]:
    """One request of `batch` (base64 images) posted `requests` times, after three to warm up."""
    body = json.dumps({"dataframe_split": {"columns": ["image"], "data": [[e] for e in batch]}}).encode()

    def post() -> float:
        start = time.perf_counter()
        request = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", body,
                                         {"Content-Type": "application/json"})
        answer = json.loads(urllib.request.urlopen(request, timeout=300).read())
        assert len(answer["predictions"]) == len(batch)
        return time.perf_counter() - start

    for _ in range(3):
        post()
    times = [post() for _ in range(requests)]
    tail = statistics.quantiles(times, n=20)[-1] if len(times) > 1 else times[0]
    return {"p50_ms": 1000 * statistics.median(times), "p95_ms": 1000 * tail,
            "requests_per_s": len(times) / sum(times), "images_per_s": len(batch) * len(times) / sum(times)}
