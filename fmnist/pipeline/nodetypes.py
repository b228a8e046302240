"""The node-type catalog of ``jobs/node_types.toml``: each kind of node as data.

A node type is its CPUs and the label that marks such a node. :func:`request_args` is
the one place that spells it as a scheduler request, and :func:`node_offers` (in
:mod:`fmnist.pipeline.nodes`) reads the same two values to judge a cluster's nodes:
nothing parses a request back. Names are checked once, by :func:`check_names`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from fmnist.io import FmnistError, read_toml
from fmnist.resources import node_type_catalog

FLAVORS = ("torque", "pbspro", "slurm")
# The PBS Pro host resource that carries the label, unless the catalog names another.
DEFAULT_LABEL_RESOURCE = "cpu_type"


@dataclass(frozen=True)
class NodeType:
    """A kind of node (``spr``): the CPUs a job takes on it and the label that marks it.

    ``label`` is empty for a type any node offers (``local``). ``label_resource`` is how
    PBS Pro names the label: a custom host resource (``cpu_type``).
    """

    name: str
    description: str
    cpus: int
    label: str = ""
    label_resource: str = DEFAULT_LABEL_RESOURCE

    def request(self, flavor: str, memory_mb: int | None = None) -> tuple[str, ...]:
        """The qsub/sbatch arguments that ask ``flavor`` for this node type."""
        return request_args(flavor, self, memory_mb)


def request_args(flavor: str, node_type: NodeType, memory_mb: int | None = None) -> tuple[str, ...]:
    """A node type, and the job's memory if it asks for some, in ``flavor``'s words (pure)::

    torque  -l nodes=1:icx:ppn=2          -l mem=2048mb
    pbspro  -l select=1:ncpus=2:cpu_type=icx:mem=2048mb
    slurm   --ntasks=2 --constraint=icx   --mem=2048M
    """
    cpus, label = node_type.cpus, node_type.label
    if flavor == "torque":
        nodes = ("-l", "nodes=1:" + (f"{label}:" if label else "") + f"ppn={cpus}")
        return nodes + (("-l", f"mem={memory_mb}mb") if memory_mb else ())
    if flavor == "pbspro":
        # PBS Pro refuses a job-wide -l mem beside select: memory is a chunk resource.
        chunk = f"select=1:ncpus={cpus}"
        chunk += f":{node_type.label_resource}={label}" if label else ""
        return ("-l", chunk + (f":mem={memory_mb}mb" if memory_mb else ""))
    if flavor == "slurm":
        memory = (f"--mem={memory_mb}M",) if memory_mb else ()
        return (f"--ntasks={cpus}", *((f"--constraint={label}",) if label else ()), *memory)
    raise FmnistError(f"unknown scheduler {flavor!r}; valid: {', '.join(FLAVORS)}")


def _positive_int(value, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise FmnistError(f"{where}: cpus must be a whole number of at least 1, not {value!r}")
    return value


def parse_node_types(raw: dict, source: Path | str) -> dict[str, NodeType]:
    """The catalog's TOML document as node types, checked (pure)."""
    resource = raw.get("flavors", {}).get("pbspro", {}).get("label_resource")
    resource = resource or DEFAULT_LABEL_RESOURCE
    types = {}
    for name, body in raw.get("node_types", {}).items():
        where = f"{source}: node type {name!r}"
        if "cpus" not in body:
            raise FmnistError(f"{where} has no cpus (the CPUs a job takes on such a node)")
        unknown = sorted(set(body) - {"description", "cpus", "label"})
        if unknown:
            raise FmnistError(f"{where}: unknown key(s) {', '.join(unknown)}")
        label = str(body.get("label", ""))
        if label and not label.replace("_", "").replace("-", "").isalnum():
            raise FmnistError(f"{where}: label {label!r} must be letters, digits, - or _")
        types[name] = NodeType(
            name=name,
            description=str(body.get("description", "")),
            cpus=_positive_int(body["cpus"], where),
            label=label,
            label_resource=resource,
        )
    if not types:
        raise FmnistError(f"{source}: no [node_types.<name>] entries")
    return types


def load_node_types(path: Path | str | None = None) -> dict[str, NodeType]:
    """Read and check the node-type catalog (default: ``jobs/node_types.toml``)."""
    path = Path(path) if path else node_type_catalog()
    return parse_node_types(read_toml(path, "node-type catalog"), path)


def node_type_names(path: Path | str | None = None) -> tuple[str, ...]:
    """The names in the catalog, in declaration order."""
    return tuple(load_node_types(path))


def split_names(text: str) -> list[str]:
    """``"spr, icx,spr"`` -> ``["spr", "icx"]`` (not checked: see :func:`check_names`)."""
    names = list(dict.fromkeys(name.strip() for name in text.split(",") if name.strip()))
    if not names:
        raise FmnistError("--node-type: give at least one node type")
    return names


def check_names(names: list[str], catalog: dict[str, NodeType]) -> list[str]:
    """``names`` when every one is in the catalog; else one error naming the unknown ones."""
    unknown = [name for name in names if name not in catalog]
    if unknown:
        raise FmnistError(
            f"unknown node type(s) {', '.join(unknown)}; known: {', '.join(catalog)} "
            f"(add one to {node_type_catalog()})"
        )
    return names
