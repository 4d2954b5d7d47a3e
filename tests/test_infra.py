"""What a team deploys (infra/), checked without a cluster or a Docker engine: every Kubernetes manifest in
infra/k8s validates (``kubernetes_validate``, strict: unknown fields fail) against the schemas of the
Kubernetes versions stated below, offline (the schemas ship with the package; the socket is blocked while
validating); the manifests are coherent (selectors, named ports, probes on the real endpoints, requests and
limits, secrets only by reference); and infra/compose/docker-compose.yml agrees with what the scale tests
run (tests/services.py, .ci/run) and with the manifests: the same services, versions and commands.

Nothing here starts anything: fast (< 20 s), no markers.
"""

from __future__ import annotations

import re
import shlex
import socket
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "infra" / "k8s"
COMPOSE = ROOT / "infra" / "compose" / "docker-compose.yml"

# The cluster versions the manifests are written for: the oldest still served upstream when this was
# written, and the newest whose schemas kubernetes-validate ships (a removed API fails the latter).
K8S_VERSIONS = ("1.30", "1.37")

# What the scale tests run (tests/services.py, tests/test_prefect_server.py, .ci/run), and therefore what
# compose and the manifests must run too.
POSTGRES_MAJOR = "15"  # .ci/run installs Debian 12's postgresql (15); tests/services.py starts it
MLFLOW_SERVER_FLAGS = ("--backend-store-uri", "--artifacts-destination", "--serve-artifacts")
MLFLOW_BACKEND_DRIVER = "postgresql+psycopg://"  # psycopg 3, the driver in requirements.lock
PREFECT_BACKEND_DRIVER = "postgresql+asyncpg://"
PREFECT_SERVER_CMD = ["prefect", "server", "start"]
PREFECT_WORKER_CMD = ["prefect", "worker", "start", "--pool", "dlops", "--type", "process"]
COMPOSE_SERVICES = {"postgres", "minio", "create-bucket", "mlflow", "prefect-server", "prefect-worker"}
# the env vars whose values are credentials: only ever from a Secret
SECRET_ENV = re.compile(r"PASSWORD|SECRET|ACCESS_KEY|TOKEN|BACKEND_STORE_URI|DATABASE_CONNECTION_URL")
USERINFO_URL = re.compile(r"://[^/\s:@]+:[^/\s@]+@")  # scheme://user:password@host


def _lock() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "requirements.lock").read_text().splitlines():
        name, sep, version = line.partition("==")
        if sep:
            pins[name.strip().lower()] = version.split(";")[0].strip()
    return pins


LOCK = _lock()


def _manifest_files() -> list[Path]:
    return sorted(p for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")


def _docs() -> list[tuple[str, dict[str, Any]]]:
    out = []
    for path in _manifest_files():
        for i, doc in enumerate(yaml.safe_load_all(path.read_text())):
            if doc:
                out.append((f"{path.name}#{i}", doc))
    return out


DOCS = _docs()


def _kind(kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for _, d in DOCS if d["kind"] == kind}


def _containers(deployment: dict[str, Any]) -> list[dict[str, Any]]:
    return deployment["spec"]["template"]["spec"]["containers"]


def _container(name: str) -> dict[str, Any]:
    (container,) = _containers(_kind("Deployment")[name])
    return container


def _command(container: dict[str, Any]) -> list[str]:
    """The container's command line as words (an ``sh -c`` script split with shlex)."""
    words = [*container.get("command", []), *container.get("args", [])]
    if words[:2] == ["sh", "-c"]:
        return shlex.split(" ".join(words[2:]))
    return words


def _configmap_value(ref: dict[str, Any]) -> str:
    return _kind("ConfigMap")[ref["name"]]["data"][ref["key"]]


def _env(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in container.get("env", [])}


def test_manifest_set_is_the_kustomization() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert kustomization["kind"] == "Kustomization"
    assert sorted(kustomization["resources"]) == sorted(p.name for p in _manifest_files())
    # every image a manifest names is either pinned (registry/name:tag) or set in `images:`
    overrides = {i["name"]: i for i in kustomization.get("images", [])}
    for deployment in _kind("Deployment").values():
        for c in _containers(deployment):
            assert c["image"] in overrides or re.search(r":[\w.-]+$", c["image"]), c["image"]
    assert {"Deployment", "Service", "ConfigMap", "Namespace"} == {d["kind"] for _, d in DOCS}
    assert set(_kind("Deployment")) == {"dlops-serving", "mlflow", "prefect-server", "prefect-worker"}


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_every_manifest_validates_offline(version: str, monkeypatch: pytest.MonkeyPatch) -> None:
    import kubernetes_validate

    def no_network(*_args: Any, **_kwargs: Any) -> None:
        raise AssertionError("kubernetes_validate tried to reach the network")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    assert DOCS
    for where, doc in DOCS:
        try:
            validated = kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{where} ({doc['kind']} {doc['metadata']['name']}) is not valid for Kubernetes "
                        f"{version}: {exc.message} at {'/'.join(map(str, exc.path))}")
        assert validated == version


def test_strict_validation_rejects_unknown_fields() -> None:
    """The check above can fail: a misspelt field (readinesProbe) is an error under strict schemas."""
    import kubernetes_validate

    doc = yaml.safe_load_all((K8S / "serving.yaml").read_text()).__next__()
    container = doc["spec"]["template"]["spec"]["containers"][0]
    container["readinesProbe"] = container.pop("readinessProbe")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(doc, K8S_VERSIONS[-1], strict=True)


def test_deployments_services_probes_and_resources_are_coherent() -> None:
    services = _kind("Service")
    for name, deployment in _kind("Deployment").items():
        template = deployment["spec"]["template"]
        selector = deployment["spec"]["selector"]["matchLabels"]
        assert selector.items() <= template["metadata"]["labels"].items(), name
        # Service env vars off: a Service "mlflow" would set MLFLOW_PORT=tcp://..., which tools misread
        assert template["spec"].get("enableServiceLinks") is False, name
        for c in _containers(deployment):
            ports = {p["name"]: p["containerPort"] for p in c.get("ports", [])}
            for kind in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(c["resources"][kind]), f"{name}: resources.{kind}"
            for probe in ("readinessProbe", "livenessProbe"):
                get = c[probe]["httpGet"]
                assert get["port"] in ports, f"{name} {probe} on an undeclared port {get['port']}"
            assert c["securityContext"]["allowPrivilegeEscalation"] is False, name
    for name, service in services.items():
        matches = [d for d in _kind("Deployment").values()
                   if service["spec"]["selector"].items() <= d["spec"]["template"]["metadata"]["labels"].items()]
        assert len(matches) == 1, f"Service {name} selects {len(matches)} Deployments"
        ports = {p["name"] for c in _containers(matches[0]) for p in c.get("ports", [])}
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in ports, f"Service {name}: targetPort {port['targetPort']}"
    # the addresses in the ConfigMap are the Services' names and ports
    config = _kind("ConfigMap")["dlops-config"]["data"]
    port = {n: s["spec"]["ports"][0]["port"] for n, s in services.items()}
    assert config["MLFLOW_TRACKING_URI"] == f"http://mlflow:{port['mlflow']}"
    assert config["PREFECT_API_URL"] == f"http://prefect-server:{port['prefect-server']}/api"


def test_secrets_only_by_reference() -> None:
    assert not _kind("Secret"), "a Secret in git: create it out of band (kustomization.yaml says how)"
    documented = (K8S / "kustomization.yaml").read_text()
    for where, doc in DOCS:
        assert not USERINFO_URL.search(yaml.safe_dump(doc)), f"{where}: a URL with a password"
    for name, deployment in _kind("Deployment").items():
        for c in _containers(deployment):
            for var in c.get("env", []):
                if SECRET_ENV.search(var["name"]):
                    ref = var.get("valueFrom", {}).get("secretKeyRef")
                    assert ref, f"{name}: {var['name']} must come from a secretKeyRef"
                    assert f"create secret generic {ref['name']}" in documented
                    assert re.search(rf"--from-literal={re.escape(ref['key'])}=", documented), ref
    for name, configmap in _kind("ConfigMap").items():
        for key in configmap["data"]:
            assert not SECRET_ENV.search(key), f"ConfigMap {name}: {key} belongs in a Secret"


def test_serving_manifest_matches_the_service() -> None:
    """The BentoML container: the service's port, BentoML's real health routes, the service's real
    settings (every DLOPS_* key is read by serving/), the bentoml version of the bento it runs."""
    service_py = (ROOT / "serving" / "service.py").read_text()
    c = _container("dlops-serving")
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert re.search(rf'"port":\s*{ports["http"]}\b', service_py)
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert c["livenessProbe"]["httpGet"]["path"] in ("/livez", "/healthz")
    import bentoml

    base_app = (Path(bentoml.__file__).parent / "_internal" / "server" / "base_app.py").read_text()
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        assert f'"{c[probe]["httpGet"]["path"]}"' in base_app, f"BentoML serves no {c[probe]['httpGet']['path']}"
    assert _env(c)["BENTOML_HOST"]["value"] == "0.0.0.0"  # the service binds 127.0.0.1 otherwise
    serving_code = "".join(p.read_text() for p in (ROOT / "serving").glob("*.py"))
    settings = _kind("ConfigMap")["dlops-serving"]["data"]
    assert "DLOPS_MODEL_URI" in settings and settings["DLOPS_MODEL_URI"].startswith("models:/")
    for key in settings:
        assert f'"{key}"' in serving_code, f"{key}: serving/ reads no such setting"
    assert _env(c)["MLFLOW_TRACKING_URI"]["valueFrom"]["configMapKeyRef"]["name"] == "dlops-config"
    bentofile = yaml.safe_load((ROOT / "serving" / "bentofile.yaml").read_text())
    annotation = _kind("Deployment")["dlops-serving"]["metadata"]["annotations"]["dlops/bentoml-version"]
    assert annotation == LOCK["bentoml"] and f"bentoml=={annotation}" in bentofile["python"]["packages"]


def test_mlflow_manifest_runs_the_tested_server() -> None:
    c = _container("mlflow")
    assert c["image"] == f"ghcr.io/mlflow/mlflow:v{LOCK['mlflow']}"
    words = _command(c)
    server = words[words.index("mlflow"):]
    assert server[:2] == ["mlflow", "server"]
    for flag in MLFLOW_SERVER_FLAGS:
        assert flag in server
    assert f"psycopg[binary]=={LOCK['psycopg']}" in words  # the driver the tests use, same version
    env = _env(c)
    assert env["MLFLOW_BACKEND_STORE_URI"]["valueFrom"]["secretKeyRef"]["key"] == "mlflow-uri"
    assert f"mlflow-uri='{MLFLOW_BACKEND_DRIVER}" in (K8S / "kustomization.yaml").read_text()
    assert _kind("ConfigMap")["dlops-config"]["data"]["MLFLOW_ARTIFACTS_DESTINATION"].startswith("s3://")
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        assert c[probe]["httpGet"]["path"] == "/health"  # exempt from MLflow's Host-header check
    assert "mlflow:5000" in _kind("ConfigMap")["dlops-config"]["data"]["MLFLOW_SERVER_ALLOWED_HOSTS"].split(",")


def test_prefect_manifests_run_the_tested_commands() -> None:
    server, worker = _container("prefect-server"), _container("prefect-worker")
    assert server["image"] == f"prefecthq/prefect:{LOCK['prefect']}-python3.11"
    assert _command(server)[:3] == PREFECT_SERVER_CMD
    assert _command(worker)[:len(PREFECT_WORKER_CMD)] == PREFECT_WORKER_CMD
    assert "--with-healthcheck" in _command(worker)  # what the worker's probes talk to (port 8080)
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    (image,) = [i for i in kustomization["images"] if i["name"] == worker["image"]]
    assert image["newTag"].startswith(f"{LOCK['prefect']}-")
    assert _configmap_value(_env(worker)["PREFECT_API_URL"]["valueFrom"]["configMapKeyRef"]).endswith("/api")
    assert f"prefect-uri='{PREFECT_BACKEND_DRIVER}" in (K8S / "kustomization.yaml").read_text()
    for probe in ("readinessProbe", "livenessProbe"):
        assert server[probe]["httpGet"]["path"] == "/api/health"
        assert worker[probe]["httpGet"]["path"] == "/health"


# ---------------------------------------------------------------- compose


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


def _compose_command(service: dict[str, Any]) -> list[str]:
    cmd = service.get("command", [])
    words = shlex.split(cmd) if isinstance(cmd, str) else list(cmd)
    if words[:2] == ["sh", "-c"]:
        words = shlex.split(" ".join(words[2:]))
    return words


def test_compose_services_and_loopback_ports(compose: dict[str, Any]) -> None:
    assert set(compose["services"]) == COMPOSE_SERVICES
    for name, service in compose["services"].items():
        for port in service.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"{name}: {port} is published beyond loopback"


def test_compose_postgres_is_the_tested_major(compose: dict[str, Any]) -> None:
    assert f"/usr/lib/postgresql/{POSTGRES_MAJOR}/" in (ROOT / ".ci" / "run").read_text()
    image = compose["services"]["postgres"]["image"]
    assert re.fullmatch(rf"postgres:{POSTGRES_MAJOR}(\.\d+)?(-\w+)?", image), image


def test_compose_mlflow_runs_the_tested_server(compose: dict[str, Any]) -> None:
    """The flags tests/services.py starts ``mlflow server`` with, on the same driver and version as
    the manifest."""
    services_py = (ROOT / "tests" / "services.py").read_text()
    for flag in (*MLFLOW_SERVER_FLAGS, MLFLOW_BACKEND_DRIVER.rstrip(":/")):
        assert flag in services_py  # what the scale tests run
    mlflow = compose["services"]["mlflow"]
    assert mlflow["image"] == _container("mlflow")["image"] == f"ghcr.io/mlflow/mlflow:v{LOCK['mlflow']}"
    words = _compose_command(mlflow)
    server = words[words.index("mlflow"):]
    assert server[:2] == ["mlflow", "server"]
    for flag in MLFLOW_SERVER_FLAGS:
        assert flag in server
    backend = server[server.index("--backend-store-uri") + 1]
    assert backend.startswith(MLFLOW_BACKEND_DRIVER), backend
    assert f"psycopg[binary]=={LOCK['psycopg']}" in words


def test_compose_prefect_runs_the_tested_commands(compose: dict[str, Any]) -> None:
    server, worker = compose["services"]["prefect-server"], compose["services"]["prefect-worker"]
    image = f"prefecthq/prefect:{LOCK['prefect']}-python3.11"
    for service in (server, worker):  # the manifest's worker image: kustomization.yaml (checked above)
        assert service["image"] == _container("prefect-server")["image"] == image
    assert _compose_command(server)[:3] == PREFECT_SERVER_CMD
    assert _compose_command(worker) == PREFECT_WORKER_CMD
    assert server["environment"]["PREFECT_API_DATABASE_CONNECTION_URL"].startswith(PREFECT_BACKEND_DRIVER)
    assert worker["environment"]["PREFECT_API_URL"] == "http://prefect-server:4200/api"
    # what the scale test runs: `prefect server start`, a process pool "dlops", `prefect worker start --pool`
    text = (ROOT / "tests" / "test_prefect_server.py").read_text()
    assert '"server", "start"' in text and '"worker", "start", "--pool", POOL' in text
    assert f'POOL = "{PREFECT_WORKER_CMD[4]}"' in text and '"--type", "process"' in text
