"""The ``fmnist-batch`` command line: option parsing only, the work lives in the library."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click

from fmnist.io import FmnistError

if TYPE_CHECKING:  # the training module imports TensorFlow; commands import it lazily
    from fmnist.train import TrainResult

DEFAULT_RUN = "outputs/run"


class FmnistGroup(click.Group):
    """A group that turns FmnistError into a one-line message and exit status 1."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except FmnistError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(1)


def _progress(message: str) -> None:
    click.echo(message, err=True)


@click.group(cls=FmnistGroup)
@click.version_option(package_name="fmnist-batch")
def main():
    """Train, optimize, benchmark and batch-score Fashion-MNIST CNNs on CPU clusters.

    \b
    Example:
      fmnist-batch run --profile quick --out outputs/quick
    """


# --------------------------------------------------------------------------- data


@main.group(cls=FmnistGroup)
def data():
    """Find, check and export the Fashion-MNIST dataset.

    \b
    Example:
      fmnist-batch data info
    """


data_dir_option = click.option(
    "--data-dir",
    type=click.Path(file_okay=False),
    default=None,
    help="Directory with the four IDX .gz files (else FMNIST_DATA_DIR, Debian, Keras cache).",
)


@data.command("info")
@data_dir_option
def data_info(data_dir):
    """Where the dataset was found, split sizes and class counts.

    \b
    Example:
      fmnist-batch data info --data-dir /usr/share/datasets/fashion-mnist
    """
    import numpy as np

    from fmnist.data import CLASS_NAMES, load_dataset

    dataset = load_dataset(data_dir)
    click.echo(f"source: {dataset.source}")
    for name, split in (("train", dataset.train), ("test", dataset.test)):
        counts = np.bincount(split.labels, minlength=10)
        click.echo(
            f"{name}: {len(split)} images {split.images.shape[1:]} "
            f"labels {int(split.labels.min())}-{int(split.labels.max())}"
        )
        click.echo("  " + ", ".join(f"{CLASS_NAMES[i]} {c}" for i, c in enumerate(counts)))


@data.command("verify")
@data_dir_option
def data_verify(data_dir):
    """Check shapes, counts and SHA-256 of the decompressed IDX files.

    \b
    Example:
      fmnist-batch data verify
    """
    from fmnist.data import verify_dataset

    checks = verify_dataset(data_dir)
    for check in checks:
        click.echo(
            f"{'ok  ' if check.ok else 'FAIL'} {check.path}  {check.count} items  "
            f"sha256 {'ok' if check.sha256_ok else 'MISMATCH ' + check.sha256}"
        )
    if not all(check.ok for check in checks):
        raise FmnistError("dataset verification failed (see the FAIL lines above)")


@data.command("to-csv")
@click.option("--split", type=click.Choice(["train", "test"]), default="test", show_default=True)
@click.option(
    "--out",
    type=click.Path(dir_okay=False),
    required=True,
    help="CSV file to write (.gz compresses).",
)
@click.option("--limit", type=int, default=None, help="Only the first N images.")
@click.option(
    "--repeat",
    type=int,
    default=1,
    show_default=True,
    help="Write the split this many times (large scoring inputs).",
)
@click.option("--no-header", is_flag=True, help="Omit the label,pixel1..pixel784 header.")
@data_dir_option
def data_to_csv(split, out, limit, repeat, no_header, data_dir):
    """Write a split in Kaggle format: label,pixel1..pixel784.

    \b
    Example:
      fmnist-batch data to-csv --split test --out outputs/test.csv
    """
    from fmnist.data import load_dataset, write_csv

    dataset = load_dataset(data_dir)
    rows = write_csv(getattr(dataset, split).head(limit), out, header=not no_header, repeat=repeat)
    click.echo(f"wrote {rows} rows to {out}")


@data.command("download")
def data_download():
    """Download the IDX files into the Keras cache (needs network access).

    \b
    Example:
      fmnist-batch data download
    """
    from fmnist.data import download

    click.echo(f"dataset in {download()}")


# --------------------------------------------------------------------------- models


@main.command("models")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def models_command(as_json):
    """The registered architectures: parameters and layer output shapes.

    \b
    Example:
      fmnist-batch models --json
    """
    from fmnist.architectures import describe, model_names

    descriptions = [describe(name) for name in model_names()]
    if as_json:
        click.echo(json.dumps(descriptions, indent=2))
        return
    for d in descriptions:
        click.echo(
            f"{d['name']} ({d['seed_title']}): {d['params']:,} params "
            f"({d['trainable_params']:,} trainable, {d['non_trainable_params']:,} not)"
        )
        for layer in d["layers"]:
            shape = (
                "("
                + ", ".join("None" if s is None else str(s) for s in layer["output_shape"])
                + ")"
            )
            click.echo(f"  {layer['name']:<24}{layer['type']:<20}{shape:<22}{layer['params']:>10,}")


# --------------------------------------------------------------------------- train / evaluate

model_option = click.option("--model", required=True, help="main, backup1 or backup2.")
run_option = click.option(
    "--run",
    type=click.Path(file_okay=False),
    default=DEFAULT_RUN,
    show_default=True,
    help="Run directory.",
)


@main.command("train")
@model_option
@click.option(
    "--out",
    type=click.Path(file_okay=False),
    default=DEFAULT_RUN,
    show_default=True,
    help="Run directory; re-running with the same one resumes an interrupted run.",
)
@click.option("--epochs", type=int, default=40, show_default=True)
@click.option("--batch-size", type=int, default=64, show_default=True)
@click.option("--limit", type=int, default=None, help="Train on the first N training images.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option(
    "--patience",
    type=int,
    default=None,
    help="Stop after N epochs without a better validation accuracy.",
)
@click.option(
    "--recipe",
    default="seed",
    show_default=True,
    help="seed: the report's recipe; tuned: label smoothing + best-epoch restore; "
    "tuned-wd: tuned with decoupled weight decay; tuned-flip: tuned with horizontal flips.",
)
@click.option(
    "--augment/--no-augment",
    default=None,
    help="Random flips and translations (default: as the recipe says).",
)
@data_dir_option
def train_command(model, out, epochs, batch_size, limit, seed, patience, recipe, augment, data_dir):
    """Train one architecture and save model.keras, history.parquet and curves.

    \b
    Example:
      fmnist-batch train --model backup1 --epochs 2 --limit 5000 --out outputs/try
    """
    from fmnist.train import TrainConfig, train_model

    config = TrainConfig(
        model=model,
        epochs=epochs,
        batch_size=batch_size,
        limit=limit,
        seed=seed,
        patience=patience,
        recipe=recipe,
        augment=augment,
        data_dir=data_dir,
    )
    result = train_model(config, out, progress=_progress)
    click.echo(train_summary(model, result))


def train_summary(model: str, result: TrainResult) -> str:
    """One line on a finished run: epochs, wall time, and the kept epoch's validation accuracy."""
    line = f"trained {model}: {len(result.history)} epochs in {result.wall_seconds:.1f}s"
    if len(result.history):
        # A best-epoch recipe keeps an earlier epoch: report the weights that were saved.
        kept_epoch = result.best_epoch or int(result.history["epoch"].iloc[-1])
        kept = result.history.loc[result.history["epoch"] == kept_epoch].iloc[-1]
        line += f", kept epoch {kept_epoch} (val_accuracy {kept['val_accuracy']:.4f})"
    return f"{line} -> {result.model_path}"


@main.command("evaluate")
@run_option
@model_option
@click.option(
    "--variant",
    default="keras-predict",
    show_default=True,
    help="How the model is executed (keras-predict, openvino-f32, ...).",
)
@click.option("--limit", type=int, default=None, help="Evaluate on the first N test images.")
@click.option(
    "--skip-unsupported",
    is_flag=True,
    help="Exit 0 with a note when this CPU cannot run the variant (bf16 without bf16).",
)
@data_dir_option
def evaluate_command(run, model, variant, limit, skip_unsupported, data_dir):
    """Test-set accuracy, loss, per-class metrics and confusion matrix to Parquet.

    The keras-onednn-* variants run where TF_ENABLE_ONEDNN_OPTS was set before
    TensorFlow's import: in this process when possible, else in a fresh one.

    \b
    Example:
      fmnist-batch evaluate --run outputs/try --model backup1
      fmnist-batch evaluate --run outputs/try --model backup1 --variant openvino-int8
    """
    from fmnist.engines import check_variant
    from fmnist.evaluate import classification_report, evaluate_model, record_skipped_evaluation
    from fmnist.onednn import prepare_process, run_cli_in_fresh_process
    from fmnist.openvino_engines import VariantUnsupported

    check_variant(variant)
    if not prepare_process(variant):
        # TensorFlow is already loaded here with the other oneDNN setting.
        args = ["evaluate", "--run", run, "--model", model, "--variant", variant]
        args += ["--limit", str(limit)] if limit is not None else []
        args += ["--data-dir", data_dir] if data_dir else []
        args += ["--skip-unsupported"] if skip_unsupported else []
        result = run_cli_in_fresh_process(args, variant)
        click.echo(result.stdout, nl=False)
        click.echo(result.stderr, nl=False, err=True)
        if result.returncode:
            sys.exit(result.returncode)
        return
    try:
        evaluation = evaluate_model(run, model, variant, limit=limit, data_dir=data_dir)
    except VariantUnsupported as exc:
        if not skip_unsupported:
            raise
        record_skipped_evaluation(run, model, variant, str(exc))
        click.echo(f"skipped {model} ({variant}): {exc}")
        return
    click.echo(
        f"{model} ({variant}, executed {evaluation.executed_precision}) "
        f"on {evaluation.images} test images"
    )
    click.echo(classification_report(evaluation))


# --------------------------------------------------------------------------- optimize / benchmark


@main.command("optimize")
@run_option
@model_option
@click.option("--int8", is_flag=True, help="Also write an NNCF post-training INT8 IR.")
@click.option(
    "--calibration-size",
    type=int,
    default=300,
    show_default=True,
    help="Training images NNCF calibrates INT8 on.",
)
@click.option(
    "--validation-size",
    type=int,
    default=3000,
    show_default=True,
    help="Held-out validation images the INT8 accuracy drop is checked on.",
)
@click.option(
    "--max-drop",
    type=float,
    default=0.3,
    show_default=True,
    help="Accuracy points INT8 may lose before accuracy-controlled quantization is used.",
)
@click.option(
    "--dense-as-conv/--no-dense-as-conv",
    default=True,
    show_default=True,
    help="Quantize a large Flatten + Dense head as the equivalent convolution, which the "
    "CPU's int8 kernels run faster where there is no VNNI.",
)
@data_dir_option
def optimize_command(
    run, model, int8, calibration_size, validation_size, max_drop, dense_as_conv, data_dir
):
    """Convert a trained model to OpenVINO IR (f32 weights, dynamic batch), optionally INT8.

    Writes RUN/models/<model>/openvino/f32/model.xml (+ .bin) and, with --int8,
    .../int8/model.xml; SHA-256s and the INT8 accuracy check go into the manifest.

    \b
    Example:
      fmnist-batch optimize --run outputs/try --model backup1 --int8
    """
    from fmnist.optimize import OptimizeConfig, optimize_model

    config = OptimizeConfig(
        model=model,
        int8=int8,
        calibration_size=calibration_size,
        validation_size=validation_size,
        max_drop=max_drop / 100,
        dense_as_conv=dense_as_conv,
        data_dir=data_dir,
    )
    result = optimize_model(run, config, progress=_progress)
    click.echo(f"{model}: f32 IR {result.f32_xml} (max |IR - Keras| {result.f32_max_abs_diff:.1e})")
    if result.int8_xml:
        info = result.int8
        click.echo(
            f"{model}: int8 IR {result.int8_xml} ({info['method']}; validation accuracy f32 "
            f"{info['f32_validation_accuracy']:.4f}, int8 {info['int8_validation_accuracy']:.4f})"
        )


@main.command("benchmark")
@run_option
@model_option
@click.option(
    "--variants",
    default=None,
    help="Comma-separated variants [default: all of keras-predict, ..., openvino-int8].",
)
@click.option("--batch-sizes", default="1,32,256", show_default=True, help="Throughput batches.")
@click.option(
    "--iterations", type=int, default=1000, show_default=True, help="Timed calls at most."
)
@click.option("--warmup", type=int, default=50, show_default=True, help="Untimed calls first.")
@click.option(
    "--max-seconds",
    type=float,
    default=10.0,
    show_default=True,
    help="Time budget per measurement (slow variants stop early).",
)
@click.option(
    "--min-iterations", type=int, default=10, show_default=True, help="Timed calls at least."
)
@click.option("--node-type", default=None, help="Node type label [default: from the job].")
@click.option("--yardstick", is_flag=True, help="Also run OpenVINO's benchmark_app on each IR.")
@click.option(
    "--yardstick-seconds",
    type=float,
    default=10.0,
    show_default=True,
    help="Duration of each benchmark_app run.",
)
@data_dir_option
def benchmark_command(
    run,
    model,
    variants,
    batch_sizes,
    iterations,
    warmup,
    max_seconds,
    min_iterations,
    node_type,
    yardstick,
    yardstick_seconds,
    data_dir,
):
    """Batch-1 latency and throughput of every variant into RUN/timings/<job-id>.parquet.

    Each oneDNN setting runs in its own worker process; keras-predict is timed the
    seed's way (model.predict on one image). Prints a summary with speedups.

    \b
    Example:
      fmnist-batch benchmark --run outputs/try --model backup1 --yardstick
      fmnist-batch benchmark --run outputs/try --model main --variants openvino-f32,openvino-int8
    """
    from fmnist.bench import (
        BenchConfig,
        parse_batch_sizes,
        parse_variants,
        run_benchmark,
        summary_table,
    )

    config = BenchConfig(
        run=run,
        model=model,
        variants=parse_variants(variants),
        batch_sizes=parse_batch_sizes(batch_sizes),
        iterations=iterations,
        warmup=warmup,
        max_seconds=max_seconds,
        min_iterations=min_iterations,
        node_type=node_type,
        yardstick=yardstick,
        yardstick_seconds=yardstick_seconds,
        data_dir=data_dir,
    )
    result = run_benchmark(config, progress=_progress)
    click.echo(summary_table(result.frame))
    click.echo(f"timings: {result.path}")
    if result.failed:
        raise FmnistError(
            f"variant(s) failed: {', '.join(result.failed)} (reasons in {result.path})"
        )


# --------------------------------------------------------------------------- pipeline


@main.command("run")
@click.option(
    "--profile", default="quick", show_default=True, help="A profile of jobs/pipeline.toml."
)
@click.option(
    "--out",
    type=click.Path(file_okay=False),
    default=None,
    help="Run directory (default: outputs/<profile>).",
)
@click.option(
    "--jobs", type=int, default=1, show_default=True, help="Independent steps to run at once."
)
@click.option("--force", is_flag=True, help="Re-run steps whose outputs are complete.")
@click.option("--dry-run", is_flag=True, help="Print the tasks and exit.")
def run_command(profile, out, jobs, force, dry_run):
    """Run the whole pipeline DAG of jobs/pipeline.toml on this machine.

    \b
    Example:
      fmnist-batch run --profile quick --out outputs/quick --jobs 2
    """
    import os

    from fmnist.pipeline import expand, load_pipeline, run_local
    from fmnist.step import scalar_overrides

    out = Path(out or f"outputs/{profile}")
    pipeline = load_pipeline()
    # FMNIST_<NAME> sets a profile scalar here as in submit and in every job.
    tasks = expand(pipeline, profile, out, scalar_overrides(pipeline, profile, os.environ))
    if dry_run:
        for task in tasks:
            needs = f"  (after {', '.join(task.needs)})" if task.needs else ""
            click.echo(f"{task.id}: fmnist-batch {' '.join(task.args)}{needs}")
        return
    outcomes = run_local(tasks, out, jobs=jobs, force=force, progress=_progress)
    failed = [o for o in outcomes if o.status in ("failed", "held")]
    done = sum(o.status in ("done", "skipped") for o in outcomes)
    click.echo(f"{done}/{len(tasks)} steps complete in {out}")
    if failed:
        raise FmnistError(
            f"{len(failed)} step(s) did not finish: "
            + ", ".join(f"{o.task_id} ({o.status})" for o in failed)
        )


# --------------------------------------------------------------------------- scheduler


@main.command("step")
@click.argument("task")
@click.option(
    "--run",
    envvar="FMNIST_RUN",
    type=click.Path(file_okay=False),
    default=None,
    help="Run directory (else FMNIST_RUN, else outputs/<profile>).",
)
@click.option(
    "--profile",
    envvar="FMNIST_PROFILE",
    default="quick",
    show_default=True,
    help="A profile of jobs/pipeline.toml (else FMNIST_PROFILE).",
)
@click.option("--force", is_flag=True, help="Run even when the outputs are complete.")
def step_command(task, run, profile, force):
    """Run one task of the pipeline DAG with its profile's arguments (what pbs/ scripts call).

    TASK is a task id (train:main) or a step name (evaluate); FMNIST_<PLACEHOLDER>
    variables pick the instance (FMNIST_MODEL=main, FMNIST_NODE_TYPE=spr) and
    FMNIST_<NAME> sets a scalar of the profile (FMNIST_SHARDS=8). An array step runs
    the element of the job's array index, or every element outside an array job.

    \b
    Example:
      fmnist-batch step train:main --profile quick --run outputs/quick
    """
    import os

    from fmnist.pipeline import load_pipeline
    from fmnist.step import run_tasks, select_tasks

    environ = dict(os.environ)
    run = run or f"outputs/{profile}"
    tasks = select_tasks(load_pipeline(), profile, run, task, environ)
    run_tasks(tasks, environ, force=force, progress=_progress)


@main.command("submit")
@click.option(
    "--scheduler",
    type=click.Choice(["torque", "pbspro", "slurm"]),
    default=None,
    help="Scheduler flavor (default: slurm if sbatch is on PATH, else torque or pbspro).",
)
@click.option("--profile", default=None, help="A profile of jobs/pipeline.toml [default: quick].")
@click.option(
    "--node-type",
    "node_types",
    default=None,
    help="Node type(s) of jobs/node_types.toml, comma-separated [default: local].",
)
@click.option(
    "--out",
    type=click.Path(file_okay=False),
    default=None,
    help="Run directory (default: outputs/<profile>).",
)
@click.option("--dry-run", is_flag=True, help="Print the submission as a bash script only.")
@click.option(
    "--resume",
    is_flag=True,
    help="Keep queued and running jobs, submit the tasks whose outputs are incomplete.",
)
def submit_command(scheduler, profile, node_types, out, dry_run, resume):
    """Submit the pipeline DAG to a batch scheduler, one job per task, with dependencies.

    The same tasks `run` executes; job ids go to RUN/jobs.json. Benchmark-like steps
    fan out over the node types; the other jobs go to the first one.

    \b
    Examples:
      fmnist-batch submit --scheduler torque --node-type skl,icx,spr --dry-run
      fmnist-batch submit --scheduler slurm --profile quick --node-type local --out outputs/q
      fmnist-batch submit --out outputs/q --resume
    """
    from fmnist.nodetypes import load_node_types, parse_node_type_list
    from fmnist.pipeline import load_pipeline, spec_path
    from fmnist.scheduler import detect_flavor
    from fmnist.submit import SubmitSettings, read_record, submit_pipeline

    recorded = {}
    if resume:
        run_dir = Path(out or f"outputs/{profile or 'quick'}")
        recorded = (read_record(run_dir) or {}).get("settings", {})
    profile = profile or recorded.get("profile") or "quick"
    out = Path(out or f"outputs/{profile}").resolve()
    settings = SubmitSettings(
        scheduler=scheduler or recorded.get("scheduler") or detect_flavor(),
        profile=profile,
        node_types=(
            parse_node_type_list(node_types, load_node_types())
            if node_types
            else recorded.get("node_types") or ["local"]
        ),
        pipeline=recorded.get("pipeline") or str(spec_path().resolve()),
        run=str(out),
    )
    pipeline = load_pipeline(settings.pipeline)
    planned, result, script = submit_pipeline(
        pipeline, settings, dry_run=dry_run, resume=resume, progress=_progress
    )
    if dry_run:
        click.echo(script, nl=False)
        return
    counts = {a: list(result.actions.values()).count(a) for a in ("submitted", "kept", "complete")}
    click.echo(
        f"{counts['submitted']} job(s) submitted, {counts['kept']} kept, "
        f"{counts['complete']} task(s) already complete; ids in {out / 'jobs.json'}"
    )


@main.command("status")
@click.argument("run", type=click.Path(file_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def status_command(run, as_json):
    """Each submitted task's job, its scheduler state and its outputs on disk.

    \b
    Example:
      fmnist-batch status outputs/quick
    """
    from dataclasses import asdict

    from fmnist.submit import format_statuses, run_status

    statuses = run_status(run)
    if as_json:
        click.echo(json.dumps([asdict(s) for s in statuses], indent=2))
        return
    click.echo(format_statuses(statuses))
    done = sum(s.state == "done" for s in statuses)
    click.echo(f"{done}/{len(statuses)} tasks done")


@main.command("jobenv")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option(
    "--save",
    type=click.Path(file_okay=False),
    default=None,
    help="Also write it as JSON to DIR/<task>[.<array index>].json.",
)
def jobenv_command(as_json, save):
    """What fmnist sees of the batch job it runs in: scheduler, job id, array index, node type.

    \b
    Example:
      fmnist-batch jobenv --json
    """
    from fmnist.io import write_json_atomic
    from fmnist.jobenv import current

    env = current()
    if save:
        stem = (env.task_id or env.safe_job_id).replace(":", "__")
        if env.array_index is not None:
            stem += f".{env.array_index}"
        write_json_atomic(Path(save) / f"{stem}.json", env.to_dict())
    if as_json:
        click.echo(json.dumps(env.to_dict(), indent=2))
        return
    for key, value in env.to_dict().items():
        click.echo(f"{key}: {'' if value is None else value}")


# --------------------------------------------------------------------------- score / verify


@main.command("score")
@click.argument("input_csv", metavar="INPUT", type=click.Path(dir_okay=False))
@run_option
@model_option
@click.option(
    "--variant",
    default=None,
    help="Engine variant (default: int8 if within 0.3 points of f32, else openvino-f32, "
    "else keras-predict).",
)
@click.option(
    "--shard",
    default=None,
    help="I/N: shard I of N (0-based); auto/N: I from PBS_ARRAYID, PBS_ARRAY_INDEX or "
    "SLURM_ARRAY_TASK_ID (0-based; FMNIST_ARRAY_BASE=1 for 1-based arrays); all/N: every "
    "shard. Default: all/WORKERS.",
)
@click.option(
    "--workers", type=int, default=1, show_default=True, help="Shards scored at once here."
)
@click.option(
    "--out",
    type=click.Path(file_okay=False),
    default=None,
    help="Output directory (default: RUN/predictions/<input stem>/<model>).",
)
@click.option(
    "--on-bad-row",
    type=click.Choice(["reject", "fail"]),
    default="reject",
    show_default=True,
    help="reject: write bad rows to rejects-*.parquet and go on; fail: stop at the first.",
)
@click.option("--probabilities", is_flag=True, help="Also write prob_0..prob_9.")
@click.option(
    "--batch-size", type=int, default=256, show_default=True, help="Images per engine call."
)
@click.option(
    "--block-mb", type=int, default=16, show_default=True, help="MiB of CSV parsed per block."
)
def score_command(
    input_csv, run, model, variant, shard, workers, out, on_bad_row, probabilities,
    batch_size, block_mb,
):  # fmt: skip
    """Score a Kaggle-format CSV (plain or .gz) to Parquet, in resumable shards.

    Each shard writes part-I-of-N.parquet, rejects-I-of-N.parquet and a success
    marker; running the same command again skips finished shards.

    \b
    Example:
      fmnist-batch score outputs/test.csv --run outputs/quick --model backup1
      fmnist-batch score big.csv --run RUN --model backup1 --shard auto/8
      fmnist-batch score big.csv --run RUN --model backup1 --shard all/4 --workers 2
    """
    from fmnist.score import (
        ScoreConfig,
        default_out_dir,
        default_variant,
        parse_shard_option,
        score_shards,
    )

    if workers < 1 or batch_size < 1 or block_mb < 1:
        raise FmnistError("--workers, --batch-size and --block-mb must be at least 1")
    indices, count = parse_shard_option(shard, workers)
    if variant is None:
        variant, why = default_variant(run, model)
        _progress(f"variant {variant} ({why})")
    config = ScoreConfig(
        input=Path(input_csv),
        run=Path(run),
        model=model,
        variant=variant,
        out_dir=Path(out) if out else default_out_dir(run, input_csv, model),
        shards=count,
        on_bad_row=on_bad_row,
        probabilities=probabilities,
        batch_size=batch_size,
        block_bytes=block_mb << 20,
    )
    results = score_shards(config, indices, workers, progress=_progress)
    for result in results:
        click.echo(
            f"shard {result.index}/{result.shards} {result.status}: {result.rows_read} rows, "
            f"{result.predicted} predicted, {result.rejected} rejected, "
            f"{result.rows_per_second:.0f} rows/s, peak RSS "
            f"{result.peak_rss_bytes / 2**20:.0f} MiB -> {result.part}"
        )


@main.command("verify")
@click.argument("directory", type=click.Path(file_okay=False))
@click.option(
    "--input",
    "input_csv",
    type=click.Path(dir_okay=False),
    default=None,
    help="The scored CSV, when it moved since scoring (default: the path in the markers).",
)
@click.option(
    "--merge",
    type=click.Path(dir_okay=False),
    default=None,
    help="After checking, write all parts as one Parquet file in row order.",
)
def verify_command(directory, input_csv, merge):
    """Check a predictions directory: every shard finished, every input row accounted for.

    Exits non-zero naming the first discrepancy: a missing part or marker, a marker
    that disagrees with its files or the input, a row neither predicted nor rejected.

    \b
    Example:
      fmnist-batch verify outputs/quick/predictions/test/backup1 --merge backup1.parquet
    """
    from fmnist.verify import merge_parts, verify_predictions

    result = verify_predictions(directory, input_csv, progress=_progress)
    click.echo(
        f"ok: {result.shards} shard(s), {result.rows} input rows = {result.predicted} "
        f"predicted + {result.rejected} rejected ({result.input})"
    )
    if merge:
        rows = merge_parts(result, merge)
        click.echo(f"merged {rows} predictions into {merge}")


# --------------------------------------------------------------------------- report


@main.command("report")
@click.argument("runs", nargs=-1, required=True, type=click.Path(file_okay=False))
@click.option(
    "--out",
    type=click.Path(file_okay=False),
    default=None,
    help="Report directory (default: RUN/report for a single run; required for several).",
)
def report_command(runs, out):
    """Merge runs into report.md, a self-contained report.html, results.csv and figures.

    Several runs (for example the same pipeline on icx and spr nodes) appear side by
    side. A missing piece (a failed benchmark, a model never optimized) is a marked gap
    with its reason.

    \b
    Example:
      fmnist-batch report outputs/quick
      fmnist-batch report outputs/icx outputs/spr --out outputs/compare
    """
    from fmnist.report import build_report

    files = build_report(list(runs), out, progress=_progress)
    click.echo(
        f"report: {files.html} ({files.markdown.name}, {files.csv.name}, "
        f"{len(files.figures)} figures, {files.gaps} gap reason(s))"
    )


if __name__ == "__main__":
    main()
