"""`glmops connect NAME --client claude-code|cline|aider|openai`: what a coding agent needs to set.

Everything comes from the ModelDeployment's status through the API (endpoint, served model
names, context length). The API key is printed only with `--show-key`, read from the Secret
with the user's own credentials; otherwise a placeholder and the command that prints it.
`render` is pure; `run_connect` does the reading.
"""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

CLIENTS = ("claude-code", "cline", "aider", "openai")
REASONING_FIELDS = {"vllm": "reasoning", "llamacpp": "reasoning_content"}
"""Where each runtime puts the reasoning of a chat completion (message.X, and delta.X when streamed):
vLLM 0.32 says `reasoning` (it renamed `reasoning_content`), llama-server with --reasoning-format
deepseek `reasoning_content`. Both accept either name in the assistant turns of a request."""
KEY_PLACEHOLDER = "<api-key>"
NO_KEY = "none"  # clients insist on some key; the server checks none


class ConnectError(RuntimeError):
    """The deployment cannot be connected to (yet); the message says why and what to do."""


@dataclass(frozen=True)
class Connection:
    """What a client needs, from a ModelDeployment's status."""

    name: str
    namespace: str
    base_url: str
    """OpenAI-compatible base, ending in /v1."""
    model: str
    context_length: int
    key: str
    """The key, a placeholder, or NO_KEY."""
    key_hint: str = ""
    """How to get the key when it is not printed."""
    note: str = ""
    """A warning to print first (not ready yet, reached through a port-forward)."""
    runtime: str = "llamacpp"
    """The inference server: `llamacpp` or `vllm`."""

    @property
    def reasoning_field(self) -> str:
        """The chat-completion field (message.X, delta.X) that carries the model's reasoning."""
        return REASONING_FIELDS.get(self.runtime, "reasoning_content")

    @property
    def root_url(self) -> str:
        """The server root (Anthropic clients add /v1/messages themselves)."""
        return self.base_url.removesuffix("/").removesuffix("/v1")


def connection_from(
    body: dict[str, Any],
    model: str | None = None,
    key: str | None = None,
    base_url: str | None = None,
    local_port: int | None = None,
) -> Connection:
    """The connection of a ModelDeployment as read from the API; `key` when the user asked for it.

    `base_url` replaces the in-cluster endpoint (an ingress); `local_port` reaches the Service
    through `kubectl port-forward` from outside the cluster.
    """
    metadata, spec, status = body.get("metadata") or {}, body.get("spec") or {}, body.get("status") or {}
    name, namespace = str(metadata.get("name")), str(metadata.get("namespace"))
    endpoint = status.get("endpoint")
    if not endpoint:
        ready: dict[str, Any] = next((c for c in status.get("conditions") or [] if c.get("type") == "Ready"), {})
        raise ConnectError(
            f"ModelDeployment {namespace}/{name} has no endpoint yet (phase {status.get('phase') or 'unknown'}"
            + (f": {ready.get('message')}" if ready.get("message") else "")
            + f"); wait with: kubectl wait -n {namespace} mdep/{name} --for=condition=Ready"
        )
    served = list(status.get("servedModels") or [spec.get("servedModelName")])
    chosen = model or served[0]
    if chosen not in served:
        raise ConnectError(f"--model {chosen}: {namespace}/{name} serves {', '.join(served)}")
    context = int((status.get("plan") or {}).get("contextLength") or spec.get("contextLength") or 32768)
    secret = spec.get("apiKeySecret")
    hint = ""
    if not secret:
        key_value = NO_KEY
    elif key is not None:
        key_value = key
    else:
        key_value = KEY_PLACEHOLDER
        hint = (
            f"kubectl get secret -n {shlex.quote(namespace)} {shlex.quote(secret)} -o jsonpath='{{.data.api-key}}' | base64 -d"
        )
    notes = []
    if status.get("phase") != "Ready":
        notes.append(f"{namespace}/{name} is {status.get('phase') or 'not ready'}: requests may fail until it is Ready")
    url = str(base_url or endpoint).rstrip("/")
    if local_port is not None:
        service_port = urlsplit(str(endpoint)).port or 80
        url = f"http://127.0.0.1:{local_port}/v1"
        notes.append(f"first, in another shell: kubectl port-forward -n {namespace} svc/{name} {local_port}:{service_port}")
    runtime = str(spec.get("runtime") or "llamacpp")
    return Connection(name, namespace, url, chosen, context, key_value, hint, "\n# ".join(notes), runtime)


def _env_lines(values: dict[str, str]) -> list[str]:
    return [f"export {k}={shlex.quote(v)}" for k, v in values.items()]


def render(client: str, c: Connection) -> str:
    """The settings for `client`, as text to read or paste."""
    lines: list[str] = []
    if c.note:
        lines.append(f"# {c.note}")
    if client == "claude-code":
        env = {
            "ANTHROPIC_BASE_URL": c.root_url,
            "ANTHROPIC_AUTH_TOKEN": c.key,
            "ANTHROPIC_MODEL": c.model,
            # background tasks use the small/fast slot: the same model here
            "ANTHROPIC_DEFAULT_HAIKU_MODEL": c.model,
            "ANTHROPIC_DEFAULT_SONNET_MODEL": c.model,
            "ANTHROPIC_DEFAULT_OPUS_MODEL": c.model,
        }
        lines += [
            f"# Claude Code -> {c.model} (Anthropic Messages API at {c.root_url}/v1/messages;",
            "# the model's reasoning arrives as thinking blocks, with either runtime)",
        ]
        if c.runtime == "vllm":
            # vLLM checks only Authorization: Bearer, which is how Claude Code sends ANTHROPIC_AUTH_TOKEN.
            lines += ["# the key goes in ANTHROPIC_AUTH_TOKEN: vLLM refuses it in x-api-key (ANTHROPIC_API_KEY)"]
        lines += _env_lines(env)
        lines += ["", "# or, for every session, in ~/.claude/settings.json:", json.dumps({"env": env}, indent=2)]
    elif client == "cline":
        lines += [
            f"# Cline -> {c.model}: Settings > API Provider: OpenAI Compatible",
            f"Base URL:       {c.base_url}",
            f"API Key:        {c.key}",
            f"Model ID:       {c.model}",
            f"Context Window: {c.context_length}",
        ]
        if c.reasoning_field != "reasoning_content":
            # Cline's OpenAI Compatible provider reads delta.reasoning_content only.
            lines += [
                "",
                f"# This server ({c.runtime}) returns reasoning as `{c.reasoning_field}`, not `reasoning_content`:",
                "# Cline shows its answers and tool calls but not its reasoning.",
            ]
    elif client == "aider":
        metadata = {
            f"openai/{c.model}": {
                "max_tokens": c.context_length,
                "max_input_tokens": c.context_length,
                "max_output_tokens": min(c.context_length // 4, 32768),
                "input_cost_per_token": 0.0,
                "output_cost_per_token": 0.0,
                "litellm_provider": "openai",
                "mode": "chat",
            }
        }
        lines += [f"# Aider -> {c.model}"]
        if c.reasoning_field != "reasoning_content":
            lines += [
                f"# This server ({c.runtime}) returns reasoning as `{c.reasoning_field}`; clients that read only",
                "# `reasoning_content` show no reasoning (answers and tool calls are unaffected).",
            ]
        lines += _env_lines({"OPENAI_API_BASE": c.base_url, "OPENAI_API_KEY": c.key})
        lines += [
            f"aider --model {shlex.quote('openai/' + c.model)}",
            "",
            "# .aider.model.metadata.json (in your home or repository folder), so aider knows the context length:",
            json.dumps(metadata, indent=2),
        ]
    elif client == "openai":
        lines += [f"# OpenAI-compatible clients -> {c.model}"]
        lines += _env_lines({"OPENAI_BASE_URL": c.base_url, "OPENAI_API_KEY": c.key})
        lines += [
            "",
            "# Python:",
            "from openai import OpenAI",
            f"client = OpenAI(base_url={c.base_url!r}, api_key={c.key!r})",
            f"reply = client.chat.completions.create(model={c.model!r}, messages=[{{'role': 'user', 'content': 'hello'}}])",
            "print(reply.choices[0].message.content)",
            f"# the reasoning, apart from the answer ({c.runtime}: message.{c.reasoning_field}, delta.{c.reasoning_field} when streamed):",
            f"print((reply.choices[0].message.model_extra or {{}}).get({c.reasoning_field!r}))",
        ]
    else:
        raise ConnectError(f"--client {client}: expected one of {', '.join(CLIENTS)}")
    if c.key_hint:
        lines += ["", f"# {KEY_PLACEHOLDER}: run `glmops connect ... --show-key`, or: {c.key_hint}"]
    return "\n".join(lines) + "\n"


def run_connect(
    name: str,
    namespace: str | None,
    client: str,
    show_key: bool = False,
    model: str | None = None,
    base_url: str | None = None,
    local_port: int | None = None,
) -> str:
    """Read the deployment (and, with `show_key`, its key) through the API and render the settings."""
    from kubernetes import config

    from glmops import kube
    from glmops.api.modeldeployment import PLURAL

    try:
        config.load_incluster_config()  # type: ignore[no-untyped-call]
        current_namespace = "default"
    except config.ConfigException:
        config.load_kube_config()  # type: ignore[no-untyped-call]
        _, active = config.list_kube_config_contexts()  # type: ignore[no-untyped-call]
        current_namespace = str((active or {}).get("context", {}).get("namespace") or "default")
    namespace = namespace or current_namespace
    from kubernetes import client as k8s

    with k8s.ApiClient() as api:
        body = kube.get_custom(api, PLURAL, namespace, name)
        if body is None:
            raise ConnectError(f"no ModelDeployment {name!r} in namespace {namespace}")
        key = None
        secret = (body.get("spec") or {}).get("apiKeySecret")
        if show_key and secret:
            key = kube.read_secret_value(api, namespace, secret, "api-key")
            if key is None:
                raise ConnectError(f"Secret {namespace}/{secret} has no key 'api-key'")
    return render(client, connection_from(body, model=model, key=key, base_url=base_url, local_port=local_port))
