"""``fmnist-batch benchmark``: every variant of a model, side by side, into ``RUN/timings/``.

Variants are measured in worker processes (:mod:`fmnist.bench.workers`), optionally
beside OpenVINO's ``benchmark_app`` (:mod:`fmnist.bench.yardstick`), and written as one
timings file per job (:mod:`fmnist.bench.timings`).
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from fmnist.architectures import get_architecture
from fmnist.bench.config import BenchConfig
from fmnist.bench.timings import job_columns, local_job_id, timings_frame, write_timings
from fmnist.bench.workers import process_groups, run_worker
from fmnist.bench.yardstick import yardstick_rows
from fmnist.engines import variant_artifact
from fmnist.io import FmnistError, RunLayout, write_json_atomic
from fmnist.manifest import check_model_files


@dataclass
class BenchmarkResult:
    """The timings of one benchmark invocation and where they were written."""

    frame: pd.DataFrame
    path: Path

    @property
    def failed(self) -> list[str]:
        bad = self.frame[self.frame["status"] == "failed"]
        return sorted(set(bad["variant"]))


def run_benchmark(config: BenchConfig, progress: Callable[[str], None] = print) -> BenchmarkResult:
    """Measure every variant of ``config.model`` and write ``RUN/timings/<job-id>.parquet``."""
    config.check()
    get_architecture(config.model)  # an unknown name lists the valid ones
    layout = RunLayout(Path(config.run))
    if not layout.keras_model(config.model).exists():
        raise FmnistError(f"{layout.keras_model(config.model)}: model file not found")
    # Here, not in the workers: a changed model is one line, not a failed variant. A
    # variant without its files is measured as skipped, with its reason.
    artifacts = {variant_artifact(layout.root, config.model, v) for v in config.variants}
    for artifact in sorted(artifacts):
        if artifact.is_file():
            check_model_files(layout.root, artifact)
    job_id = config.job_id or local_job_id(socket.gethostname(), os.getpid())
    rows: list[dict] = []
    for env, variants in process_groups(config.variants):
        group_rows = run_worker(config, variants, env, progress)
        rows += group_rows
        if config.yardstick:
            rows += yardstick_rows(config, group_rows, progress)
    frame = timings_frame(rows, job_columns(config, job_id))
    path = layout.timings(job_id)
    write_timings(path, frame)
    if not BenchmarkResult(frame, path).failed:
        # The pipeline's completion marker: this model was benchmarked on this node type.
        node_type = frame["node_type"].iloc[0]
        write_json_atomic(
            layout.benchmark_marker(config.model, node_type),
            {"job_id": job_id, "file": path.name, "rows": len(frame)},
        )
    return BenchmarkResult(frame, path)
