"""docker-compose.yaml and the Dockerfile agree with the CLI, the settings and the docs."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from client.cli import ClientSettings
from combiner.settings import CombinerSettings
from fedn.cli import build_parser
from reducer.settings import ReducerSettings

ROOT = Path(__file__).resolve().parents[2]
SERVICES = {"mongo", "minio", "reducer", "combiner-0", "combiner-1", "client-0", "client-1"}
SETTINGS = {"FEDN_REDUCER_": ReducerSettings, "FEDN_COMBINER_": CombinerSettings, "FEDN_CLIENT_": ClientSettings}


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yaml").read_text())


def test_services_exist_with_pinned_images_restart_and_healthchecks(compose):
    services = compose["services"]
    assert set(services) == SERVICES
    for name, service in services.items():
        image = service["image"]
        assert ":" in image and not image.endswith(":latest"), f"{name}: image {image} is not pinned"
        assert service.get("restart") == "unless-stopped", name
        if not name.startswith("client"):
            assert "healthcheck" in service, f"{name} has no healthcheck"


def test_fedn_commands_parse_and_env_matches_the_settings(compose):
    parser = build_parser()
    for name, service in compose["services"].items():
        if "build" not in service:
            continue
        args = parser.parse_args(service["command"])
        assert args.func is not None
        for key in service.get("environment", {}):
            prefix = next((p for p in SETTINGS if key.startswith(p)), None)
            assert prefix, f"{name}: {key} is not a fedn setting"
            field = key[len(prefix) :].lower()
            assert field in SETTINGS[prefix].model_fields, f"{name}: {key} matches no field of {SETTINGS[prefix]}"


def test_stores_are_mongo_and_minio_with_credentials_from_the_environment(compose):
    env = compose["services"]["reducer"]["environment"]
    assert env["FEDN_REDUCER_STATE"].startswith("mongodb://") and "${FEDN_MONGO_PASSWORD" in env["FEDN_REDUCER_STATE"]
    assert env["FEDN_REDUCER_MODELS"].startswith("s3://") and "${FEDN_MINIO_SECRET_KEY" in env["FEDN_REDUCER_MODELS"]
    combiner_env = compose["services"]["combiner-0"]["environment"]
    assert combiner_env["FEDN_COMBINER_MODELS"] == env["FEDN_REDUCER_MODELS"]
    assert combiner_env["FEDN_COMBINER_ADVERTISE_HOST"] == "combiner-0"


def test_docs_name_every_service():
    text = (ROOT / "docs" / "deploy.md").read_text()
    for name in SERVICES:
        assert f"`{name}`" in text, f"docs/deploy.md does not mention {name}"


def test_dockerfile_installs_pinned_cpu_torch_and_runs_unprivileged():
    text = (ROOT / "Dockerfile").read_text()
    assert "torch==2.13.0" in text and "USER fedn" in text and 'ENTRYPOINT ["fedn"]' in text


@pytest.mark.skipif(shutil.which("docker-compose") is None, reason="docker-compose is not installed here")
def test_docker_compose_config_is_valid():
    env = {"FEDN_MONGO_PASSWORD": "x", "FEDN_MINIO_SECRET_KEY": "y", "PATH": "/usr/bin:/bin"}
    subprocess.run(
        ["docker-compose", "-f", str(ROOT / "docker-compose.yaml"), "config", "-q"], check=True, env=env, timeout=60
    )
