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
import suite  # noqa: E402  (benchmarks/suite.py)


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
        blocks += len(publish.BLOCK.findall(text)) + len(publish.PROSE.findall(text))
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


def test_a_sentence_is_filled_in_from_the_results_and_rewrapped():
    entry = {"command": "python benchmarks/x.py", "machine": "m", "date": "d", "setting": {"calls": 40},
             "figures": {"by_writers": {"32": {"waits": 30, "share": 0.3912}}, "probes": [{"n": 87}]}}
    template = ("<!-- figures: x\n{figures[by_writers][32][waits]} of 32 x {setting[calls]} calls waited, "
                "{figures[by_writers][32][share]:.0%} of\nthem, {figures[probes][0][n]} probes (`{command}` on "
                "{machine}, {date}).\n-->\n")
    written = publish.published(template + "stale words\n<!-- /figures -->", {"x": entry})
    assert written == template + ("30 of 32 x 40 calls waited, 39 % of them, 87 probes (`python benchmarks/x.py` "
                                  "on m, d).\n<!-- /figures -->")
    assert publish.published(written, {"x": entry}) == written
    wrapped = publish.reflowed("- " + "word " * 30 + "\n- b\n\n| a |\n|---|", width=40)
    assert wrapped.splitlines()[1].startswith("  word") and "- b\n\n| a |\n|---|" in wrapped
    assert max(len(line) for line in wrapped.splitlines()) <= 40
    with pytest.raises(KeyError, match="x has no figure 'missing'"):
        publish.published("<!-- figures: x\n{figures[missing]}\n-->\n<!-- /figures -->", {"x": entry})


def test_the_suite_time_is_read_from_pytests_summary():
    printed = ("bringing up nodes...\ncreated: 3/3 workers\n...\n"
               "==== 2 failed, 450 passed, 85 warnings in 702.13s (0:11:42) ====")
    assert suite.summary(printed) == {"passed": 450, "failed": 2, "suite_seconds": 702.13, "workers": 3}
    assert suite.summary("1 passed in 0.04s") == {"passed": 1, "failed": 0, "suite_seconds": 0.04, "workers": 1}
    with pytest.raises(ValueError, match="no summary line"):
        suite.summary("Killed")


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
