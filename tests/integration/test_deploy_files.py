"""docker-compose.yaml and the Dockerfile agree with the CLI, the settings and the docs."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from client.cli import ClientSettings
from combiner.settings import CombinerSettings
from fedn.cli import build_parser
from fedn.config import secret_fields
from reducer.settings import ReducerSettings

ROOT = Path(__file__).resolve().parents[2]
SERVICES = {"mongo", "minio", "reducer", "combiner-0", "combiner-1", "client-0", "client-1"}
SETTINGS = {"FEDN_REDUCER_": ReducerSettings, "FEDN_COMBINER_": CombinerSettings, "FEDN_CLIENT_": ClientSettings}


CLI_ENV = {"FEDN_REDUCER", "FEDN_TOKEN_FILE", "FEDN_CA_FILE"}


def test_the_cli_reads_the_environment_the_compose_file_sets():
    source = (ROOT / "fedn" / "cli" / "connect.py").read_text()
    assert all(f'"{name}"' in source for name in CLI_ENV)


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
            if key in CLI_ENV:  # read by `fedn ...` commands run in the container (fedn.cli.connect)
                continue
            prefix = next((p for p in SETTINGS if key.startswith(p)), None)
            assert prefix, f"{name}: {key} is not a fedn setting"
            field = key[len(prefix) :].lower()
            if field.endswith("_file") and field.removesuffix("_file") in secret_fields(SETTINGS[prefix]):
                continue  # a secret read from a file (fedn.config)
            assert field in SETTINGS[prefix].model_fields, f"{name}: {key} matches no field of {SETTINGS[prefix]}"


def test_stores_are_mongo_and_minio_with_credentials_from_secret_files(compose):
    env = compose["services"]["reducer"]["environment"]
    assert env["FEDN_REDUCER_STATE_FILE"] == "/run/secrets/state_url"
    assert env["FEDN_REDUCER_MODELS_FILE"] == "/run/secrets/models_url"
    combiner_env = compose["services"]["combiner-0"]["environment"]
    assert combiner_env["FEDN_COMBINER_MODELS_FILE"] == env["FEDN_REDUCER_MODELS_FILE"]
    assert combiner_env["FEDN_COMBINER_ADVERTISE_HOST"] == "combiner-0"
    mongo_env = compose["services"]["mongo"]["environment"]
    assert mongo_env["MONGO_INITDB_ROOT_PASSWORD_FILE"] == "/run/secrets/mongo_password"


def test_no_secret_is_in_the_compose_file_and_every_secret_file_is_mounted(compose):
    declared = set(compose["secrets"])
    assert all(spec["file"].startswith("./secrets/") for spec in compose["secrets"].values())
    for name, service in compose["services"].items():
        mounted = set(service.get("secrets", []))
        assert mounted <= declared, name
        for key, value in service.get("environment", {}).items():
            assert not re.search(r"://[^/@\s]*:[^@\s]*@", str(value)), f"{name}: {key} holds a credential"
            is_path = str(value).startswith("/run/secrets/")  # a key's file (TLS, token signing), mounted
            assert not re.search(r"PASSWORD$|SECRET|_KEY$", key) or key.endswith("_FILE") or is_path, f"{name}: {key}"
            if key.endswith("_FILE") or is_path:
                assert value.removeprefix("/run/secrets/") in mounted, f"{name}: {key} names an unmounted secret"


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


def test_the_provisioning_command_in_the_compose_header_makes_every_pki_secret(compose, tmp_path):
    from fedn.provision import main as provision

    header = (ROOT / "docker-compose.yaml").read_text().split("python -m fedn.provision ", 1)[1]
    argv = header.split("\n#   python3", 1)[0].replace("\\\n#", " ").split()
    argv[0] = str(tmp_path / argv[0].removeprefix("secrets/"))
    assert provision(argv) == 0
    for name, spec in compose["secrets"].items():
        if spec["file"].startswith("./secrets/pki/"):
            path = tmp_path / spec["file"].removeprefix("./secrets/")
            assert path.is_file(), f"{name}: {path} was not made"
            if not path.name.endswith(("ca.key",)):
                assert path.stat().st_mode & 0o044, f"{name} is not readable by the container's user"
