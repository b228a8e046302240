"""Where the project's declarative files are: the pipeline spec, the node types, the job scripts.

They live at the top of the project (``jobs/``, ``pbs/``) and a wheel carries a copy of
them inside the package (``fmnist/_project/``, written by the build). The rule, first
match wins:

1. an explicit path: ``FMNIST_PIPELINE`` (a spec file), ``FMNIST_NODE_TYPES`` (a catalog
   file), ``FMNIST_SCRIPTS`` (a directory of job scripts);
2. the project checkout this package is imported from (running from source or an
   editable install), so edits to ``jobs/`` and ``pbs/`` take effect at once;
3. the copy shipped in the installed package.
"""

from __future__ import annotations

import os
from pathlib import Path

from fmnist.io import FmnistError

PACKAGE = Path(__file__).resolve().parent
CHECKOUT = PACKAGE.parent
SHIPPED = PACKAGE / "_project"
# Each directory the package ships, and a file that must be in it.
SHIPPED_DIRS = {"jobs": "pipeline.toml", "pbs": "train_main.sh"}


def project_dir(name: str) -> Path:
    """``jobs`` or ``pbs`` of the checkout, else of the installed package (see module doc)."""
    probe = SHIPPED_DIRS[name]
    for base in (CHECKOUT, SHIPPED):
        if (base / name / probe).is_file() and (base is SHIPPED or _is_checkout(base)):
            return base / name
    raise FmnistError(
        f"{name}/ not found: neither in the project checkout ({CHECKOUT}) nor shipped in "
        f"the package ({SHIPPED}); reinstall fmnist-batch, or set FMNIST_PIPELINE, "
        "FMNIST_NODE_TYPES and FMNIST_SCRIPTS"
    )


def _is_checkout(base: Path) -> bool:
    return (base / "pyproject.toml").is_file() and (base / "fmnist").is_dir()


def pipeline_spec() -> Path:
    """The pipeline spec in use: ``FMNIST_PIPELINE`` or ``jobs/pipeline.toml``."""
    return Path(os.environ.get("FMNIST_PIPELINE") or project_dir("jobs") / "pipeline.toml")


def node_type_catalog() -> Path:
    """The node-type catalog in use: ``FMNIST_NODE_TYPES`` or ``jobs/node_types.toml``."""
    return Path(os.environ.get("FMNIST_NODE_TYPES") or project_dir("jobs") / "node_types.toml")


def scripts_dir() -> Path:
    """The job scripts' directory: ``FMNIST_SCRIPTS`` or ``pbs/``."""
    return Path(os.environ.get("FMNIST_SCRIPTS") or project_dir("pbs"))
