"""Write the benchmarks' tables into the docs from benchmarks/results.json.

In a Markdown file, a table between `<!-- results: <benchmark> -->` and `<!-- /results -->` is
generated: the benchmark's table as its script recorded it, then how it was made (command, machine,
commit, date). A figure in a sentence is generated the same way: between `<!-- figures: <benchmark>`
+ a template + `-->` and `<!-- /figures -->` is the template filled in from the benchmark's entry
(`{figures[seconds][one image][median]:.2f}`, `{machine}`, `{date}`; a format ending in `%`, as in
`{figures[rate]:.0%}`, writes "39 %"). `make benchmarks` runs this after the scripts;
tests/test_benchmarks.py checks that every such block agrees with the results file.

    python benchmarks/publish.py [--check]
"""

from __future__ import annotations

import _string  # str.format's own field-name parser (what string.Formatter uses)
import argparse
import json
import re
import string
import sys
import textwrap
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCK = re.compile(r"(<!-- results: (?P<name>[\w.-]+) -->\n)(?P<body>.*?)(<!-- /results -->)", re.DOTALL)
PROSE = re.compile(r"(<!-- figures: (?P<name>[\w-]+)\n(?P<template>.*?)\n-->\n)(?P<body>.*?)(<!-- /figures -->)",
                   re.DOTALL)


class _Figures(string.Formatter):
    """str.format, where a format ending in `%` writes a share as the docs do (0.39 -> "39 %"), and
    `[32]` finds a JSON object's key "32" as well as a list's item 32."""

    def get_field(self, field_name: str, args: Any, kwargs: Any) -> tuple[Any, str]:
        first, rest = _string.formatter_field_name_split(field_name)
        value = self.get_value(first, args, kwargs)
        for is_attribute, key in rest:
            if is_attribute:
                raise KeyError(f".{key}: a template indexes with [...] only")
            value = value[str(key)] if isinstance(value, dict) and isinstance(key, int) else value[key]
        return value, first

    def format_field(self, value: Any, format_spec: str) -> str:
        if format_spec.endswith("%"):
            return format(value * 100, format_spec[:-1] + "f") + " %"
        return super().format_field(value, format_spec)


def render(entry: dict[str, Any], table: str) -> str:
    """One recorded table of a benchmark as Markdown, with the line that says how it was made."""
    header, *rows = entry["tables"][table]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    made = (f"*`{entry['command']}` on {entry['machine']}; commit {entry['commit']}, {entry['date']} "
            "(benchmarks/results.json).*")
    return "\n".join(lines) + "\n\n" + made + "\n"


def reflowed(text: str, width: int = 100) -> str:
    """Filled-in prose re-wrapped (figures change the lines' lengths): each paragraph, each item of
    a list of `- ` items; a table as it is."""
    def fill(words: str, first: str = "", rest: str = "") -> str:
        return textwrap.fill(" ".join(words.split()), width, initial_indent=first, subsequent_indent=rest,
                             break_long_words=False, break_on_hyphens=False)

    def paragraph(text: str) -> str:
        if text.lstrip().startswith("|"):
            return text
        if text.startswith("- "):
            return "\n".join(fill(item[2:], "- ", "  ") for item in re.split(r"\n(?=- )", text))
        return fill(text)
    return "\n\n".join(paragraph(text) for text in text.split("\n\n"))


def published(text: str, results: dict[str, Any]) -> str:
    """`text` with every results block written from `results` (a block names `<benchmark>` or
    `<benchmark>.<table>`; an unknown one raises KeyError naming it)."""
    def block(match: re.Match) -> str:
        benchmark, _, table = match["name"].partition(".")
        if benchmark not in results or (table or "main") not in results[benchmark]["tables"]:
            raise KeyError(f"{match['name']} is not in benchmarks/results.json: run its script")
        return match.group(1) + render(results[benchmark], table or "main") + match.group(4)

    def prose(match: re.Match) -> str:
        if match["name"] not in results:
            raise KeyError(f"{match['name']} is not in benchmarks/results.json: run its script")
        try:
            filled = _Figures().format(match["template"], **results[match["name"]])
        except (KeyError, IndexError) as error:  # a field the entry does not have
            raise KeyError(f"{match['name']} has no figure {error} in benchmarks/results.json") from error
        return match.group(1) + reflowed(filled) + "\n" + match.group(5)
    return PROSE.sub(prose, BLOCK.sub(block, text))


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
