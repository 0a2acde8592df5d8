"""Schema-valid but semantically wrong FineTuneJobs end Failed with the right reason, and no pod;
a FineTuneJob whose PVC or Secret does not exist yet waits for it instead."""

from __future__ import annotations

import copy
import time
from typing import Any

import pytest
from kubernetes import client
from polling import wait_for

GROUP, VERSION, PLURAL = "glmops.io", "v1alpha1", "finetunejobs"


def _ftj(name: str, **spec: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "model": {"variant": "flash", "source": "pvc://models/glm-4.7-flash"},
        "dataset": {"source": "pvc://datasets/agent.jsonl"},
        "output": {"destination": f"pvc://outputs/{name}", "formats": ["adapter"]},
    }
    for key, value in spec.items():
        base[key] = {**base.get(key, {}), **value} if isinstance(value, dict) else value
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "FineTuneJob", "metadata": {"name": name}, "spec": base}


FLAGSHIP = {"variant": "flagship", "source": "pvc://models/glm-4.7"}
CASES: list[tuple[str, dict[str, Any], str, str]] = [
    # (name, spec overrides, reason, field named in the message)
    ("gpu-mem-small", {"resources": {"gpuMemoryGiB": 16}}, "GpuMemoryTooSmall", "spec.resources.gpuMemoryGiB"),
    ("long-seq-small-gpu", {"training": {"sequenceLength": 131072}, "resources": {"gpuMemoryGiB": 48}}, "GpuMemoryTooSmall", "spec.resources.gpuMemoryGiB"),
    ("big-batch-small-gpu", {"training": {"microBatchSize": 64, "sequenceLength": 32768}, "resources": {"gpuMemoryGiB": 80}}, "GpuMemoryTooSmall", "spec.resources.gpuMemoryGiB"),
    ("flagship-lora-80g", {"model": FLAGSHIP, "training": {"method": "lora"}, "resources": {"gpuMemoryGiB": 80}}, "GpuMemoryTooSmall", "spec.resources.gpuMemoryGiB"),
    ("flagship-one-gpu", {"model": FLAGSHIP, "resources": {"gpusPerNode": 1}}, "NotEnoughGpus", "spec.resources.gpusPerNode"),
    ("flagship-two-gpus", {"model": FLAGSHIP, "resources": {"gpusPerNode": 2}}, "NotEnoughGpus", "spec.resources.gpusPerNode"),
    ("sixteen-gpus", {"resources": {"gpusPerNode": 16}}, "NotEnoughGpus", "spec.resources"),
    ("unknown-product", {"resources": {"gpuProduct": "NVIDIA-B200"}}, "NotEnoughGpus", "spec.resources"),
    ("l40s-four-gpus", {"resources": {"gpusPerNode": 4, "gpuProduct": "NVIDIA-L40S"}}, "NotEnoughGpus", "spec.resources"),
    ("no-node-has-200g", {"resources": {"gpuMemoryGiB": 200}}, "NotEnoughGpus", "spec.resources"),
    ("output-taken", {"output": {"destination": "pvc://outputs/taken"}}, "OutputInUse", "spec.output.destination"),
    ("output-taken-slash", {"output": {"destination": "pvc://outputs/taken/"}}, "OutputInUse", "spec.output.destination"),
    # Four nodes of eight >= 75 GiB GPUs: the cluster has two (each rank needs a node of its own).
    ("flagship-four-nodes", {"model": FLAGSHIP, "resources": {"nodes": 4}}, "NotEnoughGpus", "spec.resources"),
    # Kueue admits one Job at a time: several nodes through a queue need Indexed Jobs (>= 1.24).
    ("kueue-two-nodes-1-20", {"queueName": "ml-team", "resources": {"nodes": 2}}, "MultiNodeUnsupported", "spec.queueName"),
    ("gguf-without-quant", {"output": {"formats": ["adapter", "gguf"], "quantizations": []}}, "InvalidSpec", "spec.output.quantizations"),
    # A spec error is not waited out, even when a PVC is missing too.
    ("bad-and-missing-pvc", {"model": {"source": "pvc://absent/m"}, "resources": {"gpuMemoryGiB": 16}}, "GpuMemoryTooSmall", "spec.model.source"),
    ("kueue-on-1-20", {"queueName": "ml-team"}, "SuspendUnsupported", "spec.queueName"),
    ("reserved-label", {"podTemplate": {"labels": {"glmops.io/finetunejob": "x"}}}, "LabelReserved", "spec.podTemplate.labels"),
]


@pytest.fixture
def prepared_namespace(cluster, glmops_operator, namespace: str) -> str:
    """A namespace with the PVCs, a Secret and a FineTuneJob that owns `pvc://outputs/taken` (its
    trainer exists; its pod matches no node, so it stays Pending)."""
    core = client.CoreV1Api(cluster.api_client())
    for claim in ("models", "datasets", "outputs"):
        core.create_namespaced_persistent_volume_claim(
            namespace,
            {"metadata": {"name": claim}, "spec": {"accessModes": ["ReadWriteMany"], "resources": {"requests": {"storage": "1Gi"}}}},
        )
    core.create_namespaced_secret(namespace, {"metadata": {"name": "hf-token"}, "stringData": {"HF_TOKEN": "hf_secret_value"}})
    owner = _ftj("taken-owner", output={"destination": "pvc://outputs/taken"}, resources={"nodeSelector": {"glmops.io/test-pool": "none"}})
    custom = client.CustomObjectsApi(cluster.api_client())
    custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, owner)

    def owns() -> bool:
        return bool((custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "taken-owner").get("status") or {}).get("trainerJob"))

    wait_for("the owner of pvc://outputs/taken to start", owns, 60, glmops_operator.log_tail)
    return namespace


def test_bad_inputs_fail_with_the_right_reason_and_no_pod(cluster, glmops_operator, prepared_namespace: str) -> None:
    api = cluster.api_client()
    custom, batch, core = client.CustomObjectsApi(api), client.BatchV1Api(api), client.CoreV1Api(api)
    for name, overrides, _, _ in CASES:
        custom.create_namespaced_custom_object(GROUP, VERSION, prepared_namespace, PLURAL, _ftj(name, **copy.deepcopy(overrides)))

    def all_failed() -> bool:
        items = custom.list_namespaced_custom_object(GROUP, VERSION, prepared_namespace, PLURAL)["items"]
        phases = {i["metadata"]["name"]: i.get("status", {}).get("phase") for i in items}
        return all(phases.get(name) == "Failed" for name, *_ in CASES)

    wait_for("every bad FineTuneJob to fail", all_failed, 120, glmops_operator.log_tail)
    problems = []
    for name, _, reason, field in CASES:
        obj = custom.get_namespaced_custom_object(GROUP, VERSION, prepared_namespace, PLURAL, name)
        succeeded = next(c for c in obj["status"]["conditions"] if c["type"] == "Succeeded")
        if succeeded["status"] != "False" or succeeded["reason"] != reason or field not in succeeded["message"]:
            problems.append(f"{name}: {succeeded['reason']}: {succeeded['message']}")
        assert succeeded["observedGeneration"] == obj["metadata"]["generation"]
        assert "hf_secret_value" not in str(obj)
    assert problems == []
    # Only the owner of pvc://outputs/taken runs: no bad job got a Job or a pod.
    assert [j.metadata.name for j in batch.list_namespaced_job(prepared_namespace).items] == ["taken-owner-trainer"]
    assert all(p.metadata.labels["glmops.io/finetunejob"] == "taken-owner" for p in core.list_namespaced_pod(prepared_namespace).items)
    # Each Warning event follows the status write it tells of.
    def warned() -> set[str]:
        return {e.involved_object.name for e in core.list_namespaced_event(prepared_namespace).items if e.type == "Warning"}

    wait_for("a Warning event for every bad job", lambda: {name for name, *_ in CASES} <= warned(), 30, glmops_operator.log_tail)
    # A job refused before it wrote anything claims no output: a corrected job may use it.
    custom.create_namespaced_custom_object(GROUP, VERSION, prepared_namespace, PLURAL, _ftj(
        "after-refused", output={"destination": "pvc://outputs/gpu-mem-small"}, resources={"nodeSelector": {"glmops.io/test-pool": "none"}}))
    wait_for("the corrected job to start", lambda: (custom.get_namespaced_custom_object(
        GROUP, VERSION, prepared_namespace, PLURAL, "after-refused").get("status") or {}).get("trainerJob"), 60, glmops_operator.log_tail)


WAITING: list[tuple[str, dict[str, Any], str, str]] = [
    ("missing-secret", {"model": {"credentialsSecret": "late-token"}}, "SecretNotFound", "'late-token'"),
    ("missing-model-pvc", {"model": {"source": "pvc://late-models/glm"}}, "PersistentVolumeClaimNotFound", "'late-models'"),
    ("missing-data-pvc", {"dataset": {"source": "pvc://late-data/a.jsonl"}}, "PersistentVolumeClaimNotFound", "'late-data'"),
    ("missing-output-pvc", {"output": {"destination": "pvc://late-out/x"}}, "PersistentVolumeClaimNotFound", "'late-out'"),
]


def test_a_job_applied_before_its_pvc_and_secret_waits_and_then_runs(cluster, glmops_operator, prepared_namespace: str) -> None:
    """GitOps applies objects in any order: the job waits (Pending, Validated=False naming the
    object), and goes on by itself once the object exists."""
    api = cluster.api_client()
    custom, core = client.CustomObjectsApi(api), client.CoreV1Api(api)
    for name, overrides, _, _ in WAITING:
        overrides = {**copy.deepcopy(overrides), "resources": {"nodeSelector": {"glmops.io/test-pool": "none"}}}
        custom.create_namespaced_custom_object(GROUP, VERSION, prepared_namespace, PLURAL, _ftj(name, **overrides))

    def status(name: str) -> dict[str, Any]:
        return dict(custom.get_namespaced_custom_object(GROUP, VERSION, prepared_namespace, PLURAL, name).get("status") or {})

    def all_waiting() -> bool:
        return all(
            any(c["type"] == "Validated" and c["status"] == "False" and c["reason"] == reason for c in status(n).get("conditions", []))
            for n, _, reason, _ in WAITING
        )

    wait_for("every job to wait for its missing object", all_waiting, 120, glmops_operator.log_tail)
    for name, _, reason, missing in WAITING:
        current = status(name)
        validated = next(c for c in current["conditions"] if c["type"] == "Validated")
        assert current["phase"] == "Pending" and missing in validated["message"] and "trainerJob" not in current
    time.sleep(5)  # still waiting, not failed, after a few backoff rounds
    assert {status(n)["phase"] for n, *_ in WAITING} == {"Pending"}

    for claim in ("late-models", "late-data", "late-out"):
        core.create_namespaced_persistent_volume_claim(
            prepared_namespace,
            {"metadata": {"name": claim}, "spec": {"accessModes": ["ReadWriteMany"], "resources": {"requests": {"storage": "1Gi"}}}},
        )
    core.create_namespaced_secret(prepared_namespace, {"metadata": {"name": "late-token"}, "stringData": {"HF_TOKEN": "hf_late_value"}})

    def all_admitted() -> bool:
        return all(status(n).get("trainerJob") for n, *_ in WAITING)

    wait_for("every job to go on once its object exists", all_admitted, 120, glmops_operator.log_tail)
    for name, *_ in WAITING:
        validated = next(c for c in status(name)["conditions"] if c["type"] == "Validated")
        assert (validated["status"], validated["reason"]) == ("True", "SpecValid")
        assert "hf_late_value" not in str(status(name))
