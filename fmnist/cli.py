"""The ``fmnist-batch`` command line: option parsing only, the work lives in the library."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from fmnist.io import FmnistError

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
    type=click.Choice(["seed", "tuned"]),
    default="seed",
    show_default=True,
    help="seed: the report's recipe; tuned: label smoothing + best-epoch restore.",
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
    last = result.history.iloc[-1] if len(result.history) else None
    click.echo(
        f"trained {model}: {len(result.history)} epochs in {result.wall_seconds:.1f}s"
        + (f", val_accuracy {last['val_accuracy']:.4f}" if last is not None else "")
        + f" -> {result.model_path}"
    )


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
@data_dir_option
def evaluate_command(run, model, variant, limit, data_dir):
    """Test-set accuracy, loss, per-class metrics and confusion matrix to Parquet.

    \b
    Example:
      fmnist-batch evaluate --run outputs/try --model backup1
    """
    from fmnist.evaluate import classification_report, evaluate_model

    evaluation = evaluate_model(run, model, variant, limit=limit, data_dir=data_dir)
    click.echo(
        f"{model} ({variant}, executed {evaluation.executed_precision}) "
        f"on {evaluation.images} test images"
    )
    click.echo(classification_report(evaluation))


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
    from fmnist.pipeline import expand, load_pipeline, run_local

    out = Path(out or f"outputs/{profile}")
    tasks = expand(load_pipeline(), profile, out)
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


if __name__ == "__main__":
    main()
