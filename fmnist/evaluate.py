"""Test-set evaluation of any engine: loss, accuracy, per-class metrics, confusion matrix.

Every evaluation also records the mean top-1 confidence; the reduced-precision OpenVINO
variants (bf16, int8) also their mean |Δp| against openvino-f32 on the same images,
which is what the INT8 check (``fmnist.engines.int8_check.Int8Check``) reads besides
accuracy and loss.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from fmnist.data import CLASS_NAMES, load_dataset, to_model_input
from fmnist.engines import check_variant, create_engine, predict_in_batches, variant_artifact
from fmnist.engines.int8_check import GAINED_COLUMN, LOST_COLUMN, MEAN_ABS_DP_COLUMN
from fmnist.engines.keras import prepare_process, required_env, run_with_setting
from fmnist.engines.openvino import VariantUnsupported
from fmnist.io import FmnistError, RunLayout, write_parquet_atomic
from fmnist.manifest import EvaluationRecord, record_evaluation
from fmnist.plots import plot_confusion_matrix
from fmnist.probabilities import (
    correctness_flips,
    cross_entropy,
    mean_abs_difference,
    mean_confidence,
)

NUM_CLASSES = len(CLASS_NAMES)
# bf16 and int8 are compared with f32 on the same images (mean |Δp|, and in the report
# the accuracy and loss changes).
F32_REFERENCE = "openvino-f32"
COMPARED_WITH_F32 = ("openvino-bf16", "openvino-int8")


@dataclass(frozen=True)
class Evaluation:
    """Metrics of one model x variant on a labelled set."""

    model: str
    variant: str
    accuracy: float
    loss: float
    confusion: np.ndarray
    per_class: pd.DataFrame  # one row per class, then 'macro avg' and 'weighted avg'
    images: int
    seconds: float
    executed_precision: str
    mean_confidence: float = float("nan")  # mean top-1 probability
    mean_abs_dp_vs_f32: float = float("nan")  # mean |p - p_openvino-f32|; NaN: not compared
    # Images openvino-f32 classifies right and this variant wrong, and the reverse (the
    # paired accuracy test of the INT8 check); None: not compared.
    flips_vs_f32: tuple[int, int] | None = None

    @property
    def lost_vs_f32(self) -> float:
        """Images f32 gets right and this variant wrong (NaN: not compared)."""
        return float("nan") if self.flips_vs_f32 is None else self.flips_vs_f32[0]

    @property
    def gained_vs_f32(self) -> float:
        """Images this variant gets right and f32 wrong (NaN: not compared)."""
        return float("nan") if self.flips_vs_f32 is None else self.flips_vs_f32[1]


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, n: int = NUM_CLASSES) -> np.ndarray:
    """Counts: rows are true classes, columns predicted classes."""
    matrix = np.zeros((n, n), dtype=np.int64)
    np.add.at(matrix, (np.asarray(y_true, int), np.asarray(y_pred, int)), 1)
    return matrix


def per_class_metrics(matrix: np.ndarray, names=CLASS_NAMES) -> pd.DataFrame:
    """Precision, recall, F1 and support per class, plus macro and weighted averages.

    A class never predicted (or never present) gets 0 where the ratio is undefined,
    as scikit-learn's ``zero_division=0`` does.
    """
    true_positive = np.diag(matrix).astype(float)
    predicted = matrix.sum(axis=0).astype(float)
    support = matrix.sum(axis=1)
    precision = np.divide(
        true_positive, predicted, out=np.zeros_like(true_positive), where=predicted > 0
    )
    recall = np.divide(true_positive, support, out=np.zeros_like(true_positive), where=support > 0)
    denominator = precision + recall
    f1 = np.divide(
        2 * precision * recall, denominator, out=np.zeros_like(true_positive), where=denominator > 0
    )
    frame = pd.DataFrame(
        {
            "label": np.arange(len(names)),
            "name": list(names),
            "precision": precision,
            "recall": recall,
            "f1": f1,
            "support": support.astype(np.int64),
        }
    )
    total = int(support.sum())
    weights = support / total if total else np.zeros(len(names))
    averages = pd.DataFrame(
        {
            "label": [-1, -1],
            "name": ["macro avg", "weighted avg"],
            "precision": [precision.mean(), float(precision @ weights)],
            "recall": [recall.mean(), float(recall @ weights)],
            "f1": [f1.mean(), float(f1 @ weights)],
            "support": [total, total],
        }
    )
    return pd.concat([frame, averages], ignore_index=True)


def evaluate_probabilities(
    probabilities: np.ndarray,
    labels: np.ndarray,
    model: str,
    variant: str,
    seconds: float = 0.0,
    executed_precision: str = "f32",
    reference: np.ndarray | None = None,
) -> Evaluation:
    """All metrics from an engine's probabilities and the true labels.

    ``reference``: openvino-f32's probabilities on the same images, for mean |Δp| and
    the images each gets right that the other does not.
    """
    predictions = probabilities.argmax(axis=1)
    matrix = confusion_matrix(labels, predictions)
    return Evaluation(
        model=model,
        variant=variant,
        accuracy=float(np.mean(predictions == labels)),
        loss=cross_entropy(probabilities, labels),
        confusion=matrix,
        per_class=per_class_metrics(matrix),
        images=len(labels),
        seconds=seconds,
        executed_precision=executed_precision,
        mean_confidence=mean_confidence(probabilities),
        mean_abs_dp_vs_f32=(
            float("nan") if reference is None else mean_abs_difference(probabilities, reference)
        ),
        flips_vs_f32=(
            None if reference is None else correctness_flips(probabilities, reference, labels)
        ),
    )


def classification_report(evaluation: Evaluation) -> str:
    """The seed-style text report: per-class precision/recall/F1/support and averages."""
    width = max(len(n) for n in evaluation.per_class["name"]) + 2
    lines = [f"{'':>{width}}{'precision':>11}{'recall':>9}{'f1-score':>10}{'support':>9}", ""]
    for row in evaluation.per_class.itertuples():
        if row.name == "macro avg":
            lines += [
                "",
                f"{'accuracy':>{width}}{'':>11}{'':>9}"
                f"{evaluation.accuracy:>10.4f}{evaluation.images:>9}",
            ]
        lines.append(
            f"{row.name:>{width}}{row.precision:>11.4f}{row.recall:>9.4f}"
            f"{row.f1:>10.4f}{row.support:>9}"
        )
    lines += [
        "",
        f"Loss: {evaluation.loss:.4f}",
        f"Accuracy: {evaluation.accuracy:.4f}",
        f"Mean confidence: {evaluation.mean_confidence:.4f}",
    ]
    if not np.isnan(evaluation.mean_abs_dp_vs_f32):
        lines.append(f"Mean |Δp| vs {F32_REFERENCE}: {evaluation.mean_abs_dp_vs_f32:.4f}")
    if evaluation.flips_vs_f32 is not None:
        lost, gained = evaluation.flips_vs_f32
        lines.append(f"Images vs {F32_REFERENCE}: {lost} lost, {gained} gained")
    return "\n".join(lines)


def metrics_frame(evaluation: Evaluation) -> pd.DataFrame:
    """The metrics Parquet rows: per-class and average rows, overall figures repeated."""
    frame = evaluation.per_class.copy()
    frame.insert(0, "variant", evaluation.variant)
    frame.insert(0, "model", evaluation.model)
    frame["accuracy"] = evaluation.accuracy
    frame["loss"] = evaluation.loss
    frame["mean_confidence"] = evaluation.mean_confidence
    frame[MEAN_ABS_DP_COLUMN] = evaluation.mean_abs_dp_vs_f32
    frame[LOST_COLUMN] = evaluation.lost_vs_f32
    frame[GAINED_COLUMN] = evaluation.gained_vs_f32
    frame["images"] = evaluation.images
    frame["seconds"] = evaluation.seconds
    frame["executed_precision"] = evaluation.executed_precision
    return frame


def confusion_frame(evaluation: Evaluation) -> pd.DataFrame:
    """The confusion Parquet rows: one per true class, one column per predicted class."""
    frame = pd.DataFrame(evaluation.confusion, columns=list(CLASS_NAMES))
    frame.insert(0, "true_name", list(CLASS_NAMES))
    frame.insert(0, "true_label", np.arange(NUM_CLASSES))
    return frame


def write_evaluation(evaluation: Evaluation, run: Path | str) -> dict[str, Path]:
    """Write the metrics and confusion Parquet files and the heatmap into ``run``."""
    layout = RunLayout(Path(run))
    model, variant = evaluation.model, evaluation.variant
    paths = {
        "metrics": layout.metrics(model, variant),
        "confusion": layout.confusion(model, variant),
        "heatmap": layout.figures_dir / f"{model}__{variant}__confusion.png",
    }
    write_parquet_atomic(paths["metrics"], metrics_frame(evaluation))
    write_parquet_atomic(paths["confusion"], confusion_frame(evaluation))
    plot_confusion_matrix(
        evaluation.confusion,
        f"{model} ({variant}): accuracy {evaluation.accuracy:.4f}",
        paths["heatmap"],
    )
    record_evaluation(
        layout.root,
        model,
        variant,
        EvaluationRecord(
            accuracy=evaluation.accuracy,
            loss=evaluation.loss,
            mean_confidence=evaluation.mean_confidence,
            mean_abs_dp_vs_f32=_json_number(evaluation.mean_abs_dp_vs_f32),
            lost_vs_f32=_json_number(evaluation.lost_vs_f32),
            gained_vs_f32=_json_number(evaluation.gained_vs_f32),
            images=evaluation.images,
            executed_precision=evaluation.executed_precision,
        ),
    )
    return paths


def _json_number(value: float) -> float | None:
    return None if np.isnan(value) else value


def record_skipped_evaluation(run: Path | str, model: str, variant: str, reason: str) -> None:
    """Note in the manifest why a variant was not evaluated here, for the report's gap."""
    record_evaluation(Path(run), model, variant, EvaluationRecord(skipped=reason))


def evaluate_model(
    run: Path | str,
    model: str,
    variant: str = "keras-predict",
    limit: int | None = None,
    data_dir: str | None = None,
    batch_size: int = 256,
) -> Evaluation:
    """Run ``model`` as ``variant`` on the test set (first ``limit`` images) and write results.

    bf16 and int8 are also compared with openvino-f32 on the same images, where its IR
    exists (mean |Δp|).
    """
    engine = create_engine(run, model, variant, mode="throughput")
    test = load_dataset(data_dir).test.head(limit)
    images = to_model_input(test.images)
    started = time.perf_counter()
    probabilities = predict_in_batches(engine, images, batch_size)
    seconds = time.perf_counter() - started
    reference = None
    if variant in COMPARED_WITH_F32 and variant_artifact(run, model, F32_REFERENCE).is_file():
        f32 = create_engine(run, model, F32_REFERENCE, mode="throughput")
        reference = predict_in_batches(f32, images, batch_size)
    evaluation = evaluate_probabilities(
        probabilities,
        test.labels,
        model,
        variant,
        seconds,
        engine.info.executed_precision,
        reference=reference,
    )
    write_evaluation(evaluation, run)
    return evaluation


@dataclass(frozen=True)
class EvaluateRequest:
    """One ``fmnist-batch evaluate``: which model and variant, on how many test images."""

    run: str
    model: str
    variant: str = "keras-predict"
    limit: int | None = None
    data_dir: str | None = None
    skip_unsupported: bool = False  # a variant this CPU cannot run is noted, not an error


def run_evaluation(request: EvaluateRequest) -> str:
    """Evaluate as ``request`` asks, in the process its variant needs; the summary text.

    The keras-onednn-* variants need ``TF_ENABLE_ONEDNN_OPTS`` set before TensorFlow's
    import: this process when it can still be set, else a fresh interpreter started
    with it (``python -m fmnist.evaluate``), whose summary is returned.
    """
    check_variant(request.variant)
    if not prepare_process(request.variant):
        # TensorFlow is already loaded here with the other oneDNN setting.
        result = run_with_setting(
            ["-m", "fmnist.evaluate", json.dumps(asdict(request))],
            required_env(request.variant),
            capture_output=True,
            text=True,
        )
        sys.stderr.write(result.stderr)
        if result.returncode:
            lines = (result.stderr or result.stdout).strip().splitlines()
            raise FmnistError(lines[-1].removeprefix("error: ") if lines else "evaluation failed")
        return result.stdout
    try:
        evaluation = evaluate_model(
            request.run,
            request.model,
            request.variant,
            limit=request.limit,
            data_dir=request.data_dir,
        )
    except VariantUnsupported as exc:
        if not request.skip_unsupported:
            raise
        record_skipped_evaluation(request.run, request.model, request.variant, str(exc))
        return f"skipped {request.model} ({request.variant}): {exc}\n"
    return (
        f"{request.model} ({request.variant}, executed {evaluation.executed_precision}) "
        f"on {evaluation.images} test images\n" + classification_report(evaluation) + "\n"
    )


def _main(argv: list[str]) -> int:
    """Entry of the fresh interpreter :func:`run_evaluation` starts."""
    try:
        sys.stdout.write(run_evaluation(EvaluateRequest(**json.loads(argv[0]))))
    except FmnistError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:  # a full disk, a read-only run: one line, as the CLI prints it
        from fmnist.faults import describe

        print(f"error: {describe(exc)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
