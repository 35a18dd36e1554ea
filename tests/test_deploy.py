"""deploy/: the Dockerfile and Kubernetes manifests agree with the CLI's own defaults."""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any

import attrs
import yaml

from trio_lkagent import JobContext, ServiceConfig, Worker, WorkerOptions
from trio_lkagent._cli import _build_parser
from trio_lkagent._config import SERVICE_SETTINGS
from trio_lkagent._metrics import WorkerMetrics

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
KNOWN_ENV = {s.env for s in SERVICE_SETTINGS}
DEFAULT_DRAIN = attrs.fields(WorkerOptions).drain_timeout.default
DEFAULT_HEALTH_PORT = ServiceConfig().health_port


def _manifests() -> dict[str, dict[str, Any]]:
    docs = yaml.safe_load_all((DEPLOY / "kubernetes" / "deployment.yaml").read_text())
    return {doc["kind"]: doc for doc in docs}


def _worker_container() -> tuple[dict[str, Any], dict[str, Any]]:
    pod = _manifests()["Deployment"]["spec"]["template"]["spec"]
    return pod, pod["containers"][0]


async def _noop(ctx: JobContext) -> None:
    pass


def test_deployment_matches_the_cli_defaults() -> None:
    pod, container = _worker_container()
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert set(env) <= KNOWN_ENV, set(env) - KNOWN_ENV  # no typo'd variable
    assert {"LIVEKIT_URL", "LIVEKIT_API_KEY", "LIVEKIT_API_SECRET"} <= set(env)
    drain = float(env.get("LIVEKIT_DRAIN_TIMEOUT") or DEFAULT_DRAIN)
    assert pod["terminationGracePeriodSeconds"] >= drain >= DEFAULT_DRAIN
    port = int(env.get("LIVEKIT_HEALTH_PORT") or DEFAULT_HEALTH_PORT)
    assert port == DEFAULT_HEALTH_PORT
    assert env["LIVEKIT_HEALTH_HOST"] == "0.0.0.0"  # the default, 127.0.0.1, is unreachable
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    probe = container["readinessProbe"]["httpGet"]
    assert probe["path"] == "/" and ports[probe["port"]] == port
    assert ports[container["livenessProbe"]["httpGet"]["port"]] == port
    requests = container["resources"]["requests"]
    assert requests["cpu"] and requests["memory"]
    # The container's arguments are valid `trio-lkagent start` flags.
    args = _build_parser().parse_args(["start", "agent.py", *container["args"]])
    assert args.agent_name == "my-agent"


def test_autoscaler_scales_on_the_load_the_worker_exports() -> None:
    hpa = _manifests()["HorizontalPodAutoscaler"]
    assert hpa["spec"]["scaleTargetRef"]["name"] == _manifests()["Deployment"]["metadata"]["name"]
    (metric,) = hpa["spec"]["metrics"]
    name = metric["pods"]["metric"]["name"]
    worker = Worker(_noop, WorkerOptions(url="ws://h:1", api_key="k", api_secret="s"))
    body, _ = WorkerMetrics(worker).exposition()
    assert re.search(rf"^{name} 0\.0$", body.decode(), re.MULTILINE)
    assert 0 < float(metric["pods"]["target"]["averageValue"].removesuffix("m")) / 1000 < 1


def test_dockerfile_runs_start_with_a_reachable_health_server() -> None:
    lines = (DEPLOY / "Dockerfile").read_text().replace("\\\n", " ").splitlines()
    env: dict[str, str] = {}
    for line in lines:
        if line.startswith("ENV "):
            env.update(item.split("=", 1) for item in shlex.split(line[4:]))
    assert {k for k in env if k.startswith("LIVEKIT_")} <= KNOWN_ENV
    assert env["LIVEKIT_HEALTH_HOST"] == "0.0.0.0"
    assert int(env["LIVEKIT_HEALTH_PORT"]) == DEFAULT_HEALTH_PORT
    assert f"EXPOSE {DEFAULT_HEALTH_PORT}" in lines
    assert "STOPSIGNAL SIGTERM" in lines
    (entrypoint,) = [line for line in lines if line.startswith("ENTRYPOINT ")]
    assert "exec trio-lkagent start" in entrypoint  # exec: SIGTERM reaches the worker
    assert (DEPLOY.parent / env["AGENT"]).is_file()
