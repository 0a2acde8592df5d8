"""A trained adapter beside its base model in vLLM, with the command line the serving planner writes.

The project's adapters put LoRA on the attention projections and, through peft
`target_parameters`, on the fused routed experts (`mlp.experts.gate_up_proj` / `down_proj`, 3-D
tensors). vLLM holds the GLM-4.7 experts per expert (2-D), so it loads such an adapter only with
`--enable-mixed-moe-lora-format` and `is_3d_lora_weight: true` in the JSON form of
`--lora-modules` (without them: "LoRA adapter 1 contains fused 3D MoE weights ... but the model uses
a 2D MoE LoRA wrapper"), and with a `--max-lora-rank` of at least the adapter's r. The planner
writes all of that from the FineTuneJob; here vLLM starts from the planner's own argv (only the
listen address and the CPU flags change), validates and loads the adapter, and lists it under its
own name.

Generating with it is not checked: on a MoE model, `--enable-lora` makes vLLM run every expert
layer (of the base model too) through its Triton fused-MoE LoRA kernels, and the CPU build has no
Triton backend, so the first request kills the engine ("module 'triton.language' has no attribute
'float32'"), whatever the adapter targets. On CPU, serve merged weights; LoRA serving needs a GPU.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from openai import OpenAI
from tinyserve import TaughtModel
from vllmserver import CPU_FLAGS, VllmServer, without_listen_address

from glmops.api.modeldeployment import ModelDeploymentSpec
from glmops.plan.serving import DeploymentMeta, ServingFacts, plan_serving
from glmops.settings import Settings

# Teaching the model and loading it into vLLM take minutes on a busy two-core machine.
pytestmark = [pytest.mark.slow, pytest.mark.vllm, pytest.mark.timeout(2400)]


def _finished_job(taught: TaughtModel) -> dict[str, Any]:
    """The FineTuneJob that trained the adapter (the taught model's targets and rank), Succeeded."""
    return {
        "apiVersion": "glmops.io/v1alpha1",
        "kind": "FineTuneJob",
        "metadata": {"name": "payments", "namespace": "ml"},
        "spec": {
            "model": {"variant": "flagship", "source": f"file://{taught.base_dir}"},
            "dataset": {"source": "file:///data/agent.jsonl"},
            "training": {"lora": {"rank": taught.lora_rank, "targets": ["attention", "experts"]}},
            "output": {"destination": "file:///out/payments", "formats": ["adapter"]},
        },
        "status": {"phase": "Succeeded", "artifacts": {"adapter": {"uri": f"file://{taught.adapter_dir}"}}},
    }


def test_the_planners_adapter_command_line_loads_the_trained_adapter(
    vllm_python: Path, taught_flagship: TaughtModel, tmp_path: Path
) -> None:
    spec = ModelDeploymentSpec.model_validate(
        {
            "source": {"fineTuneJob": "payments", "artifact": "adapter"},
            "runtime": "vllm",
            "servedModelName": "glm-tiny-payments",
            "contextLength": 1024,
            "gpusPerReplica": 1,
        }
    )
    meta = DeploymentMeta("payments", "ml", "uid-1")
    plan = plan_serving(meta, spec, ServingFacts(jobs={"payments": _finished_job(taught_flagship)}), Settings())
    assert plan.runnable, plan.problems
    deployment = next(o for o in plan.objects if o["kind"] == "Deployment")
    args = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--enable-mixed-moe-lora-format" in args and '"is_3d_lora_weight":true' in " ".join(args)

    server = VllmServer.start(vllm_python, [*without_listen_address(args), *CPU_FLAGS], tmp_path / "server.log")
    try:
        models = {model.id: model for model in OpenAI(base_url=f"{server.url}/v1", api_key="unused").models.list()}
        assert set(models) == {"glm-tiny-payments-base", "glm-tiny-payments"}
        adapter = models["glm-tiny-payments"].model_dump()
        assert adapter["root"] == str(taught_flagship.adapter_dir)
        assert adapter["parent"] == "glm-tiny-payments-base"
        assert "Loaded new LoRA adapter: name 'glm-tiny-payments'" in server.log_text()
    finally:
        server.stop()
