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


def test_the_readme_reference_block_is_the_reports_tables():
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "update_readme_results", PROJECT / "scripts" / "update_readme_results.py"
    )
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)

    block = script.reference_tables(REPORT_MD)
    assert block.startswith("### RESULTS: the seed's table regenerated\n\n| RESULTS | m |")
    assert "#### Batch-1 latency" in block and "| b256 |\n\n[1] a footnote" in block
    assert "| b1 |" not in block and "| acc |" not in block  # only batch 256, no accuracy
    assert block.endswith("| yard |")
    readme = (PROJECT / "README.md").read_text()
    assert readme.count(script.START) == 1 and readme.count(script.END) == 1
    updated = script.replace_between_markers(readme, block)
    assert (
        updated.count(block) == 1
        and updated.split(script.START)[0] == readme.split(script.START)[0]
    )
