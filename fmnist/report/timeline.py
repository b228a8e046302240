"""How a run went: a timeline of its job attempts, the trace table and the run's totals.

Read from ``RUN/trace.parquet`` (:mod:`fmnist.trace`), written alike by ``run`` and by
the jobs of ``submit``. The figure has one bar per job attempt on a time axis, its queue
wait and its run time told apart and coloured by how it ended, in lanes grouped by host;
the table lists the retried attempts first, then the slowest.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from fmnist.plots import _pyplot, _save
from fmnist.report.figures import Figure, slug
from fmnist.report.render import Block, Cell, Heading, Image, Paragraph, Table
from fmnist.report.runs import RunData

# How each cause is drawn: the run bar's colour.
CAUSE_COLORS = {
    "done": "#4C72B0",
    "walltime": "#DD8452",
    "memory": "#C44E52",
    "node-or-signal": "#8172B3",
    "code-error": "#937860",
    "cancelled": "#8C8C8C",
}
QUEUE_COLOR = "#DDDDDD"
TABLE_ROWS = 25


def trace_totals(trace: pd.DataFrame) -> dict[str, float | int]:
    """The run's wall time (first submission or start to last end), CPU hours, queue
    hours, attempts, and attempts that were not the task's last (pure)."""
    if trace.empty:
        return {}
    first = trace["submitted"].fillna(trace["started"]).min()
    wall = (trace["ended"].max() - first).total_seconds()
    last = trace.groupby("task_id")["attempt"].transform("max")
    return {
        "wall_s": wall,
        "cpu_hours": float(trace["cpu_s"].sum()) / 3600,
        "queue_hours": float(trace["queue_wait_s"].fillna(0).sum()) / 3600,
        "attempts": len(trace),
        "tasks": trace["task_id"].nunique(),
        "retried": int((trace["attempt"] < last).sum()),
    }


def trace_order(trace: pd.DataFrame) -> pd.DataFrame:
    """The attempts of tasks that took more than one, then the slowest (pure)."""
    retried = trace.groupby("task_id")["attempt"].transform("max") > 1
    ordered = trace.assign(_retried=retried)
    ordered = ordered.sort_values(["_retried", "run_s"], ascending=[False, False], kind="stable")
    return ordered.drop(columns="_retried")


def lanes(trace: pd.DataFrame) -> pd.DataFrame:
    """One lane per attempt, grouped by host and in start order within it (pure)."""
    return trace.sort_values(["host", "started"], kind="stable").reset_index(drop=True)


def draw_timeline(run: RunData, out: Path) -> Figure | None:
    """The timeline of ``run``'s job attempts, or None without a trace."""
    if run.trace.empty:
        return None
    plt = _pyplot()
    rows = lanes(run.trace)
    origin = rows["submitted"].fillna(rows["started"]).min()

    def seconds(column: pd.Series) -> pd.Series:
        return (column - origin).dt.total_seconds()

    start, end = seconds(rows["started"]), seconds(rows["ended"])
    queued = seconds(rows["submitted"].fillna(rows["started"]))
    height = 1.8 + 0.32 * len(rows)
    fig, ax = plt.subplots(figsize=(10, height))
    for i, row in rows.iterrows():
        ax.barh(i, start[i] - queued[i], left=queued[i], color=QUEUE_COLOR, height=0.7)
        color = CAUSE_COLORS.get(row["cause"], "#333333")
        ax.barh(i, end[i] - start[i], left=start[i], color=color, height=0.7)
    ax.set_yticks(range(len(rows)))
    ax.set_yticklabels([f"{r.task_id} #{r.attempt}" for r in rows.itertuples()], fontsize=7)
    ax.set_ylim(len(rows) - 0.5, -0.5)  # first lane on top, no margin rows above or below
    # A rule and a label between hosts: the lanes are grouped by where they ran.
    for host, group in rows.groupby("host", sort=False):
        ax.axhline(group.index.min() - 0.5, color="#999999", linewidth=0.5)
        ax.text(1.0, group.index.min(), f" {host}", transform=ax.get_yaxis_transform(),
                fontsize=7, va="top")  # fmt: skip
    handles = [plt.Rectangle((0, 0), 1, 1, color=QUEUE_COLOR)]
    labels = ["queue wait"]
    for cause in dict.fromkeys(rows["cause"]):
        handles.append(plt.Rectangle((0, 0), 1, 1, color=CAUSE_COLORS.get(cause, "#333333")))
        labels.append(f"run: {cause}")
    # The legend in a strip of fixed height at the figure's foot, whatever the lane count.
    fig.legend(handles, labels, fontsize=7, loc="lower center", ncol=6, frameon=False)
    ax.set_xlabel("seconds since the first submission")
    ax.set_title(f"Job attempts of {run.label}")
    fig.tight_layout(rect=(0, 0.35 / height, 1, 1))
    path = Path("figures") / f"timeline__{slug(run.label)}.png"
    _save(fig, plt, out / path)
    caption = f"Timeline of {run.label}: queue wait (grey) and run time of each job attempt"
    return Figure("timeline", path, caption, run=run.label)


def _clock(seconds: float) -> str:
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}"


def _number(value, digits: int = 1) -> str:
    return "" if value is None or pd.isna(value) else f"{value:,.{digits}f}"


def timeline_blocks(runs: list[RunData], figures: list[Figure]) -> list[Block]:
    """The "How the runs went" section: per run its totals, timeline and trace table."""
    traced = [run for run in runs if not run.trace.empty]
    if not traced:
        return []
    blocks: list[Block] = [Heading(2, "How the runs went")]
    for run in traced:
        totals = trace_totals(run.trace)
        blocks.append(Heading(3, run.label))
        blocks.append(
            Paragraph(
                f"{totals['tasks']} tasks in {totals['attempts']} job attempts "
                f"({totals['retried']} followed by another attempt); wall time "
                f"{_clock(totals['wall_s'])}, {totals['cpu_hours']:.3f} CPU hours, "
                f"{totals['queue_hours']:.3f} hours waiting in queues. "
                "From RUN/trace.parquet (columns: docs/scheduler.md)."
            )
        )
        blocks += [
            Image(f.path, f.caption) for f in figures if f.kind == "timeline" and f.run == run.label
        ]
        header = ["task", "attempt", "job", "host", "queue wait", "run", "CPU", "peak RSS",
                  "exit", "cause"]  # fmt: skip
        rows = []
        for r in trace_order(run.trace).head(TABLE_ROWS).itertuples():
            exit_text = r.signal or ("" if pd.isna(r.exit_status) else str(int(r.exit_status)))
            rows.append(
                [
                    Cell(r.task_id, header=True),
                    Cell(str(r.attempt)),
                    Cell(str(r.job_id)),
                    Cell(str(r.host)),
                    Cell(_number(r.queue_wait_s) + " s" if not pd.isna(r.queue_wait_s) else ""),
                    Cell(_number(r.run_s) + " s"),
                    Cell(_number(r.cpu_s) + " s"),
                    Cell(_number(r.peak_rss_mb, 0) + " MB"),
                    Cell(exit_text),
                    Cell(r.cause),
                ]
            )
        shown = min(len(run.trace), TABLE_ROWS)
        caption = f"Job attempts of {run.label}: retried tasks first, then the slowest"
        notes = [] if shown == len(run.trace) else [f"{shown} of {len(run.trace)} attempts shown"]
        blocks.append(Table(header, rows, caption, notes))
    return blocks
