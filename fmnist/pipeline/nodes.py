"""The nodes of a cluster, and whether a node type's request fits one of them.

``fmnist-batch submit`` warns when a requested node type matches no node: Torque and
Slurm would refuse its jobs, PBS Pro would queue them forever. Each flavor lists its
nodes its own way:

- Torque: ``pbsnodes -a``, node properties (``properties = local,icx``);
- PBS Pro: ``pbsnodes -a -F json``, host resources (``resources_available.cpu_type``);
- Slurm: ``sinfo -h -N -o %N|%c|%f``, node features.

Everything but :func:`list_nodes` is a pure function of its arguments.
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass

from fmnist.pipeline.scheduler import run_command


@dataclass(frozen=True)
class Node:
    """A node as its scheduler describes it: the CPUs and the labels a request can name."""

    name: str
    cpus: int
    labels: dict[str, frozenset[str]]  # resource or "feature" -> values


def parse_pbsnodes_json(text: str) -> list[Node]:
    """PBS Pro's ``pbsnodes -a -F json``: each node's ``resources_available``."""
    nodes = []
    for name, body in json.loads(text).get("nodes", {}).items():
        available = body.get("resources_available", {})
        labels = {
            key: frozenset(v.strip() for v in str(value).split(","))
            for key, value in available.items()
        }
        nodes.append(Node(name, int(available.get("ncpus", 0) or 0), labels))
    return nodes


def parse_pbsnodes_text(text: str) -> list[Node]:
    """Torque's ``pbsnodes -a``: each node's ``np`` and ``properties``."""
    nodes = []
    for block in re.split(r"\n\s*\n", text.strip()):
        lines = block.splitlines()
        if not lines or lines[0].startswith(" "):
            continue
        attributes = dict(re.findall(r"^\s+(\w+) = (.*)$", block, re.MULTILINE))
        properties = frozenset(p for p in attributes.get("properties", "").split(",") if p)
        np = attributes.get("np", "0")
        nodes.append(
            Node(lines[0].strip(), int(np) if np.isdigit() else 0, {"feature": properties})
        )
    return nodes


def parse_sinfo_nodes(text: str) -> list[Node]:
    """``sinfo -h -N -o %N|%c|%f``: each node's CPUs and features."""
    nodes = []
    for line in text.splitlines():
        parts = line.strip().split("|")
        if len(parts) == 3:
            name, cpus, features = parts
            labels = {"feature": frozenset(f for f in features.split(",") if f and f != "(null)")}
            nodes.append(Node(name, int(cpus) if cpus.isdigit() else 0, labels))
    return nodes


# Resources of a PBS Pro chunk that every node has: only custom ones name a node type.
_PBS_GENERIC = {"ncpus", "mem", "vmem", "mpiprocs", "ompthreads", "ngpus", "nodect"}


def request_needs(flavor: str, request: tuple[str, ...]) -> tuple[int, dict[str, str]]:
    """The CPUs and labels a node-type request asks of one node (pure).

    ``-l select=1:ncpus=2:cpu_type=icx`` -> (2, {"cpu_type": "icx"});
    ``-l nodes=1:icx:ppn=2`` and ``--constraint=icx`` -> ({"feature": "icx"}).
    """
    cpus, labels = 0, {}
    words = list(request)
    for i, word in enumerate(words):
        value = words[i + 1] if word == "-l" and i + 1 < len(words) else word
        if flavor == "pbspro" and value.startswith("select="):
            for part in value.removeprefix("select=").split("+")[0].split(":")[1:]:
                key, _, amount = part.partition("=")
                if key == "ncpus" and amount.isdigit():
                    cpus = int(amount)
                elif key not in _PBS_GENERIC:
                    labels[key] = amount
        elif flavor == "torque" and value.startswith("nodes="):
            for part in value.removeprefix("nodes=").split("+")[0].split(":")[1:]:
                key, _, amount = part.partition("=")
                if key == "ppn" and amount.isdigit():
                    cpus = int(amount)
                elif not amount and not key.isdigit():
                    labels.setdefault("feature", set()).add(key)
        elif flavor == "slurm" and value.startswith("--constraint="):
            for feature in re.findall(r"[A-Za-z0-9_-]+", value.removeprefix("--constraint=")):
                labels.setdefault("feature", set()).add(feature)
    return cpus, labels


def node_offers(node: Node, cpus: int, labels: dict) -> bool:
    """True when ``node`` has the CPUs and every label a request asks for."""
    if cpus and node.cpus and cpus > node.cpus:
        return False
    for key, wanted in labels.items():
        wanted = {wanted} if isinstance(wanted, str) else set(wanted)
        if not wanted <= node.labels.get(key, frozenset()):
            return False
    return True


def list_nodes(flavor: str) -> list[Node] | None:
    """The cluster's nodes, or None when the scheduler does not say."""
    commands = {
        "pbspro": (["pbsnodes", "-a", "-F", "json"], parse_pbsnodes_json),
        "torque": (["pbsnodes", "-a"], parse_pbsnodes_text),
        "slurm": (["sinfo", "-h", "-N", "-o", "%N|%c|%f"], parse_sinfo_nodes),
    }
    command, parse = commands[flavor]
    if not shutil.which(command[0]):
        return None
    result = run_command(command, check=False)
    if result.returncode != 0:
        return None
    try:
        return parse(result.stdout) or None
    except (ValueError, KeyError):
        return None  # an answer this parser does not understand: cannot tell
