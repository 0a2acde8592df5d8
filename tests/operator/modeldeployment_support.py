"""Helpers of the ModelDeployment cluster tests: FineTuneJobs in a chosen state, reading status.

A FineTuneJob whose status a test sets itself must not be touched by the FineTuneJob handlers
running in the same operator. So it is created asking for 16 GPUs per node, which the operator
refuses at once (Failed, no trainer Job); a terminal job is never handled again, and the test
then writes the status it needs (Training, Succeeded with artifacts, ...) through the status
subresource.
"""

from __future__ import annotations

import json
from typing import Any

from kubernetes import client
from polling import wait_for

GROUP, VERSION = "glmops.io", "v1alpha1"
FTJ, MDEP = "finetunejobs", "modeldeployments"
MERGE = "application/merge-patch+json"
SHA = "c0ffee" * 10 + "abcd"


def custom(cluster: Any) -> client.CustomObjectsApi:
    return client.CustomObjectsApi(cluster.api_client())


def create_job(
    cluster: Any,
    namespace: str,
    name: str,
    variant: str = "flash",
    base: str = "file:///models/glm-4.7-flash",
    formats: tuple[str, ...] = ("adapter", "merged", "gguf"),
    quantizations: tuple[str, ...] = ("Q4_K_M", "Q8_0"),
    diagnose: Any = lambda: "",
) -> None:
    """Create a FineTuneJob and wait until the operator has refused it (terminal: left alone from then on)."""
    api = custom(cluster)
    body = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "FineTuneJob",
        "metadata": {"name": name},
        "spec": {
            "model": {"variant": variant, "source": base},
            "dataset": {"source": "file:///data/agent.jsonl"},
            "resources": {"gpusPerNode": 16},
            "output": {"destination": f"file:///out/{namespace}/{name}", "formats": list(formats), "quantizations": list(quantizations)},
        },
    }
    api.create_namespaced_custom_object(GROUP, VERSION, namespace, FTJ, body)

    def refused() -> bool:
        got = api.get_namespaced_custom_object(GROUP, VERSION, namespace, FTJ, name)
        return (got.get("status") or {}).get("phase") == "Failed"

    wait_for(f"FineTuneJob {name} to be refused (terminal)", refused, 60, diagnose)


def artifacts_of(name: str, root: str, quantizations: tuple[str, ...] = ("Q4_K_M", "Q8_0"), gguf: dict[str, str] | None = None) -> dict[str, Any]:
    """status.artifacts as the export records them, under `root`; `gguf` maps a quantization to a real file."""
    gguf = gguf or {}
    return {
        "manifest": f"{root}/artifacts.json",
        "adapter": {"uri": f"{root}/adapter"},
        "merged": {"uri": f"{root}/merged"},
        "gguf": [
            {
                "quantization": q,
                "uri": gguf.get(q, f"{root}/gguf/{q}/{name}-{q}.gguf"),
                "sizeBytes": 1000 + i,
                "sha256": SHA[:-1] + str(i),
            }
            for i, q in enumerate(quantizations)
        ],
    }


def set_job_status(cluster: Any, namespace: str, name: str, phase: str, artifacts: dict[str, Any] | None = None) -> None:
    """Write a FineTuneJob's status as its operator would at `phase`."""
    conditions = {
        "Succeeded": ("True", "Completed", "training and export finished"),
        "Failed": ("False", "DataError", "data.jsonl:3: no assistant turn"),
    }.get(phase, ("Unknown", phase, f"the job is {phase}"))
    status: dict[str, Any] = {
        "phase": phase,
        "conditions": [
            {
                "type": "Succeeded",
                "status": conditions[0],
                "reason": conditions[1],
                "message": conditions[2],
                "lastTransitionTime": "2026-01-01T00:00:00Z",
            }
        ],
        "artifacts": artifacts,
    }
    custom(cluster).patch_namespaced_custom_object_status(GROUP, VERSION, namespace, FTJ, name, {"status": status})


def create_mdep(cluster: Any, namespace: str, name: str, **spec: Any) -> dict[str, Any]:
    body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "ModelDeployment", "metadata": {"name": name}, "spec": spec}
    result: dict[str, Any] = custom(cluster).create_namespaced_custom_object(GROUP, VERSION, namespace, MDEP, body)
    return result


def mdep(cluster: Any, namespace: str, name: str) -> dict[str, Any]:
    result: dict[str, Any] = custom(cluster).get_namespaced_custom_object(GROUP, VERSION, namespace, MDEP, name)
    return result


def patch_mdep(cluster: Any, namespace: str, name: str, spec: dict[str, Any]) -> None:
    custom(cluster).patch_namespaced_custom_object(GROUP, VERSION, namespace, MDEP, name, {"spec": spec}, _content_type=MERGE)


def condition(body: dict[str, Any], type_: str) -> dict[str, Any]:
    return next((c for c in (body.get("status") or {}).get("conditions") or [] if c["type"] == type_), {})


def raw_list(method: Any, namespace: str, **kwargs: Any) -> list[dict[str, Any]]:
    """A namespaced list as plain JSON (old and new servers alike)."""
    return list(json.loads(method(namespace, _preload_content=False, **kwargs).data)["items"])
