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

from fmnist.pipeline.nodetypes import NodeType
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


def node_offers(node: Node, flavor: str, node_type: NodeType) -> bool:
    """True when ``node`` has the CPUs and the label ``node_type`` asks for (pure).

    The label is a host resource on PBS Pro (``cpu_type``), a property on Torque and a
    feature on Slurm; a type without a label fits any node with the CPUs.
    """
    if node.cpus and node_type.cpus > node.cpus:
        return False
    if not node_type.label:
        return True
    key = node_type.label_resource if flavor == "pbspro" else "feature"
    return node_type.label in node.labels.get(key, frozenset())


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
