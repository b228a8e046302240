"""Lay out the merged tables and figures as a report document (see ``render``).

Pure: takes ``ReportTables`` and the list of drawn figures, returns blocks. All number
formatting lives here (``format_value``), so the tests can format a Parquet value the
same way and find it on the page.
"""

from __future__ import annotations

from collections.abc import Callable

import pandas as pd

from fmnist.engines.int8_check import Int8Bounds
from fmnist.report.figures import Figure
from fmnist.report.render import Block, Cell, Heading, Image, Paragraph, Table
from fmnist.report.seed_reference import SEED_RESULTS, SOURCE
from fmnist.report.tables import BASELINE, ONEDNN_ON, SEED_COLUMN, ReportTables
from fmnist.report.timeline import timeline_blocks

TITLE = "fmnist-batch comparison report"


def format_value(value: float | None, unit: str) -> str:
    """How a number of a given unit is printed everywhere in the report."""
    if value is None or pd.isna(value):
        return ""
    if unit == "fraction":
        return f"{value * 100:.2f} %"
    if unit in ("loss", "ratio"):
        return f"{value:.4f}"
    if unit == "loss_delta":
        return f"{value:+.4f}"
    if unit == "pp":
        return f"{value:+.2f} pp"
    if unit == "percent_delta":
        return f"{value:+.1f} %"
    if unit == "ms":
        return f"{value:.1f} ms" if value >= 100 else f"{value:.3g} ms"
    if unit == "s":
        return f"{value:,.0f} s" if value >= 100 else f"{value:.1f} s"
    if unit in ("count", "rate"):
        return f"{value:,.0f}"
    if unit == "x":
        return f"{value:,.1f}×" if value >= 100 else f"{value:.2f}×"
    return f"{value:g}"


def record_cell(row: pd.Series | None, missing: str = "no data") -> Cell:
    """The cell showing one record: its formatted value (and text), or its gap."""
    if row is None:
        return Cell(gap=missing)
    seed = row["context"] == SEED_COLUMN
    if row["gap"] is not None and not pd.isna(row["gap"]):
        return Cell(gap=str(row["gap"]))
    text = None if row["text"] is None or pd.isna(row["text"]) else str(row["text"])
    if row["unit"] == "text":
        return Cell(text or "", seed=seed)
    number = format_value(row["value"], row["unit"])
    if not number:
        return Cell("—" if seed else (text or ""), seed=seed)
    return Cell(f"{number} ({text})" if text else number, seed=seed)


def _index(frame: pd.DataFrame, keys: list[str]) -> dict[tuple, pd.Series]:
    out = {}
    for _, row in frame.iterrows():
        out[tuple(None if pd.isna(row[k]) else row[k] for k in keys)] = row
    return out


# --------------------------------------------------------------------------- sections


def results_blocks(tables: ReportTables) -> list[Block]:
    """The seed's RESULTS table, regenerated: rows as in the seed, one column per model."""
    frame = tables.section("results")
    columns = []  # (model, context)
    for model in tables.models:
        columns += [(model, ctx.label) for ctx in tables.contexts]
        if model in SEED_RESULTS:
            columns.append((model, SEED_COLUMN))
    header = ["RESULTS"] + [f"{m} · {c}" for m, c in columns]
    cells = _index(frame, ["key", "variant", "model", "context"])
    row_keys = list(dict.fromkeys(zip(frame["key"], frame["variant"], frame["label"], strict=True)))
    rows = []
    for key, variant, label in row_keys:
        variant = None if pd.isna(variant) else variant
        row = [Cell(label, header=True)]
        for model, context in columns:
            row.append(record_cell(cells.get((key, variant, model, context))))
        rows.append(row)
    seed_notes = [
        f"{s.model}: {s.seed_name}" + (f"; {s.note}" if s.note else "")
        for s in SEED_RESULTS.values()
        if s.model in tables.models
    ]
    notes = [
        f"Columns '· seed' are copied from {SOURCE}; they were not measured by this code. "
        "The seed's un-optimized figures sit beside keras-predict, its optimized (oneDNN) "
        "figures beside keras-onednn-on; '—' means the seed did not measure it.",
        "Seed models: " + "; ".join(seed_notes) + ".",
        "'Mean of model.predict' is the seed's latency measure (Keras model.predict on one "
        "image, averaged); 'batch-1 p50' is the median of single-image calls after warm-up "
        "(for keras-predict also through model.predict).",
    ]
    return [
        Heading(2, "RESULTS: the seed's table regenerated"),
        Table(header, rows, notes=notes, css_class="results"),
    ]


def _per_context_table(
    tables: ReportTables, section: str, specs: list[tuple[str, str]], batch_size=None
) -> Table:
    """Rows model x variant, columns context x spec (record key, column title)."""
    frame = tables.section(section)
    if batch_size is not None:
        frame = frame[frame["batch_size"] == batch_size]
    cells = _index(frame, ["context", "model", "variant", "key"])
    if batch_size is not None:
        # A model never measured in this mode has one record without a batch size.
        whole = tables.section(section)
        for key, row in _index(
            whole[whole["batch_size"].isna()], ["context", "model", "variant", "key"]
        ).items():
            cells.setdefault(key, row)
    labels = [ctx.label for ctx in tables.contexts]
    return _model_variant_table(tables, labels, specs, lambda *where: record_cell(cells.get(where)))


def _model_variant_table(
    tables: ReportTables,
    labels: list[str],
    specs: list[tuple[str, str]],
    cell: Callable[[str, str, str, str], Cell],
) -> Table:
    """Rows model x variant; for each label (a context or a run) a column per spec (record
    key, title), titled "title · label" when there are several labels.

    ``cell(label, model, variant, key)`` gives the cell of one record.
    """
    header = ["model", "variant"] + [
        f"{title} · {label}" if len(labels) > 1 else title for label in labels for _, title in specs
    ]
    rows = []
    for model in tables.models:
        for variant in tables.variants:
            row = [Cell(model, header=True), Cell(variant, header=True)]
            row += [cell(label, model, variant, key) for label in labels for key, _ in specs]
            rows.append(row)
    return Table(header, rows)


def speedup_blocks(tables: ReportTables) -> list[Block]:
    """Batch-1 latency and throughput of every variant, and speedups, per node type."""
    blocks: list[Block] = [
        Heading(2, "Speedups per node type"),
        Paragraph(
            "Every variant against keras-predict (the seed's baseline) and against "
            "keras-onednn-on (TensorFlow at its best), measured side by side in one "
            "benchmark job per node type. Latency speedup = reference time / variant time; "
            "throughput speedup = variant images/s / reference images/s."
        ),
        Heading(3, "Batch-1 latency"),
    ]
    latency = _per_context_table(
        tables,
        "latency",
        [
            ("p50_ms", "p50"),
            ("p99_ms", "p99"),
            (f"speedup_p50_vs_{BASELINE}", "p50 × vs keras-predict"),
            (f"speedup_p99_vs_{BASELINE}", "p99 × vs keras-predict"),
            (f"speedup_p50_vs_{ONEDNN_ON}", "p50 × vs oneDNN on"),
            (f"speedup_p99_vs_{ONEDNN_ON}", "p99 × vs oneDNN on"),
            ("executed_precision", "precision"),
        ],
    )
    blocks.append(latency)
    blocks.append(Heading(3, "Throughput per batch size"))
    throughput = tables.section("throughput")
    sizes = sorted(int(b) for b in throughput["batch_size"].dropna().unique())
    if not sizes:
        reasons = sorted({str(g) for g in throughput["gap"].dropna()})
        blocks.append(Paragraph("gap: no throughput measurement (" + "; ".join(reasons) + ")"))
    for batch in sizes:
        table = _per_context_table(
            tables,
            "throughput",
            [
                ("images_per_second", "images/s"),
                (f"speedup_vs_{BASELINE}", "× vs keras-predict"),
                (f"speedup_vs_{ONEDNN_ON}", "× vs oneDNN on"),
            ],
            batch_size=batch,
        )
        table.caption = f"Batch size {batch}"
        blocks.append(table)
    return blocks


# Columns only the reduced precisions (bf16, int8) have: their comparison with f32.
F32_COMPARISONS = (
    "delta_accuracy_vs_openvino-f32",
    "loss_change_vs_openvino-f32",
    "mean_abs_dp_vs_openvino-f32",
    "int8_check",
)


def accuracy_blocks(tables: ReportTables) -> list[Block]:
    """Accuracy, loss and probabilities of every variant against keras-predict and f32."""
    frame = tables.section("accuracy")
    cells = _index(frame, ["run", "model", "variant", "key"])
    specs = [
        ("accuracy", "accuracy"),
        (f"delta_accuracy_vs_{BASELINE}", "Δ vs keras-predict"),
        ("delta_accuracy_vs_openvino-f32", "Δ vs openvino-f32"),
        ("loss", "loss"),
        ("loss_change_vs_openvino-f32", "loss vs openvino-f32"),
        ("mean_abs_dp_vs_openvino-f32", "mean |Δp| vs openvino-f32"),
        ("mean_confidence", "mean confidence"),
        ("int8_check", "INT8 check"),
        ("executed_precision", "precision"),
        ("images", "test images"),
    ]

    def cell(run: str, model: str, variant: str, key: str) -> Cell:
        found = cells.get((run, model, variant, key))
        if found is None and key in F32_COMPARISONS:
            return Cell("")  # only the reduced precisions compare with f32
        return record_cell(found)

    table = _model_variant_table(tables, [run.label for run in tables.runs], specs, cell)
    return [
        Heading(2, "Accuracy change of each optimized variant"),
        Paragraph(
            "Test-set accuracy, loss and mean top-1 confidence of every variant (the same "
            "test images for every variant of a run); Δ in percentage points. bf16 and int8 "
            "are also compared with openvino-f32 on the same images: loss change, and mean "
            "|Δp|, the mean |p - p_f32| over images and classes. The INT8 check is the rule "
            f"optimize and score apply ({Int8Bounds().describe()}). results.csv also has the "
            "loss change against keras-predict."
        ),
        table,
    ]


QUANTIZATION_COLUMNS = (
    ("method", "method"),
    ("f32_layers", "compute layers in f32"),
    ("validation_drop", "accuracy change on validation images"),
    ("verdict", "INT8 check"),
    ("runs_on", "runs on"),
    ("speedup", "int8/f32 at batch 256 (first look)"),
)


def quantization_blocks(tables: ReportTables) -> list[Block]:
    """How each INT8 IR was made, from the manifest optimize wrote."""
    frame = tables.section("quantization")
    if frame.empty:
        return []
    cells = _index(frame, ["run", "model", "key"])
    many = len(tables.runs) > 1
    header = (["run"] if many else []) + ["model"] + [title for _, title in QUANTIZATION_COLUMNS]
    rows = [
        ([Cell(run.label, header=True)] if many else [])
        + [Cell(model, header=True)]
        + [
            record_cell(cells.get((run.label, model, key)), missing="")
            for key, _ in QUANTIZATION_COLUMNS
        ]
        for run in tables.runs
        for model in tables.models
        if (run.label, model, "method") in cells
    ]
    return [
        Heading(2, "INT8 quantization"),
        Paragraph(
            "How optimize --int8 made each INT8 IR: the method that passed the INT8 check "
            "on the held-out validation images (accuracy change with the images lost and "
            "gained against f32), the compute layers it kept in f32, the CPUs the IR runs "
            "on (an 8-bit first layer needs VNNI or AMX), and optimize's first look at "
            "the speed-up; the benchmark above measures it properly."
        ),
        Table(header, rows),
    ]


def yardstick_blocks(tables: ReportTables) -> list[Block]:
    """Our harness beside OpenVINO's benchmark_app, where the yardstick ran."""
    frame = tables.section("yardstick")
    if frame.empty:
        return []
    keys = frame[["context", "model", "variant", "item", "batch_size"]].drop_duplicates()
    cells = _index(frame, ["context", "model", "variant", "item", "batch_size", "key"])
    header = [
        "node type",
        "model",
        "variant",
        "mode",
        "batch",
        "ours",
        "benchmark_app",
        "ours / benchmark_app (time)",
    ]
    rows = []
    for _, key in keys.iterrows():
        batch = None if pd.isna(key["batch_size"]) else key["batch_size"]
        base = (key["context"], key["model"], key["variant"], key["item"], batch)
        column = "p50_ms" if key["item"] == "latency" else "images_per_second"
        rows.append(
            [
                Cell(str(key["context"]), header=True),
                Cell(str(key["model"]), header=True),
                Cell(str(key["variant"]), header=True),
                Cell(str(key["item"])),
                Cell("" if batch is None else str(int(batch))),
                record_cell(cells.get((*base, f"ours_{column}"))),
                record_cell(cells.get((*base, f"benchmark_app_{column}"))),
                record_cell(cells.get((*base, "ratio"))),
            ]
        )
    return [
        Heading(2, "Yardstick: OpenVINO benchmark_app on the same IR"),
        Paragraph(
            "Latency as p50 ms, throughput as images/s; a ratio near 1 means our "
            "harness reaches what the runtime itself measures."
        ),
        Table(header, rows),
    ]


def classification_table(tables: ReportTables, model: str) -> Table | None:
    """Per-class precision, recall, F1 and support of the baseline variant, run by run."""
    frame = tables.section("classification")
    frame = frame[frame["model"] == model]
    if frame.empty:
        return None
    chosen = {}
    for run in tables.runs:
        variants = list(dict.fromkeys(frame[frame["run"] == run.label]["variant"]))
        if variants:
            chosen[run.label] = BASELINE if BASELINE in variants else variants[0]
    cells = _index(frame, ["run", "variant", "item", "key"])
    metrics = [
        ("precision", "precision"),
        ("recall", "recall"),
        ("f1", "f1-score"),
        ("support", "support"),
    ]
    header = ["class"] + [
        f"{title} · {run} ({variant})" if len(chosen) > 1 else title
        for run, variant in chosen.items()
        for _, title in metrics
    ]
    items = list(dict.fromkeys(frame["item"]))
    rows = []
    for item in items:
        row = [Cell(item, header=True)]
        for run, variant in chosen.items():
            for key, _ in metrics:
                row.append(record_cell(cells.get((run, variant, item, key)), "not evaluated"))
        rows.append(row)
    caption = "Classification report, " + ", ".join(
        f"{variant} ({run})" for run, variant in chosen.items()
    )
    return Table(header, rows, caption=caption)


def model_blocks(tables: ReportTables, figures: list[Figure]) -> list[Block]:
    """Per model: the classification report, confusion heatmaps and training curves."""
    blocks: list[Block] = [Heading(2, "Per model")]
    for model in tables.models:
        blocks.append(Heading(3, model))
        table = classification_table(tables, model)
        if table is None:
            blocks.append(Paragraph(f"gap: {model} has no evaluation in any run."))
        else:
            blocks.append(table)
        for kind in ("confusion", "curves"):
            shown = [f for f in figures if f.kind == kind and f.model == model]
            for figure in shown:
                blocks.append(Image(figure.path, figure.caption))
            for run in tables.runs:
                if not any(f.run == run.label for f in shown):
                    what = "confusion matrix" if kind == "confusion" else "training history"
                    blocks.append(Paragraph(f"gap: no {what} for {model} in {run.label}."))
    return blocks


def chart_blocks(tables: ReportTables, figures: list[Figure]) -> list[Block]:
    """Latency and throughput charts, one of each per node type."""
    blocks: list[Block] = [Heading(2, "Latency and throughput per node type")]
    for ctx in tables.contexts:
        for kind in ("latency", "throughput"):
            figure = next((f for f in figures if f.kind == kind and f.context == ctx.label), None)
            if figure is None:
                blocks.append(Paragraph(f"gap: no {kind} measurement on {ctx.label}."))
            else:
                blocks.append(Image(figure.path, figure.caption))
    return blocks


def environment_blocks(tables: ReportTables) -> list[Block]:
    """Where and with which software every number was measured."""
    frame = tables.environment
    header = list(frame.columns)
    rows = []
    for _, record in frame.iterrows():
        rows.append(
            [Cell(str(record[header[0]]), header=True)]
            + [
                Cell(str(record[c])) if str(record[c]) else Cell(gap="not recorded")
                for c in header[1:]
            ]
        )
    return [Heading(2, "Environment"), Table(header, rows)]


def scoring_blocks(tables: ReportTables) -> list[Block]:
    """Batch scoring: parts, rows scored and rejected, rows per second, per input."""
    frame = tables.section("scoring")
    header = [
        "run",
        "input",
        "model",
        "variant",
        "parts finished",
        "rows read",
        "rows scored",
        "rows rejected",
        "shard seconds",
        "rows/s per process",
    ]
    keys = ["parts", "rows_read", "rows_predicted", "rows_rejected", "seconds", "rows_per_second"]
    rows = []
    for run in tables.runs:
        mine = frame[frame["run"] == run.label]
        if mine["item"].isna().all():
            gap = str(mine["gap"].dropna().iloc[0]) if mine["gap"].notna().any() else "no data"
            rows.append([Cell(run.label, header=True), Cell(gap=gap)] + [Cell("")] * 8)
            continue
        cells = _index(mine, ["item", "model", "key"])
        for item, model in dict.fromkeys(zip(mine["item"], mine["model"], strict=True)):
            parts = cells.get((item, model, "parts"))
            variant = "" if parts is None or pd.isna(parts["variant"]) else parts["variant"]
            rows.append(
                [Cell(run.label, header=True), Cell(str(item)), Cell(str(model)), Cell(variant)]
                + [record_cell(cells.get((item, model, key))) for key in keys]
            )
    return [
        Heading(2, "Batch scoring"),
        Paragraph(
            "From the success markers next to each prediction part; rows/s per "
            "process is rows read over the summed shard seconds."
        ),
        Table(header, rows),
    ]


def build_document(tables: ReportTables, figures: list[Figure]) -> list[Block]:
    """The whole report, section by section."""
    runs = ", ".join(run.label for run in tables.runs)
    contexts = ", ".join(ctx.label for ctx in tables.contexts)
    blocks: list[Block] = [
        Heading(1, TITLE),
        Paragraph(
            f"Runs: {runs}. Node types: {', '.join(c.node_type for c in tables.contexts)} "
            f"(columns: {contexts}). Models: {', '.join(tables.models)}. "
            f"Variants: {', '.join(tables.variants)}."
        ),
    ]
    problems = [f"{run.label}: {p}" for run in tables.runs for p in run.problems]
    if problems:
        blocks.append(Paragraph("Unreadable files (shown as gaps): " + "; ".join(problems)))
    blocks += results_blocks(tables)
    blocks += speedup_blocks(tables)
    blocks += accuracy_blocks(tables)
    blocks += quantization_blocks(tables)
    blocks += yardstick_blocks(tables)
    blocks += model_blocks(tables, figures)
    blocks += chart_blocks(tables, figures)
    blocks += environment_blocks(tables)
    blocks += scoring_blocks(tables)
    blocks += timeline_blocks(tables.runs, figures)
    return blocks
