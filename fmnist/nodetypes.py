"""The node-type catalog of ``jobs/node_types.toml``: each name's request per scheduler flavor."""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from pathlib import Path

from fmnist.io import FmnistError, read_toml
from fmnist.resources import node_type_catalog

FLAVORS = ("torque", "pbspro", "slurm")


@dataclass(frozen=True)
class NodeType:
    """A kind of node (``spr``) and the qsub/sbatch arguments that ask for it."""

    name: str
    description: str
    requests: dict[str, tuple[str, ...]]  # flavor -> arguments

    def request(self, flavor: str) -> tuple[str, ...]:
        return self.requests[flavor]


def load_node_types(path: Path | str | None = None) -> dict[str, NodeType]:
    """Parse and check the node-type catalog: every entry names a request for every flavor."""
    path = Path(path) if path else node_type_catalog()
    raw = read_toml(path, "node-type catalog")
    types = {}
    for name, body in raw.get("node_types", {}).items():
        missing = [flavor for flavor in FLAVORS if flavor not in body]
        if missing:
            raise FmnistError(
                f"{path}: node type {name!r} has no request for {', '.join(missing)} "
                "(use an empty string for no request)"
            )
        types[name] = NodeType(
            name=name,
            description=body.get("description", ""),
            requests={flavor: tuple(shlex.split(body[flavor])) for flavor in FLAVORS},
        )
    if not types:
        raise FmnistError(f"{path}: no [node_types.<name>] entries")
    return types


def node_type_names(path: Path | str | None = None) -> tuple[str, ...]:
    """The names in the catalog, in declaration order."""
    return tuple(load_node_types(path))


def parse_node_type_list(text: str, catalog: dict[str, NodeType]) -> list[str]:
    """``"spr,icx"`` -> ``["spr", "icx"]``, each checked against the catalog."""
    names = [name.strip() for name in text.split(",") if name.strip()]
    if not names:
        raise FmnistError("--node-type: give at least one node type")
    unknown = [name for name in names if name not in catalog]
    if unknown:
        raise FmnistError(
            f"unknown node type(s) {', '.join(unknown)}; known: {', '.join(catalog)} "
            f"(add one to {node_type_catalog()})"
        )
    return list(dict.fromkeys(names))
