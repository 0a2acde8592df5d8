"""The operator under races and refusals, on the real control plane: conditional status writes,
API refusals that end a job, CRD checks at apply time, specs that cannot move a running job, and
the scheduler's view of the GPU-memory affinity.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import kopf
import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException
from polling import wait_for

from glmops import kube
from glmops.handlers import finetunejob as handlers
from glmops.plan.status import JobObservation
from glmops.settings import Settings
from glmops_dev.nodes import NodeProfile, create_node

GROUP, VERSION, PLURAL = "glmops.io", "v1alpha1", "finetunejobs"
MERGE = "application/merge-patch+json"
NOWHERE = {"nodeSelector": {"glmops.io/test-pool": "none"}}  # pods stay Pending: the operator alone is tested


def _ftj(name: str, **spec: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "model": {"variant": "flash", "source": "file:///models/glm-4.7-flash"},
        "dataset": {"source": "file:///data/agent.jsonl"},
        "resources": dict(NOWHERE),
        "output": {"destination": f"file:///out/{name}", "formats": ["adapter"]},
    }
    base.update(spec)
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "FineTuneJob", "metadata": {"name": name}, "spec": base}


class Jobs:
    """FineTuneJobs of one namespace, as plain JSON."""

    def __init__(self, cluster: Any, namespace: str) -> None:
        self.api = cluster.api_client()
        self.custom = client.CustomObjectsApi(self.api)
        self.namespace = namespace

    def create(self, doc: dict[str, Any]) -> dict[str, Any]:
        created: dict[str, Any] = self.custom.create_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, doc)
        return created

    def get(self, name: str) -> dict[str, Any]:
        obj: dict[str, Any] = self.custom.get_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, name)
        return obj

    def status(self, name: str) -> dict[str, Any]:
        return dict(self.get(name).get("status") or {})

    def condition(self, name: str, type_: str) -> dict[str, Any] | None:
        return next((c for c in self.status(name).get("conditions", []) if c["type"] == type_), None)

    def patch_spec(self, name: str, spec: dict[str, Any]) -> None:
        self.custom.patch_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, name, {"spec": spec}, _content_type=MERGE)

    def jobs(self) -> list[dict[str, Any]]:
        raw = client.BatchV1Api(self.api).list_namespaced_job(self.namespace, _preload_content=False).data
        return list(json.loads(raw)["items"])


# --- one writer, no lost updates ----------------------------------------------------------------


def test_a_stale_status_write_is_refused_by_the_apiserver(cluster, glmops_operator, namespace: str) -> None:
    jobs = Jobs(cluster, namespace)
    jobs.create(_ftj("stale"))
    wait_for("the trainer Job", lambda: jobs.status("stale").get("trainerJob"), 60, glmops_operator.log_tail)
    stale = jobs.get("stale")
    jobs.patch_spec("stale", {"cancel": True})
    wait_for("phase Cancelled", lambda: jobs.status("stale").get("phase") == "Cancelled", 60, glmops_operator.log_tail)
    # A writer that read before the cancel tries to record Training: the precondition refuses it.
    with pytest.raises(kube.ConflictError):
        kube.patch_custom_status(
            jobs.api, PLURAL, namespace, "stale", {"phase": "Training"}, stale["metadata"]["resourceVersion"]
        )
    assert jobs.status("stale")["phase"] == "Cancelled"


def test_a_stale_converge_rereads_and_leaves_a_cancelled_job_cancelled(cluster, glmops_operator, namespace: str, monkeypatch) -> None:
    """The interleaving that lost updates: a Job or pod event read the job, then the cancel
    landed, then the event's write arrived. Here the read is made stale on purpose, and the
    observation says the trainer runs: the write must lose and the fresh read must win."""
    jobs = Jobs(cluster, namespace)
    jobs.create(_ftj("interleaved"))
    wait_for("the trainer Job", lambda: jobs.status("interleaved").get("trainerJob"), 60, glmops_operator.log_tail)
    stale = jobs.get("interleaved")
    jobs.patch_spec("interleaved", {"cancel": True})
    wait_for("phase Cancelled", lambda: jobs.status("interleaved").get("phase") == "Cancelled", 60, glmops_operator.log_tail)
    cancelled = jobs.status("interleaved")

    reads: list[str] = []
    real_get = kube.get_custom

    def stale_first(api: client.ApiClient, plural: str, ns: str, name: str) -> dict[str, Any] | None:
        reads.append(name)
        if len(reads) == 1:
            stale_copy: dict[str, Any] = json.loads(json.dumps(stale))
            stale_copy["spec"].pop("cancel", None)
            return stale_copy  # what the event handler read before the cancel
        return real_get(api, plural, ns, name)

    conflicts: list[str] = []
    real_patch = kube.patch_custom_status

    def counting_patch(*args: Any, **kwargs: Any) -> Any:
        try:
            return real_patch(*args, **kwargs)
        except kube.ConflictError as exc:
            conflicts.append(str(exc))
            raise

    monkeypatch.setattr(kube, "get_custom", stale_first)
    monkeypatch.setattr(kube, "patch_custom_status", counting_patch)
    monkeypatch.setattr(handlers, "observe_job", lambda api, ns, job: JobObservation(pod_phase="Running", pod_name="p", node_name="n"))
    monkeypatch.setattr(handlers, "read_progress", lambda *a, **k: None)
    memo = kopf.Memo()
    memo.api, memo.settings = jobs.api, Settings()
    handlers.converge(memo, namespace, "interleaved", outputs={})  # type: ignore[arg-type]

    assert len(reads) == 2 and len(conflicts) == 1  # the stale write lost, the fresh read decided
    after = jobs.status("interleaved")
    assert after["phase"] == "Cancelled" and after["conditions"] == cancelled["conditions"]


# --- refusals that end a job, and the CRD's checks at apply time ------------------------------


@pytest.mark.parametrize(
    ("toleration", "api_words"),
    [
        ({"key": "dedicated", "operator": "Exists", "value": "ml"}, "operator"),
        ({"key": "dedicated", "operator": "Equal", "value": "ml", "effect": "NoSchedule", "tolerationSeconds": 60}, "NoExecute"),
    ],
    ids=["exists-with-value", "seconds-without-noexecute"],
)
def test_a_child_the_api_refuses_ends_the_job_failed_with_the_apis_message(
    cluster, glmops_operator, namespace: str, toleration: dict[str, Any], api_words: str
) -> None:
    # A CEL rule refuses these at apply time on current clusters; 1.20 strips CEL, so the Job's
    # own validation is what refuses them here.
    jobs = Jobs(cluster, namespace)
    jobs.create(_ftj("refused", resources={**NOWHERE, "tolerations": [toleration]}))
    wait_for("phase Failed", lambda: jobs.status("refused").get("phase") == "Failed", 60, glmops_operator.log_tail)
    succeeded = jobs.condition("refused", "Succeeded")
    assert succeeded is not None and succeeded["reason"] == "ApiRejected"
    assert "422" in succeeded["message"] and api_words in succeeded["message"] and "tolerations" in succeeded["message"]
    assert jobs.jobs() == []
    annotations = jobs.get("refused")["metadata"].get("annotations") or {}
    assert "glmops.io/reconcile" not in annotations  # no kopf retry left pending: the job ended


@pytest.mark.parametrize(
    ("resources", "words"),
    [
        ({"gpuProduct": "NVIDIA-" + "H" * 70}, "gpuProduct"),  # longer than a label value
        ({"gpuProduct": "NVIDIA H200"}, "gpuProduct"),  # a space: not a label value
        ({"nodeSelector": {"pool": "has space"}}, "nodeSelector"),
        ({"tolerations": [{"key": "bad key", "operator": "Exists"}]}, "tolerations"),
    ],
    ids=["product-too-long", "product-space", "selector-value", "toleration-key"],
)
def test_specs_no_pod_could_carry_are_refused_at_apply_time(cluster, namespace: str, resources: dict[str, Any], words: str) -> None:
    jobs = Jobs(cluster, namespace)
    with pytest.raises(ApiException) as refused:
        jobs.create(_ftj("never-stored", resources=resources))
    assert refused.value.status == 422 and words in str(refused.value.body)


# --- what a running job was created with stays --------------------------------------------------


def test_output_and_resources_cannot_move_under_a_running_trainer(cluster, glmops_operator, namespace: str) -> None:
    jobs = Jobs(cluster, namespace)
    jobs.create(_ftj("mover", output={"destination": "file:///out/first", "formats": ["adapter"]}))
    wait_for("the trainer Job", lambda: jobs.status("mover").get("trainerJob"), 60, glmops_operator.log_tail)
    jobs.patch_spec("mover", {"output": {"destination": "file:///out/second"}, "resources": {"gpusPerNode": 2}})

    def refused() -> dict[str, Any] | None:
        validated = jobs.condition("mover", "Validated")
        return validated if validated and validated["reason"] == "SpecImmutable" else None

    validated = wait_for("the change to be refused", refused, 60, glmops_operator.log_tail)
    assert "spec.output" in validated["message"] and "spec.resources" in validated["message"]
    assert jobs.status("mover")["outputDestination"] == "file:///out/first"

    # Ownership stays with the destination the trainer writes to: the old one is taken, the new one free.
    jobs.create(_ftj("takes-first", output={"destination": "file:///out/first", "formats": ["adapter"]}))
    jobs.create(_ftj("takes-second", output={"destination": "file:///out/second", "formats": ["adapter"]}))
    wait_for("takes-first to be refused", lambda: jobs.status("takes-first").get("phase") == "Failed", 60, glmops_operator.log_tail)
    first = jobs.condition("takes-first", "Succeeded")
    assert first is not None and first["reason"] == "OutputInUse" and "'mover'" in first["message"]
    wait_for("takes-second to start", lambda: jobs.status("takes-second").get("trainerJob"), 60, glmops_operator.log_tail)

    # Reverting the edit clears the refusal.
    jobs.patch_spec("mover", {"output": {"destination": "file:///out/first"}, "resources": {"gpusPerNode": None}})

    def cleared() -> bool:
        validated = jobs.condition("mover", "Validated")
        return bool(validated and validated["reason"] == "SpecValid")

    wait_for("the refusal to clear once the spec is back", cleared, 60, glmops_operator.log_tail)
    assert len([j for j in jobs.jobs() if j["metadata"]["labels"]["glmops.io/finetunejob"] == "mover"]) == 1


# --- placement on the real scheduler ------------------------------------------------------------


def test_a_node_with_exactly_the_minimum_gpu_memory_is_chosen_and_one_mib_less_is_not(cluster, glmops_operator, namespace: str) -> None:
    api = cluster.api_client()
    core = client.CoreV1Api(api)
    tag = uuid.uuid4().hex[:6]
    exact = create_node(api, NodeProfile(f"exact-{tag}", "TEST-BOUNDARY", 1, 48 * 1024, cpu_cores=16, memory_gib=128), f"boundary-exact-{tag}")
    short = create_node(api, NodeProfile(f"short-{tag}", "TEST-BOUNDARY", 1, 48 * 1024 - 1, cpu_cores=16, memory_gib=128), f"boundary-short-{tag}")
    jobs = Jobs(cluster, namespace)
    try:
        for name, node in (("on-exact", exact), ("on-short", short)):
            jobs.create(_ftj(name, resources={"gpuMemoryGiB": 48, "nodeSelector": {"kubernetes.io/hostname": node}}))

        def placed(name: str) -> dict[str, Any] | None:
            scheduled = jobs.condition(name, "Scheduled")
            return scheduled if scheduled and scheduled["status"] in ("True", "False") else None

        on_exact = wait_for("the pod on the exact node to be placed", lambda: placed("on-exact"), 90, glmops_operator.log_tail)
        assert on_exact["status"] == "True" and exact in on_exact["message"]
        on_short = wait_for("the scheduler's refusal of the short node", lambda: placed("on-short"), 90, glmops_operator.log_tail)
        assert on_short["status"] == "False" and on_short["reason"] == "Unschedulable"
    finally:
        for name in ("on-exact", "on-short"):
            jobs.patch_spec(name, {"cancel": True})
        wait_for("both jobs to end", lambda: all(jobs.status(n).get("phase") == "Cancelled" for n in ("on-exact", "on-short")), 60)
        time.sleep(1)
        for node in (exact, short):
            core.delete_node(node)


@pytest.mark.parametrize("split", [0, 0.5, 0.25])
def test_the_apiserver_accepts_every_validation_split_the_trainer_does(cluster, namespace: str, split: float) -> None:
    # Integer 0 matters: Kubernetes 1.20 compares it with a float bound truncated to an integer.
    jobs = Jobs(cluster, namespace)
    doc = _ftj(f"split-{str(split).replace('.', '-')}")
    doc["spec"]["dataset"]["validationSplit"] = split
    assert jobs.create(doc)["spec"]["dataset"]["validationSplit"] == split
