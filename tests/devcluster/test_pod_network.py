"""Pod networking on the real control plane, node agent, kube-proxy and cluster DNS.

Each pod has its own namespace and address, so replicas listen on the same port; probes reach
the pod's IP; a Service's ClusterIP and its name reach the replicas from the host (through
kube-proxy in the slot's node namespace) and from pods (through the cluster DNS); a rolling
update behind a Service loses no request; and an environment leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Self

import pytest
from polling import wait_for

from glmops_dev.agent import NodeAgent, start_agent
from glmops_dev.agent.volumes import hostpath_dir
from glmops_dev.cluster import KubeCluster
from glmops_dev.environment import start_environment
from glmops_dev.network import ClusterNetwork, iproute
from glmops_dev.network.addresses import BLOCK, slot_of_address
from glmops_dev.network.dnsnames import block_markers_present
from glmops_dev.network.dnsquery import query_a
from glmops_dev.network.hostsfile import read_hosts
from glmops_dev.nodes import profile

IMAGE = "ghcr.io/glmops/operator:test"  # rule `run: as-is`: the project's Python runs the command
SERVICE_PORT = 8000
POD_PORT = 8080
# Answers every GET with "<VERSION> <hostname>"; a SIGTERM ends it at once, as many servers do.
SERVER = (
    "import http.server, os, socket\n"
    "class H(http.server.BaseHTTPRequestHandler):\n"
    "    def do_GET(self):\n"
    "        body = f\"{os.environ.get('VERSION', 'v1')} {socket.gethostname()}\".encode()\n"
    "        self.send_response(200)\n"
    "        self.send_header('Content-Length', str(len(body)))\n"
    "        self.end_headers()\n"
    "        self.wfile.write(body)\n"
    "    def log_message(self, *args): pass\n"
    f"http.server.ThreadingHTTPServer(('0.0.0.0', {POD_PORT}), H).serve_forever()\n"
)


def apply(cluster: KubeCluster, namespace: str, *objects: dict[str, Any]) -> None:
    cluster.kubectl(
        "apply",
        "-n",
        namespace,
        "-f",
        "-",
        input=json.dumps({"apiVersion": "v1", "kind": "List", "items": list(objects)}),
    )


def get(cluster: KubeCluster, namespace: str, kind: str, name: str) -> Any:
    result = cluster.kubectl("get", kind, name, "-n", namespace, "-o", "json", check=False)
    return json.loads(result.stdout) if result.returncode == 0 else None


def pods(cluster: KubeCluster, namespace: str, selector: str) -> list[dict[str, Any]]:
    out = cluster.kubectl("get", "pods", "-n", namespace, "-l", selector, "-o", "json").stdout
    return list(json.loads(out)["items"])


def is_ready(pod: dict[str, Any]) -> bool:
    conditions = (pod.get("status") or {}).get("conditions") or []
    return not pod["metadata"].get("deletionTimestamp") and any(
        c["type"] == "Ready" and c["status"] == "True" for c in conditions
    )


def diagnose(cluster: KubeCluster, namespace: str, agent: NodeAgent) -> Any:
    def text() -> str:
        listing = cluster.kubectl(
            "get", "pods,endpoints,svc", "-n", namespace, "-o", "wide", check=False
        ).stdout
        events = cluster.kubectl("get", "events", "-n", namespace, check=False).stdout
        return f"agent errors: {agent.errors}\n{listing}\n{events[-3000:]}"

    return text


def wait_default_service_account(cluster: KubeCluster, namespace: str) -> None:
    """Before 1.24 a pod is only admitted once its ServiceAccount has a token Secret."""

    def ready() -> bool:
        account = get(cluster, namespace, "serviceaccount", "default")
        return bool(account and (account.get("secrets") or cluster.server_version() >= (1, 24)))

    wait_for("the default ServiceAccount's token", ready, 60)


def web_deployment(replicas: int = 2, version: str = "v1", pre_stop_s: float = 0.0) -> dict[str, Any]:
    container: dict[str, Any] = {
        "name": "web",
        "image": IMAGE,
        "command": ["python", "-c", SERVER],
        "env": [{"name": "VERSION", "value": version}],
        "ports": [{"name": "http", "containerPort": POD_PORT}],
        "readinessProbe": {
            "httpGet": {"path": "/", "port": "http"},
            "periodSeconds": 1,
            "failureThreshold": 1,
        },
    }
    if pre_stop_s:
        # The usual guard for zero-downtime rollouts: keep serving while the endpoint is removed.
        container["lifecycle"] = {
            "preStop": {"exec": {"command": ["python", "-c", f"import time; time.sleep({pre_stop_s})"]}}
        }
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "web"},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": "web"}},
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {"containers": [container], "terminationGracePeriodSeconds": 30},
            },
        },
    }


def web_service() -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "web"},
        "spec": {"selector": {"app": "web"}, "ports": [{"port": SERVICE_PORT, "targetPort": "http"}]},
    }


def http_get(url: str, timeout_s: float = 5.0) -> str:
    with urllib.request.urlopen(url, timeout=timeout_s) as response:
        return str(response.read().decode())


def ready_replicas(
    cluster: KubeCluster, namespace: str, count: int, agent: NodeAgent
) -> list[dict[str, Any]]:
    def check() -> list[dict[str, Any]] | None:
        items = [p for p in pods(cluster, namespace, "app=web") if not p["metadata"].get("deletionTimestamp")]
        return items if len(items) == count and all(is_ready(p) for p in items) else None

    return wait_for(f"{count} ready replicas", check, 120, diagnose(cluster, namespace, agent))


def test_replicas_listen_on_one_port_each_at_its_own_ip_and_the_service_reaches_them(
    cluster: KubeCluster, namespace: str, node_agent: NodeAgent
) -> None:
    network = cluster.network
    assert network is not None
    wait_default_service_account(cluster, namespace)
    apply(cluster, namespace, web_deployment(), web_service())
    replicas = ready_replicas(cluster, namespace, 2, node_agent)

    # Two pods, one port, two addresses of the pod range; the readiness probes passed against them.
    addresses = sorted(p["status"]["podIP"] for p in replicas)
    assert len(set(addresses)) == 2
    for pod in replicas:
        assert ipaddress.IPv4Address(pod["status"]["podIP"]) in ipaddress.IPv4Network(network.plan.pod_cidr)
        assert pod["status"]["hostIP"] == network.plan.host_ip
        assert node_agent.pod_ip(namespace, pod["metadata"]["name"]) == pod["status"]["podIP"]
        # The node reaches each pod at its own address; each answers with its own hostname.
        name = pod["metadata"]["name"]
        assert http_get(f"http://{pod['status']['podIP']}:{POD_PORT}/") == f"v1 {name}"

    # The real Endpoints controller lists both; kube-proxy programs the ClusterIP.
    def endpoint_addresses() -> list[str] | None:
        endpoints = get(cluster, namespace, "endpoints", "web") or {}
        found = sorted(a["ip"] for s in endpoints.get("subsets") or [] for a in s.get("addresses") or [])
        return found if found == addresses else None

    wait_for(
        "both pods in the Service's Endpoints",
        endpoint_addresses,
        60,
        diagnose(cluster, namespace, node_agent),
    )
    cluster_ip = get(cluster, namespace, "service", "web")["spec"]["clusterIP"]
    assert ipaddress.IPv4Address(cluster_ip) in ipaddress.IPv4Network(network.plan.service_cidr)
    assert network.kube_proxy is not None
    wait_for("kube-proxy's rules for the Service", lambda: network.kube_proxy.has_rules_for(cluster_ip), 60)

    # From the host: the ClusterIP and the name NAME.NAMESPACE.svc (the slot's /etc/hosts block).
    host_name = f"web.{namespace}.svc"
    wait_for(f"{host_name} in /etc/hosts", lambda: _resolves(host_name, cluster_ip), 60)
    answered = {http_get(f"http://{cluster_ip}:{SERVICE_PORT}/") for _ in range(30)}
    answered |= {http_get(f"http://{host_name}:{SERVICE_PORT}/") for _ in range(30)}
    assert answered == {f"v1 {p['metadata']['name']}" for p in replicas}  # both replicas serve
    assert query_a(network.plan.dns_ip, f"web.{namespace}.svc.cluster.local") == [cluster_ip]

    # From a pod: every form of the name, through the cluster DNS and the pod's search path.
    names = ["web", f"web.{namespace}", f"web.{namespace}.svc", f"web.{namespace}.svc.cluster.local"]
    client = (
        "import json, socket, subprocess, sys, urllib.request\n"
        f"names = {names!r}\n"
        "out = {n: urllib.request.urlopen(f'http://{n}:8000/', timeout=10).read().decode() for n in names}\n"
        "out['_resolv'] = open('/etc/resolv.conf').read()\n"
        "out['_hostname'] = socket.gethostname()\n"
        "out['_routes'] = open('/proc/net/route').read()\n"
        "json.dump(out, open('/dev/termination-log', 'w'))\n"
    )
    apply(
        cluster,
        namespace,
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "client"},
            "spec": {
                "restartPolicy": "Never",
                "containers": [{"name": "main", "image": IMAGE, "command": ["python", "-c", client]}],
            },
        },
    )

    def finished() -> Any:
        obj = get(cluster, namespace, "pod", "client")
        return obj if obj and obj["status"].get("phase") in ("Succeeded", "Failed") else None

    obj = wait_for("the client pod", finished, 120, diagnose(cluster, namespace, node_agent))
    state = obj["status"]["containerStatuses"][0]["state"]["terminated"]
    assert obj["status"]["phase"] == "Succeeded", state
    result = json.loads(state["message"])
    assert {result[n] for n in names} <= {f"v1 {p['metadata']['name']}" for p in replicas}
    assert result["_resolv"].splitlines()[0] == f"nameserver {network.plan.dns_ip}"
    assert result["_hostname"] == "client"
    # /proc/net/route: no default route (destination 00000000) in the pod.
    destinations = [line.split()[1] for line in result["_routes"].splitlines()[1:]]
    assert "00000000" not in destinations and destinations


def _resolves(name: str, address: str) -> bool:
    try:
        return {info[4][0] for info in socket.getaddrinfo(name, None, socket.AF_INET)} == {address}
    except socket.gaierror:
        return False


class ClientLoop:
    """Sends requests to a URL on a thread, one new connection each, until stopped; counts what failed."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.answers: list[str] = []
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="client-loop", daemon=True)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join(30)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.answers.append(http_get(self.url, timeout_s=10))
            except (urllib.error.URLError, OSError) as exc:
                self.failures.append(f"{time.strftime('%H:%M:%S')} {exc}")
            time.sleep(0.02)


def test_a_rolling_update_behind_a_service_name_fails_no_request(
    cluster: KubeCluster, namespace: str, node_agent: NodeAgent
) -> None:
    wait_default_service_account(cluster, namespace)
    apply(cluster, namespace, web_deployment(pre_stop_s=5), web_service())
    old = {p["metadata"]["name"] for p in ready_replicas(cluster, namespace, 2, node_agent)}
    cluster_ip = get(cluster, namespace, "service", "web")["spec"]["clusterIP"]
    host_name = f"web.{namespace}.svc"
    wait_for(f"{host_name} in /etc/hosts", lambda: _resolves(host_name, cluster_ip), 60)
    url = f"http://{host_name}:{SERVICE_PORT}/"
    wait_for("the Service to answer", lambda: _answers(url), 60, diagnose(cluster, namespace, node_agent))

    with ClientLoop(url) as loop:
        time.sleep(2)
        apply(cluster, namespace, web_deployment(version="v2", pre_stop_s=5))

        def rolled_out() -> bool:
            current = pods(cluster, namespace, "app=web")
            return (
                len(current) == 2
                and all(is_ready(p) for p in current)
                and not {p["metadata"]["name"] for p in current} & old
                and all(p["spec"]["containers"][0]["env"][0]["value"] == "v2" for p in current)
            )

        wait_for(
            "the rollout to replace both pods", rolled_out, 240, diagnose(cluster, namespace, node_agent)
        )
        time.sleep(3)
    assert loop.failures == [], f"{len(loop.failures)} of {len(loop.answers) + len(loop.failures)} failed"
    versions = [answer.split()[0] for answer in loop.answers]
    assert "v1" in versions and "v2" in versions
    assert set(versions[-20:]) == {"v2"}
    assert len(loop.answers) > 50


def _answers(url: str) -> bool:
    try:
        http_get(url, timeout_s=3)
    except (urllib.error.URLError, OSError):
        return False
    return True


def test_deleting_a_pod_runs_its_pre_stop_hook_before_sigterm_within_the_grace_period(
    cluster: KubeCluster, namespace: str, node_agent: NodeAgent
) -> None:
    host_dir = f"/glmops-test/{namespace}"
    main = (
        "import signal, sys, time\n"
        "def stop(*_):\n"
        "    open('/mnt/h/sigterm', 'w').write(repr(time.time())); sys.exit(0)\n"
        "signal.signal(signal.SIGTERM, stop)\n"
        "open('/mnt/h/started', 'w').close()\n"
        "time.sleep(600)\n"
    )
    hook = "import time; open('/mnt/h/prestop', 'w').write(repr(time.time())); time.sleep(12)"
    apply(
        cluster,
        namespace,
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "graceful"},
            "spec": {
                # Longer than the agent's cap (10 s): a deleted pod gets its whole grace period.
                "terminationGracePeriodSeconds": 20,
                "volumes": [{"name": "h", "hostPath": {"path": host_dir, "type": "DirectoryOrCreate"}}],
                "containers": [
                    {
                        "name": "main",
                        "image": IMAGE,
                        "command": ["python", "-c", main],
                        "volumeMounts": [{"name": "h", "mountPath": "/mnt/h"}],
                        "lifecycle": {"preStop": {"exec": {"command": ["python", "-c", hook]}}},
                    }
                ],
            },
        },
    )
    folder = hostpath_dir(node_agent.state_dir, host_dir)
    wait_for("the container to start", lambda: (folder / "started").exists(), 60)
    deleted_at = time.time()
    cluster.kubectl("delete", "pod", "graceful", "-n", namespace, "--wait=false")
    wait_for("SIGTERM after the hook", lambda: (folder / "sigterm").exists(), 60)
    pre_stop, sigterm = float((folder / "prestop").read_text()), float((folder / "sigterm").read_text())
    assert deleted_at - 1 <= pre_stop < sigterm
    assert sigterm - pre_stop >= 11.5  # the hook ran to its end, past the agent's 10 s cap
    wait_for("the pod to be gone", lambda: get(cluster, namespace, "pod", "graceful") is None, 60)


def host_iptables_chains() -> set[str]:
    text = subprocess_text(["iptables-save"])
    return {line.split()[0][1:] for line in text.splitlines() if line.startswith(":")}


def subprocess_text(argv: list[str]) -> str:
    import subprocess

    return subprocess.run(argv, capture_output=True, text=True, check=False, timeout=60).stdout


@pytest.fixture
def host_network_before() -> Iterator[dict[str, Any]]:
    yield {
        "route_localnet": iproute.read_sysctl("net.ipv4.conf.all.route_localnet"),
        "ip_forward": iproute.read_sysctl("net.ipv4.ip_forward"),
        "chains": host_iptables_chains(),
    }


def slot_traces(network: ClusterNetwork) -> list[str]:
    plan = network.plan
    traces = [f"netns {n}" for n in iproute.netns_names() if n.startswith(plan.name_prefix + "-")]
    traces += [f"link {plan.host_link}"] if iproute.link_exists(plan.host_link) else []
    for route in iproute.routes():
        destination = str(route.get("dst", ""))
        if route.get("type") != "blackhole" and slot_of_address(destination.split("/")[0]) == plan.slot:
            traces.append(f"route {destination}")
    if block_markers_present(read_hosts(), plan.hosts_block_marker):
        traces.append("/etc/hosts block")
    return traces


class MidTestFailure(Exception):
    """Stands for a test that fails while its environment runs."""


@pytest.mark.slow
@pytest.mark.parametrize("ending", ["normal", "error"])
def test_a_second_environment_has_its_own_slot_and_leaves_nothing_behind(
    cluster: KubeCluster,
    node_agent: NodeAgent,
    tmp_path: Path,
    host_network_before: dict[str, Any],
    ending: str,
) -> None:
    first = cluster.network
    assert first is not None
    seen: dict[str, Any] = {}
    with (
        pytest.raises(MidTestFailure) if ending == "error" else contextlib.nullcontext(),
        start_environment(profiles=[profile("cpu")], heartbeat_interval_s=None) as second,
    ):
        network = second.network
        assert network is not None
        seen["network"] = network
        assert network.plan.slot != first.plan.slot
        assert not ipaddress.IPv4Network(network.plan.pod_cidr).overlaps(
            ipaddress.IPv4Network(first.plan.pod_cidr)
        )
        assert (
            second.cluster.server
            == f"https://{network.plan.host_ip}:{second.cluster.server.rsplit(':', 1)[1]}"
        )
        agent = start_agent(second.cluster, tmp_path / "agent", heartbeat_interval_s=None)
        try:
            second.cluster.kubectl("create", "namespace", "apps")
            wait_default_service_account(second.cluster, "apps")
            apply(second.cluster, "apps", web_deployment(replicas=1), web_service())
            [pod] = ready_replicas(second.cluster, "apps", 1, agent)
            address = pod["status"]["podIP"]
            assert ipaddress.IPv4Address(address) in ipaddress.IPv4Network(network.plan.pod_cidr)
            # Each environment's agent runs its own cluster's pods only.
            assert agent.worker("apps", pod["metadata"]["name"]) is not None
            assert node_agent.worker("apps", pod["metadata"]["name"]) is None
            # Its own kube-proxy, in its own namespace: the host's iptables never see a KUBE chain.
            assert "KUBE-SERVICES" in network.kube_proxy.rules()  # type: ignore[union-attr]
            assert not {c for c in host_iptables_chains() if c.startswith("KUBE-")}
            wait_for(
                "the second cluster's Service name on the host",
                lambda: _answers(f"http://web.apps.svc:{SERVICE_PORT}/"),
                90,
            )
            assert block_markers_present(read_hosts(), network.plan.hosts_block_marker)
            if ending == "error":
                raise MidTestFailure("the environment must still be removed")
        finally:
            agent.stop()
    network = seen["network"]
    assert network.closed
    assert slot_traces(network) == []
    assert iproute.read_sysctl("net.ipv4.conf.all.route_localnet") == host_network_before["route_localnet"]
    assert iproute.read_sysctl("net.ipv4.ip_forward") == host_network_before["ip_forward"]
    assert host_iptables_chains() == host_network_before["chains"]
    # The first environment still works, and the block stays blackholed while it runs.
    assert first.plan.slot == slot_of_address(first.plan.host_ip)
    assert [r for r in iproute.routes("type", "blackhole") if r["dst"] == str(BLOCK)]
    assert iproute.netns_exists(first.plan.node_netns)


def test_unassigned_addresses_of_the_block_are_blackholed_while_the_cluster_runs(
    cluster: KubeCluster,
) -> None:
    network = cluster.network
    assert network is not None
    plan = network.plan
    for address in (str(plan.network.network_address + 3 * 256 + 9), "100.127.200.1"):
        assert iproute.ip("route", "get", address, check=False) == ""  # the kernel refuses: blackhole
        with socket.socket() as sock, pytest.raises(OSError) as failure:
            sock.settimeout(3)
            sock.connect((address, 80))
        assert failure.value.errno == 22  # EINVAL: never sent
    # The environment's own ranges are routed into its node namespace.
    assert iproute.routes("exact", plan.service_cidr)[0]["dev"] == plan.host_link
    assert os.path.exists(f"/run/netns/{plan.node_netns}")
