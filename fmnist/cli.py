"""The ``fmnist-batch`` command line: option parsing only, the work lives in the library."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import click

from fmnist.io import FmnistError, default_run_dir, enclosing_run


class FmnistGroup(click.Group):
    """A group that turns FmnistError and OS faults into one line and exit status 1."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except FmnistError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(1)
        except OSError as exc:
            # A full disk, a read-only mount, a directory of another user: the path and
            # what is wrong with it are what the user needs, not the traceback.
            from fmnist.faults import describe

            click.echo(f"error: {describe(exc)}", err=True)
            sys.exit(1)


def _record_job(run, command: str) -> None:
    """Record in the run's manifest that this process's job ran ``command`` there.

    The one place a command's job is recorded (``fmnist-batch step`` records the jobs of
    commands that do not write into a run): at the edge, once the command succeeded.
    """
    from fmnist.pipeline.jobenv import record_job

    record_job(run, command)


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
RUN_HELP = "Run directory [default: FMNIST_RUN, else outputs/quick]."
run_option = click.option(
    "--run",
    type=click.Path(file_okay=False),
    default=None,
    help=RUN_HELP,
)


@main.command("train")
@model_option
@click.option(
    "--out",
    type=click.Path(file_okay=False),
    default=None,
    help=RUN_HELP + " Re-running with the same one resumes an interrupted run.",
)
@click.option("--epochs", type=int, default=None, help="Epochs [default: the recipe's].")
@click.option(
    "--batch-size", type=int, default=None, help="Images per step [default: the recipe's]."
)
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
    help="seed: the report's recipe (40 epochs, batch 64); tuned: label smoothing + "
    "best-epoch restore; tuned-wd: tuned with decoupled weight decay; tuned-flip: tuned with "
    "horizontal flips; quick: for runs of 1-3 epochs (faster BatchNorm statistics); fast: "
    "per-network one-cycle recipe for time to accuracy (bf16 where the CPU runs it natively); "
    "peak: longer one-cycle runs for peak accuracy, backup1 and backup2 distilled from the "
    "run's main (train main first, or give --teacher).",
)
@click.option(
    "--augment/--no-augment",
    default=None,
    help="Random flips and translations (default: as the recipe says).",
)
@click.option(
    "--teacher",
    type=click.Path(dir_okay=False),
    default=None,
    help="A distilling recipe's teacher: this model.keras instead of the run's own "
    "(e.g. main of another run; checked against its run's manifest).",
)
@data_dir_option
def train_command(
    model, out, epochs, batch_size, limit, seed, patience, recipe, augment, teacher, data_dir
):
    """Train one architecture and save model.keras, history.parquet and curves.

    \b
    Example:
      fmnist-batch train --model backup1 --epochs 2 --limit 5000 --out outputs/try
      fmnist-batch train --model main --recipe fast --out outputs/fast
      fmnist-batch train --model backup2 --recipe peak --out outputs/peak \\
          --teacher outputs/full/models/main/model.keras
    """
    from fmnist.train_stop import CONTINUE_EXIT, TrainingStopped, catch_early

    # From before TensorFlow's import: a job's walltime may come that early.
    with catch_early():
        from fmnist.train import TrainConfig, train_model, train_summary

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
            teacher=teacher,
        )
        try:
            result = train_model(config, out or default_run_dir(), progress=_progress)
        except TrainingStopped as stopped:
            # A job's walltime: the next attempt (or the same command again) goes on from here.
            click.echo(f"train {model}: {stopped}", err=True)
            sys.exit(CONTINUE_EXIT)
    _record_job(out or default_run_dir(), f"train {model}")
    click.echo(train_summary(model, result))


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
    The model's files must have the SHA-256 the run's manifest recorded (else see
    `fmnist-batch adopt`).

    \b
    Example:
      fmnist-batch evaluate --run outputs/try --model backup1
      fmnist-batch evaluate --run outputs/try --model backup1 --variant openvino-int8
    """
    from fmnist.evaluate import EvaluateRequest, run_evaluation

    request = EvaluateRequest(
        run=str(run or default_run_dir()),
        model=model,
        variant=variant,
        limit=limit,
        data_dir=data_dir,
        skip_unsupported=skip_unsupported,
    )
    text = run_evaluation(request)
    _record_job(request.run, f"evaluate {model} {variant}")
    click.echo(text, nl=False)


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
    default=6000,
    show_default=True,
    help="Held-out validation images INT8 is checked against f32 on (6000: all of them).",
)
@click.option(
    "--max-drop",
    type=float,
    default=None,
    help="Accuracy points INT8 may lose against f32 [default: 0.3, the INT8 acceptance "
    "bound]; loss, confidence and mean |Δp| are checked too.",
)
@click.option(
    "--dense-as-conv/--no-dense-as-conv",
    default=None,
    help="Quantize a large Flatten + Dense head as the equivalent convolution, which the "
    "CPU's int8 kernels run faster where there is no VNNI [default: only where int8 "
    "kernels have no VNNI or AMX].",
)
@data_dir_option
def optimize_command(
    run, model, int8, calibration_size, validation_size, max_drop, dense_as_conv, data_dir
):
    """Convert a trained model to OpenVINO IR (f32 weights, dynamic batch), optionally INT8.

    Writes RUN/models/<model>/openvino/f32/model.xml (+ .bin) and, with --int8,
    .../int8/model.xml, checked against f32 on validation images (accuracy, loss, mean
    confidence, mean |Δp|); SHA-256s and the check's figures go into the manifest.
    model.keras must have the SHA-256 train recorded (else see `fmnist-batch adopt`).

    \b
    Example:
      fmnist-batch optimize --run outputs/try --model backup1 --int8
    """
    from fmnist.engines.int8_check import Int8Bounds
    from fmnist.engines.optimize import OptimizeConfig, optimize_model

    bounds = Int8Bounds() if max_drop is None else Int8Bounds(max_drop=max_drop / 100)
    config = OptimizeConfig(
        model=model,
        int8=int8,
        calibration_size=calibration_size,
        validation_size=validation_size,
        bounds=bounds,
        dense_as_conv=dense_as_conv,
        data_dir=data_dir,
    )
    result = optimize_model(run or default_run_dir(), config, progress=_progress)
    _record_job(run or default_run_dir(), f"optimize {model}" + (" --int8" if int8 else ""))
    click.echo(f"{model}: f32 IR {result.f32_xml} (max |IR - Keras| {result.f32_max_abs_diff:.1e})")
    if result.int8_xml:
        info, check = result.int8, result.int8["check"]
        click.echo(
            f"{model}: int8 IR {result.int8_xml} ({info['method']}; on validation images f32 / "
            f"int8 accuracy {check['f32_accuracy']:.4f} / {check['int8_accuracy']:.4f}, loss "
            f"{check['f32_loss']:.4f} / {check['int8_loss']:.4f}, mean confidence "
            f"{check['f32_confidence']:.4f} / {check['int8_confidence']:.4f}, mean |Δp| "
            f"{check['mean_abs_dp']:.4f}; {'accepted' if info['accepted'] else 'NOT accepted'})"
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
    "--iterations",
    type=int,
    default=None,
    help="Timed calls at most [default: as many as --max-seconds allows].",
)
@click.option(
    "--warmup",
    type=int,
    default=50,
    show_default=True,
    help="Untimed calls first, at least; warm-up also lasts a tenth of --max-seconds.",
)
@click.option(
    "--max-seconds",
    type=float,
    default=10.0,
    show_default=True,
    help="Time each measurement this long (at least --min-iterations calls).",
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
    The model's files must have the SHA-256 the run's manifest recorded (else see
    `fmnist-batch adopt`).

    \b
    Example:
      fmnist-batch benchmark --run outputs/try --model backup1 --yardstick
      fmnist-batch benchmark --run outputs/try --model main --variants openvino-f32,openvino-int8
    """
    from fmnist.bench.config import BenchConfig, parse_batch_sizes, parse_variants
    from fmnist.bench.run import run_benchmark
    from fmnist.bench.summary import summary_table
    from fmnist.pipeline.jobenv import current, file_job_id

    job = current()  # the job this benchmark runs in names its rows and its file
    config = BenchConfig(
        run=str(run or default_run_dir()),
        model=model,
        variants=parse_variants(variants),
        batch_sizes=parse_batch_sizes(batch_sizes),
        iterations=iterations,
        warmup=warmup,
        max_seconds=max_seconds,
        min_iterations=min_iterations,
        node_type=node_type or job.node_type,
        job_id=file_job_id(job),
        yardstick=yardstick,
        yardstick_seconds=yardstick_seconds,
        data_dir=data_dir,
    )
    result = run_benchmark(config, progress=_progress)
    _record_job(config.run, f"benchmark {model}")
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
    help="Run directory [default: FMNIST_RUN, else outputs/<profile>].",
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
    from fmnist.pipeline.executor import describe_tasks, plan_pipeline, run_pipeline

    if dry_run:
        click.echo(describe_tasks(plan_pipeline(profile, out)[0]))
        return
    click.echo(run_pipeline(profile, out, jobs=jobs, force=force, progress=_progress))


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

    from fmnist.pipeline.step import run_step

    run_step(task, run, profile, dict(os.environ), force=force, progress=_progress)


@main.command("submit")
@click.option(
    "--scheduler",
    type=click.Choice(["torque", "pbspro", "slurm"]),
    default=None,
    help="Scheduler flavor (default: the qstat first on PATH, PBS Pro or Torque; else slurm "
    "if sbatch is on PATH).",
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
@click.option(
    "--walltime",
    "walltimes",
    multiple=True,
    metavar="NAME=HH:MM:SS",
    help="Walltime of a step (train=02:00:00) or one task (train:main=00:01:40), over "
    "jobs/pipeline.toml's; repeatable [default: FMNIST_WALLTIME's, space-separated].",
)
def submit_command(scheduler, profile, node_types, out, dry_run, resume, walltimes):
    """Submit the pipeline DAG to a batch scheduler, one job per task, with dependencies.

    The same tasks `run` executes; job ids go to RUN/jobs.json. Benchmark-like steps
    fan out over the node types; the other jobs go to the first one.

    \b
    Examples:
      fmnist-batch submit --scheduler torque --node-type skl,icx,spr --dry-run
      fmnist-batch submit --scheduler slurm --profile quick --node-type local --out outputs/q
      fmnist-batch submit --out outputs/q --resume
      fmnist-batch submit --walltime train:main=00:01:40 --out outputs/q
    """
    from fmnist.pipeline.spec import load_pipeline
    from fmnist.pipeline.submit import resolve_settings, submit_pipeline, submit_summary

    if not walltimes and os.environ.get("FMNIST_WALLTIME"):
        walltimes = tuple(os.environ["FMNIST_WALLTIME"].split())
    settings = resolve_settings(scheduler, profile, node_types, out, resume, walltimes)
    _, result, script = submit_pipeline(
        load_pipeline(settings.pipeline), settings, dry_run=dry_run, resume=resume,
        progress=_progress,
    )  # fmt: skip
    click.echo(script if dry_run else submit_summary(result, settings), nl=not dry_run)


@main.command("status")
@click.argument("run", type=click.Path(file_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def status_command(run, as_json):
    """Each submitted task's job, its scheduler state, its outputs on disk, and why.

    A task is done when its outputs are; a failed task names its log, a task that never
    ran names the failed task it waited for, and a job no node can run shows the
    scheduler's reason.

    \b
    Example:
      fmnist-batch status outputs/quick
    """
    from dataclasses import asdict

    from fmnist.pipeline.status import format_statuses, run_status, status_summary

    statuses = run_status(run)
    if as_json:
        click.echo(json.dumps([asdict(s) for s in statuses], indent=2))
        return
    click.echo(format_statuses(statuses))
    click.echo(status_summary(statuses, run))


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
    from fmnist.pipeline.jobenv import current, save_job_environment

    env = current()
    if save:
        save_job_environment(env, save)
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
    help="Engine variant (default: int8 if it passes the INT8 acceptance check against "
    "f32, else openvino-f32, else keras-predict).",
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
@click.option(
    "--max-rejects",
    default="1%",
    show_default=True,
    metavar="N|P%",
    help="Most rejected rows a shard may have: a count, or a percentage of its rows. "
    "A shard past it keeps no files and the command exits non-zero; finished shards stay.",
)
@click.option("--probabilities", is_flag=True, help="Also write prob_0..prob_9.")
@click.option(
    "--batch-size", type=int, default=256, show_default=True, help="Images per engine call."
)
@click.option(
    "--block-mb",
    type=int,
    default=16,
    show_default=True,
    help="MiB of input parsed per block (CSV text, or Parquet pixels).",
)
def score_command(
    input_csv, run, model, variant, shard, workers, out, on_bad_row, max_rejects,
    probabilities, batch_size, block_mb,
):  # fmt: skip
    """Score images in Kaggle-format CSV (plain or .gz) or Parquet to Parquet, in resumable shards.

    Each shard writes part-I-of-N.parquet, rejects-I-of-N.parquet and a success
    marker; running the same command again skips finished shards.
    The model's files must have the SHA-256 the run's manifest recorded (else see
    `fmnist-batch adopt`).

    \b
    Example:
      fmnist-batch score outputs/test.csv --run outputs/quick --model backup1
      fmnist-batch score big.csv --run RUN --model backup1 --shard auto/8
      fmnist-batch score big.parquet --run RUN --model backup1 --shard all/4 --workers 2
    """
    from fmnist.pipeline.jobenv import require_array_index
    from fmnist.scoring.score import (
        RejectLimitExceeded,
        ScoreConfig,
        default_out_dir,
        default_variant,
        parse_shard_option,
        score_shards,
    )

    if workers < 1 or batch_size < 1 or block_mb < 1:
        raise FmnistError("--workers, --batch-size and --block-mb must be at least 1")
    run = run or default_run_dir()
    indices, count = parse_shard_option(
        shard, workers, array_index=lambda: require_array_index(os.environ)
    )
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
        max_rejects=max_rejects,
        probabilities=probabilities,
        batch_size=batch_size,
        block_bytes=block_mb << 20,
    )
    try:
        results = score_shards(config, indices, workers, progress=_progress)
    except RejectLimitExceeded as exc:
        _echo_shard_results(exc.results)  # the finished shards, then the error
        raise
    _record_job(config.run, f"score {Path(input_csv).name} {model}")
    _echo_shard_results(results)


def _echo_shard_results(results) -> None:
    for result in results:
        head = f"shard {result.index}/{result.shards} {result.status}"
        if result.status == "over-limit":
            click.echo(f"{head}: {result.summary}")
            continue
        click.echo(
            f"{head}: {result.rows_read} rows, {result.predicted} predicted, {result.rejected} "
            f"rejected, {result.rows_per_second:.0f} rows/s, peak RSS "
            f"{result.peak_rss_bytes / 2**20:.0f} MiB -> {result.part}"
        )


@main.command("adopt")
@click.argument("run", type=click.Path(file_okay=False))
@click.argument("files", nargs=-1, required=True)
@click.option("--reason", default="", help="Why the files are adopted; kept in the manifest.")
def adopt_command(run, files, reason):
    """Accept model files as they are now: record their SHA-256 in the run's manifest.

    score, evaluate, benchmark and optimize refuse a model file whose SHA-256 is not
    the one train or optimize recorded. Adopt a file you replaced on purpose (or
    re-run train or optimize instead); the previous hash, the time and --reason stay
    in the manifest under adopted.<file>. FILES are model.keras or an IR's model.xml
    and model.bin, relative to RUN or absolute.

    \b
    Example:
      fmnist-batch adopt outputs/quick models/backup1/model.keras --reason "retrained, seed 1"
      fmnist-batch adopt outputs/quick models/main/openvino/int8/model.xml \\
          models/main/openvino/int8/model.bin
    """
    from fmnist.manifest import SHA_PREFIX, adopt_model_files

    for path, previous, found in adopt_model_files(run, files, reason):
        was = f"was {previous[:SHA_PREFIX]}" if previous else "not recorded before"
        click.echo(f"adopted {path}: sha256 {found[:SHA_PREFIX]} ({was})")


@main.command("verify")
@click.argument("directory", type=click.Path(file_okay=False))
@click.option(
    "--input",
    "input_csv",
    type=click.Path(dir_okay=False),
    default=None,
    help="The scored input, when it moved since scoring (default: the path in the markers).",
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
    that disagrees with its files or the input, a row neither predicted nor rejected,
    rejects past the --max-rejects a shard was scored with.

    \b
    Example:
      fmnist-batch verify outputs/quick/predictions/test/backup1 --merge backup1.parquet
    """
    from fmnist.scoring.verify import merge_parts, verify_predictions

    result = verify_predictions(directory, input_csv, progress=_progress)
    click.echo(f"ok: {result.summary()} ({result.input})")
    if merge:
        rows = merge_parts(result, merge)
        run = enclosing_run(merge)
        if run is not None:  # the merged file is an output of this job in that run
            _record_job(run, f"verify {result.directory} --merge {merge}")
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
    if len(runs) == 1 and files.html.resolve().is_relative_to(Path(runs[0]).resolve()):
        # A report written elsewhere only read the run, and leaves it as it was.
        _record_job(runs[0], "report")
    click.echo(
        f"report: {files.html} ({files.markdown.name}, {files.csv.name}, "
        f"{len(files.figures)} figures, {files.gaps} gap reason(s))"
    )


if __name__ == "__main__":
    main()
