"""How many training jobs can log to one store at once: a SQLite file (the default, each job its own
client, as a sweep on one machine runs) against `mlflow server` on PostgreSQL (what docs/scaling.md
sets up for jobs on many nodes), and `mlflow server` on that same SQLite file, side by side in one run.

Each writer is a process that opens a run, logs `--calls` batches of 5 metrics as fast as it can (what
a training loop does, without the training), and ends the run. All writers start together (a
barrier, after their imports). Reported per store and number of writers: the calls that failed (a
job that would have crashed), the calls that waited over a second, the slowest call (a job that
waited), the 99th percentile and the median of call latency, and the calls per second over all
writers. The stores take turns, --repeats rounds of every store and number of writers; each figure
is the median of the rounds with the spread, and the slowest call on the SQLite file against the
slowest on the server on PostgreSQL is taken round by round.

    python benchmarks/parallel_writers.py [--writers 1 4 8 16 32] [--calls 40] [--repeats 3] [--server-workers 4]
    python benchmarks/parallel_writers.py --tiny     # seconds: what `make test` runs

PostgreSQL comes from Debian's postgresql package (`make postgres`); the server runs here, in a
temporary folder, and is stopped (by PID) when the benchmark ends, as are the two servers.
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT / "tests"))  # the tests' throwaway servers (tests/servers.py)
sys.path.insert(0, str(PROJECT / "benchmarks"))  # this folder's results file

from mlflow.entities import Metric  # noqa: E402
from mlflow.exceptions import MlflowException  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402
from results import median_spread, record  # noqa: E402
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


@contextlib.contextmanager
def together(*servers):
    """The servers' context managers entered at once (each start waits for its server: their
    imports overlap), and left whatever happens; yields what each yields."""
    with contextlib.ExitStack() as stack:
        with ThreadPoolExecutor(len(servers)) as pool:  # its threads end before the writers start
            entering = [pool.submit(server.__enter__) for server in servers]
        failures = []
        for server, future in zip(servers, entering, strict=True):
            if future.exception() is None:
                stack.push(server.__exit__)  # started: stopped by the stack whatever happens
            else:
                failures.append(future.exception())
        if failures:
            raise failures[0]
        yield [future.result() for future in entering]


MEASURED = ("failed", "waits", "slowest", "p99", "median", "rate")


def spread(values: dict, scale: float = 1, digits: int = 0) -> str:
    median, low, high = (values[key] * scale for key in ("median", "min", "max"))
    return f"{median:,.{digits}f} ({low:,.{digits}f}-{high:,.{digits}f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--writers", type=int, nargs="+", default=[1, 4, 8, 16, 32])
    parser.add_argument("--calls", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=3, help="rounds of every store and number of writers")
    parser.add_argument("--server-workers", type=int, default=4, help="each mlflow server's workers")
    parser.add_argument("--tiny", action="store_true", help="1 and 2 writers, 3 calls, one round, servers of 1 worker")
    args = parser.parse_args()
    if args.tiny:
        args.writers, args.calls, args.repeats, args.server_workers = [1, 2], 3, 1, 1
    print(f"{args.calls} calls of 5 metrics per writer; a wait is a call over {WAIT:.0f} s", flush=True)
    sqlite_file = "SQLite file, a client per job"
    on_postgres_name = f"mlflow server ({args.server_workers} workers) on PostgreSQL"
    on_sqlite_name = f"mlflow server ({args.server_workers} workers) on SQLite"
    rounds: dict[str, dict[int, list[dict]]] = {}
    with tempfile.TemporaryDirectory(prefix="allcls-writers-") as folder:
        root = Path(folder)
        sqlite = f"sqlite:///{root}/mlflow.db"
        MlflowClient(sqlite).search_experiments()  # create its tables before the writers race for them
        with postgres(root) as database, together(
                mlflow_server(database, root / "pg-artifacts", root / "server-pg.log", workers=args.server_workers),
                mlflow_server(f"sqlite:///{root}/served.db", root / "sq-artifacts", root / "server-sq.log",
                              workers=args.server_workers)) as (on_postgres, on_sqlite):
            stores = {sqlite_file: sqlite, on_postgres_name: on_postgres, on_sqlite_name: on_sqlite}
            rounds = {name: {writers: [] for writers in args.writers} for name in stores}
            for repeat in range(args.repeats):
                for name, uri in stores.items():
                    for writers in args.writers:
                        found = measure(uri, writers, args.calls)
                        rounds[name][writers].append(found)
                        print(f"round {repeat + 1}, {name}, {writers} writers: {found}", flush=True)
    figures = {name: {str(writers): {key: median_spread([found[key] for found in runs]) for key in MEASURED}
                      for writers, runs in by_writers.items()} for name, by_writers in rounds.items()}
    slowest_ratio = {str(writers): median_spread([file["slowest"] / server["slowest"] for file, server in zip(
        rounds[sqlite_file][writers], rounds[on_postgres_name][writers], strict=True)]) for writers in args.writers}
    header = ["store", "writers", "failed calls", "calls that waited > 1 s", "slowest call, s", "p99, ms",
              "median, ms", "calls/s"]
    rows = [[name, str(writers), spread(f["failed"]), spread(f["waits"]), spread(f["slowest"], digits=2),
             spread(f["p99"], 1000), spread(f["median"], 1000), spread(f["rate"])]
            for name, by_writers in figures.items() for writers, f in ((int(w), f) for w, f in by_writers.items())]
    setting = {"writers": args.writers, "calls": args.calls, "metrics_per_call": 5, "repeats": args.repeats,
               "server_workers": args.server_workers, "wait_seconds": WAIT}
    record("parallel_writers", {"stores": figures, "slowest_sqlite_file_over_postgres_server": slowest_ratio,
                                "rounds": rounds}, setting, {"main": [header, *rows]})
    print("\n".join(" | ".join(row) for row in [header, *rows]))


if __name__ == "__main__":
    main()
