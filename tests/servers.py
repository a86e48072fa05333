"""Throwaway servers on 127.0.0.1, each stopped by PID: PostgreSQL in a temporary folder, and
`mlflow server` on a backend store. The tests start them, and so does benchmarks/parallel_writers.py
(the setup docs/scaling.md describes, on one machine)."""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from helpers import free_port, served


def postgres_binary(name: str) -> str:
    """A PostgreSQL program: on the PATH, or where Debian's postgresql package puts it."""
    candidates = [shutil.which(name), *sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), reverse=True)]
    found = next((c for c in candidates if c), None)
    if found is None:
        raise RuntimeError(f"PostgreSQL's {name} is not installed: `make postgres` installs Debian's postgresql "
                           "package (as root), or install it yourself.")
    return found


@contextmanager
def postgres(log_dir: Path, durable: bool = True) -> Iterator[str]:
    """A PostgreSQL server holding an empty database `mlflow`; yields its SQLAlchemy URI.
    `durable=False` turns fsync off (a test's data need not survive a power cut)."""
    folder = Path(tempfile.mkdtemp(prefix="allcls-postgres-"))  # not under pytest's 0700 folders
    as_user: dict = {}
    if os.geteuid() == 0:  # PostgreSQL refuses to run as root: as its own user, which owns the folder
        owner = pwd.getpwnam("postgres")
        os.chown(folder, owner.pw_uid, owner.pw_gid)
        as_user = {"user": owner.pw_uid, "group": owner.pw_gid, "extra_groups": []}
    try:
        subprocess.run([postgres_binary("initdb"), "-D", str(folder / "db"), "-U", "postgres", "--auth=trust",
                        "-E", "UTF8", "--no-sync"], check=True, capture_output=True, **as_user)
        port = free_port()
        command = [postgres_binary("postgres"), "-D", str(folder / "db"), "-p", str(port), "-k", str(folder),
                   "-c", "listen_addresses=127.0.0.1", "-c", "max_connections=200",
                   *([] if durable else ["-c", "fsync=off", "-c", "synchronous_commit=off"])]
        with served(command, f"tcp://127.0.0.1:{port}", log_dir / "postgres.log", timeout=60, **as_user):
            subprocess.run([postgres_binary("createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres",
                            "mlflow"], check=True, capture_output=True)
            yield f"postgresql://postgres@127.0.0.1:{port}/mlflow"
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@contextmanager
def mlflow_server(backend: str, artifacts: Path, log: Path, workers: int = 2) -> Iterator[str]:
    """`mlflow server` on `backend` (an SQLAlchemy URI), serving artifacts from `artifacts`
    (proxied: clients never touch that folder); yields its address."""
    port = free_port()
    command = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
               "--backend-store-uri", backend, "--artifacts-destination", str(artifacts), "--workers", str(workers)]
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    env.pop("MLFLOW_TRACKING_URI", None)
    with served(command, f"http://127.0.0.1:{port}/health", log, timeout=120, env=env):
        yield f"http://127.0.0.1:{port}"
