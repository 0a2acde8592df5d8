"""End to end through a Service: the OpenAI and Anthropic clients, and a surge rollout that loses no request.

They need what a real cluster gives every pod: its own network namespace and IP (two replicas
listen on one port during a surge) and Service IPs that kube-proxy forwards; the local cluster's
pod network provides both. On a cluster without it they are skipped, saying why.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from modeldeployment_support import (
    build_tiny_ggufs,
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
KEY = "e2e-key-123"


@pytest.fixture(scope="module")
def tiny_ggufs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return build_tiny_ggufs(tmp_path_factory.mktemp("tiny-gguf"))


@pytest.fixture
def deployed(cluster: Any, glmops_operator: Any, service_network: None, namespace: str, tiny_ggufs: dict[str, Path]) -> Iterator[tuple[str, str]]:
    """Two replicas of GGUF `a` behind the Service, with an API key; yields (namespace, base URL)."""
    client.CoreV1Api(cluster.api_client()).create_namespaced_secret(namespace, {"metadata": {"name": "key"}, "stringData": {"api-key": KEY}})
    for job, q8 in (("tiny-a", "a"), ("tiny-b", "b")):
        create_job(cluster, namespace, job, formats=("gguf",), diagnose=glmops_operator.log_tail)
        set_job_status(cluster, namespace, job, "Succeeded", gguf_artifacts(tiny_ggufs, q8))
    create_mdep(
        cluster, namespace, "tiny", servedModelName="tiny", source={"fineTuneJob": "tiny-a", "quantization": "Q8_0"},
        replicas=2, gpusPerReplica=0, contextLength=1024, parallelSlots=2, apiKeySecret="key",
    )
    wait_for("two ready replicas", lambda: (mdep(cluster, namespace, "tiny").get("status") or {}).get("ready") == "2/2", 300, glmops_operator.log_tail)
    status = mdep(cluster, namespace, "tiny")["status"]
    assert status["endpoint"] == f"http://tiny.{namespace}.svc:8000/v1"
    wait_until_served(status["endpoint"], 60, glmops_operator.log_tail)
    # the endpoint from status, as clients use it: the name resolves on the host, kube-proxy forwards
    yield namespace, status["endpoint"]


def test_openai_and_anthropic_clients_answer_through_the_service(deployed: tuple[str, str]) -> None:
    import anthropic
    import openai

    _, base_url = deployed
    chat = openai.OpenAI(base_url=base_url, api_key=KEY).chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "hello"}], max_tokens=8, temperature=0
    )
    assert chat.model == "tiny" and chat.choices[0].message.role == "assistant"
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=base_url, api_key="wrong").models.list()
    message = anthropic.Anthropic(base_url=base_url.removesuffix("/v1"), api_key=KEY).messages.create(
        model="tiny", max_tokens=8, messages=[{"role": "user", "content": "hello"}]
    )
    assert message.role == "assistant" and message.content


def test_a_surge_rollout_loses_no_request(cluster: Any, glmops_operator: Any, deployed: tuple[str, str], tiny_ggufs: dict[str, Path]) -> None:
    import openai

    namespace, base_url = deployed
    api = openai.OpenAI(base_url=base_url, api_key=KEY, max_retries=0, timeout=30)
    outcomes: list[str] = []
    stop = threading.Event()

    def traffic() -> None:
        while not stop.is_set():
            try:
                api.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=2)
                outcomes.append("ok")
            except openai.OpenAIError as exc:
                outcomes.append(f"{type(exc).__name__}: {exc}")
            time.sleep(0.05)

    sender = threading.Thread(target=traffic, daemon=True)
    sender.start()
    try:
        patch_mdep(cluster, namespace, "tiny", {"source": {"fineTuneJob": "tiny-b"}})

        def rolled_out() -> bool:
            status = mdep(cluster, namespace, "tiny").get("status") or {}
            served = (status.get("servedArtifact") or {}).get("sha256")
            return served == sha256_of(tiny_ggufs["b"]) and status.get("phase") == "Ready" and status.get("ready") == "2/2"

        wait_for("the surge rollout to finish", rolled_out, 600, glmops_operator.log_tail)
        time.sleep(2)
    finally:
        stop.set()
        sender.join(timeout=60)
    failures = [o for o in outcomes if o != "ok"]
    assert len(outcomes) > 20 and failures == [], failures[:5]
