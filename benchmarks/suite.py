"""The test suite's time from a clean clone: `make test` as CI runs it (install, lint, type check,
docs, the whole suite), in a fresh clone of the committed HEAD, so nothing built here helps it.

    python benchmarks/suite.py            # ~15 min on 2 cores: commit first, it runs what is committed
    python benchmarks/suite.py --tiny     # one quick test through pytest in a clone (make test runs this)

Records the whole command's time and the suite's own (pytest's summary: tests, seconds, workers) in
benchmarks/results.json. The clone is deleted afterwards.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from results import commit, record  # noqa: E402  (this folder's results file)

# A test that needs nothing installed but pytest: --tiny runs it to check the clone, the timing and
# the parsing of pytest's summary.
TINY_TEST = "tests/test_benchmarks.py::test_a_block_that_disagrees_is_rewritten_and_an_unknown_one_named"
SUMMARY = re.compile(r"^=* ?(?P<counts>\d+ \w+.*?) in (?P<seconds>[\d.]+)s\b.*$", re.MULTILINE)


def summary(output: str) -> dict[str, float]:
    """pytest's last line, `== 452 passed, 85 warnings in 702.13s (0:11:42) ==` (with -q, without the
    `=`), as numbers, with the
    workers pytest-xdist started (`created: 3/3 workers`; 1 without xdist)."""
    found = list(SUMMARY.finditer(output))
    if not found:
        raise ValueError("pytest printed no summary line: see the output above")
    counts = {name: int(n) for n, name in re.findall(r"(\d+) (\w+)", found[-1]["counts"])}
    workers = re.search(r"created: (\d+)/\d+ workers", output)
    return {"passed": counts.get("passed", 0), "failed": counts.get("failed", 0) + counts.get("errors", 0)
            + counts.get("error", 0), "suite_seconds": float(found[-1]["seconds"]),
            "workers": int(workers[1]) if workers else 1}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="one quick test through pytest in a clone")
    args = parser.parse_args()
    measured = commit()
    if measured.endswith("+changes") and not args.tiny:
        print("The code has uncommitted changes: commit them first (the suite runs in a clone of HEAD).",
              file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="allcls-suite-") as folder:
        clone = Path(folder) / "allcls"
        subprocess.run(["git", "clone", "--quiet", str(HERE.parent), str(clone)], check=True)
        command = ([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", TINY_TEST] if args.tiny
                   else ["make", "test"])
        # (the clone's own .venv for make test: not this one's)
        env = {key: value for key, value in os.environ.items() if key not in ("VIRTUAL_ENV", "PYTHONPATH")}
        head = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=clone, capture_output=True, text=True,
                              check=True).stdout.strip()  # what is measured: the clone's commit
        start = time.time()
        done = subprocess.run(command, cwd=clone, env=env, capture_output=True, text=True, check=False)
        seconds = time.time() - start
    sys.stdout.write(done.stdout[-5000:])
    figures = {**summary(done.stdout), "total_seconds": seconds, "returncode": done.returncode}
    if done.returncode != 0 or figures["failed"]:
        print(f"`{' '.join(command)}` failed in the clone (exit {done.returncode}): nothing recorded.\n"
              + done.stderr[-3000:], file=sys.stderr)
        return 1
    minutes = [f"{int(s // 60)} min {s % 60:.0f} s" for s in (figures["total_seconds"], figures["suite_seconds"])]
    figures.update(total=minutes[0], suite=minutes[1])  # as the README's sentence says them
    record("suite", figures, {"command": " ".join(command), "cores": os.cpu_count()},
           {"main": [["what", "tests", "workers", "time"],
                     [f"`{' '.join(command)}` in a clean clone" + ("" if args.tiny else " (install included)"),
                      "", "", minutes[0]],
                     ["the suite itself (pytest)", figures["passed"], figures["workers"], minutes[1]]]},
           measured=head)
    return 0


if __name__ == "__main__":
    sys.exit(main())
