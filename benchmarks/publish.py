"""Write the benchmarks' tables into the docs from benchmarks/results.json.

In a Markdown file, a table between `<!-- results: <benchmark> -->` and `<!-- /results -->` is
generated: the benchmark's table as its script recorded it, then how it was made (command, machine,
commit, date). `make benchmarks` runs this after the scripts; tests/test_benchmarks.py checks that
every such block agrees with the results file.

    python benchmarks/publish.py [--check]
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCK = re.compile(r"(<!-- results: (?P<name>[\w.-]+) -->\n)(?P<body>.*?)(<!-- /results -->)", re.DOTALL)


def render(entry: dict[str, Any], table: str) -> str:
    """One recorded table of a benchmark as Markdown, with the line that says how it was made."""
    header, *rows = entry["tables"][table]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    made = (f"*`{entry['command']}` on {entry['machine']}; commit {entry['commit']}, {entry['date']} "
            "(benchmarks/results.json).*")
    return "\n".join(lines) + "\n\n" + made + "\n"


def published(text: str, results: dict[str, Any]) -> str:
    """`text` with every results block written from `results` (a block names `<benchmark>` or
    `<benchmark>.<table>`; an unknown one raises KeyError naming it)."""
    def block(match: re.Match) -> str:
        benchmark, _, table = match["name"].partition(".")
        if benchmark not in results or (table or "main") not in results[benchmark]["tables"]:
            raise KeyError(f"{match['name']} is not in benchmarks/results.json: run its script")
        return match.group(1) + render(results[benchmark], table or "main") + match.group(4)
    return BLOCK.sub(block, text)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only say which files disagree with the results")
    args = parser.parse_args()
    results = json.loads((HERE / "results.json").read_text())
    stale = []
    for document in DOCUMENTS:
        text = document.read_text()
        updated = published(text, results)
        if updated != text:
            stale.append(document.relative_to(ROOT))
            if not args.check:
                document.write_text(updated)
    verb = "disagree with" if args.check else "rewritten from"
    print(f"{', '.join(map(str, stale))} {verb} benchmarks/results.json" if stale
          else "The docs agree with the results.")
    return 1 if stale and args.check else 0


if __name__ == "__main__":
    sys.exit(main())
