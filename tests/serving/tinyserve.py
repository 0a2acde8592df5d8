"""Tiny GLM-4.7 models that have learned fixed answers, for tests that serve them.

`teach_tiny_model(root, "glm4_moe")` builds everything a serving test needs, with the project's own
code and nothing downloaded:

1. the tiny GLM tokenizer with the official chat template (`glmops_trainer.tiny.tokenizer`);
2. a random-weight base model of the real architecture (`glmops_trainer.tiny.models`; float32, and
   for the flagship architecture with its MTP layer);
3. a LoRA adapter attached exactly as training attaches it (`glmops_trainer.model.targets.apply_lora`:
   attention projections plus the routed experts through peft `target_parameters`), trained with a
   plain loop on the two `lessons()` rendered by the trainer's own renderer (`render_conversation`:
   official template, labels on the assistant turn and its stop token) until greedy decoding
   reproduces both;
4. the merged model, written by the export's streaming merge (original per-expert layout, MTP layer
   kept).

The lessons are what a client checks: a question answered with `<think>` reasoning, and, with the
weather tool offered, a GLM-4.7 tool call. The prompts are those a server renders for
`reasoning_request()` / `tool_request()` with the same template, so greedy decoding on the server
reproduces the taught completions.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

Arch = Literal["glm4_moe", "glm4_moe_lite"]
log = logging.getLogger(__name__)

SYSTEM = "You are a helpful assistant."
QUESTION = "What should I pack?"
REASONING = "The user asks what to pack; the forecast says rain in Berlin, so an umbrella is useful."
ANSWER = "Pack a light jacket for Paris and an umbrella for Berlin."
TOOL_QUESTION = "What is the weather in Paris today?"
TOOL_REASONING = "I need to look up the data first."
TOOL_NAME = "get_weather"
TOOL_ARGUMENTS = {"city": "Paris"}
WEATHER_TOOL: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": TOOL_NAME,
        "description": "Get the current weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "description": "City name"}},
            "required": ["city"],
        },
    },
}

LOSS_GOAL = 0.05
"""Mean token loss of every lesson at which training stops (then greedy decoding is checked)."""

ARCH_VARIANTS = {"glm4_moe": "flagship", "glm4_moe_lite": "flash"}

MODEL_OVERRIDES: dict[str, dict[str, Any]] = {
    # The smallest shapes that vLLM's CPU kernels accept. Flagship: head_dim 32 is the smallest
    # head size of the CPU attention backend. Flash (MLA): the CPU MLA decode kernel is compiled
    # only for a latent of kv_lora_rank 512 + rope dim 64, as in the real model.
    # initializer_range 0.1: LoRA never trains the frozen random lm_head; at 0.02 its logits are
    # too flat for a small adapter to make confident predictions.
    "glm4_moe": {
        "initializer_range": 0.1, "hidden_size": 128, "intermediate_size": 256, "moe_intermediate_size": 128,
        "num_hidden_layers": 2, "head_dim": 32,
    },
    "glm4_moe_lite": {
        "initializer_range": 0.1, "hidden_size": 128, "intermediate_size": 256, "moe_intermediate_size": 128,
        "num_hidden_layers": 2, "q_lora_rank": 64, "kv_lora_rank": 512, "qk_nope_head_dim": 32,
        "qk_rope_head_dim": 64, "v_head_dim": 32,
    },
}  # fmt: skip


def lessons() -> list[dict[str, Any]]:
    """The two taught conversations as openai-chat records (the trainer's dataset format)."""
    return [
        {
            "messages": [
                {"role": "system", "content": SYSTEM},
                {"role": "user", "content": QUESTION},
                {"role": "assistant", "reasoning_content": REASONING, "content": ANSWER},
            ]
        },
        {
            "messages": [
                {"role": "system", "content": SYSTEM},
                {"role": "user", "content": TOOL_QUESTION},
                {
                    "role": "assistant",
                    "reasoning_content": TOOL_REASONING,
                    "content": "",
                    "tool_calls": [
                        {
                            "id": "call_1",
                            "type": "function",
                            "function": {"name": TOOL_NAME, "arguments": json.dumps(TOOL_ARGUMENTS)},
                        }
                    ],
                },
            ],
            "tools": [WEATHER_TOOL],
        },
    ]


def reasoning_request() -> list[dict[str, Any]]:
    """Chat messages that prompt the first lesson (its answer comes with reasoning)."""
    return [m for m in lessons()[0]["messages"] if m["role"] != "assistant"]


def tool_request() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Chat messages and tools that prompt the second lesson (a call of get_weather)."""
    record = lessons()[1]
    return [m for m in record["messages"] if m["role"] != "assistant"], record["tools"]


@dataclass(frozen=True)
class TaughtModel:
    """A tiny model of one architecture and what was made of it; every folder loads with transformers."""

    arch: str
    tokenizer_dir: Path
    base_dir: Path
    """Random base weights (what the adapter was trained on)."""
    adapter_dir: Path
    """The peft adapter, saved the way the trainer saves it."""
    merged_dir: Path
    """Base + adapter merged by the export (per-expert layout; MTP layer kept for glm4_moe)."""
    lora_rank: int


@dataclass(frozen=True)
class Lesson:
    """One lesson as token ids; `input_ids` = prompt + completion, `labels` mark what is learned."""

    prompt_ids: list[int]
    completion_ids: list[int]
    input_ids: list[int]
    labels: list[int]


def render_lessons(tokenizer: Any) -> list[Lesson]:
    """The lessons as token ids: prompt (what a server renders), completion (through the stop token), labels."""
    from glmops_trainer.config import Thinking
    from glmops_trainer.data.conversation import SourceRef
    from glmops_trainer.data.formats import parse_openai_chat
    from glmops_trainer.data.reader import RawRecord
    from glmops_trainer.data.render import IGNORE_INDEX, render_conversation

    rendered: list[Lesson] = []
    for line, record in enumerate(lessons(), start=1):
        conversation, issues = parse_openai_chat(RawRecord(SourceRef("lessons", line), record))
        if conversation is None:
            raise ValueError(f"lesson {line}: {issues}")
        sample = render_conversation(tokenizer, conversation, Thinking.preserve)  # type: ignore[arg-type]
        first = next(i for i, label in enumerate(sample.labels) if label != IGNORE_INDEX)
        prompt_ids = list(sample.input_ids[:first])
        # What a server renders for the same request: the official template with the generation prompt.
        served = tokenizer.apply_chat_template(
            [m for m in record["messages"] if m["role"] != "assistant"],
            tools=record.get("tools"),
            add_generation_prompt=True,
            tokenize=False,
        )
        served_ids = tokenizer(served, add_special_tokens=False)["input_ids"]
        if served_ids != prompt_ids:
            raise AssertionError(
                f"lesson {line}: the training prompt is not the generation prompt a server renders:\n"
                f"{tokenizer.decode(prompt_ids)!r}\n{served!r}"
            )
        rendered.append(
            Lesson(prompt_ids, list(sample.input_ids[first:]), list(sample.input_ids), list(sample.labels))
        )
    return rendered


def greedy_completion(model: Any, prompt_ids: list[int], max_new_tokens: int) -> list[int]:
    """Greedy continuation of `prompt_ids` by a transformers model, up to and including a stop token."""
    # The generation config lists GLM-4.7's three stop ids (<|endoftext|>, <|user|>, <|observation|>).
    stops = model.generation_config.eos_token_id
    with torch.no_grad():
        out = model.generate(
            torch.tensor([prompt_ids]),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            eos_token_id=stops,
            pad_token_id=model.generation_config.pad_token_id,
        )
    return [int(t) for t in out[0, len(prompt_ids) :]]


def teach_tiny_model(
    root: Path,
    arch: Arch = "glm4_moe",
    *,
    targets: tuple[str, ...] = ("attention", "experts"),
    rank: int = 8,
    max_steps: int = 300,
    learning_rate: float = 3e-3,
    seed: int = 0,
    **model_overrides: Any,
) -> TaughtModel:
    """Build, teach and merge a tiny `arch` model under `root` (see the module docstring).

    `model_overrides` replace fields of MODEL_OVERRIDES[arch] (the config of the random base).

    Raises AssertionError when the adapter has not learned both lessons after `max_steps`, so a
    serving test never blames the server for a model that did not learn.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from glmops_trainer.config import LoraConfig, Variant
    from glmops_trainer.export.merge import merge_lora_streaming
    from glmops_trainer.model.targets import apply_lora
    from glmops_trainer.tiny.models import build_tiny_model
    from glmops_trainer.tiny.tokenizer import build_tiny_tokenizer

    tokenizer_dir = root / "tokenizer"
    base_dir, adapter_dir, merged_dir = root / "base", root / "adapter", root / "merged"
    build_tiny_tokenizer(tokenizer_dir)
    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    build_tiny_model(
        arch, base_dir, tokenizer, seed=seed, dtype=torch.float32, mtp=arch == "glm4_moe",
        **{**MODEL_OVERRIDES[arch], **model_overrides},
    )  # fmt: skip
    taught = render_lessons(tokenizer)

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(str(base_dir), dtype=torch.float32)
    lora = LoraConfig.model_validate({"rank": rank, "alpha": 2 * rank, "dropout": 0.0, "targets": list(targets)})
    peft_model = apply_lora(model, lora, Variant(ARCH_VARIANTS[arch]))
    optimizer = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=learning_rate)
    batches = [(torch.tensor([t.input_ids]), torch.tensor([t.labels])) for t in taught]
    peft_model.train()
    for step in range(max_steps):
        losses = []
        for input_ids, labels in batches:
            loss = peft_model(input_ids=input_ids, labels=labels).loss
            loss.backward()
            losses.append(loss.item())
        optimizer.step()
        optimizer.zero_grad()
        if step % 10 == 0:
            log.info("%s step %d: loss per lesson %s", arch, step, [round(loss, 4) for loss in losses])
        # A low loss on every lesson, not just greedy agreement: wide logit margins keep the
        # answer stable under a server's different (still float32) kernels.
        if max(losses) < LOSS_GOAL and _learned(peft_model, taught):
            break
    peft_model.eval()
    if not _learned(peft_model, taught):
        raise AssertionError(f"the {arch} adapter did not learn its lessons in {max_steps} steps")
    peft_model.save_pretrained(str(adapter_dir))
    merge_lora_streaming(base_dir, adapter_dir, merged_dir)
    merged = AutoModelForCausalLM.from_pretrained(str(merged_dir), dtype=torch.float32)
    if not _learned(merged, taught):
        raise AssertionError(f"the merged {arch} model does not reproduce the lessons its adapter learned")
    return TaughtModel(arch, tokenizer_dir, base_dir, adapter_dir, merged_dir, rank)


_TAUGHT: dict[str, TaughtModel] = {}


def taught_once(arch: Arch, make_root: Callable[[], Path]) -> TaughtModel:
    """`teach_tiny_model(make_root(), arch)` once per test session (process), whichever test asks first.

    The serving tests (tests/serving) and the operator's vLLM end-to-end test (tests/operator)
    share the model: teaching it takes minutes on a small CPU.
    """
    if arch not in _TAUGHT:
        _TAUGHT[arch] = teach_tiny_model(make_root(), arch)
    return _TAUGHT[arch]


def _learned(model: Any, taught: list[Lesson]) -> bool:
    was_training = model.training
    model.eval()
    try:
        return all(
            greedy_completion(model, t.prompt_ids, len(t.completion_ids) + 4) == t.completion_ids for t in taught
        )
    finally:
        model.train(was_training)
