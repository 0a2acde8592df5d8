"""The local node agent runs pods bound to simulated GPU nodes as local processes, like a kubelet.

The first tests need no cluster: ``$(VAR)`` expansion, image rules, log files, the pod phase,
the mount-namespace launcher. The rest run pods on the session's real control plane: tiny Python
one-liners in the trainer image, so each test takes seconds.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from polling import wait_for

from glmops_dev.agent import ImageMap, ImageMapError, NodeAgent, start_agent
from glmops_dev.agent.agent import orphan_status, was_started
from glmops_dev.agent.env import expand
from glmops_dev.agent.images import ImageNotRunnableError, image_repository
from glmops_dev.agent.kube import AgentApi
from glmops_dev.agent.launcher import Bind
from glmops_dev.agent.logfiles import LogQuery, LogWriter, plain_text, stream_log
from glmops_dev.agent.logs_server import LogNotFound, parse_query
from glmops_dev.agent.podstatus import ContainerState, Terminated, compute_phase
from glmops_dev.agent.runtime import ContainerProcess, LaunchSpec, StartError
from glmops_dev.cluster import KubeCluster, KubectlError

TRAINER_IMAGE = "ghcr.io/glmops/trainer:test"
PREFERRED_ADDRESS_FLAG = (
    "--kubelet-preferred-address-types=InternalIP,Hostname,InternalDNS,ExternalDNS,ExternalIP"
)


# -- $(VAR) expansion (cases of Kubernetes' own expansion tests) --------------------------------

EXPANSION_ENV = {"VAR_A": "A", "VAR_B": "B", "VAR_C": "C", "VAR_REF": "$(VAR_A)", "VAR_EMPTY": ""}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("$(VAR_A)", "A"),
        ("___$(VAR_B)___", "___B___"),
        ("$(VAR_A)-$(VAR_B)", "A-B"),
        ("$(VAR_A)$(VAR_B)$(VAR_C)", "ABC"),
        ("$(VAR_REF)", "$(VAR_A)"),  # no recursion
        ("$(VAR_EMPTY)", ""),
        ("$(UNKNOWN)", "$(UNKNOWN)"),
        ("$$(VAR_A)", "$(VAR_A)"),
        ("$$$(VAR_A)", "$A"),
        ("$$$$(VAR_A)", "$$(VAR_A)"),
        ("--node-rank=$(NODE_RANK)", "--node-rank=$(NODE_RANK)"),
        ("$(VAR_A", "$(VAR_A"),
        ("$VAR_A", "$VAR_A"),
        ("trailing $", "trailing $"),
        ("$()", "$()"),
        ("$$", "$"),
    ],
)
def test_expansion_follows_kubernetes(text: str, expected: str) -> None:
    assert expand(text, EXPANSION_ENV.get) == expected


# -- image rules --------------------------------------------------------------------------------


def test_image_repository_drops_tag_and_digest_and_normalises_docker_hub() -> None:
    assert image_repository("ghcr.io/glmops/trainer:test") == "ghcr.io/glmops/trainer"
    assert image_repository("ghcr.io/ggml-org/llama.cpp:server-b6800") == "ghcr.io/ggml-org/llama.cpp"
    assert image_repository("localhost:5000/x/y:1@sha256:abc") == "localhost:5000/x/y"
    assert image_repository("python:3.11") == "docker.io/library/python"
    assert image_repository("vllm/vllm-openai:v0.12.0") == "docker.io/vllm/vllm-openai"


def test_trainer_image_runs_its_command_as_is() -> None:
    images = ImageMap.load()
    argv = images.command_for(TRAINER_IMAGE, ["python", "-m", "glmops_trainer"], ["train", "--config", "x"])
    assert argv == ["python", "-m", "glmops_trainer", "train", "--config", "x"]
    with pytest.raises(ImageNotRunnableError, match="needs a command"):
        images.command_for(TRAINER_IMAGE, [], ["train"])


def test_llama_cpp_image_runs_the_local_llama_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    server = tmp_path / "llama-server"
    server.write_text("#!/bin/sh\n")
    server.chmod(0o755)
    monkeypatch.setenv("GLMOPS_LLAMA_CPP_BIN", str(tmp_path))
    images = ImageMap.load()
    image = "ghcr.io/ggml-org/llama.cpp:server-b6800"
    assert images.command_for(image, [], ["-m", "/models/x.gguf", "--port", "8080"]) == [
        str(server), "-m", "/models/x.gguf", "--port", "8080",
    ]  # fmt: skip
    assert images.command_for(image, ["/app/llama-server"], ["--port", "1"]) == [str(server), "--port", "1"]
    monkeypatch.setenv("GLMOPS_LLAMA_CPP_BIN", str(tmp_path / "missing"))
    with pytest.raises(ImageNotRunnableError, match="build-llama-cpp.sh"):
        ImageMap.load().command_for(image, [], [])


def test_pause_images_sleep() -> None:
    assert ImageMap.load().command_for("registry.k8s.io/pause:3.9", [], []) == ["sleep", "infinity"]


def test_unknown_image_names_itself_and_the_images_option() -> None:
    with pytest.raises(ImageNotRunnableError) as info:
        ImageMap.load().command_for("quay.io/acme/tool:1", ["tool"], [])
    assert "quay.io/acme/tool" in str(info.value)
    assert "--images" in str(info.value)


def test_images_file_adds_rules_and_patterns(tmp_path: Path) -> None:
    tool = tmp_path / "tool"
    tool.write_text("#!/bin/sh\n")
    tool.chmod(0o755)
    rules = tmp_path / "images.yaml"
    rules.write_text(f"quay.io/acme/*: {{run: as-is}}\nbusybox: {{entrypoint: [{tool}, --flag]}}\n")
    images = ImageMap.load(rules)
    assert images.command_for("quay.io/acme/tool:1", ["tool"], ["a"]) == ["tool", "a"]
    assert images.command_for("busybox:1.36", [], ["x"]) == [str(tool), "--flag", "x"]
    assert images.command_for(TRAINER_IMAGE, ["python"], []) == ["python"]  # defaults stay


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("x: {run: docker}", "run: the only value is 'as-is'"),
        ("x: {entrypoint: []}", "entrypoint: expected a non-empty list"),
        ("x: {run: as-is, entrypoint: [a]}", "either run: as-is or entrypoint"),
        ("x: {cmd: a}", "unknown field"),
        ("- a", "expected a mapping"),
    ],
)
def test_bad_images_file_names_the_file_and_entry(tmp_path: Path, content: str, message: str) -> None:
    rules = tmp_path / "images.yaml"
    rules.write_text(content)
    with pytest.raises(ImageMapError, match=message) as info:
        ImageMap.load(rules)
    assert str(rules) in str(info.value)


# -- log files ----------------------------------------------------------------------------------


def _write_log(path: Path, lines: list[tuple[str, str, bool]], start: datetime) -> None:
    writer = LogWriter(path)
    for index, (stream, text, complete) in enumerate(lines):
        writer.write_record(stream, text.encode(), complete, start + timedelta(seconds=index))
    writer.close()


def _read(path: Path, **query: Any) -> bytes:
    return b"".join(stream_log(path, LogQuery(**query)))


def test_log_records_read_back_like_kubectl_logs(tmp_path: Path) -> None:
    log = tmp_path / "main.log"
    start = datetime(2026, 1, 2, 3, 4, 5, 123456, tzinfo=UTC)
    _write_log(
        log,
        [("stdout", "one", True), ("stderr", "two", True), ("stdout", "thr", False), ("stdout", "ee", True)],
        start,
    )
    assert _read(log) == b"one\ntwo\nthree\n"
    assert _read(log, tail_lines=2) == b"three\n"  # a record is a line of the file, as for the kubelet
    assert _read(log, tail_lines=0) == b""
    assert _read(log, limit_bytes=5) == b"one\nt"
    assert _read(log, since=start + timedelta(seconds=1)) == b"two\nthree\n"
    assert _read(log, timestamps=True).splitlines()[0] == b"2026-01-02T03:04:05.123456000Z one"
    assert plain_text(log, max_lines=80, max_bytes=6) == "three\n"


def test_log_query_parameters_are_parsed_and_checked() -> None:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    query = parse_query("tailLines=3&limitBytes=10&sinceSeconds=60&timestamps=true&follow=true", now)
    assert query == LogQuery(3, 10, now - timedelta(seconds=60), True, True, False)
    assert parse_query("sinceTime=2026-01-01T00:00:00Z&previous=true").since == now
    with pytest.raises(LogNotFound, match="tailLines"):
        parse_query("tailLines=x")


# -- pod phase ----------------------------------------------------------------------------------


def _ended(code: int) -> ContainerState:
    state = ContainerState("c", "i")
    state.set_terminated(Terminated(code, "Completed" if code == 0 else "Error", "", None, datetime.now(UTC)))
    return state


def _running() -> ContainerState:
    state = ContainerState("c", "i")
    state.set_running(datetime.now(UTC), "local://1")
    return state


def _backing_off() -> ContainerState:
    state = ContainerState("c", "i", last_terminated=_ended(1).terminated)
    state.set_waiting("CrashLoopBackOff")
    return state


@pytest.mark.parametrize(
    ("policy", "init", "app", "phase"),
    [
        ("Never", [], [ContainerState("c", "i")], "Pending"),
        ("Never", [], [_running(), _ended(0)], "Running"),
        ("Never", [], [_ended(0), _ended(0)], "Succeeded"),
        ("Never", [], [_ended(0), _ended(2)], "Failed"),
        ("OnFailure", [], [_backing_off()], "Running"),
        ("OnFailure", [], [_ended(0)], "Succeeded"),
        ("Always", [], [_ended(0)], "Running"),
        ("Never", [_ended(1)], [ContainerState("c", "i")], "Failed"),
        ("OnFailure", [_ended(1)], [ContainerState("c", "i")], "Pending"),
        ("Never", [_ended(0)], [_running()], "Running"),
    ],
)
def test_pod_phase_follows_the_kubelet(
    policy: str, init: list[ContainerState], app: list[ContainerState], phase: str
) -> None:
    assert compute_phase(policy, init, app, pod_failed=False) == phase


def test_pods_an_earlier_agent_started_are_failed_not_restarted() -> None:
    pending = {"status": {"phase": "Pending", "containerStatuses": [{"name": "c", "state": {"waiting": {}}}]}}
    running = {
        "status": {
            "phase": "Running",
            "conditions": [{"type": "Ready", "status": "True"}],
            "containerStatuses": [
                {"name": "c", "ready": True, "state": {"running": {"startedAt": "2026-01-01T00:00:00Z"}}}
            ],
        }
    }
    assert not was_started(pending)
    assert was_started(running)
    status = orphan_status(running, datetime(2026, 1, 1, 0, 1, tzinfo=UTC))
    assert status["phase"] == "Failed"
    assert status["reason"] == "NodeAgentRestarted"
    terminated = status["containerStatuses"][0]["state"]["terminated"]
    assert terminated["startedAt"] == "2026-01-01T00:00:00Z"
    assert terminated["exitCode"] == 137
    assert status["conditions"][0]["status"] == "False"


# -- the launcher (needs root for mount namespaces) ---------------------------------------------

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="mount namespaces need root")


@needs_root
def test_launcher_binds_volumes_even_over_the_folder_their_sources_live_in(tmp_path: Path) -> None:
    # The sources live under tmp_path (under /tmp); an emptyDir bound at /tmp must not hide them.
    empty_dir, config, pvc = tmp_path / "empty", tmp_path / "config", tmp_path / "pvc"
    for folder in (empty_dir, config, pvc):
        folder.mkdir()
    (config / "job.json").write_text('{"steps": 3}')
    termination = tmp_path / "termination"
    termination.write_text("")
    target = f"/tmp/glmops-agent-test-{os.getpid()}"
    workspace = "/tmp/ws"
    code = (
        "import os\n"
        f"assert sorted(os.listdir('/tmp')) == [{os.path.basename(target)!r}, 'ws'], os.listdir('/tmp')\n"
        f"assert open('{target}/job.json').read() == '{{\"steps\": 3}}'\n"
        f"try:\n    open('{target}/new', 'w')\nexcept OSError as e:\n    ro = e.errno\n"
        "open('/dev/termination-log', 'w').write(f'ro={ro} cwd={os.getcwd()}')\n"
    )
    # An interpreter outside /tmp: the checkout (and its venv) may itself live under /tmp.
    interpreter = Path(sys.executable) if not sys.executable.startswith("/tmp/") else Path("/usr/bin/python3")
    spec = LaunchSpec(
        argv=[interpreter.name, "-c", code],
        env={"PATH": f"{interpreter.parent}:/usr/bin:/bin"},
        cwd=tmp_path / "work",
        log_path=tmp_path / "c.log",
        binds=[
            Bind(str(config), target, read_only=True),
            Bind(str(empty_dir), "/tmp"),
            Bind(str(termination), "/dev/termination-log"),
            Bind(str(pvc), workspace),
        ],
        workdir=f"{workspace}/run",
    )
    process = ContainerProcess.start(spec)
    wait_for("the process to end", lambda: process.poll() is not None, 30)
    process.finish()
    assert process.poll() == 0, plain_text(tmp_path / "c.log", 80, 4000)
    assert termination.read_text() == f"ro=30 cwd={workspace}/run"  # 30: EROFS
    assert (pvc / "run").is_dir()
    # Mount points below /tmp were made inside the emptyDir bound there (shallow mounts first),
    # so the host's /tmp did not change.
    assert (empty_dir / os.path.basename(target)).is_dir()
    assert not Path(target).exists()


@needs_root
def test_a_command_that_does_not_exist_is_a_start_error(tmp_path: Path) -> None:
    spec = LaunchSpec(["no-such-command-xyz"], {"PATH": "/usr/bin:/bin"}, tmp_path, tmp_path / "c.log")
    with pytest.raises(StartError, match='exec: "no-such-command-xyz": executable file not found in \\$PATH'):
        ContainerProcess.start(spec)


# -- pods on the cluster ------------------------------------------------------------------------


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


def python_container(code: str, name: str = "main", **extra: Any) -> dict[str, Any]:
    return {"name": name, "image": TRAINER_IMAGE, "command": ["python", "-c", code], **extra}


def pod(name: str, *containers: dict[str, Any], restart_policy: str = "Never", **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": "agent-test"}, "annotations": {"note": "hi"}},
        "spec": {"restartPolicy": restart_policy, "containers": list(containers), **spec},
    }


def pod_template(*containers: dict[str, Any]) -> dict[str, Any]:
    """A Job's pod template (restartPolicy Never)."""
    return {"metadata": {"labels": {"app": "agent-test"}}, "spec": pod("x", *containers)["spec"]}


def cluster_pod_cidr(cluster: KubeCluster) -> str:
    assert cluster.network is not None, "the session's cluster runs with a pod network"
    return cluster.network.plan.pod_cidr


def wait_service_account(cluster: KubeCluster, namespace: str, name: str) -> None:
    """Before 1.24 a pod is only admitted once its ServiceAccount has a token Secret."""

    def ready() -> bool:
        account = get(cluster, namespace, "serviceaccount", name)
        return bool(account and (account.get("secrets") or cluster.server_version() >= (1, 24)))

    wait_for(f"ServiceAccount {name} to get its token", ready, 60)


def describe(cluster: KubeCluster, namespace: str, agent: NodeAgent) -> Callable[[], str]:
    def text() -> str:
        pods = cluster.kubectl("get", "pods", "-n", namespace, "-o", "yaml", check=False).stdout
        return f"agent errors: {agent.errors}\n{pods[-6000:]}"

    return text


def wait_phase(
    cluster: KubeCluster, namespace: str, agent: NodeAgent, name: str, *phases: str, timeout_s: float = 60
) -> Any:
    def done() -> Any:
        obj = get(cluster, namespace, "pod", name)
        return obj if obj and obj["status"].get("phase") in phases else None

    return wait_for(
        f"pod {name} to reach {'/'.join(phases)}", done, timeout_s, describe(cluster, namespace, agent)
    )


def terminated(obj: Any, container: str = "main") -> Any:
    status = next(s for s in obj["status"]["containerStatuses"] if s["name"] == container)
    return status["state"]["terminated"]


def condition(obj: Any, kind: str) -> Any:
    return next(c for c in obj["status"]["conditions"] if c["type"] == kind)


def test_a_job_pod_runs_to_succeeded_with_exit_code_and_termination_message(
    cluster: KubeCluster, namespace: str, node_agent: NodeAgent
) -> None:
    code = "import os; print('hello from', os.environ['HOSTNAME']); open('/dev/termination-log', 'w').write('steps=42')"
    job = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": "train"},
        "spec": {"backoffLimit": 0, "template": pod_template(python_container(code))},
    }
    apply(cluster, namespace, job)

    def job_succeeded() -> Any:
        obj = get(cluster, namespace, "job", "train")
        return obj if obj and obj["status"].get("succeeded") == 1 else None

    wait_for("the Job to succeed", job_succeeded, 60, describe(cluster, namespace, node_agent))
    pods = json.loads(
        cluster.kubectl("get", "pods", "-n", namespace, "-l", "job-name=train", "-o", "json").stdout
    )
    [obj] = pods["items"]
    status = obj["status"]
    assert status["phase"] == "Succeeded"
    # Its own address on the pod network; the node's is the host's end of the network's link.
    assert status["hostIP"] == node_agent.node_ip
    assert ipaddress.IPv4Address(status["podIP"]) in ipaddress.IPv4Network(cluster_pod_cidr(cluster))
    assert status["podIPs"] == [{"ip": status["podIP"]}]
    assert status["startTime"]
    assert obj["spec"]["nodeName"] in node_agent.node_names
    [container] = status["containerStatuses"]
    assert container["containerID"].startswith("local://")
    assert container["image"] == TRAINER_IMAGE
    assert container["restartCount"] == 0
    ended = container["state"]["terminated"]
    assert (ended["exitCode"], ended["reason"], ended["message"]) == (0, "Completed", "steps=42")
    assert ended["startedAt"] <= ended["finishedAt"]
    assert condition(obj, "Ready")["status"] == "False"
    assert condition(obj, "Ready")["reason"] == "PodCompleted"
    assert condition(obj, "Initialized")["status"] == "True"
    log_path = node_agent.pod_paths(namespace, obj["metadata"]["name"], obj["metadata"]["uid"]).log_path(
        "main"
    )
    assert plain_text(log_path, 10, 1000) == f"hello from {obj['metadata']['name']}\n"
    # The pod's volumes (the service-account token) are cleaned up; the log stays.
    assert sorted(p.name for p in log_path.parent.iterdir()) == ["main.log"]


def test_env_from_literals_secrets_config_maps_and_the_downward_api_reaches_the_process(
    cluster: KubeCluster, namespace: str, node_agent: NodeAgent, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="glmops_dev")
    secret_value = "s3cr3t-token-value"
    apply(
        cluster, namespace,
        {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "creds"}, "stringData": {"token": secret_value}},
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cfg"}, "data": {"lr": "0.0002", "EPOCHS": "2", "1st": "not a variable name"}},
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "trainer"}},
    )  # fmt: skip
    names = ["LITERAL", "COMBINED", "TOKEN", "LR", "POD", "NS", "UID", "APP", "NOTE", "NODE", "SA", "POD_IP",
             "HOST_IP", "CFG_EPOCHS", "CFG_1st", "1st", "OPTIONAL", "NODE_RANK", "PATH", "HOME", "KUBERNETES_SERVICE_HOST"]  # fmt: skip
    code = (
        "import json, os, sys\n"
        f"env = {{k: os.environ.get(k) for k in {names!r}}}\n"
        "json.dump({'env': env, 'argv': sys.argv[1:]}, open('/dev/termination-log', 'w'))\n"
    )

    def field(path: str) -> dict[str, Any]:
        return {"valueFrom": {"fieldRef": {"fieldPath": path}}}

    container = python_container(
        code,
        args=["--node-rank=$(NODE_RANK)", "$$(NODE_RANK)", "$(NOT_DEFINED)", "$(LR)"],
        envFrom=[{"configMapRef": {"name": "cfg"}, "prefix": "CFG_"}, {"configMapRef": {"name": "cfg"}}],
        env=[
            {"name": "LITERAL", "value": "lit"},
            {"name": "COMBINED", "value": "$(LITERAL)-$(LATER)"},  # LATER is defined after: stays literal
            {"name": "LATER", "value": "x"},
            {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "token"}}},
            {"name": "LR", "valueFrom": {"configMapKeyRef": {"name": "cfg", "key": "lr"}}},
            {
                "name": "OPTIONAL",
                "valueFrom": {"configMapKeyRef": {"name": "cfg", "key": "nope", "optional": True}},
            },
            {"name": "POD", **field("metadata.name")},
            {"name": "NS", **field("metadata.namespace")},
            {"name": "UID", **field("metadata.uid")},
            {"name": "APP", **field("metadata.labels['app']")},
            {"name": "NOTE", **field("metadata.annotations['note']")},
            {"name": "NODE", **field("spec.nodeName")},
            {"name": "SA", **field("spec.serviceAccountName")},
            {"name": "POD_IP", **field("status.podIP")},
            {"name": "HOST_IP", **field("status.hostIP")},
            {"name": "NODE_RANK", "value": "3"},
        ],
    )
    wait_service_account(cluster, namespace, "trainer")
    apply(cluster, namespace, pod("env", container, serviceAccountName="trainer"))
    obj = wait_phase(cluster, namespace, node_agent, "env", "Succeeded", "Failed")
    result = json.loads(terminated(obj)["message"])
    env = result["env"]
    assert result["argv"] == ["--node-rank=3", "$(NODE_RANK)", "$(NOT_DEFINED)", "0.0002"]
    assert env["LITERAL"] == "lit"
    assert env["COMBINED"] == "lit-$(LATER)"
    assert env["TOKEN"] == secret_value
    assert env["LR"] == "0.0002"
    assert env["CFG_EPOCHS"] == "2"
    assert env["CFG_1st"] == "not a variable name"  # the prefix makes the name valid
    assert env["1st"] is None  # without a prefix it is not a variable name: skipped (kubelet rule)
    assert env["OPTIONAL"] is None
    assert (env["POD"], env["NS"], env["UID"]) == ("env", namespace, obj["metadata"]["uid"])
    assert (env["APP"], env["NOTE"], env["SA"]) == ("agent-test", "hi", "trainer")
    assert env["NODE"] == obj["spec"]["nodeName"]
    assert env["POD_IP"] == obj["status"]["podIP"] != env["HOST_IP"]
    assert env["HOST_IP"] == obj["status"]["hostIP"] == node_agent.node_ip
    assert env["NODE_RANK"] == "3"
    assert env["PATH"].split(":")[0] == str(Path(sys.executable).parent)
    assert env["HOME"]
    # In-cluster clients reach the API server through the `kubernetes` Service (kube-proxy).
    assert cluster.network is not None
    assert env["KUBERNETES_SERVICE_HOST"] == cluster.network.plan.kubernetes_service_ip
    assert secret_value not in caplog.text


def test_a_missing_config_map_key_waits_with_create_container_config_error_until_it_appears(
    cluster: KubeCluster, namespace: str, node_agent: NodeAgent
) -> None:
    apply(
        cluster, namespace, {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cfg"}, "data": {}}
    )
    container = python_container(
        "import os; open('/dev/termination-log', 'w').write(os.environ['MODEL'])",
        env=[{"name": "MODEL", "valueFrom": {"configMapKeyRef": {"name": "cfg", "key": "model"}}}],
    )
    apply(cluster, namespace, pod("waits", container))

    def config_error() -> Any:
        obj = get(cluster, namespace, "pod", "waits")
        statuses = (obj or {}).get("status", {}).get("containerStatuses") or []
        waiting = statuses[0]["state"].get("waiting", {}) if statuses else {}
        return waiting if waiting.get("reason") == "CreateContainerConfigError" else None

    waiting = wait_for(
        "CreateContainerConfigError", config_error, 60, describe(cluster, namespace, node_agent)
    )
    assert waiting["message"] == f"couldn't find key model in ConfigMap {namespace}/cfg"
    assert get(cluster, namespace, "pod", "waits")["status"]["phase"] == "Pending"
    # Like the kubelet, the agent retries: once the key exists the container runs.
    apply(
        cluster,
        namespace,
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cfg"}, "data": {"model": "flash"}},
    )
    obj = wait_phase(cluster, namespace, node_agent, "waits", "Succeeded", "Failed")
    assert terminated(obj)["message"] == "flash"


def persistent_volume(namespace: str, claim: str) -> dict[str, Any]:
    """A PV pre-bound to the claim, so that the scheduler can place pods that use it."""
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolume",
        "metadata": {"name": f"{namespace}-{claim}"},
        "spec": {
            "capacity": {"storage": "1Gi"},
            "accessModes": ["ReadWriteOnce"],
            "storageClassName": "",
            "hostPath": {"path": f"/unused/{claim}"},
            "claimRef": {"namespace": namespace, "name": claim},
        },
    }


@pytest.fixture
def claims(cluster: KubeCluster, namespace: str) -> Iterator[Callable[..., None]]:
    """Create bound PersistentVolumeClaims (and their PVs, removed afterwards)."""
    volumes: list[str] = []

    def create(*names: str) -> None:
        for claim in names:
            volume = persistent_volume(namespace, claim)
            cluster.kubectl("apply", "-f", "-", input=json.dumps(volume))
            volumes.append(volume["metadata"]["name"])
            # Bound at creation (volumeName plus the PV controller's bind-completed mark): waiting for
            # the PV controller takes up to its 15 s resync while it cleans up earlier tests' volumes.
            apply(
                cluster, namespace,
                {
                    "apiVersion": "v1", "kind": "PersistentVolumeClaim",
                    "metadata": {"name": claim, "annotations": {"pv.kubernetes.io/bind-completed": "yes"}},
                    "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": "", "volumeName": volume["metadata"]["name"],
                             "resources": {"requests": {"storage": "1Gi"}}},
                },
            )  # fmt: skip

    yield create
    if volumes:
        cluster.kubectl("delete", "pv", "--wait=false", "--ignore-not-found", *volumes, check=False)


def test_config_map_secret_empty_dir_and_pvc_volumes_appear_at_their_mount_paths(
    cluster: KubeCluster, namespace: str, node_agent: NodeAgent, claims: Callable[..., None]
) -> None:
    claims("work")
    apply(
        cluster, namespace,
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "job"}, "data": {"job.json": '{"epochs": 2}'}},
        {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "hf"}, "stringData": {"token": "t0k"}},
    )  # fmt: skip
    writer_code = (
        "import json, os, stat\n"
        "mode = stat.S_IMODE(os.stat('/mnt/secrets/hf/token').st_mode)\n"
        "open('/scratch/file', 'w').write('x')\n"
        "data = {'config': open('/etc/glmops/job.json').read(), 'secret': open('/mnt/secrets/hf/token').read(),\n"
        "        'secret_mode': oct(mode), 'tmp': os.listdir('/scratch'), 'shm': os.path.isdir('/dev/shm')}\n"
        "json.dump(data, open('/mnt/pvc/work/from-first-pod.json', 'w'))\n"
        "open('/dev/termination-log', 'w').write(json.dumps(data))\n"
    )
    volumes = [
        {"name": "config", "configMap": {"name": "job"}},
        {"name": "hf", "secret": {"secretName": "hf"}},
        {"name": "work", "persistentVolumeClaim": {"claimName": "work"}},
        {"name": "tmp", "emptyDir": {}},
        {"name": "shm", "emptyDir": {"medium": "Memory"}},
    ]
    mounts = [
        {"name": "config", "mountPath": "/etc/glmops"},
        {"name": "hf", "mountPath": "/mnt/secrets/hf"},
        {"name": "work", "mountPath": "/mnt/pvc/work"},
        {"name": "tmp", "mountPath": "/scratch"},
        {"name": "shm", "mountPath": "/dev/shm"},
    ]
    apply(
        cluster, namespace, pod("first", python_container(writer_code, volumeMounts=mounts), volumes=volumes)
    )
    first = wait_phase(cluster, namespace, node_agent, "first", "Succeeded", "Failed")
    seen = json.loads(terminated(first)["message"])
    assert seen == {
        "config": '{"epochs": 2}',
        "secret": "t0k",
        "secret_mode": "0o400",
        "tmp": ["file"],
        "shm": True,
    }

    reader_code = (
        "open('/dev/termination-log', 'w').write(open('/mnt/pvc/shared/from-first-pod.json').read())\n"
    )
    apply(
        cluster, namespace,
        pod("second", python_container(reader_code, volumeMounts=[{"name": "work", "mountPath": "/mnt/pvc/shared", "readOnly": True}]),
            volumes=[{"name": "work", "persistentVolumeClaim": {"claimName": "work"}}]),
    )  # fmt: skip
    second = wait_phase(cluster, namespace, node_agent, "second", "Succeeded", "Failed")
    assert json.loads(terminated(second)["message"]) == seen
    assert (node_agent.state_dir / "volumes" / "pvc" / namespace / "work" / "from-first-pod.json").is_file()


def test_two_pods_mounting_different_pvcs_at_the_same_path_each_see_their_own(
    cluster: KubeCluster, namespace: str, node_agent: NodeAgent, claims: Callable[..., None]
) -> None:
    claims("claim-a", "claim-b")
    for claim in ("claim-a", "claim-b"):
        folder = node_agent.state_dir / "volumes" / "pvc" / namespace / claim
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "who").write_text(claim)
    # Each pod keeps running for 3 s, so the two mount namespaces exist at the same time.
    code = (
        "import time\n"
        "first = open('/mnt/pvc/data/who').read()\n"
        "time.sleep(3)\n"
        "open('/dev/termination-log', 'w').write(first + ' ' + open('/mnt/pvc/data/who').read())\n"
    )
    for name, claim in (("pod-a", "claim-a"), ("pod-b", "claim-b")):
        apply(
            cluster, namespace,
            pod(name, python_container(code, volumeMounts=[{"name": "data", "mountPath": "/mnt/pvc/data"}]),
                volumes=[{"name": "data", "persistentVolumeClaim": {"claimName": claim}}]),
        )  # fmt: skip
    a = wait_phase(cluster, namespace, node_agent, "pod-a", "Succeeded", "Failed")
    b = wait_phase(cluster, namespace, node_agent, "pod-b", "Succeeded", "Failed")
    assert terminated(a)["message"] == "claim-a claim-a"
    assert terminated(b)["message"] == "claim-b claim-b"
    started_a, started_b = (datetime.fromisoformat(terminated(x)["startedAt"]) for x in (a, b))
    assert abs((started_a - started_b).total_seconds()) < 3, "the two pods did not overlap"


def test_a_failing_container_with_restart_policy_never_fails_with_the_log_as_its_message(
    cluster: KubeCluster, namespace: str, node_agent: NodeAgent
) -> None:
    code = (
        "import sys\n"
        "for i in range(100): print('line', i)\n"
        "sys.stdout.flush()\n"  # stdout to a pipe is block-buffered, as in any container
        "print('boom: bad config', file=sys.stderr)\n"
        "sys.exit(3)\n"
    )
    apply(
        cluster,
        namespace,
        pod("fails", python_container(code, terminationMessagePolicy="FallbackToLogsOnError")),
    )
    obj = wait_phase(cluster, namespace, node_agent, "fails", "Failed", "Succeeded")
    assert obj["status"]["phase"] == "Failed"
    ended = terminated(obj)
    assert (ended["exitCode"], ended["reason"]) == (3, "Error")
    message = ended["message"]
    assert message.endswith("line 99\nboom: bad config\n")
    assert len(message.splitlines()) == 80  # the last 80 lines, as the kubelet takes
    assert "line 19\n" not in message.splitlines(keepends=True)


def test_on_failure_restarts_with_back_off_and_counts_restarts(
    cluster: KubeCluster, namespace: str, node_agent: NodeAgent
) -> None:
    # Fails twice, then succeeds; the count survives in an emptyDir, as in a real pod.
    code = (
        "import os, sys\n"
        "n = len(os.listdir('/state'))\n"
        "open(f'/state/run-{n}', 'w').close()\n"
        "print('run', n)\n"
        "sys.exit(0 if n >= 2 else 1)\n"
    )
    container = python_container(code, volumeMounts=[{"name": "state", "mountPath": "/state"}])
    apply(
        cluster,
        namespace,
        pod("flaky", container, restart_policy="OnFailure", volumes=[{"name": "state", "emptyDir": {}}]),
    )

    def backing_off() -> Any:
        obj = get(cluster, namespace, "pod", "flaky")
        statuses = (obj or {}).get("status", {}).get("containerStatuses") or []
        waiting = statuses[0]["state"].get("waiting", {}) if statuses else {}
        return obj if waiting.get("reason") == "CrashLoopBackOff" else None

    during = wait_for("a back-off", backing_off, 60, describe(cluster, namespace, node_agent))
    assert during["status"]["phase"] == "Running"
    assert during["status"]["containerStatuses"][0]["lastState"]["terminated"]["exitCode"] == 1
    obj = wait_phase(cluster, namespace, node_agent, "flaky", "Succeeded", "Failed")
    [status] = obj["status"]["containerStatuses"]
    assert obj["status"]["phase"] == "Succeeded"
    assert status["restartCount"] == 2
    assert status["state"]["terminated"]["exitCode"] == 0
    assert status["lastState"]["terminated"]["exitCode"] == 1
    # Back-off 1 s then 2 s: the last run started at least 3 s after the first.
    first_start = datetime.fromisoformat(obj["status"]["startTime"])
    last_start = datetime.fromisoformat(status["state"]["terminated"]["startedAt"])
    assert (last_start - first_start).total_seconds() >= 2.5
    logs = node_agent.pod_paths(namespace, "flaky", obj["metadata"]["uid"])
    assert plain_text(logs.log_path("main"), 10, 100) == "run 2\n"
    assert plain_text(logs.previous_log_path("main"), 10, 100) == "run 1\n"


def test_a_volume_that_would_hide_the_project_environment_fails_the_pod_clearly(
    cluster: KubeCluster, namespace: str, node_agent: NodeAgent
) -> None:
    environment = Path(sys.prefix)
    container = python_container(
        "print('never')", volumeMounts=[{"name": "v", "mountPath": str(environment.parent)}]
    )
    apply(cluster, namespace, pod("hides", container, volumes=[{"name": "v", "emptyDir": {}}]))
    obj = wait_phase(cluster, namespace, node_agent, "hides", "Failed", "Succeeded")
    assert obj["status"]["reason"] == "MountPathHidesLocalRuntime"
    assert f"mounted at {environment.parent} would hide" in obj["status"]["message"]


def test_an_image_without_a_local_rule_fails_the_pod_with_image_not_runnable_locally(
    cluster: KubeCluster, namespace: str, node_agent: NodeAgent
) -> None:
    apply(
        cluster,
        namespace,
        pod("unknown", {"name": "main", "image": "quay.io/acme/secret-sauce:1", "command": ["run"]}),
    )
    obj = wait_phase(cluster, namespace, node_agent, "unknown", "Failed", "Succeeded")
    assert obj["status"]["reason"] == "ImageNotRunnableLocally"
    assert "quay.io/acme/secret-sauce" in obj["status"]["message"]
    assert "--images" in obj["status"]["message"]
    waiting = obj["status"]["containerStatuses"][0]["state"]["waiting"]
    assert waiting["reason"] == "ImageNotRunnableLocally"


def test_deleting_a_running_pod_kills_its_processes_and_the_pod_disappears(
    cluster: KubeCluster, namespace: str, node_agent: NodeAgent
) -> None:
    # The main process ignores SIGTERM (so SIGKILL after the grace period ends it) and has a child.
    code = (
        "import signal, subprocess, time\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "child = subprocess.Popen(['sleep', '300'])\n"
        "print('child', child.pid, flush=True)\n"
        "time.sleep(300)\n"
    )
    apply(cluster, namespace, pod("sleeper", python_container(code), terminationGracePeriodSeconds=2))
    obj = wait_phase(cluster, namespace, node_agent, "sleeper", "Running")
    pid = int(obj["status"]["containerStatuses"][0]["containerID"].removeprefix("local://"))
    log_path = node_agent.pod_paths(namespace, "sleeper", obj["metadata"]["uid"]).log_path("main")
    child = int(wait_for("the child's pid", lambda: plain_text(log_path, 5, 100).split()[1:2])[0])
    assert Path(f"/proc/{pid}").exists() and Path(f"/proc/{child}").exists()
    started = time.monotonic()
    cluster.kubectl("delete", "pod", "sleeper", "-n", namespace, "--wait=false")
    wait_for("the pod object to disappear", lambda: get(cluster, namespace, "pod", "sleeper") is None, 30)
    assert time.monotonic() - started >= 1.5  # the grace period was given
    for gone in (pid, child):
        wait_for(f"process {gone} to end", lambda: not _alive(gone), 10)  # noqa: B023 - used at once
    assert log_path.is_file()
    assert sorted(p.name for p in log_path.parent.iterdir()) == ["main.log"]


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rfind(")") + 2] != "Z"


def kubectl_logs(cluster: KubeCluster, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """``kubectl logs``; a failure to reach the node agent says which API server flag is missing."""
    result = cluster.kubectl("logs", *args, check=False, timeout_s=30)
    if "no such host" in result.stderr:
        pytest.fail(
            "kube-apiserver dials the node's Hostname address (sim-...), which does not resolve; "
            f"start it with {PREFERRED_ADDRESS_FLAG}\n{result.stderr}"
        )
    if check and result.returncode != 0:
        raise KubectlError(result.returncode, ["kubectl", "logs", *args], result.stdout, result.stderr)
    return result


def test_kubectl_logs_reads_the_container_output_through_the_api_server(
    cluster: KubeCluster, namespace: str, node_agent: NodeAgent
) -> None:
    code = "import sys\nfor i in range(1, 6): print('line', i, flush=True)\nprint('to stderr', file=sys.stderr)\n"
    apply(cluster, namespace, pod("talks", python_container(code)))
    wait_phase(cluster, namespace, node_agent, "talks", "Succeeded", "Failed")
    everything = kubectl_logs(cluster, "talks", "-n", namespace).stdout
    assert everything.splitlines() == ["line 1", "line 2", "line 3", "line 4", "line 5", "to stderr"]
    assert kubectl_logs(cluster, "talks", "-n", namespace, "--tail=2").stdout == "line 5\nto stderr\n"
    assert kubectl_logs(cluster, "talks", "-n", namespace, "--limit-bytes=8").stdout == "line 1\nl"
    stamped = kubectl_logs(cluster, "talks", "-n", namespace, "--timestamps", "--tail=1").stdout
    assert stamped.endswith("Z to stderr\n") and stamped.startswith(str(datetime.now(UTC).year))
    missing = kubectl_logs(cluster, "talks", "-n", namespace, "--previous", check=False)
    assert missing.returncode != 0 and "previous terminated container" in missing.stderr


def test_kubectl_logs_follow_streams_until_the_container_ends(
    cluster: KubeCluster, namespace: str, node_agent: NodeAgent
) -> None:
    code = "import time\nfor i in range(4):\n    print('tick', i, flush=True)\n    time.sleep(0.5)\n"
    apply(cluster, namespace, pod("ticks", python_container(code)))
    wait_phase(cluster, namespace, node_agent, "ticks", "Running", "Succeeded")
    followed = kubectl_logs(cluster, "-f", "ticks", "-n", namespace).stdout
    assert followed.splitlines() == ["tick 0", "tick 1", "tick 2", "tick 3"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_an_http_readiness_probe_makes_the_pod_ready_once_the_server_listens(
    cluster: KubeCluster, namespace: str, node_agent: NodeAgent
) -> None:
    port = free_port()
    # The probe comes from the node to the pod's address, so the server listens on all addresses.
    code = f"import time, http.server\ntime.sleep(3)\nhttp.server.test(http.server.SimpleHTTPRequestHandler, port={port}, bind='0.0.0.0')\n"
    container = python_container(
        code,
        ports=[{"name": "http", "containerPort": port}],
        readinessProbe={"httpGet": {"path": "/", "port": "http"}, "periodSeconds": 1, "failureThreshold": 1},
    )
    apply(cluster, namespace, pod("server", container))
    running = wait_phase(cluster, namespace, node_agent, "server", "Running")
    assert running["status"]["containerStatuses"][0]["ready"] is False
    assert condition(running, "Ready")["status"] == "False"
    assert condition(running, "Ready")["reason"] == "ContainersNotReady"

    def ready() -> Any:
        obj = get(cluster, namespace, "pod", "server")
        return obj if obj and condition(obj, "Ready")["status"] == "True" else None

    obj = wait_for("the pod to become Ready", ready, 30, describe(cluster, namespace, node_agent))
    assert obj["status"]["containerStatuses"][0]["ready"] is True
    assert condition(obj, "ContainersReady")["status"] == "True"
    started = datetime.fromisoformat(obj["status"]["containerStatuses"][0]["state"]["running"]["startedAt"])
    became_ready = datetime.fromisoformat(condition(obj, "Ready")["lastTransitionTime"])
    assert (became_ready - started).total_seconds() >= 2


@pytest.mark.slow
def test_a_job_with_backoff_limit_1_gets_a_second_pod_and_then_fails(
    cluster: KubeCluster, namespace: str, node_agent: NodeAgent
) -> None:
    template = pod_template(python_container("import sys; print('attempt'); sys.exit(7)"))
    job = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": "doomed"},
        "spec": {"backoffLimit": 1, "template": template},
    }
    apply(cluster, namespace, job)

    def job_failed() -> Any:
        obj = get(cluster, namespace, "job", "doomed")
        conditions = (obj or {}).get("status", {}).get("conditions") or []
        return obj if any(c["type"] == "Failed" and c["status"] == "True" for c in conditions) else None

    obj = wait_for("the Job to fail", job_failed, 120, describe(cluster, namespace, node_agent))
    assert (
        next(c for c in obj["status"]["conditions"] if c["type"] == "Failed")["reason"]
        == "BackoffLimitExceeded"
    )
    pods = json.loads(
        cluster.kubectl("get", "pods", "-n", namespace, "-l", "job-name=doomed", "-o", "json").stdout
    )["items"]
    assert len(pods) == 2
    for item in pods:
        assert item["status"]["phase"] == "Failed"
        assert terminated(item)["exitCode"] == 7


def test_a_second_agent_for_the_same_nodes_is_refused(
    cluster: KubeCluster, node_agent: NodeAgent, tmp_path: Path
) -> None:
    from glmops_dev.agent import AgentConflictError

    with pytest.raises(AgentConflictError, match="another node agent"):
        start_agent(cluster, tmp_path / "second")
    # The refused agent changed nothing: the nodes still point at the first one.
    node = json.loads(cluster.kubectl("get", "node", min(node_agent.node_names), "-o", "json").stdout)
    assert node["status"]["daemonEndpoints"]["kubeletEndpoint"]["Port"] == node_agent.port


def test_the_agent_command_line_rejects_a_bad_images_file(tmp_path: Path) -> None:
    rules = tmp_path / "images.yaml"
    rules.write_text("x: {run: docker}\n")
    result = subprocess.run(
        [sys.executable, "-m", "glmops_dev.agent", "--kubeconfig", str(tmp_path / "none"), "--state-dir",
         str(tmp_path / "state"), "--images", str(rules)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 2
    assert f"{rules}: entry 'x'.run" in result.stderr


def test_init_containers_run_first_and_an_exec_readiness_probe_sees_the_container_files(
    cluster: KubeCluster, namespace: str, node_agent: NodeAgent
) -> None:
    init = python_container("open('/mnt/work/model.txt', 'w').write('fetched')", name="fetch")
    init["volumeMounts"] = [{"name": "work", "mountPath": "/mnt/work"}]
    main = python_container(
        "import time\n"
        "assert open('/mnt/work/model.txt').read() == 'fetched'\n"
        "time.sleep(2)\n"
        "open('/mnt/work/ready', 'w').close()\n"
        "time.sleep(300)\n",
        volumeMounts=[{"name": "work", "mountPath": "/mnt/work"}],
        readinessProbe={
            "exec": {
                "command": [
                    "python",
                    "-c",
                    "import os, sys; sys.exit(0 if os.path.exists('/mnt/work/ready') else 1)",
                ]
            },
            "periodSeconds": 1,
        },
    )
    apply(
        cluster,
        namespace,
        pod("staged", main, initContainers=[init], volumes=[{"name": "work", "emptyDir": {}}]),
    )

    def ready() -> Any:
        obj = get(cluster, namespace, "pod", "staged")
        conditions = (obj or {}).get("status", {}).get("conditions") or []
        return obj if any(c["type"] == "Ready" and c["status"] == "True" for c in conditions) else None

    obj = wait_for("the pod to become Ready", ready, 60, describe(cluster, namespace, node_agent))
    [fetch] = obj["status"]["initContainerStatuses"]
    assert (fetch["state"]["terminated"]["exitCode"], fetch["state"]["terminated"]["reason"]) == (
        0,
        "Completed",
    )
    assert condition(obj, "Initialized")["status"] == "True"
    assert obj["status"]["phase"] == "Running"


def test_a_failing_liveness_probe_restarts_the_container(
    cluster: KubeCluster, namespace: str, node_agent: NodeAgent
) -> None:
    container = python_container(
        "import time; print('up', flush=True); time.sleep(300)",
        livenessProbe={"tcpSocket": {"port": free_port()}, "periodSeconds": 1, "failureThreshold": 2},
    )
    apply(
        cluster,
        namespace,
        pod("unhealthy", container, restart_policy="Always", terminationGracePeriodSeconds=1),
    )

    def restarted() -> Any:
        obj = get(cluster, namespace, "pod", "unhealthy")
        statuses = (obj or {}).get("status", {}).get("containerStatuses") or []
        return obj if statuses and statuses[0]["restartCount"] >= 1 else None

    obj = wait_for(
        "a restart after the liveness probe failed", restarted, 60, describe(cluster, namespace, node_agent)
    )
    [status] = obj["status"]["containerStatuses"]
    assert status["lastState"]["terminated"]["exitCode"] == 143  # 128 + SIGTERM
    assert obj["status"]["phase"] == "Running"
    events = cluster.kubectl("get", "events", "-n", namespace, "--field-selector", "reason=Unhealthy").stdout
    assert "Liveness probe failed" in events


def test_active_deadline_fails_a_pod_that_runs_too_long(
    cluster: KubeCluster, namespace: str, node_agent: NodeAgent
) -> None:
    apply(
        cluster,
        namespace,
        pod("slow", python_container("import time; time.sleep(300)"), activeDeadlineSeconds=2),
    )
    obj = wait_phase(cluster, namespace, node_agent, "slow", "Failed", "Succeeded", timeout_s=30)
    assert obj["status"]["reason"] == "DeadlineExceeded"
    assert terminated(obj)["exitCode"] == 143  # 128 + SIGTERM


def _restart_test_node(cluster: KubeCluster, name: str, selector_label: tuple[str, str]) -> None:
    """A Ready node that the module's agent does not run (it lacks the simulated label)."""
    from glmops_dev.nodes import LABEL_SIMULATED, node_manifest, profile

    manifest = node_manifest(profile("cpu"), name)
    labels = manifest["metadata"]["labels"]
    del labels[LABEL_SIMULATED]
    labels[selector_label[0]] = selector_label[1]
    # Pods name the node directly (spec.nodeName), so its not-ready taint does not matter.
    cluster.kubectl("create", "-f", "-", input=json.dumps(manifest))
    with cluster.api_client() as client:
        AgentApi(client).patch_node_status(name, manifest["status"])


def test_a_restarted_agent_fails_the_pods_it_cannot_reattach_to(
    cluster: KubeCluster, namespace: str, node_agent: NodeAgent, tmp_path: Path
) -> None:
    node = f"agent-restart-{namespace[-6:]}"
    selector = ("glmops.io/agent-test", node)
    _restart_test_node(cluster, node, selector)
    state = tmp_path / "state"
    try:
        options: dict[str, Any] = {"node_selector_label": "=".join(selector), "heartbeat_interval_s": None}
        first = NodeAgent(cluster.api_client, state, fail_pods_on_stop=False, **options).start()
        apply(
            cluster, namespace, pod("long", python_container("import time; time.sleep(300)"), nodeName=node)
        )
        running = wait_phase(cluster, namespace, first, "long", "Running")
        pid = int(running["status"]["containerStatuses"][0]["containerID"].removeprefix("local://"))
        first.stop()
        assert not _alive(pid)
        assert get(cluster, namespace, "pod", "long")["status"]["phase"] == "Running"  # nothing told the API

        with NodeAgent(cluster.api_client, state, **options) as second:
            obj = wait_phase(cluster, namespace, second, "long", "Failed")
            assert obj["status"]["reason"] == "NodeAgentRestarted"
            assert terminated(obj)["reason"] == "NodeAgentRestarted"
            # A pod that was still Pending just starts; a pod running when the agent stops fails.
            apply(
                cluster,
                namespace,
                pod("next", python_container("import time; time.sleep(300)"), nodeName=node),
            )
            wait_phase(cluster, namespace, second, "next", "Running")
        stopped = get(cluster, namespace, "pod", "next")
        assert (stopped["status"]["phase"], stopped["status"]["reason"]) == ("Failed", "NodeAgentStopped")
    finally:
        cluster.kubectl("delete", "node", node, "--wait=false", check=False)
