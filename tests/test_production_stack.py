"""The production stack's files (docker-compose.yml, .env.example, Dockerfile) agree with the code.

Fast: nothing here loads a model, starts a container or needs docker.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import get_args
from urllib.parse import urlsplit

import pytest
import yaml
from dotenv import dotenv_values
from pydantic import AliasChoices

from r3.settings import Settings

pytestmark = pytest.mark.process  # the suite's tiers: tests/conftest.py

ROOT = Path(__file__).resolve().parent.parent
ENV_EXAMPLE = ROOT / ".env.example"
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
R3_SERVICES = ("migrate", "server", "trainer")
# A commented-out setting: `# R3_NAME=...`, a setting left at its default (none) on purpose.
COMMENTED_SETTING = re.compile(r"^#\s*(R3_[A-Z0-9_]+)=", re.MULTILINE)


def setting_env_names() -> set[str]:
    """The environment variables Settings reads, as pydantic-settings derives them."""
    prefix = Settings.model_config.get("env_prefix", "")
    names = set()
    for name, field in Settings.model_fields.items():
        alias = field.validation_alias or field.alias
        if isinstance(alias, str):
            names.add(alias.upper())
        elif isinstance(alias, AliasChoices):
            names.update(choice.upper() for choice in alias.choices if isinstance(choice, str))
        else:
            names.add(f"{prefix}{name}".upper())
    return names


@pytest.fixture(scope="module")
def example() -> dict[str, str | None]:
    return dotenv_values(ENV_EXAMPLE, interpolate=False)


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def r3_keys(keys) -> set[str]:
    return {key for key in keys if key.upper().startswith("R3_")}


def service_environment(service: dict) -> dict[str, str | None]:
    environment = service.get("environment") or {}
    if isinstance(environment, list):  # the `- KEY=value` form
        return dict(entry.split("=", 1) if "=" in entry else (entry, None) for entry in environment)
    return {key: None if value is None else str(value) for key, value in environment.items()}


# --- .env.example ---


def test_env_example_names_every_setting(example: dict[str, str | None]) -> None:
    documented = set(example) | set(COMMENTED_SETTING.findall(ENV_EXAMPLE.read_text()))
    missing = setting_env_names() - documented
    assert not missing, f".env.example lacks {sorted(missing)}"


def test_env_example_has_no_unknown_r3_names(example: dict[str, str | None]) -> None:
    documented = r3_keys(example) | set(COMMENTED_SETTING.findall(ENV_EXAMPLE.read_text()))
    unknown = documented - setting_env_names()
    assert not unknown, f".env.example names settings that do not exist: {sorted(unknown)}"


def test_every_env_example_line_is_explained() -> None:
    """Each setting comes with a comment: the line above it is a comment (or another setting of its pair)."""
    lines = ENV_EXAMPLE.read_text().splitlines()
    for number, line in enumerate(lines):
        if re.match(r"^(# ?)?R3_[A-Z0-9_]+=", line):
            above = lines[number - 1]
            assert above.startswith("#") or re.match(r"^R3_[A-Z0-9_]+=", above), f"no comment above: {line}"


def test_env_example_values_are_plain(example: dict[str, str | None]) -> None:
    """No quotes or `$`: docker compose and python-dotenv then read every value the same way."""
    for key, value in example.items():
        assert value is not None and value != "", f"{key} has no value: comment it out to leave it unset"
        assert "$" not in value and not value.startswith(("'", '"')), f"{key}={value} is not a plain value"


def test_env_example_loads_as_settings(example: dict[str, str | None], monkeypatch: pytest.MonkeyPatch) -> None:
    """Copied to .env, the example is a configuration R3 accepts, and reads as meant."""
    engines = get_args(Settings.model_fields["engine"].annotation)
    assert example["R3_ENGINE"] in engines, f"R3_ENGINE={example['R3_ENGINE']}, but R3 knows only {engines}"
    for key in list(os.environ):
        if key.upper().startswith("R3_"):
            monkeypatch.delenv(key)
    settings = Settings(_env_file=ENV_EXAMPLE)
    for name in Settings.model_fields:
        env_name = f"R3_{name}".upper()
        if env_name not in example:
            assert getattr(settings, name) == Settings.model_fields[name].get_default(call_default_factory=True)
    assert settings.engine == example["R3_ENGINE"]
    assert str(settings.adapters_path) == example["R3_ADAPTERS_DIR"]
    assert settings.database_url == example["R3_DATABASE_URL"]


def test_env_example_commented_values_load_too(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The values shown in commented-out lines (`# R3_MAX_MODEL_LEN=8192`) are valid once uncommented."""
    uncommented = re.sub(r"^#\s*(R3_[A-Z0-9_]+=\S)", r"\1", ENV_EXAMPLE.read_text(), flags=re.MULTILINE)
    env_file = tmp_path / ".env"
    env_file.write_text(uncommented)
    for key in list(os.environ):
        if key.upper().startswith("R3_"):
            monkeypatch.delenv(key)
    settings = Settings(_env_file=env_file)
    assert settings.max_model_len is not None and settings.train_max_steps is not None


def test_env_example_database_url_matches_the_postgres_service(
    example: dict[str, str | None], compose: dict
) -> None:
    """R3_DATABASE_URL names the compose Postgres with the account the POSTGRES_* lines create."""
    url = urlsplit(example["R3_DATABASE_URL"])
    assert url.scheme.startswith("postgresql")
    assert url.hostname == "postgres" and "postgres" in compose["services"]
    assert url.username == example["POSTGRES_USER"]
    assert url.password == example["POSTGRES_PASSWORD"]
    assert url.path.lstrip("/") == example["POSTGRES_DB"]
    redis = urlsplit(example["R3_REDIS_URL"])
    assert redis.scheme == "redis" and redis.hostname == "redis" and "redis" in compose["services"]


# --- docker-compose.yml ---


def test_compose_names_only_real_settings(compose: dict) -> None:
    named = set(re.findall(r"\$\{?(R3_[A-Za-z0-9_]+)", COMPOSE.read_text()))  # interpolations
    for service in compose["services"].values():
        named |= r3_keys(service_environment(service))
    assert named, "docker-compose.yml sets no R3_* variable"
    unknown = {name.upper() for name in named} - setting_env_names()
    assert not unknown, f"docker-compose.yml names settings that do not exist: {sorted(unknown)}"


def test_compose_settings_agree_with_env_example(compose: dict, example: dict[str, str | None]) -> None:
    """What compose fixes for its containers is what .env.example shows (no example that compose contradicts)."""
    for name in R3_SERVICES:
        for key, value in service_environment(compose["services"][name]).items():
            if key.startswith("R3_"):
                assert example.get(key) == value, f"{name} sets {key}={value}, .env.example says {example.get(key)}"


def test_compose_r3_services_read_env_and_run_on_the_shared_image(compose: dict) -> None:
    images = set()
    for name in R3_SERVICES:
        service = compose["services"][name]
        env_file = service["env_file"]
        assert ".env" in ([env_file] if isinstance(env_file, str) else env_file)
        images.add(service["image"])
        assert service["build"] in (".", {"context": "."})
    assert len(images) == 1


def test_compose_migrate_runs_before_server_and_trainer(compose: dict) -> None:
    services = compose["services"]
    assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert services["migrate"].get("restart", "no") == "no"
    for name in ("server", "trainer"):
        depends = services[name]["depends_on"]
        assert depends["migrate"]["condition"] == "service_completed_successfully"
        assert depends["postgres"]["condition"] == "service_healthy"
        assert depends["redis"]["condition"] == "service_healthy"
    for name in ("postgres", "redis"):
        assert services[name]["healthcheck"]["test"]


def test_compose_server_and_trainer_get_a_gpu_and_vllm(compose: dict) -> None:
    for name in ("server", "trainer"):
        service = compose["services"][name]
        devices = service["deploy"]["resources"]["reservations"]["devices"]
        assert any(d["driver"] == "nvidia" and "gpu" in d["capabilities"] for d in devices)
        assert service_environment(service)["R3_ENGINE"] == "vllm"


def test_compose_volumes_hold_state_where_settings_point(compose: dict, example: dict[str, str | None]) -> None:
    """Adapters are one named volume shared by server and trainer, mounted where R3_ADAPTERS_DIR points."""
    services, volumes = compose["services"], compose["volumes"]

    def mounts(name: str) -> dict[str, str]:
        return {target: source for source, target, *_ in (v.split(":") for v in services[name].get("volumes", []))}

    adapters = example["R3_ADAPTERS_DIR"]
    assert mounts("server")[adapters] == mounts("trainer")[adapters] and mounts("server")[adapters] in volumes
    assert example["R3_DATA_DIR"] in mounts("server")  # the episode journal outlives the container
    cache = mounts("server")["/var/cache/r3"]
    assert cache in volumes and cache == mounts("trainer")["/var/cache/r3"]
    assert example["R3_MODELS_DIR"].startswith("/var/cache/r3/")
    for name in ("postgres", "redis"):
        assert all(source in volumes for source in mounts(name).values())
    assert "--appendonly" in services["redis"]["command"]


@pytest.mark.parametrize("service", R3_SERVICES)
def test_compose_commands_are_real_r3_subcommands(compose: dict, service: str) -> None:
    command = compose["services"][service]["command"]
    argv = command.split() if isinstance(command, str) else list(command)
    assert argv[0] == "r3"
    r3 = Path(sys.executable).parent / "r3"
    result = subprocess.run([str(r3), *argv[1:], "--help"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr


# --- Dockerfile ---


def test_dockerfile_paths_agree_with_compose(example: dict[str, str | None]) -> None:
    """The image's defaults (for a plain `docker run`) are the paths compose mounts volumes on."""
    text = DOCKERFILE.read_text()
    env = dict(re.findall(r"\b(R3_[A-Z0-9_]+)=(\S+)", text))
    assert env, "the Dockerfile sets no R3_* default"
    assert set(env) <= setting_env_names()
    for key, value in env.items():
        assert example[key] == value, f"Dockerfile: {key}={value}, .env.example: {example[key]}"
    assert re.search(r'pip install "\.\[vllm\]"', text)
