"""The documentation never drifts from the CLI.

README.md is a short front door: the two copy-paste commands, every command in brief and
links to the topic pages in docs/. docs/cli.md documents every option of every command,
each in that command's section (`## fmnist-batch score`). A new command or option fails
here until it is documented.
"""

from __future__ import annotations

import importlib.util
import re
import subprocess
from pathlib import Path

import click
import pytest

from fmnist.cli import main

PROJECT = Path(__file__).resolve().parent.parent
README = PROJECT / "README.md"
DOCS = PROJECT / "docs"
CLI_MD = DOCS / "cli.md"
README_MAX_LINES = 220
TOPIC_PAGES = [
    "docs/cli.md",
    "docs/scheduler.md",
    "docs/scoring.md",
    "docs/optimization-and-benchmark.md",
    "docs/report.md",
    "docs/recipes-and-accuracy.md",
    "docs/results.md",
]


def all_commands(
    command: click.Command = main, path: str = "fmnist-batch"
) -> list[tuple[str, click.Command]]:
    """Every command and group under ``command``, as (``fmnist-batch data to-csv``, command)."""
    found = [(path, command)]
    if isinstance(command, click.Group):
        for name in sorted(command.commands):
            found += all_commands(command.commands[name], f"{path} {name}")
    return found


def command_paths(group: click.Group, prefix: str = "") -> list[str]:
    """The runnable commands (leaves) under ``group``: ``data to-csv``, ``train``, ..."""
    paths = []
    for name, command in group.commands.items():
        path = f"{prefix}{name}"
        if isinstance(command, click.Group):
            paths += command_paths(command, path + " ")
        else:
            paths.append(path)
    return paths


def long_options(command: click.Command) -> list[str]:
    """Every long option the command's --help shows, with the --no-x form of a flag pair.

    --help itself is left out: every command has it, and docs/cli.md says so once.
    """
    names = []
    for param in command.params:
        if isinstance(param, click.Option) and not param.hidden:
            names += [name for name in param.opts + param.secondary_opts if name.startswith("--")]
    return [name for name in names if name != "--help"]


def cli_md_sections() -> dict[str, str]:
    """``fmnist-batch <path>`` -> the text of its ``## fmnist-batch <path>`` section."""
    sections: dict[str, str] = {}
    current = None
    for line in CLI_MD.read_text().splitlines():
        heading = re.match(r"#{1,2} (.*)$", line)
        if heading:
            title = heading.group(1).strip().strip("`")
            current = title if title.startswith("fmnist-batch") else None
            if current is not None:
                sections[current] = ""
        elif current is not None:
            sections[current] += line + "\n"
    return sections


def mentions(text: str, option: str) -> bool:
    """``option`` appears in ``text`` as a whole word (``--run`` is not ``--run-dir``)."""
    return re.search(rf"(?<![\w-]){re.escape(option)}(?![\w-])", text) is not None


def test_every_command_is_in_the_readme():
    readme = README.read_text()
    listed = set()
    for line in readme.splitlines():
        match = re.match(r"fmnist-batch (\S+)(?: (\S+))?", line.strip())
        if match:
            listed.add(match.group(1))
            # `data info | verify | to-csv`: every alternative of a sub-group line.
            listed.update(
                f"{match.group(1)} {part.split()[0]}"
                for part in line.split(match.group(1), 1)[1].split("|")
                if part.split()
            )
    missing = [path for path in command_paths(main) if path not in listed]
    assert not missing, f"commands missing from README.md: {missing}"


def test_readme_opens_with_the_run_and_test_commands():
    readme = README.read_text()
    blocks = re.findall(r"```bash\n(.*?)\n```", readme, re.S)
    first_heading = re.search(r"^## ", readme, re.M)
    assert first_heading is None or readme.index(blocks[1]) < first_heading.start(), (
        "the two bash blocks must come before the first section of README.md"
    )
    for step in (
        "apt-get install -y dataset-fashion-mnist",
        "python3 -m venv .venv",
        ".venv/bin/pip install -e '.[test]'",
        ".venv/bin/fmnist-batch run --profile quick --out outputs/quick",
    ):
        assert step in blocks[0], f"the first bash block of README.md lacks {step!r}"
    assert ".venv/bin/python -m pytest -q" in blocks[1]


@pytest.mark.parametrize("with_sudo", [False, True], ids=["root-without-sudo", "user-with-sudo"])
def test_readme_first_command_runs_with_and_without_sudo(tmp_path, with_sudo):
    # The first line as bash runs it, apt-get stubbed: in a root shell of a fresh machine
    # (no sudo on PATH) and as a user whose PATH has sudo.
    readme = README.read_text()
    first_line = re.findall(r"```bash\n(.*?)\n```", readme, re.S)[0].splitlines()[0]
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "apt-get").write_text('#!/bin/sh\necho "apt-get $*"\n')
    if with_sudo:
        (bin_dir / "sudo").write_text('#!/bin/sh\necho "sudo $*"\n')
    for tool in bin_dir.iterdir():
        tool.chmod(0o755)
    result = subprocess.run(
        ["/bin/bash", "-c", first_line],
        env={"PATH": str(bin_dir)},
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    prefix = "sudo apt-get" if with_sudo else "apt-get"
    assert result.stdout.splitlines() == [
        f"{prefix} update",
        f"{prefix} install -y dataset-fashion-mnist python3-venv",
    ]


def test_readme_is_a_short_front_door():
    lines = README.read_text().splitlines()
    assert len(lines) <= README_MAX_LINES, (
        f"README.md has {len(lines)} lines, at most {README_MAX_LINES}: "
        "move reference material to a page in docs/"
    )
    text = "\n".join(lines)
    assert "<!-- results:" not in text, "generated results belong in docs/results.md"


@pytest.mark.parametrize("path, command", all_commands(), ids=[path for path, _ in all_commands()])
def test_cli_md_documents_every_option_of_the_command(path, command):
    sections = cli_md_sections()
    assert path in sections, f"docs/cli.md has no section '## {path}': document the command"
    missing = [option for option in long_options(command) if not mentions(sections[path], option)]
    assert not missing, (
        f"docs/cli.md, section '## {path}': document {', '.join(missing)} (see `{path} --help`)"
    )


def test_cli_md_documents_no_command_that_is_gone():
    known = {path for path, _ in all_commands()}
    stale = [path for path in cli_md_sections() if path not in known]
    assert not stale, f"docs/cli.md has sections for commands that do not exist: {stale}"


def heading_anchors(markdown: str) -> set[str]:
    """The anchors GitHub gives the headings of a Markdown page."""
    anchors = set()
    in_code = False
    for line in markdown.splitlines():
        if line.startswith("```"):
            in_code = not in_code
        heading = None if in_code else re.match(r"#{1,6} (.*)$", line)
        if heading:
            title = heading.group(1).strip().lower()
            anchors.add(re.sub(r"[^\w\- ]", "", title).replace(" ", "-"))
    return anchors


def relative_links(markdown: str) -> list[str]:
    """The targets of the page's Markdown links that point inside the repository."""
    targets = re.findall(r"\[[^\]]*\]\(([^)\s]+)\)", markdown)
    return [target for target in targets if not re.match(r"[a-z]+:", target)]


def test_readme_links_every_topic_page():
    links = {link.split("#")[0] for link in relative_links(README.read_text())}
    missing = [page for page in TOPIC_PAGES if page not in links]
    assert not missing, f"README.md does not link these pages of docs/: {missing}"


@pytest.mark.parametrize("page", [README, *sorted(DOCS.glob("*.md"))], ids=lambda page: page.name)
def test_links_resolve(page):
    broken = []
    for link in relative_links(page.read_text()):
        target, _, anchor = link.partition("#")
        file = (page.parent / target).resolve() if target else page
        if not file.is_file():
            broken.append(f"{link} (no file {file.relative_to(PROJECT)})")
        elif anchor and file.suffix == ".md" and anchor not in heading_anchors(file.read_text()):
            broken.append(f"{link} (no heading #{anchor})")
    assert not broken, f"{page.relative_to(PROJECT)}: broken links: {broken}"


REPORT_MD = """# fmnist-batch comparison report

## RESULTS: the seed's table regenerated

| RESULTS | m |
| --- | --: |
| **Parameters** | 1 |

## Speedups per node type

### Batch-1 latency

| model | p50 |
| --- | --: |

### Throughput per batch size

Batch size 1

| b1 |

Batch size 256

| b256 |

[1] a footnote

## Accuracy change of each optimized variant

| acc |

## Yardstick: OpenVINO benchmark_app on the same IR

| yard |

## Per model
"""


def test_the_reference_results_are_the_reports_tables():
    spec = importlib.util.spec_from_file_location(
        "update_results", PROJECT / "scripts" / "update_results.py"
    )
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)

    assert script.RESULTS == DOCS / "results.md"
    block = script.reference_tables(REPORT_MD)
    assert block.startswith("### RESULTS: the seed's table regenerated\n\n| RESULTS | m |")
    assert "#### Batch-1 latency" in block and "| b256 |\n\n[1] a footnote" in block
    assert "| b1 |" not in block and "| acc |" not in block  # only batch 256, no accuracy
    assert block.endswith("| yard |")
    page = script.RESULTS.read_text()
    assert page.count(script.START) == 1 and page.count(script.END) == 1
    updated = script.replace_between_markers(page, block)
    assert (
        updated.count(block) == 1
        and updated.split(script.START)[0] == page.split(script.START)[0]
        and updated.split(script.END)[1] == page.split(script.END)[1]
    )
