"""A FineTuneJob's own GGUF, served: trained in a trainer pod, exported as Q8_0, answered through the Service.

Everything is real but the GPU: the operator reconciles a Flash FineTuneJob, the node agent runs
the trainer pod (QLoRA on a tiny GLM-4.7-Flash-architecture model, then the export's merge,
llama.cpp's converter and Q8_0), the operator records the artifacts, and a ModelDeployment naming
the job is served by llama-server in a pod, reached by the name in `status.endpoint` through
kube-proxy. The job trains on the agentic test dataset until it has memorised it, so what the
clients get back is known: the dataset's own reasoning and answer, apart from each other, and a
tool call that llama.cpp's GLM-4.7 parser turns into `tool_calls`.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from modeldeployment_support import FTJ, GROUP, VERSION, create_mdep, custom, mdep, sha256_of
from polling import wait_for, wait_until_served
from statedir import state_dir, tiny_flash_model

REPO = Path(__file__).resolve().parents[2]
DATASET = REPO / "tests" / "data" / "datasets" / "agentic_small.jsonl"
STEPS = 96  # 12 passes over the dataset's 8 packed rows: enough for the tiny model to reproduce it

pytestmark = [pytest.mark.slow, pytest.mark.llamacpp]


def _conversations() -> list[dict[str, Any]]:
    return [json.loads(line) for line in DATASET.read_text().splitlines() if line.strip()]


def _plain_question() -> tuple[str, dict[str, Any]]:
    """A question the dataset asks alone, without a system prompt or tools, and the assistant turn it trains."""
    for sample in _conversations():
        messages = sample["messages"]
        if not sample.get("tools") and len(messages) == 2 and messages[0]["role"] == "user":
            return messages[0]["content"], messages[1]
    raise AssertionError(f"{DATASET} has no single-question conversation")


def _tool_request() -> tuple[list[dict[str, Any]], list[dict[str, Any]], dict[str, Any]]:
    """(messages up to the first tool call, the tools, the assistant turn that calls one) of the first tool sample."""
    sample = next(s for s in _conversations() if s.get("tools") and s["messages"][0]["role"] == "system")
    index = next(i for i, m in enumerate(sample["messages"]) if m.get("tool_calls"))
    return sample["messages"][:index], sample["tools"], sample["messages"][index]


@pytest.fixture(scope="module")
def workdir() -> Iterator[Path]:
    """The tiny model and the job's output, which the trainer and server pods open by file:// URI."""
    with state_dir("serve-trained") as path:
        yield path


@pytest.fixture(scope="module")
def flash_model(workdir: Path) -> Path:
    return tiny_flash_model(workdir)


def _finetunejob(model: Path, out: Path) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "FineTuneJob",
        "metadata": {"name": "coder"},
        "spec": {
            "model": {"variant": "flash", "source": f"file://{model}"},
            "dataset": {"source": f"file://{DATASET}", "validationSplit": 0},
            "training": {
                "maxSteps": STEPS,
                "learningRate": 5e-3,
                "sequenceLength": 1024,
                "gradientAccumulationSteps": 1,
                "checkpointEvery": STEPS,
                "lora": {"rank": 32, "alpha": 64, "dropout": 0, "targets": ["attention", "dense_mlp", "shared_experts", "experts"]},
            },
            "output": {"destination": f"file://{out}", "formats": ["gguf"], "quantizations": ["Q8_0"]},
        },
    }


@pytest.mark.timeout(2400)
def test_a_trained_job_is_served_with_reasoning_tool_calls_and_the_messages_api(
    cluster: Any, node_agent: Any, glmops_operator: Any, namespace: str, flash_model: Path, workdir: Path
) -> None:
    import anthropic
    import openai

    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(_finetunejob(flash_model, workdir / "out")))

    def job() -> dict[str, Any]:
        return dict(custom(cluster).get_namespaced_custom_object(GROUP, VERSION, namespace, FTJ, "coder"))

    def diagnose() -> str:
        logs = cluster.kubectl("logs", "-n", namespace, "-l", "glmops.io/finetunejob=coder", "--tail", "20", check=False)
        served = json.dumps(mdep(cluster, namespace, "coder").get("status"), indent=1)[-2000:]
        trained = json.dumps(job().get("status"), indent=1)[-2000:]
        return f"{trained}\n{logs.stdout}{logs.stderr}\n{served}\n{glmops_operator.log_tail(30)}"

    # A ModelDeployment applied while its job trains waits for it (GitOps applies both at once).
    create_mdep(
        cluster, namespace, "coder", servedModelName="coder", source={"fineTuneJob": "coder"},
        gpusPerReplica=0, contextLength=2048, parallelSlots=1,
    )  # fmt: skip
    waited = cluster.kubectl(
        "wait", "--for=condition=Succeeded", "ftj/coder", "-n", namespace, "--timeout=1500s", check=False, timeout_s=1560
    )
    assert waited.returncode == 0, diagnose()
    [gguf] = job()["status"]["artifacts"]["gguf"]
    assert gguf["quantization"] == "Q8_0"

    def ready() -> dict[str, Any] | None:
        status = mdep(cluster, namespace, "coder").get("status") or {}
        return status if status.get("phase") == "Ready" else None

    status = wait_for("the trained job's GGUF to serve", ready, 300, diagnose)
    # what serves is the file the export wrote, as the job recorded it
    assert status["servedArtifact"] == {"uri": gguf["uri"], "sha256": gguf["sha256"]}
    assert sha256_of(Path(gguf["uri"].removeprefix("file://"))) == gguf["sha256"]
    base_url = status["endpoint"]
    assert base_url == f"http://coder.{namespace}.svc:8000/v1"
    wait_until_served(base_url, 60, diagnose)
    chat = openai.OpenAI(base_url=base_url, api_key="unused", max_retries=0, timeout=120).chat.completions

    # The memorised answer, its reasoning returned apart (--jinja --reasoning-format deepseek).
    question, trained = _plain_question()
    answer = chat.create(model="coder", messages=[{"role": "user", "content": question}], max_tokens=64, temperature=0)
    message = answer.choices[0].message
    assert answer.choices[0].finish_reason == "stop"
    assert (message.content, _reasoning(message)) == (trained["content"], trained["reasoning_content"])

    # Tools in the request: the model's <tool_call> comes back parsed, not as text.
    messages, tools, calling = _tool_request()
    answer = chat.create(model="coder", messages=messages, tools=tools, max_tokens=96, temperature=0)  # type: ignore[arg-type]
    message = answer.choices[0].message
    assert answer.choices[0].finish_reason == "tool_calls", message
    assert not message.content and "<tool_call>" not in (_reasoning(message) or "")
    assert _reasoning(message), "the reasoning before the call is returned apart"
    [call] = message.tool_calls or []
    trained_call = calling["tool_calls"][0]["function"]
    assert call.type == "function" and call.function.name == trained_call["name"]
    arguments = json.loads(call.function.arguments)
    # Each <arg_key>/<arg_value> pair became a JSON member. Which values the tiny model picks
    # (it mixes up the dataset's cities and units) is not what is checked here.
    assert "city" in arguments and set(arguments) <= set(trained_call["arguments"]), arguments

    # The Anthropic client on /v1/messages, at the server root: the thinking and the answer as blocks.
    reply = anthropic.Anthropic(base_url=base_url.removesuffix("/v1"), api_key="unused", max_retries=0).messages.create(
        model="coder", max_tokens=64, messages=[{"role": "user", "content": question}]
    )
    blocks = {block.type: block for block in reply.content}
    assert reply.stop_reason == "end_turn" and set(blocks) == {"thinking", "text"}, reply.content
    assert blocks["text"].text == trained["content"]  # type: ignore[union-attr]
    assert blocks["thinking"].thinking == trained["reasoning_content"]  # type: ignore[union-attr]


def _reasoning(message: Any) -> str | None:
    return getattr(message, "reasoning_content", None) or (message.model_extra or {}).get("reasoning_content")

