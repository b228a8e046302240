"""What one ``fmnist-batch benchmark`` measures, and how hard, parsed from the command line."""

from __future__ import annotations

from dataclasses import dataclass

from fmnist.engines import VARIANTS, check_variant
from fmnist.io import FmnistError

MODES = ("latency", "throughput")
DEFAULT_BATCH_SIZES = (1, 32, 256)


@dataclass(frozen=True)
class BenchConfig:
    """What one ``fmnist-batch benchmark`` measures, and how hard."""

    run: str
    model: str
    variants: tuple[str, ...] = VARIANTS
    batch_sizes: tuple[int, ...] = DEFAULT_BATCH_SIZES
    # Timed calls (latency) or batches (throughput) at most; None: as many as the time
    # budget allows. A count is no window: a thousand calls of a small model last a
    # tenth of a second, in or out of a neighbour's burst as a whole.
    iterations: int | None = None
    warmup: int = 50  # untimed calls at least (warm-up also lasts a tenth of the budget)
    max_seconds: float = 10.0  # per measurement...
    min_iterations: int = 10  # ...but never fewer timed calls than this
    node_type: str | None = None  # the caller's job's (fmnist.pipeline.jobenv), else "local"
    job_id: str | None = None  # the caller's job's, file-safe; else a unique local id
    yardstick: bool = False
    yardstick_seconds: float = 10.0
    data_dir: str | None = None

    def check(self) -> BenchConfig:
        for variant in self.variants:
            check_variant(variant)
        if not self.variants:
            raise FmnistError("no variants to benchmark")
        if not self.batch_sizes or min(self.batch_sizes) < 1:
            raise FmnistError(f"batch sizes must be positive integers, got {self.batch_sizes}")
        capped = self.iterations is not None
        if (capped and self.iterations < 1) or self.min_iterations < 1 or self.warmup < 0:
            raise FmnistError("iterations and min-iterations must be >= 1, warm-up >= 0")
        return self


def parse_batch_sizes(text: str) -> tuple[int, ...]:
    """'1,32,256' -> (1, 32, 256), with a clear error for anything else."""
    try:
        sizes = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise FmnistError(f"--batch-sizes: expected integers like 1,32,256, got {text!r}") from None
    if not sizes or min(sizes) < 1:
        raise FmnistError(f"--batch-sizes: expected positive integers, got {text!r}")
    return sizes


def parse_variants(text: str | None) -> tuple[str, ...]:
    """'openvino-f32,openvino-int8' -> the variants, checked; None -> every variant."""
    if not text:
        return VARIANTS
    return tuple(check_variant(part.strip()) for part in text.split(",") if part.strip())
