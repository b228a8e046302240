"""Copy the reference tables of a report into docs/results.md, between its results markers.

The reference results are the `full` profile's report, not numbers typed by hand: after
`fmnist-batch run --profile full --out outputs/full` (which ends with the report step) run

    .venv/bin/python scripts/update_results.py outputs/full/report/report.md

It takes the RESULTS table, the batch-1 latency speedups, the batch-256 throughput
speedups and the benchmark_app yardstick, with their footnotes, demotes their headings
by one level and replaces what lies between ``<!-- results:start -->`` and
``<!-- results:end -->``.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

START, END = "<!-- results:start -->", "<!-- results:end -->"
RESULTS = Path(__file__).resolve().parent.parent / "docs" / "results.md"


def sections(markdown: str) -> dict[str, str]:
    """Heading line -> the text under it, up to the next heading of any level."""
    parts = re.split(r"^(#{2,3} .*)$", markdown, flags=re.M)
    return {parts[i].strip(): parts[i + 1].strip() for i in range(1, len(parts) - 1, 2)}


def find(found: dict[str, str], prefix: str) -> tuple[str, str]:
    """The first section whose heading starts with ``prefix``."""
    for heading, body in found.items():
        if heading.startswith(prefix):
            return heading, body
    raise SystemExit(f"error: the report has no section starting {prefix!r}")


def batch_block(body: str, batch: int) -> str:
    """The 'Batch size N' table of the throughput section, with its footnotes."""
    blocks = re.split(r"^(?=Batch size \d+$)", body, flags=re.M)
    for block in blocks:
        if block.startswith(f"Batch size {batch}\n"):
            return block.strip()
    raise SystemExit(f"error: the report has no throughput table for batch size {batch}")


def reference_tables(report_md: str) -> str:
    """The reference block of docs/results.md, built from one report.md."""
    found = sections(report_md)
    pieces = []
    for prefix in ("## RESULTS", "### Batch-1 latency"):
        heading, body = find(found, prefix)
        pieces.append(f"#{heading}\n\n{body}")
    heading, body = find(found, "### Throughput per batch size")
    pieces.append(f"#{heading}\n\n{batch_block(body, 256)}")
    heading, body = find(found, "## Yardstick")
    pieces.append(f"#{heading}\n\n{body}")
    return "\n\n".join(pieces)


def replace_between_markers(page: str, block: str) -> str:
    """``page`` with the text between the results markers replaced by ``block``."""
    if START not in page or END not in page:
        raise SystemExit(f"error: {RESULTS} has no {START} ... {END} markers")
    head, rest = page.split(START, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{START}\n{block}\n{END}{tail}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("report", type=Path, help="report.md of the reference run")
    args = parser.parse_args(argv)
    if not args.report.is_file():
        print(f"error: {args.report}: no such report", file=sys.stderr)
        return 1
    block = reference_tables(args.report.read_text())
    RESULTS.write_text(replace_between_markers(RESULTS.read_text(), block))
    print(f"{RESULTS}: reference tables from {args.report}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
