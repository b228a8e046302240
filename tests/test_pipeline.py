"""The jobs/ DAG: expansion into tasks, and the local executor (order, skip, hold)."""

from __future__ import annotations

import os
import signal
import sys
import textwrap

import pytest
from click.testing import CliRunner

from fmnist.cli import main
from fmnist.engines import VARIANTS
from fmnist.io import FmnistError
from fmnist.pipeline import executor
from fmnist.pipeline.executor import run_job_tasks, run_local, run_task
from fmnist.pipeline.spec import Task, expand, load_pipeline

SPEC = """
[profiles.small]
description = "test"
models = ["a", "b"]
variants = ["x", "y"]
limit = 5
[profiles.small.args]
first = "--limit {limit}"
"first:b" = "--limit 7"
last = "--split train"

[[steps]]
name = "first"
for_each = { model = "models" }
command = "data to-csv --split test --out {run}/{model}.csv"
outputs = ["{model}.csv"]

[[steps]]
name = "second"
for_each = { model = "models", variant = "variants" }
needs = ["first"]
command = "data to-csv --split test --limit 3 --out {run}/{model}-{variant}.csv"
outputs = ["{model}-{variant}.csv"]

[[steps]]
name = "last"
needs = ["second"]
command = "data to-csv --split test --limit 2 --out {run}/last.csv --data-dir {data_dir}"
outputs = ["last.csv"]
"""


@pytest.fixture
def spec(tmp_path, dataset_dir):
    path = tmp_path / "pipeline.toml"
    path.write_text(SPEC)
    return path


def test_expand_fans_out_and_matches_needs_on_shared_placeholders(spec, tmp_path):
    tasks = expand(load_pipeline(spec), "small", tmp_path, {"data_dir": "D"})
    by_id = {t.id: t for t in tasks}
    assert list(by_id) == [
        "first:a",
        "first:b",
        "second:a:x",
        "second:a:y",
        "second:b:x",
        "second:b:y",
        "last",
    ]
    assert by_id["second:b:y"].needs == ("first:b",)
    assert set(by_id["last"].needs) == {"second:a:x", "second:a:y", "second:b:x", "second:b:y"}
    assert by_id["first:a"].args[-2:] == ("--limit", "5")
    # A task's own args follow its step's, so the task's value is the one Click keeps.
    assert by_id["first:b"].args[-4:] == ("--limit", "5", "--limit", "7")
    assert by_id["first:a"].outputs == (tmp_path / "a.csv",)
    # A step without for_each: its task id is its name, and its args count once.
    assert by_id["last"].args.count("--split") == 2  # the command's and the profile's
    assert by_id["last"].args[-2:] == ("--split", "train")


def test_the_project_pipeline_expands_for_both_profiles(tmp_path):
    pipeline = load_pipeline()
    for profile in ("quick", "full", "peak"):
        tasks = expand(pipeline, profile, tmp_path)
        ids = [t.id for t in tasks]
        assert {"train:main", "train:backup1", "train:backup2"} <= set(ids)
        for task in tasks:  # dependency order: everything a task needs comes before it
            assert all(ids.index(n) < ids.index(task.id) for n in task.needs)


def test_both_profiles_evaluate_and_benchmark_every_variant(tmp_path):
    # bf16 included: where the CPU has no native bf16, evaluate (--skip-unsupported) and
    # benchmark record it as skipped with the reason, so the report shows why, not a gap.
    pipeline = load_pipeline()
    for profile in ("quick", "full", "peak"):
        tasks = expand(pipeline, profile, tmp_path)
        for model in ("main", "backup1", "backup2"):
            evaluated = {t.id.split(":")[2] for t in tasks if t.id.startswith(f"evaluate:{model}:")}
            assert evaluated == set(VARIANTS), (profile, model)
        for task in (t for t in tasks if t.id.startswith(("evaluate:", "benchmark:"))):
            assert "--variants" not in task.args  # benchmark's default: every variant
        assert all("--skip-unsupported" in t.args for t in tasks if t.id.startswith("evaluate:"))


def test_a_profile_adds_needs_of_single_tasks_on_earlier_ones_of_the_same_step(spec, tmp_path):
    spec.write_text(
        SPEC.replace(
            "[profiles.small.args]",
            '[profiles.small.needs]\n"first:b" = ["first:a"]\n[profiles.small.args]',
        )
    )
    by_id = {t.id: t for t in expand(load_pipeline(spec), "small", tmp_path, {"data_dir": "D"})}
    assert by_id["first:b"].needs == ("first:a",) and by_id["first:a"].needs == ()
    spec.write_text(
        SPEC.replace(
            "[profiles.small.args]",
            '[profiles.small.needs]\n"first:a" = ["first:b"]\n[profiles.small.args]',
        )
    )
    with pytest.raises(FmnistError, match="first:a needs 'first:b', which is no task expanded"):
        expand(load_pipeline(spec), "small", tmp_path, {"data_dir": "D"})


def test_the_peak_profile_trains_the_students_after_their_teacher(tmp_path):
    by_id = {t.id: t for t in expand(load_pipeline(), "peak", tmp_path)}
    assert by_id["train:backup1"].needs == by_id["train:backup2"].needs == ("train:main",)
    assert by_id["train:main"].needs == ()
    for profile in ("quick", "full"):
        assert all(
            not t.needs for t in expand(load_pipeline(), profile, tmp_path) if t.step == "train"
        )


def test_bad_specs_are_clear_errors(tmp_path):
    path = tmp_path / "p.toml"
    path.write_text('[[steps]]\nname = "b"\ncommand = "x"\nneeds = ["a"]\n')
    with pytest.raises(FmnistError, match="needs \\['a'\\], which are not declared before it"):
        load_pipeline(path)
    path.write_text("[[steps]\n")
    with pytest.raises(FmnistError, match="invalid TOML"):
        load_pipeline(path)
    with pytest.raises(FmnistError, match="unknown profile 'huge'"):
        expand(load_pipeline(), "huge", tmp_path)


def test_local_executor_runs_in_order_skips_complete_and_holds_after_failure(
    spec, tmp_path, dataset_dir
):
    run = tmp_path / "run"
    pipeline = load_pipeline(spec)
    tasks = expand(pipeline, "small", run, {"data_dir": str(dataset_dir)})
    outcomes = run_local(tasks, run, jobs=2, progress=lambda m: None)
    assert [o.status for o in outcomes] == ["done"] * 7
    assert (run / "last.csv").exists() and (run / "logs" / "second__a__x.log").exists()

    (run / "b-y.csv").unlink()
    (run / "a-x.csv").unlink()
    messages: list[str] = []
    outcomes = {o.task_id: o.status for o in run_local(tasks, run, progress=messages.append)}
    assert outcomes["second:b:y"] == "done" and outcomes["first:a"] == "skipped"
    # One at a time, a task is announced when it starts, and reported before the next.
    started = [m.split()[1].rstrip(":") for m in messages if m.startswith("[start]")]
    assert started == ["second:a:x", "second:b:y"]
    order = [m.split()[0] for m in messages if m.split()[1].startswith("second:")]
    assert order == ["[skip]", "[skip]", "[start]", "[done]", "[start]", "[done]"]

    broken = expand(pipeline, "small", tmp_path / "broken", {"data_dir": str(tmp_path / "none")})
    outcomes = {
        o.task_id: o.status for o in run_local(broken, tmp_path / "broken", progress=lambda m: None)
    }
    assert outcomes["last"] == "failed" and outcomes["first:a"] == "done"
    log = (tmp_path / "broken" / "logs" / "last.log").read_text()
    assert "missing Fashion-MNIST file" in log


def test_run_dry_run_lists_the_tasks(tmp_path):
    result = CliRunner().invoke(
        main, ["run", "--profile", "quick", "--out", str(tmp_path), "--dry-run"]
    )
    assert result.exit_code == 0
    assert "train:main: fmnist-batch train --model main" in result.output


def test_run_reports_failed_steps_and_exits_nonzero(tmp_path, monkeypatch):
    spec = tmp_path / "p.toml"
    spec.write_text(
        textwrap.dedent("""
        [profiles.quick]
        [[steps]]
        name = "broken"
        command = "data info --data-dir {run}/nowhere"
        outputs = ["never"]
        [[steps]]
        name = "after"
        needs = ["broken"]
        command = "data info"
        [[steps]]
        name = "last"
        needs = ["after"]
        command = "data info"
    """)
    )
    monkeypatch.setenv("FMNIST_PIPELINE", str(spec))
    result = CliRunner().invoke(main, ["run", "--out", str(tmp_path / "run")])
    assert result.exit_code == 1
    assert "broken (failed), after (held), last (held)" in result.output
    # Held two steps down too: a step after a held one never starts.
    assert "[start]   last" not in result.output


def test_a_signal_is_retried_as_the_step_allows_and_a_code_error_never(tmp_path, monkeypatch):
    # The first two runs end by a signal (a marker file counts them), the third succeeds.
    marker = tmp_path / "crashes"
    crash_twice = (
        f"import os, pathlib, signal; m = pathlib.Path({str(marker)!r})\n"
        "n = len(m.read_text()) if m.exists() else 0\n"
        "if n < 2: m.write_text('x' * (n + 1)); os.kill(os.getpid(), [11, 9][n])\n"
        "print('scored')"
    )
    monkeypatch.setattr(executor, "cli_command", lambda args: [sys.executable, "-c", crash_twice])
    task = Task("score:m", "score", ("score",), (tmp_path / "never",), (), {}, {"retries": 2})
    outcome = run_task(task, dict(os.environ), [None], tmp_path / "logs")
    assert outcome.status == "done", outcome.log.read_text()
    log = outcome.log.read_text()
    assert (
        "[retry]   score:m: attempt 1 ended by SIGSEGV (exit status -11) (node-or-signal); "
        "attempt 2 of 3" in log
    )
    assert "attempt 2 ended by SIGKILL (exit status -9) (node-or-signal); attempt 3 of 3" in log
    assert log.startswith("$ fmnist-batch score\n") and log.rstrip().endswith("scored")
    assert [run.end.cause for run in outcome.runs] == ["node-or-signal"] * 2 + ["done"]
    assert all(run.ended >= run.started and run.peak_rss_mb > 1 for run in outcome.runs)
    # A code error is never retried; a signal only as often as the step's retries say.
    code_error = "raise SystemExit(3)"
    kill = "import os, signal; os.kill(os.getpid(), signal.SIGKILL)"
    for code, retries, attempts in ((code_error, 2, 1), (kill, 0, 1), (kill, 1, 2)):
        monkeypatch.setattr(executor, "cli_command", lambda args, c=code: [sys.executable, "-c", c])
        resources = {"retries": retries}
        once = Task("score:m", "score", ("score",), (tmp_path / "never",), (), {}, resources)
        outcome = run_task(once, dict(os.environ), [None], tmp_path / "logs")
        assert outcome.status == "failed" and len(outcome.runs) == attempts
        assert outcome.log.read_text().count("[retry]") == attempts - 1


def test_a_task_a_signal_ends_leaves_its_python_stack_and_names_the_signal(tmp_path, monkeypatch):
    # As a native crash in a runtime's kernels would end an fmnist-batch command.
    crash = "import os, signal; os.kill(os.getpid(), signal.SIGSEGV)"
    monkeypatch.setattr(executor, "cli_command", lambda args: [sys.executable, "-c", crash])
    resources = {"retries": 1}
    task = Task("evaluate:m:v", "evaluate", ("evaluate",), (tmp_path / "never",), (), {}, resources)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHONFAULT", "FMNIST_"))}

    outcome = run_task(task, env, [None], tmp_path / "logs")
    assert outcome.status == "failed" and outcome.returncode == -signal.SIGSEGV
    log = outcome.log.read_text()
    assert "Fatal Python error: Segmentation fault" in log
    # Retried once, then it stands.
    assert log.count("Fatal Python error") == 2 and log.count("[retry]") == 1
    with pytest.raises(FmnistError, match=r"evaluate:m:v failed with SIGSEGV \(exit status -11\)"):
        run_job_tasks([task], env, progress=lambda m: None)
