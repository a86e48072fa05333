"""How many training jobs can log to one store at once: a SQLite file (the default, each job its own
client, as a sweep on one machine runs) against `mlflow server` on PostgreSQL (what docs/scaling.md
sets up for jobs on many nodes), and `mlflow server` on that same SQLite file, side by side in one run.

Each writer is a process that opens a run, logs `--calls` batches of 5 metrics as fast as it can (what
a training loop does, without the training), and ends the run. All writers start together (a
barrier, after their imports). Reported per store and number of writers: the calls that failed (a
job that would have crashed), the slowest call (a job that waited), the 99th percentile of call
latency, and the calls per second over all writers.

    python benchmarks/parallel_writers.py [--writers 1 4 8 16 32] [--calls 40]

PostgreSQL comes from Debian's postgresql package (`make postgres`); the server runs here, in a
temporary folder, and is stopped when the benchmark ends.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT / "tests"))  # the tests' throwaway servers (tests/servers.py)

from mlflow.entities import Metric  # noqa: E402
from mlflow.exceptions import MlflowException  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402
from servers import mlflow_server, postgres  # noqa: E402

WAIT = 1.0  # a call slower than this is a job that waited on the store


def writer(uri: str, experiment_id: str, calls: int, start, results) -> None:
    """One job's logging: a run, `calls` batches of metrics, its end; each call timed."""
    client = MlflowClient(uri)
    latencies, failures = [], 0
    start.wait()
    try:
        run_id = client.create_run(experiment_id).info.run_id
        for step in range(calls):
            began = time.perf_counter()
            try:
                client.log_batch(run_id, metrics=[Metric(f"m{k}", float(step), int(time.time() * 1000), step)
                                                  for k in range(5)])
            except (MlflowException, OSError):  # counted: a job would have crashed here (OSError: requests')
                failures += 1
            latencies.append(time.perf_counter() - began)
        client.set_terminated(run_id, "FINISHED")
    except (MlflowException, OSError):  # the run could not even be opened or ended
        failures += 1
    results.put((latencies, failures))


def measure(uri: str, writers: int, calls: int) -> dict[str, float]:
    client = MlflowClient(uri)
    experiment_id = client.create_experiment(f"writers-{writers}-{time.time_ns()}")
    # forkserver: each writer a fresh process (no store or connection inherited, as separate jobs), without
    # paying for the imports each time
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["mlflow.tracking"])
    start, results = context.Barrier(writers + 1), context.Queue()
    processes = [context.Process(target=writer, args=(uri, experiment_id, calls, start, results))
                 for _ in range(writers)]
    for process in processes:
        process.start()
    start.wait()
    began = time.perf_counter()
    gathered = [results.get(timeout=900) for _ in processes]
    elapsed = time.perf_counter() - began
    for process in processes:
        process.join()
    latencies = sorted(latency for own, _ in gathered for latency in own)
    return {"failed": sum(failures for _, failures in gathered), "slowest": latencies[-1],
            "p99": latencies[int(0.99 * (len(latencies) - 1))], "waits": sum(latency > WAIT for latency in latencies),
            "rate": len(latencies) / elapsed, "median": statistics.median(latencies)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--writers", type=int, nargs="+", default=[1, 4, 8, 16, 32])
    parser.add_argument("--calls", type=int, default=40)
    args = parser.parse_args()
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores; {args.calls} calls of 5 metrics "
          f"per writer; a wait is a call over {WAIT:.0f} s", flush=True)
    with tempfile.TemporaryDirectory(prefix="allcls-writers-") as folder:
        root = Path(folder)
        sqlite = f"sqlite:///{root}/mlflow.db"
        MlflowClient(sqlite).search_experiments()  # create its tables before the writers race for them
        with postgres(root) as database, \
                mlflow_server(database, root / "pg-artifacts", root / "server-pg.log", workers=4) as on_postgres, \
                mlflow_server(f"sqlite:///{root}/served.db", root / "sq-artifacts", root / "server-sq.log",
                              workers=4) as on_sqlite:
            stores = {"SQLite file, a client per job": sqlite, "mlflow server (4 workers) on PostgreSQL": on_postgres,
                      "mlflow server (4 workers) on SQLite": on_sqlite}
            print("\n| store | writers | failed calls | calls that waited > 1 s | slowest call, s | p99, ms "
                  "| median, ms | calls/s |\n|---|---|---|---|---|---|---|---|", flush=True)
            for name, uri in stores.items():
                for writers in args.writers:
                    found = measure(uri, writers, args.calls)
                    print(f"| {name} | {writers} | {found['failed']} | {found['waits']} | {found['slowest']:.2f} | "
                          f"{found['p99'] * 1000:.0f} | {found['median'] * 1000:.0f} | {found['rate']:.0f} |",
                          flush=True)


if __name__ == "__main__":
    main()
