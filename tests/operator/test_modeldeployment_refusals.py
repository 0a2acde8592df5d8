"""ModelDeployments that cannot work end with a condition naming the field and the fix, and no pod."""

from __future__ import annotations

from typing import Any

import pytest
from kubernetes import client
from modeldeployment_support import (
    artifacts_of,
    condition,
    create_job,
    create_mdep,
    mdep,
    raw_list,
    set_job_status,
)
from polling import wait_for

from glmops_dev.nodes import NODE_PROFILES

KEY = "s3cret-key-value"
JOB = {"fineTuneJob": "done"}
CASES: list[tuple[str, dict[str, Any], str, str, str]] = [
    # (name, spec, phase, Resolved reason, field named in the message)
    ("gguf-on-vllm", {"source": {**JOB, "artifact": "gguf"}, "runtime": "vllm"}, "Failed", "ArtifactRuntimeMismatch", "spec.source.artifact"),
    ("merged-on-llamacpp", {"source": {**JOB, "artifact": "merged"}}, "Failed", "ArtifactRuntimeMismatch", "spec.source.artifact"),
    ("not-exported", {"source": {"fineTuneJob": "adapter-only"}}, "Failed", "ArtifactNotProduced", "spec.source.artifact"),
    ("quant-not-made", {"source": {**JOB, "quantization": "Q6_K"}}, "Failed", "QuantizationNotProduced", "spec.source.quantization"),
    ("job-failed", {"source": {"fineTuneJob": "broken"}}, "Failed", "FineTuneJobFailed", "spec.source.fineTuneJob"),
    ("other-base", {"source": {**JOB, "artifact": "adapter"}, "runtime": "vllm", "adapters": [{"fineTuneJob": "other-base", "servedModelName": "b"}]}, "Failed", "AdapterBaseMismatch", "spec.adapters[0].fineTuneJob"),
    ("adapters-llamacpp", {"source": JOB, "adapters": [{"fineTuneJob": "done", "servedModelName": "b"}]}, "Failed", "FieldNotForRuntime", "spec.adapters"),
    ("s3-uri", {"source": {"uri": "s3://models/glm-4.7-flash", "variant": "flash"}, "runtime": "vllm"}, "Failed", "UriNotServable", "spec.source.uri"),
    ("no-variant", {"source": {"uri": "file:///models/x.gguf"}}, "Failed", "VariantRequired", "spec.source.variant"),
    ("context-too-long", {"source": JOB, "contextLength": 262144}, "Failed", "ContextTooLong", "spec.contextLength"),
    ("tp-eight-flash", {"source": JOB, "runtime": "vllm", "gpusPerReplica": 8}, "Failed", "TensorParallelMismatch", "spec.gpusPerReplica"),
    ("too-big-a-gpu", {"source": JOB, "gpuMemoryGiB": 300}, "Failed", "NotEnoughGpus", "spec.gpuMemoryGiB"),
    ("small-gpu", {"source": JOB, "gpusPerReplica": 1, "gpuMemoryGiB": 8}, "Failed", "GpuMemoryTooSmall", "spec.gpuMemoryGiB"),
    ("owned-flag", {"source": JOB, "extraArgs": ["--api-key", KEY]}, "Failed", "ExtraArgOwned", "spec.extraArgs[0]"),
    ("mtp-llamacpp", {"source": JOB, "speculativeDecoding": "mtp"}, "Failed", "FieldNotForRuntime", "spec.speculativeDecoding"),
    ("vllm-no-gpu", {"source": JOB, "runtime": "vllm", "gpusPerReplica": 0}, "Failed", "FieldNotForRuntime", "spec.gpusPerReplica"),
    # objects that may still appear: waited for, not refused
    ("missing-secret", {"source": JOB, "apiKeySecret": "absent"}, "Pending", "SecretNotFound", "spec.apiKeySecret"),
    ("missing-claim", {"source": {"uri": "pvc://no-such-claim/m.gguf", "variant": "flash"}}, "Pending", "PersistentVolumeClaimNotFound", "spec.source.uri"),
]


@pytest.fixture
def prepared_namespace(cluster: Any, glmops_operator: Any, namespace: str) -> str:
    """The API-key Secret and FineTuneJobs in fixed states: done, adapter-only, broken, other-base."""
    core = client.CoreV1Api(cluster.api_client())
    core.create_namespaced_secret(namespace, {"metadata": {"name": "coder-api-key"}, "stringData": {"api-key": KEY}})
    for name, kwargs in (
        ("done", {}),
        ("adapter-only", {"formats": ("adapter",)}),
        ("broken", {}),
        ("other-base", {"base": "file:///models/another-flash"}),
    ):
        create_job(cluster, namespace, name, diagnose=glmops_operator.log_tail, **kwargs)  # type: ignore[arg-type]
        phase = "Failed" if name == "broken" else "Succeeded"
        set_job_status(cluster, namespace, name, phase, artifacts_of(name, f"file:///out/{name}") if phase == "Succeeded" else None)
    return namespace


def test_bad_deployments_are_refused_with_the_field_and_no_pod(cluster: Any, glmops_operator: Any, prepared_namespace: str) -> None:
    namespace = prepared_namespace
    for name, spec, *_ in CASES:
        create_mdep(cluster, namespace, name, servedModelName="coder", **spec)

    def all_decided() -> bool:
        return all((mdep(cluster, namespace, name).get("status") or {}).get("phase") == phase for name, _, phase, *_ in CASES)

    wait_for("every bad ModelDeployment to be refused or to wait", all_decided, 120, glmops_operator.log_tail)
    problems = []
    for name, _, phase, reason, field in CASES:
        body = mdep(cluster, namespace, name)
        resolved, ready = condition(body, "Resolved"), condition(body, "Ready")
        if resolved.get("status") != "False" or resolved.get("reason") != reason or field not in resolved.get("message", ""):
            problems.append(f"{name}: {resolved}")
        if ready.get("status") != "False" or resolved.get("observedGeneration") != body["metadata"]["generation"]:
            problems.append(f"{name}: Ready {ready}")
        # (kopf keeps the spec the user wrote in status.lastHandledConfiguration: that is not ours to judge)
        written = {k: v for k, v in body["status"].items() if k != "lastHandledConfiguration"}
        assert KEY not in str(written), f"{name}: the key reached status"
    assert problems == []
    api = cluster.api_client()
    assert raw_list(client.AppsV1Api(api).list_namespaced_deployment, namespace) == []
    assert [s["metadata"]["name"] for s in raw_list(client.CoreV1Api(api).list_namespaced_service, namespace)] == []
    assert raw_list(client.CoreV1Api(api).list_namespaced_pod, namespace) == []

    def warned() -> set[str]:
        events = raw_list(client.CoreV1Api(api).list_namespaced_event, namespace)
        return {e["involvedObject"]["name"] for e in events if e.get("type") == "Warning" and e["involvedObject"]["kind"] == "ModelDeployment"}

    # kopf posts each event in the background, after the status write it tells of
    refused = {name for name, _, phase, *_ in CASES if phase == "Failed"}
    wait_for("a Warning event for every refused deployment", lambda: refused <= warned(), 30, glmops_operator.log_tail)
    assert not [e for e in raw_list(client.CoreV1Api(api).list_namespaced_event, namespace) if KEY in str(e)]
    assert len(NODE_PROFILES) > 1  # the refusals of placement were judged against real nodes


def test_a_deployment_waits_for_its_job_and_wakes_when_it_succeeds(cluster: Any, glmops_operator: Any, namespace: str) -> None:
    create_mdep(cluster, namespace, "later", servedModelName="later", source={"fineTuneJob": "later-job"}, placement={"nodeSelector": {"glmops.io/test-pool": "none"}})

    def resolved_reason() -> str:
        return str(condition(mdep(cluster, namespace, "later"), "Resolved").get("reason", ""))

    wait_for("the deployment to wait for a job that does not exist", lambda: resolved_reason() == "FineTuneJobNotFound", 60, glmops_operator.log_tail)
    assert mdep(cluster, namespace, "later")["status"]["phase"] == "Pending"
    # A job the operator itself keeps waiting (Pending): a status forged by the test would be
    # re-admitted, and overwritten, by the operator.
    create_job(cluster, namespace, "later-job", diagnose=glmops_operator.log_tail, waiting_for_secret="later-token")
    wait_for("the deployment to wait for the pending job", lambda: resolved_reason() == "FineTuneJobNotSucceeded", 60, glmops_operator.log_tail)
    body = mdep(cluster, namespace, "later")
    assert body["status"]["phase"] == "Pending" and "'later-job' is Pending" in condition(body, "Resolved")["message"]
    apps = client.AppsV1Api(cluster.api_client())
    assert raw_list(apps.list_namespaced_deployment, namespace) == []

    set_job_status(cluster, namespace, "later-job", "Succeeded", artifacts_of("later-job", f"file:///out/{namespace}/later-job"))
    wait_for("the Deployment once the job succeeded", lambda: raw_list(apps.list_namespaced_deployment, namespace), 60, glmops_operator.log_tail)
    assert resolved_reason() == "Resolved" or wait_for("Resolved", lambda: resolved_reason() == "Resolved", 30, glmops_operator.log_tail)
