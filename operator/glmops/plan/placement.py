"""Where GPU pods may run and how they are locked down: shared by training and serving. Pure.

GPU facts come from NVIDIA's GPU feature discovery labels (`nvidia.com/gpu.memory` in MiB,
`nvidia.com/gpu.count`, `nvidia.com/gpu.product`) and the `nvidia.com/gpu` resource. A pod
asks for GPUs as a resource and for GPU size and product through required node affinity, so
the real scheduler decides placement; the planner only checks up front that some node could.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from glmops.api.common import Toleration

GPU_RESOURCE = "nvidia.com/gpu"
GPU_MEMORY_LABEL = "nvidia.com/gpu.memory"  # MiB, as GPU feature discovery writes it
GPU_PRODUCT_LABEL = "nvidia.com/gpu.product"
GPU_COUNT_LABEL = "nvidia.com/gpu.count"
RUN_AS_USER = 1000


@dataclass(frozen=True)
class GpuNode:
    """What a node offers, from its GPU labels and allocatable resources."""

    name: str
    gpus: int
    gpu_memory_mib: int
    product: str = ""


def gpu_node_affinity(min_gpu_memory_mib: int, gpus: int, product: str | None) -> dict[str, Any]:
    """Required node affinity: at least `gpus` GPUs of at least `min_gpu_memory_mib` each (and the product)."""
    expressions: list[dict[str, Any]] = [
        # Gt is strict; the label is MiB.
        {"key": GPU_MEMORY_LABEL, "operator": "Gt", "values": [str(min_gpu_memory_mib - 1)]},
        {"key": GPU_COUNT_LABEL, "operator": "Gt", "values": [str(gpus - 1)]},
    ]
    if product:
        expressions.append({"key": GPU_PRODUCT_LABEL, "operator": "In", "values": [product]})
    return {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [{"matchExpressions": expressions}]}}}


def gpu_tolerations(extra: Sequence[Toleration]) -> list[dict[str, Any]]:
    """The GPU taint's toleration (GPU nodes are usually tainted) followed by the user's own."""
    return [{"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"}, *[t.to_wire() for t in extra]]


def pod_security_context() -> dict[str, Any]:
    """The restricted Pod Security Standard at pod level: a fixed non-root user, default seccomp."""
    return {
        "runAsNonRoot": True,
        "runAsUser": RUN_AS_USER,
        "runAsGroup": RUN_AS_USER,
        "fsGroup": RUN_AS_USER,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def container_security_context() -> dict[str, Any]:
    """The restricted Pod Security Standard at container level, with a read-only root filesystem."""
    return {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "capabilities": {"drop": ["ALL"]},
    }


def nodes_that_fit(nodes: Sequence[GpuNode], gpus: int, min_gpu_memory_mib: int, product: str | None) -> list[GpuNode]:
    """The nodes with `gpus` GPUs of at least `min_gpu_memory_mib` each (of `product` when given)."""
    return [
        n
        for n in nodes
        if n.gpus >= gpus and n.gpu_memory_mib >= min_gpu_memory_mib and (product is None or n.product == product)
    ]


def largest_offer(nodes: Sequence[GpuNode]) -> str:
    """The biggest GPU node, in words, for messages that say what the cluster does have."""
    gpu_nodes = [n for n in nodes if n.gpus > 0]
    if not gpu_nodes:
        return "no GPU nodes"
    best = max(gpu_nodes, key=lambda n: (n.gpu_memory_mib, n.gpus))
    return f"{best.gpus} x {best.gpu_memory_mib // 1024} GiB ({best.product or best.name})"

