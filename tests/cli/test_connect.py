"""`glmops connect`: the settings each coding agent needs, from a ModelDeployment's status."""

from __future__ import annotations

import json
import shlex
from typing import Any

import pytest

from glmops.cli.connect import KEY_PLACEHOLDER, NO_KEY, ConnectError, connection_from, render


def deployment(phase: str = "Ready", key_secret: str | None = "coder-api-key", **status: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {"servedModelName": "coder", "contextLength": 65536}
    if key_secret:
        spec["apiKeySecret"] = key_secret
    return {
        "metadata": {"name": "coder", "namespace": "ml"},
        "spec": spec,
        "status": {
            "phase": phase,
            "endpoint": "http://coder.ml.svc:8000/v1",
            "servedModels": ["coder", "team-b"],
            "plan": {"contextLength": 65536},
            **status,
        },
    }


def _exports(text: str) -> dict[str, str]:
    """What `export K=V` lines set, as a shell would see it."""
    found = {}
    for line in text.splitlines():
        if line.startswith("export "):
            key, _, value = line.removeprefix("export ").partition("=")
            found[key] = shlex.split(value)[0]
    return found


def test_claude_code_gets_the_server_root_a_token_and_the_model() -> None:
    text = render("claude-code", connection_from(deployment(), key="s3cret"))
    env = _exports(text)
    assert env["ANTHROPIC_BASE_URL"] == "http://coder.ml.svc:8000"  # Claude Code appends /v1/messages
    assert env["ANTHROPIC_AUTH_TOKEN"] == "s3cret" and env["ANTHROPIC_MODEL"] == "coder"
    assert env["ANTHROPIC_DEFAULT_HAIKU_MODEL"] == "coder"
    settings = json.loads(text[text.index("{") :])
    assert settings == {"env": env}


def test_the_key_is_a_placeholder_unless_asked_for() -> None:
    text = render("claude-code", connection_from(deployment()))
    assert _exports(text)["ANTHROPIC_AUTH_TOKEN"] == KEY_PLACEHOLDER
    assert "kubectl get secret -n ml coder-api-key -o jsonpath='{.data.api-key}' | base64 -d" in text
    assert "--show-key" in text


def test_without_a_key_secret_any_key_will_do() -> None:
    text = render("openai", connection_from(deployment(key_secret=None)))
    assert _exports(text)["OPENAI_API_KEY"] == NO_KEY and "kubectl get secret" not in text


def test_cline_gets_an_openai_compatible_provider() -> None:
    text = render("cline", connection_from(deployment(), key="k"))
    assert "OpenAI Compatible" in text
    assert "Base URL:       http://coder.ml.svc:8000/v1" in text
    assert "Model ID:       coder" in text and "API Key:        k" in text and "65536" in text


def test_aider_gets_an_openai_base_ending_in_v1_and_the_context_length() -> None:
    text = render("aider", connection_from(deployment(), key="k"))
    assert _exports(text)["OPENAI_API_BASE"] == "http://coder.ml.svc:8000/v1"
    assert "aider --model openai/coder" in text
    metadata = json.loads(text[text.index("{") :])
    assert metadata["openai/coder"]["max_input_tokens"] == 65536 and metadata["openai/coder"]["litellm_provider"] == "openai"


def test_openai_clients_get_base_url_key_and_model() -> None:
    text = render("openai", connection_from(deployment(), key="k"))
    assert _exports(text) == {"OPENAI_BASE_URL": "http://coder.ml.svc:8000/v1", "OPENAI_API_KEY": "k"}
    assert "model='coder'" in text


def test_an_adapter_is_chosen_by_its_served_name() -> None:
    text = render("openai", connection_from(deployment(), model="team-b"))
    assert "model='team-b'" in text
    with pytest.raises(ConnectError, match="serves coder, team-b"):
        connection_from(deployment(), model="nobody")


def test_a_port_forward_reaches_the_service_from_outside() -> None:
    text = render("claude-code", connection_from(deployment(), local_port=18000))
    assert _exports(text)["ANTHROPIC_BASE_URL"] == "http://127.0.0.1:18000"
    assert "kubectl port-forward -n ml svc/coder 18000:8000" in text


def test_a_deployment_that_is_not_ready_says_so() -> None:
    text = render("openai", connection_from(deployment(phase="Progressing")))
    assert text.startswith("# ml/coder is Progressing")
    no_endpoint = deployment(phase="Pending", endpoint=None, conditions=[{"type": "Ready", "message": "FineTuneJob 'coder' is Training"}])
    with pytest.raises(ConnectError, match="Training.*kubectl wait -n ml mdep/coder --for=condition=Ready"):
        connection_from(no_endpoint)


def test_only_the_cli_reads_secret_values() -> None:
    """The operator checks that Secrets exist; reading a value is for `connect --show-key` alone."""
    from pathlib import Path

    package = Path(__file__).resolve().parents[2] / "operator" / "glmops"
    readers = sorted(
        str(path.relative_to(package)) for path in package.rglob("*.py") if "read_secret_value(" in path.read_text()
    )
    assert readers == ["cli/connect.py", "kube.py"]


def _on(runtime: str, **status: Any) -> dict[str, Any]:
    body = deployment(**status)
    body["spec"]["runtime"] = runtime
    return body


def test_openai_clients_are_told_where_each_runtime_puts_the_reasoning() -> None:
    # vLLM 0.32 returns message.reasoning; llama-server (--reasoning-format deepseek) message.reasoning_content
    vllm = render("openai", connection_from(_on("vllm"), key="k"))
    llama = render("openai", connection_from(_on("llamacpp"), key="k"))
    assert "message.reasoning, delta.reasoning when streamed" in vllm and ".get('reasoning')" in vllm
    assert "message.reasoning_content, delta.reasoning_content when streamed" in llama
    assert ".get('reasoning_content')" in llama
    # a deployment written before spec.runtime existed is llama.cpp, the API's default
    assert connection_from(deployment()).reasoning_field == "reasoning_content"


def test_cline_and_aider_are_warned_that_vllm_names_the_reasoning_field_differently() -> None:
    for client in ("cline", "aider"):
        assert "returns reasoning as `reasoning`" in render(client, connection_from(_on("vllm"), key="k"))
        assert "returns reasoning as" not in render(client, connection_from(_on("llamacpp"), key="k"))
    # aider's metadata file still parses: the warning sits above it
    text = render("aider", connection_from(_on("vllm"), key="k"))
    assert json.loads(text[text.index("{") :])["openai/coder"]["max_input_tokens"] == 65536


def test_claude_code_gets_thinking_blocks_on_either_runtime() -> None:
    for runtime in ("vllm", "llamacpp"):
        text = render("claude-code", connection_from(_on(runtime), key="k"))
        assert "thinking blocks" in text and "reasoning_content" not in text
        assert ("vLLM refuses it in x-api-key" in text) == (runtime == "vllm")
        assert json.loads(text[text.index("{") :])["env"]["ANTHROPIC_BASE_URL"] == "http://coder.ml.svc:8000"
