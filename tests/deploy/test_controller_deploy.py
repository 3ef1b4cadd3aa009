"""The controller's container image, compose file and Kubernetes manifests, parsed and held
to the code: every EDGEFLEET_CONTROLLER_* variable is a real setting with a valid value,
ports are the ones those settings open, probes hit the health port, paths agree."""

from __future__ import annotations

import dataclasses
import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml

from edgefleet.config_files import split_address
from edgefleet.controller.app.config import ENV_PREFIX, ControllerConfig

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
DOCKERFILE = (DEPLOY / "controller/Dockerfile").read_text()
COMPOSE = yaml.safe_load((DEPLOY / "controller/compose.yaml").read_text())
KUBERNETES = (DEPLOY / "kubernetes/controller.yaml").read_text()
MANIFESTS = [d for d in yaml.safe_load_all(KUBERNETES) if d]
DATA_DIR = "/var/lib/edgefleet"
SETTINGS = {f.name for f in dataclasses.fields(ControllerConfig)} - {"data_dir"}


def _settings(env: dict[str, str]) -> ControllerConfig:
    """The configuration a container with ``env`` runs with (every key must be a setting)."""
    values: dict[str, Any] = {}
    for name, value in env.items():
        assert name.startswith(ENV_PREFIX + "_"), name
        key = name[len(ENV_PREFIX) + 1 :].lower()
        assert key in SETTINGS, f"{name} is not a controller setting"
        field = next(f for f in dataclasses.fields(ControllerConfig) if f.name == key)
        values[key] = int(value) if field.type == "int" else value
    return ControllerConfig(data_dir=Path(DATA_DIR), **values)


def _ports(config: ControllerConfig) -> set[int]:
    return {
        split_address(a)[1]
        for a in (config.listen, config.enroll_listen, config.health_listen, config.metrics_listen)
    }


def _stages() -> list[list[str]]:
    lines = re.sub(r"\\\n", " ", DOCKERFILE).splitlines()
    stages: list[list[str]] = []
    for line in (x.strip() for x in lines):
        if not line or line.startswith("#"):
            continue
        if line.upper().startswith("FROM "):
            stages.append([])
        stages[-1].append(line)
    return stages


def test_the_image_is_multi_stage_and_runs_serve_as_non_root() -> None:
    stages = _stages()
    assert len(stages) >= 2 and " AS build" in stages[0][0]
    final = stages[-1]
    assert "build-essential" not in " ".join(final)  # no compilers in the runtime image
    user = next(line.split()[1] for line in final if line.startswith("USER "))
    assert user.split(":")[0] not in ("0", "root")
    env = dict(
        pair.split("=", 1)
        for line in final
        if line.startswith("ENV ")
        for pair in shlex.split(line[4:])
        if pair.startswith(ENV_PREFIX)
    )
    config = _settings(env)
    exposed = {int(p) for line in final if line.startswith("EXPOSE ") for p in line.split()[1:]}
    assert exposed == _ports(config)
    entry = next(line for line in final if line.startswith("ENTRYPOINT "))
    assert entry.split(" ", 1)[1] == f'["edgefleetctl", "serve", "--data-dir", "{DATA_DIR}"]'
    health = next(line for line in final if line.startswith("HEALTHCHECK "))
    assert f"127.0.0.1:{split_address(config.health_listen)[1]}" in health
    assert "edgefleetctl" in health and '"health"' in health


def test_compose_runs_two_replicas_on_postgresql() -> None:
    services = COMPOSE["services"]
    replicas = [s for s in services.values() if "ports" in s and "environment" in s]
    assert len(replicas) == 2
    assert {s["image"] for s in replicas} == {services["controller-init"]["image"]}
    for replica in replicas:
        config = _settings(replica["environment"])
        assert config.database_url.startswith("postgresql+psycopg://")
        assert "@postgres:5432/" in config.database_url  # the compose service
        published = {int(p.rsplit(":", 1)[-1]) for p in replica["ports"]}
        assert published <= _ports(config)
        assert f"controller-data:{DATA_DIR}" in replica["volumes"]
        assert replica["depends_on"]["postgres"]["condition"] == "service_healthy"
    host_ports = [p.rsplit(":", 2)[-2] for s in replicas for p in s["ports"]]
    assert len(host_ports) == len(set(host_ports))  # two replicas, no port clash
    assert f"--data-dir {DATA_DIR}" in services["controller-init"]["command"][0]
    assert "postgres" in services


def _kind(kind: str) -> list[dict[str, Any]]:
    return [m for m in MANIFESTS if m["kind"] == kind]


def test_kubernetes_deployment_probes_health_and_matches_the_settings() -> None:
    (deployment,) = _kind("Deployment")
    assert deployment["spec"]["replicas"] >= 2
    pod = deployment["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    (container,) = pod["containers"]
    env = {e["name"]: e["value"] for e in container["env"] if "value" in e}
    secret_env = {e["name"] for e in container["env"] if "valueFrom" in e}
    assert secret_env == {f"{ENV_PREFIX}_DATABASE_URL"}
    config = _settings({**env, f"{ENV_PREFIX}_DATABASE_URL": "postgresql+psycopg://x@y/z"})
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert set(ports.values()) == _ports(config)
    health_port = split_address(config.health_listen)[1]
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        assert container[probe]["grpc"]["port"] == health_port
    assert pod["terminationGracePeriodSeconds"] > config.shutdown_grace_seconds
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    assert mounts[DATA_DIR] == "data"
    assert mounts[f"{DATA_DIR}/keys"] == "keys" and mounts[f"{DATA_DIR}/tls"] == "tls"
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["keys"]["secret"]["secretName"] == "edgefleet-keys"
    claim = volumes["data"]["persistentVolumeClaim"]["claimName"]
    (pvc,) = _kind("PersistentVolumeClaim")
    assert pvc["metadata"]["name"] == claim and "ReadWriteMany" in pvc["spec"]["accessModes"]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True


def test_kubernetes_services_reach_the_named_container_ports() -> None:
    (deployment,) = _kind("Deployment")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    names = {p["name"] for p in container["ports"]}
    selector = deployment["spec"]["selector"]["matchLabels"]
    for service in _kind("Service"):
        assert service["spec"]["selector"] == selector
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in names
    devices = next(s for s in _kind("Service") if s["spec"]["type"] == "LoadBalancer")
    assert {p["targetPort"] for p in devices["spec"]["ports"]} == {"sync", "enroll"}
    (budget,) = _kind("PodDisruptionBudget")
    assert budget["spec"]["selector"]["matchLabels"] == selector


@pytest.mark.parametrize("path", sorted((DEPLOY / "kubernetes").glob("*.yaml")))
def test_every_manifest_names_its_kind_and_api(path: Path) -> None:
    for document in yaml.safe_load_all(path.read_text()):
        assert document["apiVersion"] and document["kind"] and document["metadata"]["name"]
