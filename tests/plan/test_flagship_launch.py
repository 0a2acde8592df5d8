"""The flagship's launch, its loading and its memory plan describe the same run.

The planner builds the trainer's command (how many processes), the trainer decides from its process
count how to place the model (`glmops_trainer.train.model_placement`), and the memory plan in status
says what every GPU holds. For the flagship's defaults on 8x H200 they must agree: 8 processes, the
model sharded over them (FSDP2), and a per-GPU need that the GPU has.
"""

from __future__ import annotations

from typing import Any

import pytest

from glmops.api.finetunejob import FineTuneJobSpec
from glmops.plan.finetune import ClusterFacts, GpuNode, JobMeta, plan_finetune
from glmops.plan.memory import FLAGSHIP, NF4_BYTES_PER_PARAM
from glmops.settings import Settings
from glmops_trainer import train
from glmops_trainer.config import TrainerConfig

H200 = GpuNode("h200x8", gpus=8, gpu_memory_mib=143771, product="NVIDIA-H200")
FACTS = ClusterFacts(pvcs=frozenset({"models", "datasets"}), gpu_nodes=(H200,))
META = JobMeta(name="glm47-agent", namespace="research", uid="0a1b2c3d-0000-4000-8000-000000000009")
GIB = 1024**3


def _flagship_defaults() -> FineTuneJobSpec:
    return FineTuneJobSpec.model_validate(
        {
            "model": {"variant": "flagship", "source": "pvc://models/glm-4.7"},
            "dataset": {"source": "pvc://datasets/agent/train.jsonl"},
            "output": {"destination": "pvc://models/glm47-agent", "formats": ["adapter"]},
        }
    )


def _processes(command: list[str]) -> int:
    """How many trainer processes a container command starts (torchrun's nodes x processes per node)."""
    if command[0] == "python":
        return 1
    assert command[0] == "torchrun", command
    flags = dict(arg.removeprefix("--").split("=", 1) for arg in command if arg.startswith("--") and "=" in arg)
    return int(flags.get("nnodes", "1")) * int(flags["nproc-per-node"])


def _trainer_container(plan: Any) -> dict[str, Any]:
    job = next(o for o in plan.objects if o["kind"] == "Job")
    return job["spec"]["template"]["spec"]["containers"][0]  # type: ignore[no-any-return]


def test_flagship_defaults_on_8_h200_launch_load_and_plan_the_same_sharded_run(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    plan = plan_finetune(META, _flagship_defaults(), FACTS, Settings())
    assert plan.problems == ()
    container = _trainer_container(plan)
    processes = _processes(container["command"])
    # the command starts one process per GPU the pods ask for, and the plan is for that many GPUs
    assert processes == int(container["resources"]["limits"]["nvidia.com/gpu"]) * plan.placement.nodes == 8
    assert plan.memory.gpus == processes

    # the trainer, started as the command starts it, shards the model as the plan assumes
    config = TrainerConfig.model_validate(plan.trainer_config)
    monkeypatch.setenv("WORLD_SIZE", str(processes))
    assert train.model_placement(config) == plan.memory.sharding == "fsdp"

    # the plan's weights per GPU are a share of the 4-bit model, not a replica of it (~190 GB)
    groups = FLAGSHIP.parameter_groups()
    four_bit_model = sum(groups[g] for g in ("attention", "dense_mlp", "shared_experts", "experts")) * NF4_BYTES_PER_PARAM
    assert plan.memory.breakdown_gib["weights_nf4"] * GIB < 1.1 * four_bit_model / processes
    assert 250 <= plan.memory.total_gib <= 320

    # and every GPU has what the plan needs, with the headroom the pods ask for
    h200_gib = H200.gpu_memory_mib / 1024
    assert plan.memory.per_gpu_gib < plan.placement.min_gpu_memory_gib <= h200_gib


def test_a_single_process_holds_the_whole_model_and_the_plan_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    """One GPU (or the CPU of a workstation run) cannot shard: both sides fall back to a whole replica."""
    spec = _flagship_defaults().model_copy(deep=True)
    spec.resources.gpus_per_node = 1
    plan = plan_finetune(META, spec, FACTS, Settings())
    assert plan.memory.sharding == "replicate" and plan.memory.per_gpu_gib > 190  # and the planner refuses it
    assert any(p.field == "spec.resources.gpusPerNode" for p in plan.problems)
    monkeypatch.setenv("WORLD_SIZE", "1")
    config = TrainerConfig.model_validate(plan_finetune(META, _flagship_defaults(), FACTS, Settings()).trainer_config)
    assert train.model_placement(config) == "replicate"


def test_flash_on_several_gpus_keeps_one_replica_per_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    spec = _flagship_defaults().model_copy(deep=True)
    spec.model.variant = spec.model.variant.__class__("flash")
    spec.resources.gpus_per_node = 2
    plan = plan_finetune(META, spec, FACTS, Settings())
    container = _trainer_container(plan)
    monkeypatch.setenv("WORLD_SIZE", str(_processes(container["command"])))
    config = TrainerConfig.model_validate(plan.trainer_config)
    assert train.model_placement(config) == plan.memory.sharding == "replicate"
    assert plan.memory.total_gib == pytest.approx(2 * plan.memory.per_gpu_gib)


def test_the_pod_has_the_host_memory_the_plan_moves_activations_to() -> None:
    """Under FSDP each rank keeps its checkpointed layer inputs in host memory; the pod's memory limit must hold
    them with room for the process itself (8 GiB per rank: interpreter, CUDA host state, the loader's tensor)."""
    plan = plan_finetune(META, _flagship_defaults(), FACTS, Settings())
    limit = _trainer_container(plan)["resources"]["limits"]["memory"]
    assert limit.endswith("Gi")
    per_rank_gib = int(limit.removesuffix("Gi")) / plan.placement.gpus_per_node
    assert plan.memory.host_offload_gib_per_gpu > 0
    assert per_rank_gib >= plan.memory.host_offload_gib_per_gpu + 8
