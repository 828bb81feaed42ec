"""The deploy/ recipes: official schemas offline, plus the cross-checks schemas cannot do.

Kubernetes objects are validated against the upstream JSON schemas bundled by
``kubernetes-validate`` (strict: unknown fields are errors), the compose file
against the compose-spec schema bundled by ``check-jsonschema``, and haproxy.cfg
by the real ``haproxy -c``. Each check is a function returning a list of
problems, and every one is shown to fire on a broken copy of the recipe.
"""

from __future__ import annotations

import copy
import re
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from check_jsonschema.builtin_schemas import get_builtin_schema
from system_tools import network_namespace, require_binary

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
K8S_DIR = DEPLOY / "kubernetes"
HAPROXY_DIR = DEPLOY / "haproxy"
COMPOSE_FILE = HAPROXY_DIR / "docker-compose.yml"
HAPROXY_CFG = HAPROXY_DIR / "haproxy.cfg"

# Oldest Kubernetes release we claim to support, and the newest schema bundled.
K8S_VERSIONS = ("1.28", kubernetes_validate.latest_version())

# Annotations that make a cloud controller's balancer send PROXY protocol headers.
PROXY_PROTOCOL_ANNOTATIONS = {
    "service.beta.kubernetes.io/aws-load-balancer-proxy-protocol": "*",
    "service.beta.kubernetes.io/do-loadbalancer-enable-proxy-protocol": "true",
    "load-balancer.hetzner.cloud/uses-proxyprotocol": "true",
    "service.beta.kubernetes.io/linode-loadbalancer-default-proxy-protocol": "v2",
    "service.beta.kubernetes.io/scw-loadbalancer-proxy-protocol-v2": "true",
}
# What the container understands: the drop-in variables of the official image
# and the options of `mtproxy run`.
CONTAINER_ENV = {
    "SECRET", "TAG", "WORKERS", "EXTERNAL_IP", "INTERNAL_IP", "PORT", "DEBUG", "SHUTDOWN_GRACE",
}
# The image's HEALTHCHECK command; the Kubernetes probes run the same.
HEALTHCHECK = ["/usr/bin/mtproxy", "healthcheck"]
# The entrypoint's drain time when SHUTDOWN_GRACE is unset, and what the orchestrator must
# add on top before its SIGKILL (the workers' exit, the last stats write).
DEFAULT_SHUTDOWN_GRACE = 8.0
STOP_MARGIN = 2.0
ROOT_COMPOSE_FILE = DEPLOY.parent / "docker-compose.yml"
EXTRA_ENV = {"PYTHONDONTWRITEBYTECODE"}
RUN_OPTIONS_WITH_VALUE = {
    "--listen",
    "--secret",
    "--tls-domain",
    "--modes",
    "--mask",
    "--workers",
    "--stats",
    "--max-connections",
    "--data-dir",
    "--config",
    "--shutdown-grace",
}
RUN_FLAGS = {"--proxy-protocol"}
SECRET_HEX = re.compile(r"[0-9a-fA-F]{32}")

Obj = dict[str, Any]


# --- loading -------------------------------------------------------------------------


def yaml_files() -> list[Path]:
    return sorted(p for p in DEPLOY.rglob("*") if p.suffix in (".yaml", ".yml"))


def load(path: Path) -> list[Any]:
    with path.open() as f:
        return [doc for doc in yaml.safe_load_all(f) if doc is not None]


def k8s_objects() -> list[Obj]:
    objects = []
    for path in sorted(K8S_DIR.glob("*.yaml")):
        objects += [d for d in load(path) if d.get("kind") != "Kustomization"]
    return objects


def one(objects: list[Obj], kind: str) -> Obj:
    found = [o for o in objects if o.get("kind") == kind]
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def container(objects: list[Obj]) -> Obj:
    containers: list[Obj] = one(objects, "Deployment")["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


def option(args: list[str], name: str) -> str | None:
    return args[args.index(name) + 1] if name in args[:-1] else None


def port_of(hostport: str | None) -> int | None:
    return int(hostport.rsplit(":", 1)[1]) if hostport else None


def shutdown_grace(args: list[str], env: dict[str, Any]) -> float:
    """Seconds the proxy drains: --shutdown-grace, else SHUTDOWN_GRACE, else the default."""
    value = option(args, "--shutdown-grace") or env.get("SHUTDOWN_GRACE")
    return float(value) if value is not None else DEFAULT_SHUTDOWN_GRACE


def compose_seconds(value: str | None) -> float:
    """A compose duration such as 30s or 1m30s (Docker's default stop timeout: 10s)."""
    text = value or "10s"
    units = {"h": 3600, "m": 60, "s": 1, "ms": 0.001}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|h|m|s)", text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise ValueError(f"not a compose duration: {text!r}")
    return sum(float(n) * units[u] for n, u in parts)


def compose_grace_problems(name: str, box: Obj) -> list[str]:
    args = [str(a) for a in box.get("command", [])]
    grace = shutdown_grace(args, dict(box.get("environment") or {}))
    stop = compose_seconds(box.get("stop_grace_period"))
    if stop < grace + STOP_MARGIN:
        return [f"{name}: stop_grace_period {stop:g}s leaves the {grace:g} s drain no margin"]
    return []


# --- Kubernetes cross-checks --------------------------------------------------------


def resolve_port(ref: int | str, ports: list[Obj]) -> Obj | None:
    for port in ports:
        if ref in (port.get("name"), port["containerPort"]):
            return port
    return None


def run_args_problems(args: list[str]) -> list[str]:
    problems = []
    if not args or args[0] != "run":
        problems.append("container args must start with the `run` command")
    i = 1
    while i < len(args):
        if args[i] in RUN_FLAGS:
            i += 1
        elif args[i] in RUN_OPTIONS_WITH_VALUE and i + 1 < len(args):
            i += 2
        else:
            problems.append(f"unknown `mtproxy run` argument {args[i]!r}")
            i += 1
    return problems


def kubernetes_problems(objects: list[Obj]) -> list[str]:
    problems: list[str] = []
    deployment = one(objects, "Deployment")
    service = one(objects, "Service")
    pod = deployment["spec"]["template"]
    spec = pod["spec"]
    box = container(objects)
    args: list[str] = box.get("args", [])
    ports: list[Obj] = box.get("ports", [])
    problems += run_args_problems(args)

    if deployment["spec"].get("replicas", 1) < 2:
        problems.append("a scale-out Deployment needs at least 2 replicas")
    selector = deployment["spec"]["selector"]["matchLabels"]
    if not selector.items() <= pod["metadata"]["labels"].items():
        problems.append("Deployment selector does not match its pod labels")

    # Service <-> pods
    if not service["spec"]["selector"].items() <= pod["metadata"]["labels"].items():
        problems.append("Service selector matches no pod of the Deployment")
    if service["spec"].get("type") != "LoadBalancer":
        problems.append("Service must be of type LoadBalancer")
    if service["spec"].get("externalTrafficPolicy") != "Local":
        problems.append("Service must use externalTrafficPolicy: Local")
    listen_port = port_of(option(args, "--listen"))
    for sp in service["spec"]["ports"]:
        target = resolve_port(sp.get("targetPort", sp["port"]), ports)
        if target is None:
            problems.append(f"Service port {sp['port']} targets no container port")
        elif target.get("protocol", "TCP") != sp.get("protocol", "TCP"):
            problems.append(f"Service port {sp['port']} protocol differs from the container's")
        elif target["containerPort"] != listen_port:
            problems.append(
                f"Service port {sp['port']} targets a port the proxy does not listen on"
            )

    # PROXY protocol: the balancer sends the header exactly when the proxy requires it.
    annotations = service["metadata"].get("annotations", {})
    sends = [k for k, v in PROXY_PROTOCOL_ANNOTATIONS.items() if annotations.get(k) == v]
    requires = "--proxy-protocol" in args
    if sends and not requires:
        problems.append("the balancer sends PROXY headers but the proxy lacks --proxy-protocol")
    if requires and not sends:
        problems.append("--proxy-protocol is set but no annotation makes a balancer send it")

    # Probes: the image's own health check, which asks the --stats port.
    for kind in ("readinessProbe", "livenessProbe"):
        probe = box.get(kind) or {}
        if probe.get("exec", {}).get("command") != HEALTHCHECK:
            problems.append(f"{kind} must run {' '.join(HEALTHCHECK)}")
    if option(args, "--stats") is None:
        problems.append("the health check needs the --stats port")
    stats_port = resolve_port("stats", ports)
    if stats_port is None or stats_port["containerPort"] != port_of(option(args, "--stats")):
        problems.append("the container port named stats is not the --stats port")

    # Stopping: the drain must end before Kubernetes kills the pod.
    grace = shutdown_grace(args, {e["name"]: e.get("value") for e in box.get("env", [])})
    deadline = spec.get("terminationGracePeriodSeconds", 30)
    if deadline < grace + STOP_MARGIN:
        problems.append(f"terminationGracePeriodSeconds {deadline} leaves the {grace:g} s "
                        "drain no margin")

    # Secrets and environment
    secrets = {o["metadata"]["name"]: o for o in objects if o["kind"] == "Secret"}
    env_names = set()
    for env in box.get("env", []):
        env_names.add(env["name"])
        if env["name"] not in CONTAINER_ENV | EXTRA_ENV:
            problems.append(f"the container reads no variable named {env['name']}")
        ref = env.get("valueFrom", {}).get("secretKeyRef")
        if ref is None:
            continue
        secret = secrets.get(ref["name"])
        keys = (
            set() if secret is None else {**secret.get("data", {}), **secret.get("stringData", {})}
        )
        if secret is None:
            problems.append(f"env {env['name']} references missing Secret {ref['name']}")
        elif ref["key"] not in keys and not ref.get("optional", False):
            problems.append(f"env {env['name']} references missing key {ref['key']}")
    if "SECRET" not in env_names and option(args, "--secret") is None:
        problems.append("the proxy gets no secret")
    for secret in secrets.values():
        for value in {**secret.get("data", {}), **secret.get("stringData", {})}.values():
            if all(SECRET_HEX.fullmatch(s) for s in str(value).split(",")):
                problems.append("a committed Secret holds a usable proxy secret")

    # Hardening: the "restricted" Pod Security Standard plus a read-only root.
    pod_sc, sc = spec.get("securityContext", {}), box.get("securityContext", {})
    if not (pod_sc.get("runAsNonRoot") or sc.get("runAsNonRoot")):
        problems.append("container may run as root")
    if sc.get("readOnlyRootFilesystem") is not True:
        problems.append("root filesystem is writable")
    if sc.get("allowPrivilegeEscalation") is not False:
        problems.append("privilege escalation is allowed")
    caps = sc.get("capabilities", {})
    if caps.get("drop") != ["ALL"] or not set(caps.get("add", [])) <= {"NET_BIND_SERVICE"}:
        problems.append("capabilities must drop ALL and add at most NET_BIND_SERVICE")
    seccomp = (sc.get("seccompProfile") or pod_sc.get("seccompProfile") or {}).get("type")
    if seccomp not in ("RuntimeDefault", "Localhost"):
        problems.append("no seccomp profile")
    resources = box.get("resources", {})
    for part in ("requests", "limits"):
        if not {"cpu", "memory"} <= set(resources.get(part, {})):
            problems.append(f"resources.{part} must set cpu and memory")
    volumes = {v["name"] for v in spec.get("volumes", [])}
    mounts = {m["mountPath"]: m["name"] for m in box.get("volumeMounts", [])}
    problems += [
        f"volume {n} is mounted but not defined" for n in mounts.values() if n not in volumes
    ]
    if option(args, "--data-dir") not in mounts:
        problems.append("the --data-dir is not a mounted volume (the root filesystem is read-only)")
    return problems


def kustomization_problems(kustomization: Obj, objects: list[Obj]) -> list[str]:
    problems = []
    if kustomization.get("apiVersion") != "kustomize.config.k8s.io/v1beta1":
        problems.append("wrong Kustomization apiVersion")
    listed = kustomization.get("resources", [])
    for name in listed:
        if not (K8S_DIR / name).is_file():
            problems.append(f"kustomization lists missing file {name}")
    for path in K8S_DIR.glob("*.yaml"):
        if path.name != "kustomization.yaml" and path.name not in listed:
            problems.append(f"{path.name} is not listed in kustomization.yaml")
    images = {i["name"] for i in kustomization.get("images", [])}
    if container(objects)["image"].split(":")[0] not in images:
        problems.append("kustomization images do not cover the container image")
    namespaces = [o["metadata"]["name"] for o in objects if o["kind"] == "Namespace"]
    if namespaces and kustomization.get("namespace") not in namespaces:
        problems.append("kustomization namespace is not the Namespace it creates")
    return problems


# --- HAProxy and compose -----------------------------------------------------------


def haproxy_sections(text: str) -> dict[str, list[list[str]]]:
    """{"backend mtproxy": [["balance", "source"], ...], ...}, comments dropped."""
    sections: dict[str, list[list[str]]] = {}
    current = None
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].rstrip()
        if not line.strip():
            continue
        if not line[0].isspace():
            current = " ".join(line.split())
            sections[current] = []
        elif current is not None:
            sections[current].append(line.split())
    return sections


def haproxy_problems(text: str) -> list[str]:
    problems = []
    sections = haproxy_sections(text)
    defaults = sections.get("defaults", [])
    if ["mode", "tcp"] not in defaults:
        problems.append("haproxy defaults must be mode tcp")
    for name, lines in sections.items():
        if ["mode", "http"] in lines:
            problems.append(f"{name} switches to mode http")
    backends = {k: v for k, v in sections.items() if k.startswith("backend ")}
    frontends = {k: v for k, v in sections.items() if k.startswith("frontend ")}
    if not backends or not frontends:
        problems.append("haproxy needs a frontend and a backend")
    for name, lines in backends.items():
        servers = [ln for ln in lines if ln[0] in ("server", "server-template")]
        if not servers:
            problems.append(f"{name} has no servers")
        for server in servers:
            if "send-proxy-v2" not in server:
                problems.append(f"{name}: {server[1]} does not send-proxy-v2")
            if "check" not in server:
                problems.append(f"{name}: {server[1]} is not health-checked")
        expects = [" ".join(ln[2:]) for ln in lines if ln[:2] == ["http-check", "expect"]]
        if not any("draining" in e for e in expects):
            problems.append(f"{name}: the health check must fail a replica that is draining")
        balance = [ln[1] for ln in lines if ln[0] == "balance"]
        if balance not in (["source"], ["leastconn"]):
            problems.append(f"{name} must balance source or leastconn")
    return problems


def compose_problems(compose: Obj, haproxy_text: str) -> list[str]:
    problems = []
    services: dict[str, Obj] = compose["services"]
    lbs = [n for n, s in services.items() if str(s.get("image", "")).startswith("haproxy:")]
    proxies = [n for n, s in services.items() if str(s.get("image", "")).startswith("mtproxy:")]
    if len(lbs) != 1:
        return ["compose needs exactly one haproxy service"]
    if not proxies:
        return ["compose runs no mtproxy service"]
    lb = services[lbs[0]]
    cfg_mount = [
        v
        for v in lb.get("volumes", [])
        if str(v).split(":")[1:2] == ["/usr/local/etc/haproxy/haproxy.cfg"]
    ]
    if len(cfg_mount) != 1 or not (COMPOSE_FILE.parent / str(cfg_mount[0]).split(":")[0]).is_file():
        problems.append("haproxy does not mount haproxy.cfg where the official image reads it")
    replicas = sum(int(services[n].get("deploy", {}).get("replicas", 1)) for n in proxies)
    if replicas < 2:
        problems.append("fewer than 2 mtproxy replicas")

    sections = haproxy_sections(haproxy_text)
    published = {str(p).rsplit(":", 1)[-1] for p in lb.get("ports", [])}
    binds = {
        ln[1].rsplit(":", 1)[-1]
        for k, v in sections.items()
        if k.startswith("frontend")
        for ln in v
        if ln[0] == "bind"
    }
    if not published or published != binds:
        problems.append(f"haproxy publishes {published} but binds {binds}")
    servers = [
        ln
        for k, v in sections.items()
        if k.startswith("backend")
        for ln in v
        if ln[0] in ("server", "server-template")
    ]
    for name in proxies:
        box = services[name]
        args = [str(a) for a in box.get("command", [])]
        problems += run_args_problems(args)
        if "--proxy-protocol" not in args:
            problems.append(f"{name} does not require the PROXY header (--proxy-protocol)")
        if box.get("ports"):
            problems.append(f"{name} publishes ports: clients could bypass HAProxy")
        env = box.get("environment", {})
        if "SECRET" not in env and option(args, "--secret") is None:
            problems.append(f"{name} gets no secret")
        if not set(env) <= CONTAINER_ENV | EXTRA_ENV:
            problems.append(f"{name} sets variables the container does not read")
        problems += compose_grace_problems(name, box)
        listen = str(port_of(option(args, "--listen")))
        stats = str(port_of(option(args, "--stats")))
        targets = [s for s in servers if f"{name}:{listen}" in s]
        if not targets:
            problems.append(f"no haproxy server points at {name}:{listen}")
        for server in targets:
            if option(server, "port") != stats:
                problems.append(f"haproxy health-checks {name} on a port that is not --stats")
    return problems


# --- tests: parsing and official schemas ----------------------------------------------


def test_every_yaml_under_deploy_parses() -> None:
    files = yaml_files()
    names = {p.relative_to(DEPLOY).as_posix() for p in files}
    assert {"kubernetes/kustomization.yaml", "haproxy/docker-compose.yml"} <= names
    for path in files:
        docs = load(path)
        assert docs, path
        assert all(isinstance(d, dict) for d in docs), path


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_kubernetes_objects_match_official_schemas(version: str) -> None:
    objects = k8s_objects()
    assert {o["kind"] for o in objects} >= {"Deployment", "Service", "Secret"}
    for obj in objects:
        kubernetes_validate.validate(obj, version, strict=True)


SCHEMA_BREAKERS: list[tuple[str, Callable[[Obj], None]]] = [
    ("unknown field", lambda d: d["spec"]["template"]["spec"]["containers"][0].update(argz=[])),
    ("wrong type", lambda d: d["spec"].update(replicas="three")),
    (
        "probe without port",
        lambda d: d["spec"]["template"]["spec"]["containers"][0]["livenessProbe"].update(
            tcpSocket={}
        ),
    ),
    ("missing selector", lambda d: d["spec"].pop("selector")),
]


@pytest.mark.parametrize(("what", "breaker"), SCHEMA_BREAKERS, ids=[w for w, _ in SCHEMA_BREAKERS])
def test_schema_validation_catches_broken_deployment(
    what: str, breaker: Callable[[Obj], None]
) -> None:
    broken = copy.deepcopy(one(k8s_objects(), "Deployment"))
    breaker(broken)
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, K8S_VERSIONS[-1], strict=True)


def compose_validator() -> jsonschema.protocols.Validator:
    schema = get_builtin_schema("vendor.compose-spec")
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema)


def test_compose_matches_compose_spec_schema() -> None:
    errors = [e.message for e in compose_validator().iter_errors(load(COMPOSE_FILE)[0])]
    assert errors == []


@pytest.mark.parametrize(
    "breaker",
    [
        lambda c: c["services"]["mtproxy"].update(comand=["run"]),
        lambda c: c["services"]["haproxy"].update(ports={"443": 443}),
        lambda c: c.update(servics={}),
    ],
)
def test_compose_schema_catches_broken_file(breaker: Callable[[Obj], None]) -> None:
    broken = copy.deepcopy(load(COMPOSE_FILE)[0])
    breaker(broken)
    assert list(compose_validator().iter_errors(broken))


# --- tests: cross-checks -----------------------------------------------------------


def test_kubernetes_cross_checks_pass() -> None:
    assert kubernetes_problems(k8s_objects()) == []


def test_kustomization_ties_everything_together() -> None:
    (kustomization,) = load(K8S_DIR / "kustomization.yaml")
    assert kustomization_problems(kustomization, k8s_objects()) == []


def deployment_box(objs: list[Obj]) -> Obj:
    return container(objs)


def service_of(objs: list[Obj]) -> Obj:
    return one(objs, "Service")


def drop_arg(flag: str) -> Callable[[list[Obj]], None]:
    def apply(objs: list[Obj]) -> None:
        deployment_box(objs)["args"].remove(flag)

    return apply


def set_option(name: str, value: str) -> Callable[[list[Obj]], None]:
    def apply(objs: list[Obj]) -> None:
        args = deployment_box(objs)["args"]
        args[args.index(name) + 1] = value

    return apply


K8S_BREAKERS: list[tuple[str, Callable[[list[Obj]], None], str]] = [
    ("proxy flag dropped", drop_arg("--proxy-protocol"), "lacks --proxy-protocol"),
    (
        "annotations dropped",
        lambda o: service_of(o)["metadata"].pop("annotations"),
        "no annotation",
    ),
    (
        "service port renamed",
        lambda o: service_of(o)["spec"]["ports"][0].update(targetPort="mtprot"),
        "targets no container port",
    ),
    (
        "service port number",
        lambda o: service_of(o)["spec"]["ports"][0].update(targetPort=8443),
        "targets no container port",
    ),
    ("listen elsewhere", set_option("--listen", "0.0.0.0:8443"), "does not listen on"),
    ("stats elsewhere", set_option("--stats", "0.0.0.0:9000"), "not the --stats port"),
    ("selector", lambda o: service_of(o)["spec"]["selector"].update(app="other"), "matches no pod"),
    (
        "traffic policy",
        lambda o: service_of(o)["spec"].update(externalTrafficPolicy="Cluster"),
        "externalTrafficPolicy",
    ),
    (
        "liveness command",
        lambda o: deployment_box(o)["livenessProbe"]["exec"].update(command=["true"]),
        "livenessProbe must run",
    ),
    (
        "readiness as http",
        lambda o: deployment_box(o).update(readinessProbe={"httpGet": {"path": "/stats",
                                                                       "port": "stats"}}),
        "readinessProbe must run",
    ),
    (
        "grace too short",
        lambda o: one(o, "Deployment")["spec"]["template"]["spec"].update(
            terminationGracePeriodSeconds=20
        ),
        "no margin",
    ),
    (
        "secret key",
        lambda o: deployment_box(o)["env"][0]["valueFrom"]["secretKeyRef"].update(key="scret"),
        "missing key",
    ),
    (
        "secret name",
        lambda o: deployment_box(o)["env"][0]["valueFrom"]["secretKeyRef"].update(name="x"),
        "missing Secret",
    ),
    (
        "real secret committed",
        lambda o: one(o, "Secret")["stringData"].update(secret="00" * 16),
        "usable proxy secret",
    ),
    (
        "unknown env",
        lambda o: deployment_box(o)["env"].append({"name": "SECRETS", "value": "x"}),
        "no variable named",
    ),
    (
        "unknown arg",
        lambda o: deployment_box(o)["args"].append("--proxy-protocl"),
        "unknown `mtproxy run`",
    ),
    (
        "writable root",
        lambda o: deployment_box(o)["securityContext"].update(readOnlyRootFilesystem=False),
        "writable",
    ),
    (
        "capabilities",
        lambda o: deployment_box(o)["securityContext"]["capabilities"].update(add=["NET_ADMIN"]),
        "capabilities",
    ),
    ("no data volume", lambda o: deployment_box(o).update(volumeMounts=[]), "--data-dir"),
    ("one replica", lambda o: one(o, "Deployment")["spec"].update(replicas=1), "at least 2"),
    ("no limits", lambda o: deployment_box(o)["resources"].pop("limits"), "resources.limits"),
]


@pytest.mark.parametrize(
    ("what", "breaker", "expected"), K8S_BREAKERS, ids=[b[0] for b in K8S_BREAKERS]
)
def test_kubernetes_cross_checks_catch(
    what: str, breaker: Callable[[list[Obj]], None], expected: str
) -> None:
    objects = copy.deepcopy(k8s_objects())
    breaker(objects)
    problems = kubernetes_problems(objects)
    assert any(expected in p for p in problems), problems


def test_kustomization_check_catches_unlisted_file() -> None:
    (kustomization,) = load(K8S_DIR / "kustomization.yaml")
    broken = copy.deepcopy(kustomization)
    broken["resources"].remove("service.yaml")
    broken["resources"].append("ingress.yaml")
    problems = kustomization_problems(broken, k8s_objects())
    assert any("service.yaml is not listed" in p for p in problems)
    assert any("missing file ingress.yaml" in p for p in problems)


def test_compose_and_haproxy_cross_checks_pass() -> None:
    text = HAPROXY_CFG.read_text()
    assert haproxy_problems(text) == []
    assert compose_problems(load(COMPOSE_FILE)[0], text) == []


def compose_box(c: Obj) -> Obj:
    box: Obj = c["services"]["mtproxy"]
    return box


def compose_option(name: str, value: str) -> Callable[[Obj], None]:
    def apply(c: Obj) -> None:
        command = compose_box(c)["command"]
        command[command.index(name) + 1] = value

    return apply


COMPOSE_BREAKERS: list[tuple[str, Callable[[Obj], None], str]] = [
    (
        "proxy flag dropped",
        lambda c: compose_box(c)["command"].remove("--proxy-protocol"),
        "--proxy-protocol",
    ),
    ("ports published", lambda c: compose_box(c).update(ports=["443:443"]), "bypass"),
    ("one replica", lambda c: compose_box(c)["deploy"].update(replicas=1), "fewer than 2"),
    (
        "listen elsewhere",
        compose_option("--listen", "0.0.0.0:8443"),
        "no haproxy server",
    ),
    (
        "stats elsewhere",
        compose_option("--stats", "0.0.0.0:9000"),
        "not --stats",
    ),
    (
        "config not mounted",
        lambda c: c["services"]["haproxy"].update(volumes=[]),
        "mount haproxy.cfg",
    ),
    ("port mismatch", lambda c: c["services"]["haproxy"].update(ports=["8443:8443"]), "binds"),
    ("no secret", lambda c: compose_box(c)["environment"].pop("SECRET"), "no secret"),
    ("default stop timeout", lambda c: compose_box(c).pop("stop_grace_period"), "no margin"),
]


@pytest.mark.parametrize(
    ("what", "breaker", "expected"), COMPOSE_BREAKERS, ids=[b[0] for b in COMPOSE_BREAKERS]
)
def test_compose_cross_checks_catch(
    what: str, breaker: Callable[[Obj], None], expected: str
) -> None:
    compose = copy.deepcopy(load(COMPOSE_FILE)[0])
    breaker(compose)
    problems = compose_problems(compose, HAPROXY_CFG.read_text())
    assert any(expected in p for p in problems), problems


HAPROXY_BREAKERS = [
    ("send-proxy-v2", "send-proxy", "does not send-proxy-v2"),
    ("    mode tcp", "    mode http", "mode"),
    ("balance source", "balance roundrobin", "balance source or leastconn"),
    (" check port", " port", "not health-checked"),
    ("http-check expect rstring draining", "http-check expect rstring ready", "draining"),
]


@pytest.mark.parametrize(
    ("old", "new", "expected"), HAPROXY_BREAKERS, ids=[b[0] for b in HAPROXY_BREAKERS]
)
def test_haproxy_essentials_catch(old: str, new: str, expected: str) -> None:
    text = HAPROXY_CFG.read_text()
    assert old in text
    problems = haproxy_problems(text.replace(old, new))
    assert any(expected in p for p in problems), problems


def test_root_compose_file_matches_schema_and_drains_in_time() -> None:
    compose = load(ROOT_COMPOSE_FILE)[0]
    assert [e.message for e in compose_validator().iter_errors(compose)] == []
    box = compose["services"]["mtproxy"]
    assert compose_grace_problems("mtproxy", box) == []
    broken = dict(box, environment={"SHUTDOWN_GRACE": "29"})
    assert compose_grace_problems("mtproxy", broken)
    without = {k: v for k, v in box.items() if k != "stop_grace_period"}
    assert compose_grace_problems("mtproxy", without)  # Docker's 10 s against 25 s


def test_compose_durations() -> None:
    assert compose_seconds("30s") == 30 and compose_seconds("1m30s") == 90
    assert compose_seconds(None) == 10
    with pytest.raises(ValueError):
        compose_seconds("30")


# --- the real haproxy binary --------------------------------------------------------


def haproxy_check(path: Path) -> subprocess.CompletedProcess[str]:
    """``haproxy -c`` in a private network namespace: the check resolves the servers'
    names (``mtproxy``, Docker's service name) with the system resolver, which would
    send DNS queries off the machine; there it fails at once and only warns."""
    binary = require_binary("haproxy", "haproxy")
    require_binary("ip", "iproute2")
    # Loopback up: the config's resolvers section names a nameserver on 127.0.0.11.
    return subprocess.run(
        [*network_namespace(), "sh", "-c", 'ip link set lo up && exec "$@"', "sh",
         binary, "-c", "-f", str(path)], capture_output=True, text=True, timeout=30,
    )  # fmt: skip


def test_haproxy_accepts_the_config() -> None:
    result = haproxy_check(HAPROXY_CFG)
    assert result.returncode == 0, result.stdout + result.stderr
    # The only tolerated warnings: Docker's service name does not resolve here.
    warnings = [ln for ln in (result.stdout + result.stderr).splitlines() if "[WARNING]" in ln]
    assert all("could not resolve address 'mtproxy'" in w for w in warnings), warnings


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("balance source", "balance sauce"),
        ("send-proxy-v2", "send-proxy-v3"),
        ("mode tcp", "mode udp"),
    ],
)
def test_haproxy_check_catches_broken_config(tmp_path: Path, old: str, new: str) -> None:
    broken = tmp_path / "haproxy.cfg"
    broken.write_text(HAPROXY_CFG.read_text().replace(old, new))
    assert haproxy_check(broken).returncode != 0
