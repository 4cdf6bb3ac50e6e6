"""A wheel works without the repository: ``pip install .`` then ``ichnode db upgrade``.

The wheel is built from this checkout (no build isolation: nothing to download), installed
with ``pip install --target`` into a temporary folder, and run from another folder, so
neither the repository's ``migrations/`` nor the editable install can stand in for it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_an_installed_wheel_carries_the_migrations_model_and_web_assets(tmp_path):
    wheels, site, work = tmp_path / "wheels", tmp_path / "site", tmp_path / "work"
    work.mkdir()
    build = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q"]
    subprocess.run([*build, "-w", str(wheels), str(ROOT)], check=True, cwd=tmp_path)
    [wheel] = wheels.glob("ichnode-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert {n for n in names if n.startswith("ichnode/_migrations/versions/")} == {
        f"ichnode/_migrations/versions/{p.name}"
        for p in (ROOT / "migrations/versions").glob("*.py")
    }
    assert "ichnode/models/demo.safetensors" in names
    assert any(n.startswith("ichnode/web/static/") for n in names)
    install = [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site)]
    subprocess.run([*install, str(wheel)], check=True, cwd=tmp_path)

    env = {**os.environ, "PYTHONPATH": str(site)}
    where = subprocess.run(
        [sys.executable, "-c", "import ichnode, ichnode.db.migrate as m; "
         "print(ichnode.__file__); print(m.MIGRATIONS_DIR)"],
        cwd=work, env=env, capture_output=True, text=True, check=True,
    ).stdout.split()  # fmt: skip
    assert all(Path(p).is_relative_to(site) for p in where), where
    url = f"sqlite:///{work / 'ichnode.db'}"
    done = subprocess.run(
        [sys.executable, "-m", "ichnode", "db", "upgrade", "--db-url", url],
        cwd=work, env=env, capture_output=True, text=True,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    head = sorted(p.name.split("_")[0] for p in (ROOT / "migrations/versions").glob("*.py"))[-1]
    assert f"is at {head}" in done.stdout
