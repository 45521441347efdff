"""docker-compose.yml, checked as far as a machine without Docker can: its services, and that
every command it runs is a `lookalike` command the CLI accepts and README documents."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
import yaml

from cli.main import main
from core.settings import Settings

ROOT = Path(__file__).resolve().parents[1]


def _compose() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())  # type: ignore[no-any-return]


def test_services_and_volumes() -> None:
    compose = _compose()
    services = compose["services"]
    assert set(services) == {
        "postgres",
        "redis",
        "migrate",
        "web",
        "worker",
        "worker-gpu",
        "nginx",
        "flower",
    }
    # GPU workers are there to be run (a profile), on an image with the gpu extra, taking
    # only the embedding queue that every CPU worker also takes, at the same precision.
    gpu, cpu = services["worker-gpu"], services["worker"]
    assert gpu["profiles"] == ["gpu"] and gpu["build"]["args"]["EXTRAS"] == "[gpu]"
    assert "--embed-only" in gpu["command"]
    assert gpu["deploy"]["resources"]["reservations"]["devices"][0]["driver"] == "nvidia"
    for key in ("LOOKALIKE_EMBED_QUEUE", "LOOKALIKE_PRECISION", "LOOKALIKE_DATABASE_URL"):
        assert gpu["environment"][key] == cpu["environment"][key], key
    # Flower is there to be run (a profile), on the broker the workers use, never public.
    flower = services["flower"]
    assert flower["profiles"] == ["ops"] and "--broker=redis://redis:6379/0" in flower["command"]
    assert all(port.startswith("127.0.0.1:") for port in flower["ports"])
    assert "pgdata:/var/lib/postgresql/data" in services["postgres"]["volumes"]
    for name in ("web", "worker"):
        assert "media:/data/media" in services[name]["volumes"]
        assert services[name]["depends_on"]["migrate"]["condition"] == (
            "service_completed_successfully"
        )
    # Workers yield shared cores to the web processes, as containers (CPU weight) too.
    assert services["worker"]["cpu_shares"] < services["web"].get("cpu_shares", 1024)
    # Scalable with --scale worker=N: no fixed name, no published port.
    assert "container_name" not in services["worker"] and "ports" not in services["worker"]
    assert set(compose["volumes"]) >= {"pgdata", "media"}


def test_nginx_is_the_only_way_in() -> None:
    """Slow clients meet nginx (deploy/nginx.conf, run for real in tests/test_slow_clients.py),
    never gunicorn: web publishes no port, nginx publishes it and passes to web's."""
    services = _compose()["services"]
    assert "ports" not in services["web"]
    assert "--bind" in services["web"]["command"]
    bind = services["web"]["command"][services["web"]["command"].index("--bind") + 1]
    port = bind.rpartition(":")[2]
    assert services["nginx"]["ports"] == [f"{port}:{port}"]
    assert "./deploy/nginx.conf:/etc/nginx/nginx.conf:ro" in services["nginx"]["volumes"]
    config = (ROOT / "deploy" / "nginx.conf").read_text()
    assert f"server web:{port};" in config and f"listen {port};" in config
    assert "proxy_request_buffering on;" in config
    assert "location = /metrics {\n            return 404;" in config


def test_commands_are_documented_lookalike_commands() -> None:
    readme = (ROOT / "README.md").read_text()
    for name, service in _compose()["services"].items():
        if "build" not in service:
            continue
        program, *args = service["command"]
        assert program == "lookalike", name
        # Click parses the arguments exactly as `lookalike ...` would, without running them.
        context = main.make_context("lookalike", list(args))
        command: click.Command = main
        words, path = list(args), []
        with context:
            while isinstance(command, click.Group):
                sub = command.get_command(context, words[0])
                assert sub is not None, f"{name}: unknown command {words[0]}"
                path.append(words[0])
                command, words = sub, words[1:]
            command.make_context(command.name, words, parent=context)  # rejects bad options
        assert f"lookalike {' '.join(path)}" in readme, f"{name}: lookalike {path} not in README"


def test_environment_names_are_settings() -> None:
    fields = {f"LOOKALIKE_{name.upper()}" for name in Settings.model_fields}
    for name, service in _compose()["services"].items():
        for key in service.get("environment", {}):
            if key.startswith("LOOKALIKE_"):
                assert key in fields, f"{name}: {key} is not a setting"
