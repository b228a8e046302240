"""The package as users install it: `pip install .` (not editable), run outside the checkout.

The installed package must find its pipeline spec, node types and job scripts without
the checkout (they ship inside it, see fmnist/resources.py).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from conftest import wheel_cli

PROJECT = Path(__file__).resolve().parent.parent


def test_the_wheel_ships_its_spec_node_types_and_job_scripts(installed_wheel, tmp_path):
    located = subprocess.run(
        [installed_wheel / "bin" / "python", "-c", "import fmnist; print(fmnist.__file__)"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    package = Path(located.strip()).parent
    assert installed_wheel in package.parents, located
    shipped = package / "_project"
    for name in ("jobs/pipeline.toml", "jobs/node_types.toml", "pbs/train_main.sh"):
        assert (shipped / name).read_text() == (PROJECT / name).read_text()


def test_submit_dry_run_from_outside_the_checkout(installed_wheel, tmp_path):
    result = wheel_cli(
        installed_wheel,
        *("submit", "--dry-run", "--scheduler", "pbspro", "--out", str(tmp_path / "run")),
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    scripts = installed_wheel.glob("lib/python3*/site-packages/fmnist/_project/pbs")
    assert f"{next(scripts)}/train_main.sh" in result.stdout
    assert "qsub" in result.stdout and str(PROJECT) not in result.stdout


def test_run_dry_run_from_outside_the_checkout(installed_wheel, tmp_path):
    result = wheel_cli(installed_wheel, "run", "--profile", "quick", "--dry-run", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    # The default run directory is relative to where the user stands.
    assert "train:main: fmnist-batch train --model main --out outputs/quick" in result.stdout


def test_missing_project_files_are_named(monkeypatch, tmp_path):
    from fmnist import resources
    from fmnist.io import FmnistError

    monkeypatch.setattr(resources, "CHECKOUT", tmp_path / "checkout")
    monkeypatch.setattr(resources, "SHIPPED", tmp_path / "site" / "fmnist" / "_project")
    monkeypatch.delenv("FMNIST_PIPELINE", raising=False)
    with pytest.raises(FmnistError, match=r"jobs/ not found: .* reinstall fmnist-batch"):
        resources.pipeline_spec()
    monkeypatch.setenv("FMNIST_PIPELINE", str(tmp_path / "mine.toml"))
    assert resources.pipeline_spec() == tmp_path / "mine.toml"
