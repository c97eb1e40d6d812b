"""Readers of the deployment files (``Dockerfile``, ``cluster/compose.yaml``,
``cluster/k8s/*.yaml``) as the tools that run them see them: the tests start, lint and
compare exactly what these return."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
DOCKERFILE = REPO / "Dockerfile"
COMPOSE = REPO / "cluster" / "compose.yaml"
K8S = REPO / "cluster" / "k8s"


@dataclass(frozen=True)
class Dockerfile:
    base: str  # the image the final stage starts FROM
    entrypoint: list[str]
    cmd: list[str]
    user: str
    workdir: str
    exposed: set[int]
    build_copies: list[str]  # what the first (environment) stage copies from the build context

    @property
    def default_argv(self) -> list[str]:
        return [*self.entrypoint, *self.cmd]


def dockerfile() -> Dockerfile:
    """The final stage's base image, ENTRYPOINT, CMD (JSON form), USER, WORKDIR, EXPOSE, and the
    sources the first stage COPYs from the context."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    stages: list[list[tuple[str, str]]] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        op, _, rest = line.partition(" ")
        if op.upper() == "FROM":
            stages.append([])
        stages[-1].append((op.upper(), rest.strip()))
    final = dict(stages[-1])
    copies = [
        src for op, rest in stages[0] if op == "COPY" and not rest.startswith("--from") for src in rest.split()[:-1]
    ]
    return Dockerfile(
        base=dict(stages[-1])["FROM"].split()[0],
        entrypoint=json.loads(final["ENTRYPOINT"]),
        cmd=json.loads(final["CMD"]),
        user=final["USER"],
        workdir=final["WORKDIR"],
        exposed={int(p) for op, rest in stages[-1] if op == "EXPOSE" for p in rest.split()},
        build_copies=copies,
    )


@dataclass(frozen=True)
class Service:
    name: str
    argv: list[str]  # the image's entry point followed by the service's command
    environment: dict[str, str]
    mounts: dict[str, str]  # volume name (a bind mount: its container folder's name) -> path in the container
    healthcheck: list[str] | None  # the CMD form's argv
    replicas: int
    memory_limit: str | None
    depends_on: list[str]


def compose() -> dict[str, Service]:
    spec = yaml.safe_load(COMPOSE.read_text())
    entrypoint = dockerfile().entrypoint
    out = {}
    for name, svc in spec["services"].items():
        health = svc.get("healthcheck", {}).get("test")
        if health is not None:
            assert health[0] == "CMD", f"{name}: healthcheck must use the CMD form"
        deploy = svc.get("deploy", {})
        out[name] = Service(
            name=name,
            argv=[*svc.get("entrypoint", entrypoint), *svc["command"]],
            environment={k: str(v) for k, v in svc.get("environment", {}).items()},
            mounts=dict(_mount(v) for v in svc.get("volumes", [])),
            healthcheck=None if health is None else health[1:],
            replicas=int(deploy.get("replicas", 1)),
            memory_limit=deploy.get("resources", {}).get("limits", {}).get("memory"),
            depends_on=list(svc.get("depends_on", {})),
        )
    return out


def _mount(spec: str) -> tuple[str, str]:
    """``runs:/runs`` -> ("runs", "/runs"); a bind mount, ``${SEG1B_CERTS:-./certs}:/certs:ro``,
    is named by its container folder: ("certs", "/certs")."""
    match = re.fullmatch(r"(\$\{[^}]*\}|[^:]+):([^:]+)(?::(?:ro|rw))?", spec)
    assert match, spec
    source, target = match.groups()
    named = not source.startswith(("$", ".", "/"))
    return (source if named else Path(target).name), target


def compose_spec() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


def k8s_documents() -> dict[str, dict[str, Any]]:
    """Every manifest under cluster/k8s, by file name."""
    return {path.name: yaml.safe_load(path.read_text()) for path in sorted(K8S.glob("*.yaml"))}


def pod_specs(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The PodSpecs inside a DaskJob or DaskCluster: job, scheduler, worker."""
    cluster = doc["spec"]["cluster"]["spec"] if doc["kind"] == "DaskJob" else doc["spec"]
    out = {"scheduler": cluster["scheduler"]["spec"], "worker": cluster["worker"]["spec"]}
    if doc["kind"] == "DaskJob":
        out["job"] = doc["spec"]["job"]["spec"]
    return out


def bytes_of(quantity: str) -> int:
    """A memory quantity as Compose ("5g", binary), Kubernetes ("5Gi", "5G") or Dask
    ("4GiB", "4GB") write it."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([kKmMgGtT]?)(i?)([bB]?)", quantity.strip())
    assert match, quantity
    number, prefix, binary, byte = match.groups()
    compose_style = prefix.islower() and not binary and not byte
    base = 1024 if binary or compose_style else 1000
    return int(float(number) * base ** " kmgt".index(prefix.lower() or " "))
