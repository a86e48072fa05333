"""The benchmarks cannot rot: every script `make benchmarks` runs has a tiny setting run here, and
the docs' tables are the ones its results file holds."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import publish  # noqa: E402  (benchmarks/publish.py)


def benchmark_scripts() -> list[str]:
    """The benchmarks of the Makefile's `benchmarks` target, in its order (publish.py, which writes
    their tables into the docs, is not one)."""
    target = re.search(r"^benchmarks:.*?\n((?:\t.*\n)+)", (ROOT / "Makefile").read_text(), re.MULTILINE)
    assert target, "the Makefile has no benchmarks target"
    return [name for name in re.findall(r"benchmarks/(\w+)\.py", target.group(1)) if name != "publish"]


def test_every_results_block_of_the_docs_is_the_results_file():
    results = json.loads((ROOT / "benchmarks" / "results.json").read_text())
    blocks = 0
    for document in publish.DOCUMENTS:
        text = document.read_text()
        blocks += len(publish.BLOCK.findall(text))
        assert publish.published(text, results) == text, f"{document.name}: run python benchmarks/publish.py"
    assert blocks > 0
    scripts = set(benchmark_scripts())
    assert set(results) <= scripts, "every recorded benchmark is run by make benchmarks"


def test_a_block_that_disagrees_is_rewritten_and_an_unknown_one_named():
    entry = {"command": "python benchmarks/x.py", "machine": "m", "commit": "c", "date": "d",
             "tables": {"main": [["a", "b"], ["1", "2"]]}}
    stale = "before\n<!-- results: x -->\n| old |\n<!-- /results -->\nafter"
    written = publish.published(stale, {"x": entry})
    assert written.startswith("before\n<!-- results: x -->\n| a | b |\n|---|---|\n| 1 | 2 |\n")
    assert "*`python benchmarks/x.py` on m; commit c, d" in written
    assert written.endswith("<!-- /results -->\nafter") and publish.published(written, {"x": entry}) == written
    with pytest.raises(KeyError, match="y is not in benchmarks/results.json"):
        publish.published("<!-- results: y -->\n<!-- /results -->", {"x": entry})


@pytest.mark.slow
@pytest.mark.parametrize("script", benchmark_scripts())
def test_every_benchmark_runs_its_tiny_setting(script, tmp_path):
    results = tmp_path / "results.json"
    env = {**os.environ, "ALLCLS_BENCHMARK_RESULTS": str(results), "NO_ALBUMENTATIONS_UPDATE": "1",
           "HF_HUB_OFFLINE": "1"}
    # (run from a folder of its own: nothing a tiny run writes lands in the project)
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / f"{script}.py"), "--tiny"], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    recorded = json.loads(results.read_text())
    assert script in recorded and recorded[script]["setting"] and recorded[script]["tables"]["main"]
    assert recorded[script]["command"].endswith(f"benchmarks/{script}.py --tiny")
