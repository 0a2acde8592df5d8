"""A trained adapter beside its base model in vLLM: what the CPU build can and cannot do.

The project's adapters put LoRA on the attention projections and, through peft
`target_parameters`, on the fused routed experts (`mlp.experts.gate_up_proj` / `down_proj`, 3-D
tensors). vLLM holds the GLM-4.7 experts per expert (2-D), so it loads such an adapter only with
`--enable-mixed-moe-lora-format` and `is_3d_lora_weight: true` in the JSON form of
`--lora-modules`; with those it validates and loads the adapter at start-up and lists it under its
own name. That is checked here.

Generating with it is not: on a MoE model, `--enable-lora` makes vLLM run every expert layer (of the
base model too) through its Triton fused-MoE LoRA kernels, and the CPU build has no Triton backend,
so the first request kills the engine ("module 'triton.language' has no attribute 'float32'"),
whatever the adapter targets. On CPU, serve merged weights; LoRA serving needs a GPU.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from openai import OpenAI
from tinyserve import TaughtModel
from vllmserver import CPU_FLAGS, GLM_FLAGS, VllmServer

# Teaching the model and loading it into vLLM take minutes on a busy two-core machine.
pytestmark = [pytest.mark.slow, pytest.mark.vllm, pytest.mark.timeout(2400)]


def test_the_trained_adapter_loads_beside_its_base_under_its_own_name(
    vllm_python: Path, taught_flagship: TaughtModel, tmp_path: Path
) -> None:
    lora_module = {"name": "glm-tiny-payments", "path": str(taught_flagship.adapter_dir), "is_3d_lora_weight": True}
    args = [
        "--model", str(taught_flagship.base_dir), "--served-model-name", "glm-tiny", *GLM_FLAGS, *CPU_FLAGS,
        "--enable-lora", "--enable-mixed-moe-lora-format", "--max-lora-rank", str(taught_flagship.lora_rank),
        "--lora-modules", json.dumps(lora_module),
    ]  # fmt: skip
    server = VllmServer.start(vllm_python, args, tmp_path / "server.log")
    try:
        models = {model.id: model for model in OpenAI(base_url=f"{server.url}/v1", api_key="unused").models.list()}
        assert set(models) == {"glm-tiny", "glm-tiny-payments"}
        adapter = models["glm-tiny-payments"].model_dump()
        assert adapter["root"] == str(taught_flagship.adapter_dir)
        assert adapter["parent"] == "glm-tiny"
        assert "Loaded new LoRA adapter: name 'glm-tiny-payments'" in server.log_text()
    finally:
        server.stop()
