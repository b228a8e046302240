"""The README documents every command, and starts with the two copy-paste commands."""

from __future__ import annotations

import re
from pathlib import Path

import click

from fmnist.cli import main

PROJECT = Path(__file__).resolve().parent.parent


def command_paths(group: click.Group, prefix: str = "") -> list[str]:
    paths = []
    for name, command in group.commands.items():
        path = f"{prefix}{name}"
        if isinstance(command, click.Group):
            paths += command_paths(command, path + " ")
        else:
            paths.append(path)
    return paths


def test_every_command_is_in_the_readme():
    readme = (PROJECT / "README.md").read_text()
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
    blocks = re.findall(r"```bash\n(.*?)\n```", (PROJECT / "README.md").read_text(), re.S)
    assert "fmnist-batch run --profile quick" in blocks[0]
    assert "pytest" in blocks[1]
