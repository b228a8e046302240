"""Build hook: a wheel carries the pipeline spec, node types and job scripts in the package.

They live at the top of the project (``jobs/``, ``pbs/``) where users read and edit them;
an installed (non-editable) package finds its copy in ``fmnist/_project/`` instead
(the rule is in ``fmnist/resources.py``). Everything else is in pyproject.toml.
"""

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

PROJECT = Path(__file__).resolve().parent
SHIPPED = {"jobs": "*.toml", "pbs": "*.sh"}


class BuildWithProjectFiles(build_py):
    """``build_py`` that also copies ``jobs/*.toml`` and ``pbs/*.sh`` into the package."""

    def run(self):
        super().run()
        if getattr(self, "editable_mode", False):
            return  # an editable install reads them from the checkout itself
        target = Path(self.build_lib) / "fmnist" / "_project"
        for directory, pattern in SHIPPED.items():
            for source in sorted((PROJECT / directory).glob(pattern)):
                destination = target / directory / source.name
                destination.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(source, destination)


setup(cmdclass={"build_py": BuildWithProjectFiles})
