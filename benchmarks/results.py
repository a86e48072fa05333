"""One results file for every benchmark (benchmarks/results.json): each script records its figures
with the command that made them, the machine, the commit and the date. The tables in the docs are
generated from it (`python benchmarks/publish.py`), and a test checks that they agree.

A script's `--tiny` setting (what `make test` runs, to catch a script that breaks the day it
breaks) writes where $ALLCLS_BENCHMARK_RESULTS says, never into the published file.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
PUBLISHED = HERE / "results.json"
VARIABLE = "ALLCLS_BENCHMARK_RESULTS"


def results_file() -> Path:
    return Path(os.environ.get(VARIABLE) or PUBLISHED)


def machine() -> str:
    """The CPU model, its cores, memory, GPU (if torch is already imported and sees one), Python and
    torch (if imported)."""
    cpu = platform.processor() or platform.machine()
    try:
        names = [line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                 if line.startswith("model name")]
        cpu = names[0] if names else cpu
    except OSError:
        pass  # not Linux: platform's word for it
    try:
        memory = f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GB"
    except (ValueError, OSError, AttributeError):
        memory = "memory unknown"
    torch = sys.modules.get("torch")
    gpu = torch.cuda.get_device_name(0) if torch is not None and torch.cuda.is_available() else "no GPU"
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    versions = f"Python {platform.python_version()}" + (f", torch {torch.__version__}" if torch is not None else "")
    return f"{cpu}, {cores} cores, {memory}, {gpu}, {versions}"


def commit() -> str:
    """The commit measured, `+changes` when the code had uncommitted changes (the docs' Markdown and
    this results file, which a run does not read, do not count)."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=HERE.parent, capture_output=True, text=True,
                              check=False).stdout.strip()
    head = git("rev-parse", "--short=12", "HEAD") or "unknown"
    return head + ("+changes" if git("status", "--porcelain", "--untracked-files=no", "--", ".", ":!*.md",
                                    ":!benchmarks/results.json") else "")


def median_spread(values: Sequence[float]) -> dict[str, Any]:
    """A timing's median of its repeats, with the spread (min, max) and how many there were."""
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "repeats": len(values)}


def record(benchmark: str, figures: Mapping[str, Any], setting: Mapping[str, Any],
           tables: Mapping[str, Sequence[Sequence[Any]]], measured: str | None = None) -> Path:
    """Keep `figures` (JSON-able) as `benchmark`'s results, replacing its previous ones, with the
    setting it ran with, the command line, the machine, the commit and the date; `tables`: the
    tables the docs show (a header row, then rows), by name (`main` first), which publish.py writes;
    `measured`: the commit measured, where it is not this checkout's (a clone's)."""
    path = results_file()
    results = json.loads(path.read_text()) if path.is_file() else {}
    results[benchmark] = {
        "command": "python " + shlex.join([f"benchmarks/{Path(sys.argv[0]).name}", *sys.argv[1:]]),
        "setting": dict(setting),
        "machine": machine(),
        "commit": measured or commit(),
        "date": datetime.date.today().isoformat(),
        "figures": figures,
        "tables": {name: [list(map(str, row)) for row in table] for name, table in tables.items()},
    }
    path.write_text(json.dumps(dict(sorted(results.items())), indent=1) + "\n")
    print(f"Recorded {benchmark} in {path}", flush=True)
    return path
