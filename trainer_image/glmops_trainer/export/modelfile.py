"""The Ollama `Modelfile` written beside each GGUF.

Ollama renders prompts with Go's text/template, not Jinja, so GLM-4.7's chat format is restated
here in Go template syntax. It produces what the official template produces for system, user,
assistant (reasoning in `<think>…</think>` for the turns after the last user message, `</think>`
alone otherwise), tool calls (`<tool_call>name<arg_key>k</arg_key><arg_value>v</arg_value></tool_call>`)
and tool results (`<|observation|><tool_response>…</tool_response>`), and opens the next assistant
turn with `<think>` (or `</think>` when thinking is switched off). Differences that Go templates
cannot avoid: tool schemas and non-string arguments are Go's compact JSON, tool-call arguments come
in sorted key order, and assistant content is not whitespace-stripped. A test renders this template
with Go and compares it with transformers' rendering of the Jinja template.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

STOP_TOKENS = ("<|user|>", "<|observation|>", "<|endoftext|>")
"""Where a GLM-4.7 assistant turn ends (generation_config.json lists these ids as eos)."""
DEFAULT_TEMPERATURE = 1.0
DEFAULT_TOP_P = 0.95
"""Z.ai's recommended sampling for GLM-4.7 when generation_config.json names none."""

# Go templates have no arithmetic, so "is the previous message a tool result" and "the last user
# message" are tracked with variables.
OLLAMA_TEMPLATE = r"""[gMASK]<sop>
{{- if .Tools }}<|system|>
# Tools

You may call one or more functions to assist with the user query.

You are provided with function signatures within <tools></tools> XML tags:
<tools>
{{ range .Tools }}{{ json . }}
{{ end }}</tools>

For each function call, output the function name and arguments within the following XML format:
<tool_call>{function-name}<arg_key>{arg-key-1}</arg_key><arg_value>{arg-value-1}</arg_value><arg_key>{arg-key-2}</arg_key><arg_value>{arg-value-2}</arg_value>...</tool_call>
{{- end }}
{{- $lastUser := -1 }}
{{- range $i, $m := .Messages }}{{ if eq $m.Role "user" }}{{ $lastUser = $i }}{{ end }}{{ end }}
{{- $previous := "" }}
{{- range $i, $m := .Messages }}
{{- $last := eq (len (slice $.Messages $i)) 1 }}
{{- if eq $m.Role "system" }}<|system|>{{ $m.Content }}
{{- else if eq $m.Role "user" }}<|user|>{{ $m.Content }}
{{- else if eq $m.Role "assistant" }}<|assistant|>
{{- if and $m.Thinking (gt $i $lastUser) }}<think>{{ $m.Thinking }}</think>{{ else }}</think>{{ end }}
{{- $m.Content }}
{{- range $m.ToolCalls }}<tool_call>{{ .Function.Name }}
{{- range $k, $v := .Function.Arguments }}<arg_key>{{ $k }}</arg_key><arg_value>{{ if eq (printf "%T" $v) "string" }}{{ $v }}{{ else }}{{ json $v }}{{ end }}</arg_value>{{ end }}</tool_call>
{{- end }}
{{- else if eq $m.Role "tool" }}
{{- if ne $previous "tool" }}<|observation|>{{ end }}<tool_response>{{ $m.Content }}</tool_response>
{{- end }}
{{- $previous = $m.Role }}
{{- if and $last (ne $m.Role "assistant") }}<|assistant|>{{ if and $.IsThinkSet (not $.Think) }}</think>{{ else }}<think>{{ end }}
{{- end }}
{{- end }}"""
"""GLM-4.7's chat format in Ollama's Go template syntax."""


def sampling_defaults(generation_config: Mapping[str, Any] | None) -> tuple[float, float]:
    """(temperature, top_p) from the model's generation_config.json, else Z.ai's recommendation."""
    config = generation_config or {}
    temperature = config.get("temperature")
    top_p = config.get("top_p")
    return (
        float(temperature) if isinstance(temperature, (int, float)) else DEFAULT_TEMPERATURE,
        float(top_p) if isinstance(top_p, (int, float)) else DEFAULT_TOP_P,
    )


def render_modelfile(gguf_name: str, generation_config: Mapping[str, Any] | None = None) -> str:
    """The Modelfile for `gguf_name`, a GGUF in the same folder."""
    if "/" in gguf_name or '"' in gguf_name:
        raise ValueError(f"{gguf_name!r}: the Modelfile refers to a file beside it; pass a bare file name")
    temperature, top_p = sampling_defaults(generation_config)
    lines = [
        "# Ollama model definition: ollama create NAME -f Modelfile",
        f"FROM ./{gguf_name}",
        "",
        f'TEMPLATE """{OLLAMA_TEMPLATE}"""',
        "",
    ]
    lines += [f"PARAMETER stop {json.dumps(token)}" for token in STOP_TOKENS]
    lines += [f"PARAMETER temperature {temperature:g}", f"PARAMETER top_p {top_p:g}", ""]
    return "\n".join(lines)


def read_generation_config(model_dir: Path) -> dict[str, Any] | None:
    """generation_config.json of a checkpoint folder, if it has one."""
    path = model_dir / "generation_config.json"
    if not path.is_file():
        return None
    loaded: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return loaded
