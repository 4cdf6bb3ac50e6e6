"""Build hook: ship ``migrations/`` inside the wheel, as ``ichnode/_migrations``.

The Alembic scripts live at the repository root (the project's layout); a source checkout or
an editable install reads them there. A wheel (``pip install .``, or from an index) has no
repository root, so the build copies them into the package and ``ichnode.db.migrate`` finds
them there. Everything else is configured in ``pyproject.toml``.
"""

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

MIGRATIONS = Path(__file__).resolve().parent / "migrations"


class BuildPyWithMigrations(build_py):
    def run(self) -> None:
        super().run()
        if getattr(self, "editable_mode", False):
            return  # an editable install reads the repository's own folder
        target = Path(self.build_lib) / "ichnode" / "_migrations"
        shutil.copytree(
            MIGRATIONS, target, dirs_exist_ok=True, ignore=shutil.ignore_patterns("__pycache__")
        )


setup(cmdclass={"build_py": BuildPyWithMigrations})
