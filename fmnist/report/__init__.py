"""The comparison report: read runs, merge, draw, write Markdown, HTML and CSV.

``build_report`` is the one entry point. The work is split by kind: ``runs`` reads run
directories; ``lookup``, ``tables`` and ``speed`` merge them into records (pure pandas);
``figures`` draws PNGs; ``document`` lays out the page and ``render`` writes it as
Markdown and self-contained HTML. ``seed_reference`` holds the seed report's own figures.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from fmnist.io import FmnistError, RunLayout, atomic_path, write_text_atomic
from fmnist.jobenv import record_job
from fmnist.report.document import TITLE, build_document
from fmnist.report.figures import FIGURE_KINDS, draw_figures
from fmnist.report.render import Table, gap_footnotes, to_html, to_markdown
from fmnist.report.runs import read_runs
from fmnist.report.tables import ReportTables, build_tables


@dataclass(frozen=True)
class ReportFiles:
    """What ``build_report`` wrote, and how many cells are gaps."""

    markdown: Path
    html: Path
    csv: Path
    figures: list[Path]
    gaps: int
    tables: ReportTables


def default_out(runs: list[Path | str]) -> Path:
    """RUN/report for a single run; several runs need an explicit output directory."""
    if len(runs) != 1:
        raise FmnistError("several runs: say where the report goes with --out DIR")
    return RunLayout(Path(runs[0])).report_dir


def _remove_stale_figures(directory: Path, keep: set[Path]) -> None:
    # An earlier report into the same directory may have drawn runs no longer included.
    # Only the report's own file names are touched: --out may hold other files.
    for path in sorted(directory.glob("*__*.png")):
        if path.name.startswith(FIGURE_KINDS) and path not in keep:
            path.unlink()


def _inside(path: Path, root: Path) -> bool:
    return path.resolve().is_relative_to(root.resolve())


def build_report(
    runs: list[Path | str],
    out: Path | str | None = None,
    progress: Callable[[str], None] = lambda message: None,
) -> ReportFiles:
    """Write report.md, report.html, results.csv and figures/*.png for one or more runs."""
    if not runs:
        raise FmnistError("no run directory given")
    out = Path(out) if out is not None else default_out(runs)
    progress(f"reading {len(runs)} run(s)")
    data = read_runs(list(runs))
    tables = build_tables(data)
    progress(
        f"merged {len(tables.models)} models x {len(tables.variants)} variants "
        f"on {len(tables.contexts)} node type(s)"
    )
    figures = draw_figures(tables, out)
    _remove_stale_figures(out / "figures", {out / f.path for f in figures})
    progress(f"drew {len(figures)} figures")
    blocks = build_document(tables, figures)
    markdown_path, html_path, csv_path = (
        out / "report.md",
        out / "report.html",
        out / "results.csv",
    )
    with atomic_path(csv_path) as tmp:
        tables.records.to_csv(tmp, index=False, lineterminator="\n")
    write_text_atomic(markdown_path, to_markdown(blocks))
    write_text_atomic(html_path, to_html(blocks, out, TITLE))
    gaps = sum(len(gap_footnotes(b)[1]) for b in blocks if isinstance(b, Table))
    progress(f"wrote {html_path}")
    if len(runs) == 1 and _inside(out, Path(runs[0])):
        # A report written elsewhere only read the run, and leaves it as it was.
        record_job(runs[0], "report")
    return ReportFiles(
        markdown=markdown_path,
        html=html_path,
        csv=csv_path,
        figures=[out / f.path for f in figures],
        gaps=gaps,
        tables=tables,
    )
