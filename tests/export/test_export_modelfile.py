"""The Ollama Modelfile beside each GGUF: GLM-4.7's chat format in Go template syntax.

Ollama renders prompts with Go's text/template; these tests render the TEMPLATE with Go itself
(the same engine, fed Ollama's message fields) and compare with transformers' rendering of the
official Jinja template.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from transformers import AutoTokenizer

from glmops_trainer.export.modelfile import OLLAMA_TEMPLATE, STOP_TOKENS, render_modelfile

# Ollama's template values for a chat request (api.Message fields, .Tools, .Think/.IsThinkSet) and
# its `json` template function.
_GO_RENDERER = r"""
package main

import (
	"encoding/json"
	"fmt"
	"os"
	"text/template"
)

type Function struct {
	Name      string         `json:"name"`
	Arguments map[string]any `json:"arguments"`
}
type ToolCall struct {
	Function Function `json:"function"`
}
type Message struct {
	Role      string     `json:"role"`
	Content   string     `json:"content"`
	Thinking  string     `json:"thinking"`
	ToolCalls []ToolCall `json:"tool_calls"`
}
type Values struct {
	Messages   []Message `json:"messages"`
	Tools      []any     `json:"tools"`
	Think      bool      `json:"think"`
	IsThinkSet bool      `json:"is_think_set"`
}

func main() {
	text, err := os.ReadFile(os.Args[1])
	if err != nil {
		panic(err)
	}
	var values Values
	if err := json.NewDecoder(os.Stdin).Decode(&values); err != nil {
		panic(err)
	}
	funcs := template.FuncMap{"json": func(v any) string { b, _ := json.Marshal(v); return string(b) }}
	tmpl, err := template.New("modelfile").Funcs(funcs).Parse(string(text))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(3)
	}
	if err := tmpl.Execute(os.Stdout, values); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(4)
	}
}
"""

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather of a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}

CHAT = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "Hello"},
    {"role": "assistant", "content": "Hi.", "reasoning_content": "Greet back."},
    {"role": "user", "content": "What is 2+2?"},
]
AGENTIC = [
    {"role": "user", "content": "Weather in Paris, for two days?"},
    {
        "role": "assistant",
        "content": "Checking.",
        "reasoning_content": "I need the tool.",
        "tool_calls": [
            {
                "type": "function",
                "function": {"name": "get_weather", "arguments": {"city": "Paris", "days": 2}},
            }
        ],
    },
    {"role": "tool", "content": "sunny"},
    {"role": "tool", "content": "21C"},
    {"role": "assistant", "content": "Sunny, 21C.", "reasoning_content": "Summarise both results."},
]


@pytest.fixture(scope="module")
def go_renderer(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if shutil.which("go") is None:
        pytest.skip(
            "Go is not installed (Debian: apt-get install golang-go); Ollama templates are Go templates"
        )
    folder = tmp_path_factory.mktemp("go-renderer")
    (folder / "main.go").write_text(_GO_RENDERER)
    (folder / "modelfile.tmpl").write_text(OLLAMA_TEMPLATE)
    env = {**os.environ, "GOCACHE": str(folder / "cache"), "GOFLAGS": "", "GO111MODULE": "off"}
    subprocess.run(
        ["go", "build", "-o", str(folder / "render"), "main.go"],
        cwd=folder,
        env=env,
        check=True,
        capture_output=True,
        timeout=600,
    )
    return folder


def _go_render(
    renderer: Path, messages: list[dict[str, Any]], tools: list[Any] | None = None, think: bool | None = None
) -> str:
    ollama_messages = [
        {
            "role": m["role"],
            "content": m["content"],
            "thinking": m.get("reasoning_content", ""),
            "tool_calls": [{"function": c["function"]} for c in m.get("tool_calls", [])],
        }
        for m in messages
    ]
    values = {
        "messages": ollama_messages,
        "tools": tools or [],
        "think": bool(think),
        "is_think_set": think is not None,
    }
    completed = subprocess.run(
        [str(renderer / "render"), str(renderer / "modelfile.tmpl")],
        input=json.dumps(values),
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert completed.returncode == 0, completed.stderr
    return completed.stdout


@pytest.mark.parametrize(
    "messages", [CHAT, AGENTIC[:3], AGENTIC[:4]], ids=["chat", "tool-call", "tool-results"]
)
def test_go_template_renders_like_the_official_jinja_template(
    go_renderer: Path, tokenizer_dir: Path, messages: list[dict[str, Any]]
) -> None:
    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    expected = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert _go_render(go_renderer, messages) == expected


def test_go_template_switches_thinking_off_like_enable_thinking_false(
    go_renderer: Path, tokenizer_dir: Path
) -> None:
    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    expected = tokenizer.apply_chat_template(
        CHAT, tokenize=False, add_generation_prompt=True, enable_thinking=False
    )
    assert expected.endswith("<|assistant|></think>")
    assert _go_render(go_renderer, CHAT, think=False) == expected


def test_go_template_lists_tools_like_the_jinja_template(go_renderer: Path, tokenizer_dir: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    expected = tokenizer.apply_chat_template(
        AGENTIC[:1], tools=[WEATHER_TOOL], tokenize=False, add_generation_prompt=True
    )
    rendered = _go_render(go_renderer, AGENTIC[:1], tools=[WEATHER_TOOL])
    # Go's json has no spaces after ',' and ':'; the schema lines must carry the same JSON value.
    expected_lines, rendered_lines = expected.split("\n"), rendered.split("\n")
    assert len(rendered_lines) == len(expected_lines)
    for want, got in zip(expected_lines, rendered_lines, strict=True):
        if want.startswith("{"):
            assert json.loads(got) == json.loads(want)
        else:
            assert got == want


def test_modelfile_points_at_the_gguf_beside_it_and_stops_at_glm_turn_ends() -> None:
    text = render_modelfile("payments-coder-Q4_K_M.gguf", {"temperature": 0.6, "top_p": 0.95})
    lines = text.splitlines()
    assert lines[1] == "FROM ./payments-coder-Q4_K_M.gguf"
    assert [line for line in lines if line.startswith("PARAMETER stop")] == [
        f'PARAMETER stop "{token}"' for token in STOP_TOKENS
    ]
    assert "PARAMETER temperature 0.6" in lines and "PARAMETER top_p 0.95" in lines
    assert f'TEMPLATE """{OLLAMA_TEMPLATE}"""' in text
    assert '"""' not in OLLAMA_TEMPLATE  # the template cannot end the TEMPLATE block early
    assert "PARAMETER temperature 1" in render_modelfile("m.gguf", None)
    with pytest.raises(ValueError, match="bare file name"):
        render_modelfile("../m.gguf")
