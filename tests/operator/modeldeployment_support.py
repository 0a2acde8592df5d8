"""Helpers of the ModelDeployment cluster tests: FineTuneJobs in a chosen state, reading status.

A FineTuneJob whose status a test sets itself must not be touched by the FineTuneJob handlers
running in the same operator. So it is created asking for 16 GPUs per node, which the operator
refuses at once (Failed, no trainer Job); a terminal job is never handled again, and the test
then writes the status it needs (Training, Succeeded with artifacts, ...) through the status
subresource.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from kubernetes import client
from polling import wait_for

GROUP, VERSION = "glmops.io", "v1alpha1"
FTJ, MDEP = "finetunejobs", "modeldeployments"
MERGE = "application/merge-patch+json"
SHA = "c0ffee" * 10 + "abcd"


def why_no_service_network(cluster: Any, operator: Any) -> str:
    """Why Services cannot carry traffic to pods here ('' when they can)."""
    nodes = client.CoreV1Api(cluster.api_client()).list_node(label_selector="glmops.io/simulated=true").items
    addresses = {a.address for n in nodes for a in n.status.addresses or [] if a.type == "InternalIP"}
    if not addresses or addresses <= {"127.0.0.1"}:
        return "the local cluster's pods share the host's network (no pod IPs, no kube-proxy): Services carry no traffic"
    if operator.extra_env.get("GLMOPS_SERVING_LISTEN_HOST") == "127.0.0.1":
        return "the test operator makes servers listen on loopback (tests/operator/conftest.py), not on the pod's address"
    return ""


def create_bound_claim(cluster: Any, namespace: str, claim: str) -> str:
    """A PersistentVolumeClaim bound at once to a PV made for it (the scheduler places no pod on an
    unbound claim, and the local cluster has no provisioner); returns the PV's name, for deletion.

    The node agent keeps the claim's files under its state folder (glmops_dev.agent.volumes.pvc_dir),
    whatever the PV says.
    """
    volume = f"{namespace}-{claim}"[:253]
    core = client.CoreV1Api(cluster.api_client())
    core.create_persistent_volume(
        {
            "metadata": {"name": volume},
            "spec": {
                "capacity": {"storage": "1Gi"},
                "accessModes": ["ReadOnlyMany"],
                "storageClassName": "",
                "hostPath": {"path": f"/unused/{claim}"},
                "claimRef": {"namespace": namespace, "name": claim},
            },
        }
    )
    core.create_namespaced_persistent_volume_claim(
        namespace,
        {
            # Bound from the start (volumeName plus the PV controller's own mark), not after its resync.
            "metadata": {"name": claim, "annotations": {"pv.kubernetes.io/bind-completed": "yes"}},
            "spec": {
                "accessModes": ["ReadOnlyMany"],
                "storageClassName": "",
                "volumeName": volume,
                "resources": {"requests": {"storage": "1Gi"}},
            },
        },
    )
    return volume


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
    waiting_for_secret: str = "",
) -> None:
    """Create a FineTuneJob and wait until the operator has refused it (terminal: left alone from
    then on) or, given `waiting_for_secret`, until it waits for that Secret (Pending: the operator
    keeps it Pending while the Secret is missing, so a test can build on that state)."""
    api = custom(cluster)
    model: dict[str, Any] = {"variant": variant, "source": base}
    # A job that fits no GPU is refused; a waiting one must fit, on a pool that has no node.
    resources: dict[str, Any] = {"gpusPerNode": 16}
    if waiting_for_secret:
        model["credentialsSecret"] = waiting_for_secret
        resources = {"nodeSelector": {"glmops.io/test-pool": "none"}}
    body = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "FineTuneJob",
        "metadata": {"name": name},
        "spec": {
            "model": model,
            "dataset": {"source": "file:///data/agent.jsonl"},
            "resources": resources,
            "output": {"destination": f"file:///out/{namespace}/{name}", "formats": list(formats), "quantizations": list(quantizations)},
        },
    }
    api.create_namespaced_custom_object(GROUP, VERSION, namespace, FTJ, body)

    def decided() -> bool:
        status = api.get_namespaced_custom_object(GROUP, VERSION, namespace, FTJ, name).get("status") or {}
        if not waiting_for_secret:
            return status.get("phase") == "Failed"
        validated = [c for c in status.get("conditions") or [] if c["type"] == "Validated"]
        return status.get("phase") == "Pending" and bool(validated) and validated[0].get("reason") == "SecretNotFound"

    wait_for(f"FineTuneJob {name} to be {'waiting for its Secret' if waiting_for_secret else 'refused (terminal)'}", decided, 60, diagnose)


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


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def build_tiny_ggufs(root: Path) -> dict[str, Path]:
    """Two tiny GLM-4.7-Flash-architecture GGUFs of different random weights (`a`, `b`), and `broken`.

    Built from the real architecture's config with the tiny GLM tokenizer and exported the way
    the export step does it: merged (with a LoRA adapter whose B is zero, so the weights stay the
    base's) into the per-expert layout llama.cpp's converter reads, then converted by it.
    """
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from glmops_trainer.export.gguf import convert_to_gguf
    from glmops_trainer.export.merge import merge_lora_streaming
    from glmops_trainer.tiny.models import build_tiny_model
    from glmops_trainer.tiny.tokenizer import build_tiny_tokenizer

    build_tiny_tokenizer(root / "tokenizer")
    tokenizer = AutoTokenizer.from_pretrained(str(root / "tokenizer"))
    found = {}
    for name, seed in (("a", 0), ("b", 1)):
        base = build_tiny_model("glm4_moe_lite", root / f"base-{name}", tokenizer, seed=seed)
        untrained = get_peft_model(
            AutoModelForCausalLM.from_pretrained(str(base)), LoraConfig(r=4, lora_alpha=8, target_modules=["o_proj"])
        )
        untrained.save_pretrained(str(root / f"adapter-{name}"))
        merge_lora_streaming(base, root / f"adapter-{name}", root / f"merged-{name}")
        found[name] = convert_to_gguf(root / f"merged-{name}", root / f"tiny-{name}-Q8_0.gguf", "q8_0")
    broken = root / "broken-Q4_K_M.gguf"
    broken.write_bytes(b"this is not a GGUF file\n" * 64)
    found["broken"] = broken
    for path in found.values():
        path.chmod(0o644)
    return found


def gguf_artifacts(ggufs: dict[str, Path], q8: str, q4: str = "broken") -> dict[str, Any]:
    """status.artifacts of a job whose Q8_0 is GGUF `q8` and Q4_K_M is `q4`, with their real sizes and sha256."""
    return {
        "gguf": [
            {"quantization": q, "uri": f"file://{ggufs[key]}", "sizeBytes": ggufs[key].stat().st_size, "sha256": sha256_of(ggufs[key])}
            for q, key in (("Q8_0", q8), ("Q4_K_M", q4))
        ]
    }
