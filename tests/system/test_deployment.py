"""The deployment files: compose structure, the container config, Dockerfile vs README.

No Docker engine runs on the development machine or in CI, so the image is not built here;
these tests check what can be checked without one.
"""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from ichnode.config import load_settings

REPO = Path(__file__).resolve().parents[2]
COMPOSE = yaml.safe_load((REPO / "docker" / "compose.yaml").read_text())
DOCKERFILE = (REPO / "docker" / "Dockerfile").read_text()
README = (REPO / "README.md").read_text()


def test_compose_has_postgres_one_serve_two_workers_and_orthanc():
    services = COMPOSE["services"]
    assert set(services) == {"postgres", "ichnode", "worker", "orthanc"}
    assert services["ichnode"]["command"][0] == "serve"
    assert services["worker"]["command"][0] == "worker"
    assert services["worker"]["deploy"]["replicas"] == 2


def test_every_long_running_service_has_a_health_check():
    for name in ("postgres", "ichnode", "orthanc"):
        assert COMPOSE["services"][name]["healthcheck"]["test"], name


def test_serve_and_workers_share_the_store_volume():
    def volumes(name):
        return {v.split(":")[0] for v in COMPOSE["services"][name]["volumes"]}

    assert "store" in volumes("ichnode") & volumes("worker")
    assert {"db", "store", "orthanc"} <= set(COMPOSE["volumes"])


def test_container_config_is_valid_and_points_at_the_compose_services():
    settings = load_settings(REPO / "docker" / "ichnode.toml")
    assert settings.db_url.startswith("postgresql+psycopg://") and "@postgres/" in settings.db_url
    (dest,) = settings.destinations
    assert dest.host == "orthanc" and dest.port == 4242
    orthanc_ports = COMPOSE["services"]["orthanc"]["ports"]
    assert any(p.endswith(":4242") for p in orthanc_ports)
    assert str(settings.store).startswith("/var/lib/ichnode")


def test_dockerfile_installs_and_runs_with_the_readme_commands():
    install = re.search(r"^RUN (pip install .+)$", DOCKERFILE, re.M).group(1)
    assert install in README
    cmd = re.search(r"^CMD \[(.+)\]$", DOCKERFILE, re.M).group(1)
    words = ["ichnode", *(w.strip().strip('"') for w in cmd.split(","))]
    assert " ".join(words) in README


def test_readme_says_what_was_not_built_here():
    assert "not built" in README.lower()
