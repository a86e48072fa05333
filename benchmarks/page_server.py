"""Servers for the benchmarks: a free port, and a server (the page's `allcls-app`, any Streamlit
script, `mlflow models serve`) served until the block ends, stopped by its process group whatever
happens."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextlib.contextmanager
def serving(command: list[str], port: int, work: Path, env: dict, health: str = "/_stcore/health"):
    """A server, waited for until `health` answers (default: Streamlit's), and stopped by its process
    group whatever happens."""
    server = subprocess.Popen(command, cwd=work, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
                              start_new_session=True)
    try:
        for _ in range(240):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}{health}", timeout=2)
                break
            except OSError:
                if server.poll() is not None:
                    raise SystemExit(f"{' '.join(command[:4])} stopped before it answered") from None
                time.sleep(0.5)
        yield
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
