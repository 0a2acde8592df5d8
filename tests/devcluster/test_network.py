"""The local cluster's pod network without a control plane: address plan, files, records, namespaces.

The first tests are pure. The rest need root (network namespaces, veths, routes) but no API
server: they build a slot's network, give pods namespaces, run servers in them, and check that
everything of the slot is gone afterwards, also after a run killed outright.
"""

from __future__ import annotations

import errno
import ipaddress
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from polling import wait_for

from glmops_dev.agent.env import field_value
from glmops_dev.agent.podstatus import ConditionMemory, PodAddresses, build_status
from glmops_dev.agent.runtime import ContainerProcess, LaunchSpec, PodNamespaces, run_exec
from glmops_dev.network import ClusterNetwork, PodSandbox, SlotPlan, iproute, service_host_names
from glmops_dev.network.addresses import (
    BLOCK,
    RESERVED_SLOT,
    SLOT_COUNT,
    STANDALONE_SERVICE_CIDR,
    is_private_range,
    slot_of_address,
    slot_of_name,
)
from glmops_dev.network.dnsnames import (
    block_markers_present,
    host_lines,
    service_records,
    with_block,
    without_block,
)
from glmops_dev.network.dnsquery import build_query, parse_answer
from glmops_dev.network.hostsfile import read_hosts
from glmops_dev.network.kubeproxy import kube_proxy_args
from glmops_dev.network.podfiles import PodDnsError, hosts_file, pod_hostname, resolv_conf
from glmops_dev.network.slots import slot_held

# -- the address plan ---------------------------------------------------------------------------


def test_a_slot_takes_its_ranges_from_the_block_and_never_from_private_ranges() -> None:
    plan = SlotPlan(3)
    assert str(plan.network) == "100.67.0.0/16"
    assert (plan.host_ip, plan.node_link_ip) == ("100.67.0.1", "100.67.0.2")
    assert (plan.service_cidr, plan.kubernetes_service_ip) == ("100.67.64.0/18", "100.67.64.1")
    assert (plan.pod_cidr, plan.bridge_ip, plan.dns_ip) == ("100.67.128.0/17", "100.67.128.1", "100.67.128.1")
    ranges = [plan.link_cidr, plan.service_cidr, plan.pod_cidr]
    for cidr in ranges:
        network = ipaddress.IPv4Network(cidr)
        assert network.subnet_of(plan.network) and network.subnet_of(BLOCK)
        assert not is_private_range(cidr)
    for a, b in [(0, 1), (0, 2), (1, 2)]:
        assert not ipaddress.IPv4Network(ranges[a]).overlaps(ipaddress.IPv4Network(ranges[b]))
    first, last = plan.pod_addresses()[0], plan.pod_addresses()[-1]
    assert str(ipaddress.IPv4Address(first)) == "100.67.128.2"  # .128.1 is the bridge
    assert str(ipaddress.IPv4Address(last)) == "100.67.255.254"


def test_slots_never_overlap_and_the_reserved_slot_holds_the_standalone_service_range() -> None:
    networks = [SlotPlan(slot).network for slot in range(SLOT_COUNT)]
    assert len(set(networks)) == SLOT_COUNT == 63
    assert all(n.subnet_of(BLOCK) for n in networks)
    assert slot_of_address("100.64.0.1") == 0
    assert slot_of_address("100.126.200.7") == 62
    assert slot_of_address(STANDALONE_SERVICE_CIDR.split("/")[0]) is None  # the reserved slot
    assert slot_of_address("10.96.0.1") is None
    assert ipaddress.IPv4Network(STANDALONE_SERVICE_CIDR).subnet_of(ipaddress.IPv4Network("100.127.0.0/16"))
    assert RESERVED_SLOT == 63
    with pytest.raises(ValueError, match="outside"):
        SlotPlan(SLOT_COUNT)


def test_names_of_a_slot_fit_the_kernel_and_say_their_slot() -> None:
    plan = SlotPlan(62)
    uid = "0f9c2d7e-1b2a-4c3d-9e8f-0123456789ab"
    assert len(plan.host_link) <= 15 and len(plan.pod_veth(uid)) <= 15
    assert plan.pod_veth(uid) != plan.pod_veth(uid.replace("0f", "1f"))
    assert (
        slot_of_name(plan.node_netns)
        == slot_of_name(plan.host_link)
        == slot_of_name(plan.pod_netns(uid))
        == 62
    )
    assert slot_of_name("glmops-s620") is None  # not a slot of the plan
    assert slot_of_name("eth0") is None
    assert plan.pod_uid_of_netns(plan.pod_netns(uid)) == uid
    assert plan.pod_uid_of_netns(SlotPlan(6).pod_netns(uid)) is None


def test_service_names_the_pods_and_the_host_use() -> None:
    assert service_host_names("web", "ml") == ["web", "web.ml", "web.ml.svc", "web.ml.svc.cluster.local"]


def test_kube_proxy_runs_in_iptables_mode_for_the_slot_and_leaves_global_settings_alone() -> None:
    plan = SlotPlan(4)
    args = kube_proxy_args(plan, Path("/k/kube-proxy.kubeconfig"), "sim-cpu")
    assert "--proxy-mode=iptables" in args
    assert f"--cluster-cidr={plan.pod_cidr}" in args  # traffic from the host is masqueraded
    assert "--hostname-override=sim-cpu" in args
    # conntrack limits and timeouts are kernel-wide: 0 leaves them as they are; no OOM immunity.
    for flag in ("--conntrack-max-per-core=0", "--conntrack-tcp-timeout-established=0",
                 "--conntrack-tcp-timeout-close-wait=0", "--oom-score-adj=0"):  # fmt: skip
        assert flag in args
    assert f"--healthz-bind-address={plan.node_link_ip}:10256" in args
    assert "--metrics-bind-address=127.0.0.1:10249" in args


def test_a_pod_reports_its_ip_once_it_has_one_and_the_downward_api_reads_it() -> None:
    pod = {
        "metadata": {"name": "p", "namespace": "ml"},
        "spec": {"restartPolicy": "Always", "containers": []},
    }
    now = datetime(2026, 1, 1, tzinfo=UTC)
    before = build_status(pod, [], [], ConditionMemory(), now, {}, addresses=PodAddresses("100.67.0.1"))
    assert before["hostIP"] == "100.67.0.1" and "podIP" not in before
    after = build_status(
        pod, [], [], ConditionMemory(), now, {}, addresses=PodAddresses("100.67.0.1", "100.67.128.4")
    )
    assert (after["podIP"], after["podIPs"]) == ("100.67.128.4", [{"ip": "100.67.128.4"}])
    view = {**pod, "status": after}
    assert field_value(view, "status.podIP") == "100.67.128.4"
    assert field_value(view, "status.podIPs") == "100.67.128.4"
    assert field_value(view, "status.hostIP") == "100.67.0.1"


# -- files of a pod -----------------------------------------------------------------------------


def _pod(**spec: object) -> dict[str, object]:
    return {"metadata": {"name": "web-7d9f-abcde", "namespace": "ml"}, "spec": dict(spec)}


def test_resolv_conf_points_at_the_cluster_dns_with_the_kubernetes_search_path() -> None:
    text = resolv_conf(_pod(), "100.67.128.1")
    assert text == (
        "nameserver 100.67.128.1\n"
        "search ml.svc.cluster.local svc.cluster.local cluster.local\n"
        "options ndots:5\n"
    )
    # Default would be the node's resolver, which pods cannot reach here: the cluster DNS it is.
    assert resolv_conf(_pod(dnsPolicy="Default"), "100.67.128.1").startswith("nameserver 100.67.128.1\n")


def test_dns_config_adds_to_the_policy_and_none_uses_it_alone() -> None:
    config = {
        "nameservers": ["100.67.128.9"],
        "searches": ["corp.example"],
        "options": [{"name": "ndots", "value": "2"}, {"name": "edns0"}],
    }
    merged = resolv_conf(_pod(dnsConfig=config), "100.67.128.1")
    assert merged.splitlines() == [
        "nameserver 100.67.128.1",
        "nameserver 100.67.128.9",
        "search ml.svc.cluster.local svc.cluster.local cluster.local corp.example",
        "options ndots:2 edns0",
    ]
    alone = resolv_conf(_pod(dnsPolicy="None", dnsConfig=config), "100.67.128.1")
    assert alone.splitlines() == ["nameserver 100.67.128.9", "search corp.example", "options ndots:2 edns0"]
    with pytest.raises(PodDnsError, match="dnsConfig.nameservers"):
        resolv_conf(_pod(dnsPolicy="None"), "100.67.128.1")
    with pytest.raises(PodDnsError, match="spec.dnsPolicy"):
        resolv_conf(_pod(dnsPolicy="Cluster"), "100.67.128.1")


def test_hosts_file_names_the_pod_on_its_own_ip_as_the_kubelet_writes_it() -> None:
    plain = hosts_file(_pod(), "100.67.128.5")
    assert "127.0.0.1\tlocalhost\n" in plain
    assert plain.endswith("100.67.128.5\tweb-7d9f-abcde\n")
    indexed = _pod(
        hostname="trainer-0",
        subdomain="trainer",
        hostAliases=[{"ip": "100.67.128.9", "hostnames": ["cache", "cache.local"]}],
    )
    text = hosts_file(indexed, "100.67.128.5")
    assert "100.67.128.5\ttrainer-0.trainer.ml.svc.cluster.local\ttrainer-0\n" in text
    assert text.endswith("# Entries added by HostAliases.\n100.67.128.9\tcache\tcache.local\n")
    assert pod_hostname(indexed) == "trainer-0"
    assert pod_hostname(_pod(hostname="x" * 70)) == "x" * 63


# -- DNS records --------------------------------------------------------------------------------


def _service(name: str, cluster_ip: str, **spec: object) -> dict[str, object]:
    return {"metadata": {"name": name, "namespace": "ml"}, "spec": {"clusterIP": cluster_ip, **spec}}


def _endpoints(name: str, ready: list[dict[str, str]], not_ready: list[dict[str, str]]) -> dict[str, object]:
    return {
        "metadata": {"name": name, "namespace": "ml"},
        "subsets": [{"addresses": ready, "notReadyAddresses": not_ready}],
    }


def test_records_follow_the_kubernetes_dns_specification() -> None:
    services = [
        _service("web", "100.67.64.10"),
        _service("trainer", "None"),
        _service("pending", ""),  # no IP allocated yet
        _service("ext", "", type="ExternalName", externalName="example.com"),
        _service("warm", "None", publishNotReadyAddresses=True),
    ]
    endpoints = [
        _endpoints(
            "trainer",
            [{"ip": "100.67.128.5", "hostname": "trainer-0"}, {"ip": "100.67.128.6"}],
            [{"ip": "100.67.128.7"}],
        ),
        _endpoints("warm", [], [{"ip": "100.67.128.8"}]),
        _endpoints("web", [{"ip": "100.67.128.9"}], []),  # a ClusterIP Service answers with its IP only
    ]
    assert service_records(services, endpoints) == [
        ("100.67.128.5", "trainer-0.trainer.ml.svc.cluster.local"),
        ("100.67.128.5", "trainer.ml.svc.cluster.local"),
        ("100.67.128.6", "trainer.ml.svc.cluster.local"),
        ("100.67.128.8", "warm.ml.svc.cluster.local"),
        ("100.67.64.10", "web.ml.svc.cluster.local"),
    ]
    assert host_lines([("100.67.64.10", "web.ml.svc.cluster.local")]) == [
        "100.67.64.10\tweb.ml.svc\tweb.ml.svc.cluster.local"
    ]


def test_an_etc_hosts_block_is_replaced_and_removed_without_touching_anything_else() -> None:
    original = "127.0.0.1 localhost\n# a comment\n10.0.0.5 db.corp\n"
    one = with_block(original, "glmops pod network slot 3", ["100.67.64.10\tweb.ml.svc"])
    two = with_block(one, "glmops pod network slot 4", ["100.68.64.10\tweb.ml.svc"])
    assert two.startswith(original)
    assert block_markers_present(two, "glmops pod network slot 3")
    updated = with_block(two, "glmops pod network slot 3", ["100.67.64.11\tapi.ml.svc"])
    assert "100.67.64.10" not in updated and "100.67.64.11\tapi.ml.svc" in updated
    assert "100.68.64.10\tweb.ml.svc" in updated  # the other slot's block stays
    assert (
        without_block(without_block(updated, "glmops pod network slot 3"), "glmops pod network slot 4")
        == original
    )
    assert with_block(original, "glmops pod network slot 3", []) == original
    # Without a file's last newline the block still starts on a line of its own.
    assert with_block("127.0.0.1 localhost", "m", ["1.2.3.4\tx"]).startswith("127.0.0.1 localhost\n# BEGIN m")


def test_the_dns_client_reads_the_a_records_of_an_answer() -> None:
    query = build_query("web.ml.svc.cluster.local", 0x1234)
    question = query[12:]
    answer_record = b"\xc0\x0c" + struct.pack("!HHIH", 1, 1, 5, 4) + socket.inet_aton("100.67.64.10")
    header = struct.pack("!HHHHHH", 0x1234, 0x8180, 1, 1, 0, 0)
    assert parse_answer(header + question + answer_record, 0x1234) == (0, ["100.67.64.10"])
    nxdomain = struct.pack("!HHHHHH", 0x1234, 0x8183, 1, 0, 0, 0) + question
    assert parse_answer(nxdomain, 0x1234) == (3, [])


# -- namespaces, veths, routes (root, no control plane) ----------------------------------------

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root")


def slot_traces(plan: SlotPlan) -> list[str]:
    """Everything of a slot still on the machine: namespaces, links, routes, /etc/hosts lines."""
    traces = [f"netns {n}" for n in iproute.netns_names() if slot_of_name(n) == plan.slot]
    traces += [
        f"link {link['ifname']}"
        for link in iproute.ip_json("link", "show")
        if slot_of_name(str(link.get("ifname"))) == plan.slot
    ]
    for route in iproute.routes():
        destination = str(route.get("dst", ""))
        if route.get("type") != "blackhole" and slot_of_address(destination.split("/")[0]) == plan.slot:
            traces.append(f"route {destination}")
    if block_markers_present(read_hosts(), plan.hosts_block_marker):
        traces.append("/etc/hosts block")
    return traces


def in_pod(sandbox: PodSandbox, code: str, timeout_s: float = 20.0) -> tuple[int, str]:
    """Run Python code inside a pod's network namespace (through the container launcher)."""
    return run_exec(
        [sys.executable, "-c", code],
        {"PATH": "/usr/bin:/bin"},
        Path("/"),
        [],
        None,
        timeout_s,
        PodNamespaces(sandbox.netns_path, "test-pod"),
    )


SERVER = (
    "import http.server, socket\n"
    "class H(http.server.BaseHTTPRequestHandler):\n"
    "    def do_GET(self):\n"
    "        body = socket.gethostname().encode()\n"
    "        self.send_response(200); self.send_header('Content-Length', str(len(body))); self.end_headers()\n"
    "        self.wfile.write(body)\n"
    "    def log_message(self, *args): pass\n"
    "http.server.HTTPServer(('0.0.0.0', 8080), H).serve_forever()\n"
)


def start_server(sandbox: PodSandbox, hostname: str, tmp_path: Path) -> ContainerProcess:
    return ContainerProcess.start(
        LaunchSpec(
            argv=[sys.executable, "-c", SERVER],
            env={"PATH": "/usr/bin:/bin"},
            cwd=tmp_path / hostname,
            log_path=tmp_path / f"{hostname}.log",
            pod=PodNamespaces(sandbox.netns_path, hostname),
        )
    )


def http_get(host: str, port: int = 8080, timeout_s: float = 3.0) -> str:
    with socket.create_connection((host, port), timeout=timeout_s) as sock:
        sock.sendall(f"GET / HTTP/1.0\r\nHost: {host}\r\n\r\n".encode())
        data = b""
        while chunk := sock.recv(4096):
            data += chunk
    return data.split(b"\r\n\r\n", 1)[1].decode()


def connect_error(host: str, port: int = 8080) -> int | None:
    """The errno a connection from the host gets (None when it succeeds)."""
    with socket.socket() as sock:
        sock.settimeout(3)
        try:
            sock.connect((host, port))
        except OSError as exc:
            return exc.errno if exc.errno is not None else -1
    return None


@pytest.fixture
def network(tmp_path: Path) -> Iterator[ClusterNetwork]:
    net = ClusterNetwork.create(tmp_path / "network")
    try:
        yield net
    finally:
        net.close()


@needs_root
def test_pods_get_their_own_namespace_address_and_port_and_nothing_outside_the_block(
    network: ClusterNetwork, tmp_path: Path
) -> None:
    plan = network.plan
    first, second = network.pods.setup("uid-first"), network.pods.setup("uid-second")
    assert first.ip != second.ip
    assert ipaddress.IPv4Address(first.ip) in ipaddress.IPv4Network(plan.pod_cidr)
    servers = [start_server(first, "first", tmp_path), start_server(second, "second", tmp_path)]
    try:
        # Both listen on 8080; the host reaches each at its own address (as probes do).
        wait_for(
            "both servers", lambda: connect_error(first.ip) is None and connect_error(second.ip) is None, 30
        )
        assert http_get(first.ip) == "first"
        assert http_get(second.ip) == "second"
        # Pod to pod, across the bridge; the pod's hostname is its own.
        code, output = in_pod(
            first,
            "import socket\n"
            f"s = socket.create_connection(('{second.ip}', 8080), timeout=5)\n"
            "s.sendall(b'GET / HTTP/1.0\\r\\n\\r\\n')\n"
            "data = b''\n"
            "while chunk := s.recv(4096):\n"
            "    data += chunk\n"
            "print(data.split(b'\\r\\n\\r\\n', 1)[1].decode())\n",
        )
        assert (code, output.strip()) == (0, "second")
        # Only lo and eth0; one route out: the block, via the bridge. No default route.
        routes = json.loads(iproute.ip("-j", "route", "show", netns=first.netns))
        assert {r["dst"] for r in routes} == {plan.pod_cidr, str(BLOCK)}
        assert all(r.get("gateway") in (None, plan.bridge_ip) for r in routes)
        # Outside the block there is no route at all: asked without sending anything (a route
        # lookup, not a connection), the kernel answers "unreachable".
        with pytest.raises(iproute.NetworkCommandError, match="(?i)unreachable"):
            iproute.ip("route", "get", "198.51.100.7", netns=first.netns)
        links = {link["ifname"] for link in json.loads(iproute.ip("-j", "link", "show", netns=first.netns))}
        assert links == {"lo", "eth0"}
    finally:
        for server in servers:
            server.terminate(1)
    network.pods.teardown("uid-first")
    assert not iproute.netns_exists(first.netns)
    assert network.pods.address_of("uid-first") is None
    assert network.pods.address_of("uid-second") == second.ip


@needs_root
def test_the_whole_block_is_blackholed_and_the_slot_routed_through_its_node_namespace(
    network: ClusterNetwork,
) -> None:
    plan = network.plan
    unassigned = [str(plan.network.network_address + 5 * 256 + 7), "100.127.255.1", "100.100.1.1"]
    for address in unassigned:
        if slot_of_address(address) not in (None, plan.slot) and slot_held(slot_of_address(address) or 0):
            continue  # another environment holds that slot right now
        # `ip route get` refuses a blackholed destination; a connection fails at once, never leaves.
        got = iproute.ip("route", "get", address, check=False)
        assert got == "", got
        assert connect_error(address) == errno.EINVAL
        [match] = [r for r in iproute.routes("match", address) if r["dst"] != "default"][-1:]
        assert match.get("type") == "blackhole" and match["dst"] == str(BLOCK)
    for cidr in (plan.pod_cidr, plan.service_cidr):
        [route] = iproute.routes("exact", cidr)
        assert (route["gateway"], route["dev"]) == (plan.node_link_ip, plan.host_link)
    # The host's own forwarding and route_localnet are not touched: the node namespace has its own.
    assert iproute.read_sysctl("net.ipv4.ip_forward", plan.node_netns) == "1"


@needs_root
def test_two_networks_get_different_slots_and_cannot_reach_each_other(
    network: ClusterNetwork, tmp_path: Path
) -> None:
    with ClusterNetwork.create(tmp_path / "other") as other:
        assert other.plan.slot != network.plan.slot
        assert not ipaddress.IPv4Network(other.plan.pod_cidr).overlaps(
            ipaddress.IPv4Network(network.plan.pod_cidr)
        )
        mine, theirs = network.pods.setup("uid-mine"), other.pods.setup("uid-theirs")
        server = start_server(theirs, "theirs", tmp_path)
        try:
            wait_for("the other network's server", lambda: connect_error(theirs.ip) is None, 30)
            _code, output = in_pod(
                mine,
                "import socket\ns = socket.socket(); s.settimeout(3)\n"
                f"try:\n    s.connect(('{theirs.ip}', 8080)); print('connected')\n"
                "except OSError as e:\n    print(e.errno)\n",
            )
            assert output.strip() in (str(errno.EHOSTUNREACH), str(errno.ENETUNREACH)), output
        finally:
            server.terminate(1)
    assert slot_traces(other.plan) == []


@needs_root
def test_closing_removes_every_trace_of_the_slot_and_gives_it_back(tmp_path: Path) -> None:
    net = ClusterNetwork.create(tmp_path / "network")
    plan = net.plan
    sandbox = net.pods.setup("uid-left-running")
    server = start_server(sandbox, "left", tmp_path)
    wait_for("the server", lambda: connect_error(sandbox.ip) is None, 30)
    assert slot_traces(plan)
    assert slot_held(plan.slot)
    net.close()  # the pod was never torn down: close removes it with the rest
    assert server.poll() is not None
    assert slot_traces(plan) == []
    assert not slot_held(plan.slot)
    assert net.closed
    net.close()  # idempotent


CRASHING_RUN = """
import os, sys, time
from pathlib import Path
from glmops_dev.network import ClusterNetwork
from glmops_dev.network.hostsfile import set_block
from glmops_dev.network.slots import hosts_lock_path
net = ClusterNetwork.create(Path(sys.argv[1]))
net.pods.setup("uid-of-a-crashed-run")
set_block(hosts_lock_path(), net.plan.hosts_block_marker, ["100.64.64.9\\tleft.over.svc"])
print(net.plan.slot, flush=True)
time.sleep(600)
"""


@needs_root
def test_a_killed_run_leaves_its_slot_to_the_next_one_which_sweeps_it(tmp_path: Path) -> None:
    process = subprocess.Popen(
        [sys.executable, "-c", CRASHING_RUN, str(tmp_path / "crashed")], stdout=subprocess.PIPE, text=True
    )
    try:
        assert process.stdout is not None
        slot = int(process.stdout.readline())
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    dead = SlotPlan(slot)
    assert f"netns {dead.node_netns}" in slot_traces(dead)
    assert "/etc/hosts block" in slot_traces(dead)
    assert not slot_held(slot)  # the kernel dropped the lock with the process
    started = time.monotonic()
    with ClusterNetwork.create(tmp_path / "next") as following:
        assert slot_traces(dead) == [] or following.plan.slot == slot
        if following.plan.slot == slot:
            # It took the same slot: what is there now is its own, not the dead run's.
            assert not iproute.netns_exists(dead.pod_netns("uid-of-a-crashed-run"))
            assert "/etc/hosts block" not in slot_traces(dead)
    assert time.monotonic() - started < 120
    assert slot_traces(dead) == []
