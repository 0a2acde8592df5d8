"""A ModelDeployment served for real: llama-server (built from the llama-cpp-python sdist) runs a tiny
GLM-4.7-Flash-architecture GGUF in pods of the node agent, reached through the deployment's
Service by the name in status.endpoint; status follows the pods.

Checked here: readiness, the API key, the OpenAI and Anthropic clients (reasoning returned apart),
a new version that fails while the old one serves, rolling back, a Recreate rollout to a new
artifact, and a surge that has no spare GPU. A surge rollout under load with zero failed requests
is in test_modeldeployment_e2e.py.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from modeldeployment_support import (
    build_tiny_ggufs,
    condition,
    create_job,
    create_mdep,
    gguf_artifacts,
    mdep,
    patch_mdep,
    set_job_status,
    sha256_of,
)
from polling import wait_for, wait_until_served

pytestmark = [pytest.mark.slow, pytest.mark.llamacpp]
KEY = "tiny-key-123"


@pytest.fixture(scope="module")
def tiny_ggufs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two tiny Flash-architecture GGUFs of different weights, and a file that is not a GGUF."""
    return build_tiny_ggufs(tmp_path_factory.mktemp("tiny-gguf"))


@pytest.fixture
def served(cluster: Any, glmops_operator: Any, node_agent: Any, namespace: str, tiny_ggufs: dict[str, Path]) -> Iterator[str]:
    """Jobs `tiny-a` (Q8_0: GGUF a, Q4_K_M: not a GGUF) and `tiny-b` (Q8_0: GGUF b) Succeeded; the API-key Secret."""
    client.CoreV1Api(cluster.api_client()).create_namespaced_secret(
        namespace, {"metadata": {"name": "tiny-key"}, "stringData": {"api-key": KEY}}
    )
    for job, q8 in (("tiny-a", "a"), ("tiny-b", "b")):
        create_job(cluster, namespace, job, formats=("gguf",), diagnose=glmops_operator.log_tail)
        set_job_status(cluster, namespace, job, "Succeeded", gguf_artifacts(tiny_ggufs, q8))
    yield namespace


def _get(root: str, path: str, key: str | None = KEY) -> tuple[int, str]:
    """(status, body) of a GET to the server root `root` (http://NAME.NS.svc:PORT)."""
    request = urllib.request.Request(f"{root}{path}")
    if key:
        request.add_header("Authorization", f"Bearer {key}")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, ""


def test_llama_server_serves_the_gguf_and_status_follows_the_rollout(
    cluster: Any, glmops_operator: Any, served: str, tiny_ggufs: dict[str, Path]
) -> None:
    namespace = served
    create_mdep(
        cluster, namespace, "tiny", servedModelName="tiny", source={"fineTuneJob": "tiny-a", "quantization": "Q8_0"},
        gpusPerReplica=0, contextLength=512, parallelSlots=1, apiKeySecret="tiny-key",
    )

    def status() -> dict[str, Any]:
        return dict(mdep(cluster, namespace, "tiny").get("status") or {})

    def diagnose() -> str:
        return json.dumps(status(), indent=1)[-3000:] + "\n" + glmops_operator.log_tail()

    wait_for("the deployment to be Ready", lambda: status().get("phase") == "Ready", 240, diagnose)
    current = status()
    assert current["readyReplicas"] == 1 and current["ready"] == "1/1"
    assert current["servedArtifact"] == {"uri": f"file://{tiny_ggufs['a']}", "sha256": sha256_of(tiny_ggufs["a"])}
    base_url = current["endpoint"]
    assert base_url == f"http://tiny.{namespace}.svc:8000/v1"
    root = base_url.removesuffix("/v1")
    wait_until_served(base_url, 60, diagnose)

    code, models = _get(root, "/v1/models")
    assert code == 200 and [m["id"] for m in json.loads(models)["data"]] == ["tiny"]
    assert _get(root, "/v1/models", key=None)[0] == 401  # the key from the Secret is enforced
    assert _get(root, "/health", key=None)[0] == 200
    code, metrics = _get(root, "/metrics")
    assert code == 200 and "llamacpp:requests_processing" in metrics  # --metrics, what KEDA scales on

    # The clients coding agents use, through the Service.
    import anthropic
    import openai

    chat = openai.OpenAI(base_url=base_url, api_key=KEY).chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "hello"}], max_tokens=8, temperature=0
    )
    message = chat.choices[0].message
    # GLM-4.7's template opens the answer with <think>: --jinja --reasoning-format deepseek return it apart
    reasoning = getattr(message, "reasoning_content", None) or (message.model_extra or {}).get("reasoning_content")
    assert reasoning and "<think>" not in (message.content or "")
    answer = anthropic.Anthropic(base_url=root, api_key=KEY).messages.create(
        model="tiny", max_tokens=8, messages=[{"role": "user", "content": "hello"}]
    )
    assert answer.role == "assistant" and answer.content  # /v1/messages

    # A new version that cannot load: the old replica keeps serving, Degraded says why.
    patch_mdep(cluster, namespace, "tiny", {"source": {"quantization": "Q4_K_M"}})
    wait_for(
        "the failing new version to be reported",
        lambda: condition(mdep(cluster, namespace, "tiny"), "Degraded").get("reason") == "NewVersionNotReady",
        240,
        diagnose,
    )
    body = mdep(cluster, namespace, "tiny")
    assert condition(body, "Ready")["status"] == "True" and body["status"]["phase"] == "Degraded"
    assert body["status"]["servedArtifact"]["uri"] == f"file://{tiny_ggufs['a']}"
    assert "roll back" in condition(body, "Degraded")["message"]
    assert _get(root, "/v1/models")[0] == 200

    # Setting the source back rolls back: the old ReplicaSet is the current one again.
    patch_mdep(cluster, namespace, "tiny", {"source": {"quantization": "Q8_0"}})
    wait_for("the rollback to finish", lambda: status().get("phase") == "Ready", 240, diagnose)
    assert condition(mdep(cluster, namespace, "tiny"), "Degraded")["status"] == "False"
    apps = client.AppsV1Api(cluster.api_client())

    def replica_sets() -> dict[str, int]:
        return {rs.metadata.name: rs.status.replicas or 0 for rs in apps.list_namespaced_replica_set(namespace).items}

    # the failed version's ReplicaSet is scaled to zero; its pod may take a moment to go
    wait_for("one ReplicaSet serving, the other at zero", lambda: sorted(replica_sets().values()) == [0, 1], 60, lambda: str(replica_sets()))
    assert len(replica_sets()) == 2

    # Recreate: the old pod stops, then the new artifact serves.
    patch_mdep(cluster, namespace, "tiny", {"strategy": "Recreate", "source": {"fineTuneJob": "tiny-b"}})
    wait_for(
        "the new artifact to serve",
        lambda: (status().get("servedArtifact") or {}).get("sha256") == sha256_of(tiny_ggufs["b"]) and status().get("phase") == "Ready",
        240,
        diagnose,
    )
    wait_until_served(base_url, 60, diagnose)
    assert _get(root, "/v1/models")[0] == 200


def test_a_surge_with_no_spare_gpu_says_so_and_recreate_rolls_out(
    cluster: Any, glmops_operator: Any, served: str, tiny_ggufs: dict[str, Path]
) -> None:
    """One replica on the only L40S node (one GPU): the surge pod has nowhere to go."""
    namespace = served
    create_mdep(
        cluster, namespace, "gpu", servedModelName="gpu", source={"fineTuneJob": "tiny-a", "quantization": "Q8_0"},
        gpusPerReplica=1, placement={"gpuProduct": "NVIDIA-L40S"}, contextLength=512, parallelSlots=1,
    )

    def status() -> dict[str, Any]:
        return dict(mdep(cluster, namespace, "gpu").get("status") or {})

    def diagnose() -> str:
        return json.dumps(status(), indent=1)[-3000:] + "\n" + glmops_operator.log_tail()

    wait_for("the GPU replica to be Ready", lambda: status().get("phase") == "Ready", 240, diagnose)
    pods = client.CoreV1Api(cluster.api_client()).list_namespaced_pod(namespace, label_selector="glmops.io/modeldeployment=gpu").items
    assert [p.spec.node_name for p in pods] == ["sim-l40sx1"]

    patch_mdep(cluster, namespace, "gpu", {"source": {"fineTuneJob": "tiny-b"}})
    wait_for(
        "the stuck surge to be reported",
        lambda: condition(mdep(cluster, namespace, "gpu"), "Degraded").get("reason") == "SurgeUnschedulable",
        120,
        diagnose,
    )
    body = mdep(cluster, namespace, "gpu")
    assert "strategy: Recreate" in condition(body, "Degraded")["message"]
    assert condition(body, "Ready")["status"] == "True"
    assert body["status"]["servedArtifact"]["sha256"] == sha256_of(tiny_ggufs["a"])

    patch_mdep(cluster, namespace, "gpu", {"strategy": "Recreate"})
    wait_for(
        "Recreate to roll the new artifact out",
        lambda: (status().get("servedArtifact") or {}).get("sha256") == sha256_of(tiny_ggufs["b"]) and status().get("phase") == "Ready",
        240,
        diagnose,
    )
    assert condition(mdep(cluster, namespace, "gpu"), "Degraded")["status"] == "False"
