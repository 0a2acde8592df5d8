"""Multi-node FineTuneJobs on the local 1.20 control plane: one Job per node rank behind a headless
Service, all ranks placed or none holding GPUs, and a two-node flagship run trained end to end.

Everything is real but the GPU: the scheduler places each rank on a node of its own (pod
anti-affinity), the node agent runs each rank's pod in its own network namespace, and the ranks
rendezvous through rank 0's `hostname.subdomain` name, resolved by the cluster DNS.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from kubernetes import client
from operator_support import OperatorProcess, free_port
from polling import wait_for
from statedir import state_dir

from glmops_trainer.tiny.models import SMALL_CPU_OVERRIDES, build_tiny_model
from glmops_trainer.tiny.tokenizer import build_tiny_tokenizer

REPO = Path(__file__).resolve().parents[2]
DATASET = REPO / "tests" / "data" / "datasets" / "agentic_small.jsonl"
GROUP, VERSION, PLURAL = "glmops.io", "v1alpha1", "finetunejobs"
MERGE = "application/merge-patch+json"
GANG_PLACEMENT_SECONDS = 8
GANG_RETRY_SECONDS = 4


@pytest.fixture(scope="module")
def workdir() -> Iterator[Path]:
    """The tiny model and the outputs, which the pods read and write by file:// URI."""
    with state_dir("multinode") as path:
        yield path


@pytest.fixture(scope="module")
def multinode_operator(cluster, glmops_operator: OperatorProcess, workdir: Path) -> Iterator[OperatorProcess]:
    """The operator with a short placement wait (the shared one pauses meanwhile)."""
    glmops_operator.stop()
    logs = workdir / "operator-logs"
    logs.mkdir()
    op = OperatorProcess(cluster, logs, env={
        "GLMOPS_TRAINER_IMAGE": "ghcr.io/glmops/trainer:test",
        # Four CPU ranks beside the test suite: one thread each.
        "GLMOPS_EXTRA_TRAINER_ENV": "CUDA_VISIBLE_DEVICES=,HF_HUB_OFFLINE=1,OMP_NUM_THREADS=1",
        "GLMOPS_TRAINER_METRICS_PORT": str(free_port()),
        "GLMOPS_PROGRESS_POLL_SECONDS": "2",
        "GLMOPS_GANG_PLACEMENT_SECONDS": str(GANG_PLACEMENT_SECONDS),
        "GLMOPS_GANG_RETRY_SECONDS": str(GANG_RETRY_SECONDS),
    })
    op.start()
    try:
        yield op
    finally:
        op.stop()
        glmops_operator.start()


class Reads:
    """Plain-JSON reads of one namespace."""

    def __init__(self, cluster: Any, namespace: str, operator: OperatorProcess) -> None:
        self.cluster, self.namespace, self.operator = cluster, namespace, operator
        api = cluster.api_client()
        self.core, self.batch, self.custom = client.CoreV1Api(api), client.BatchV1Api(api), client.CustomObjectsApi(api)

    def status(self, name: str) -> dict[str, Any]:
        return dict(self.custom.get_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, name).get("status") or {})

    def condition(self, name: str, type_: str) -> dict[str, Any]:
        return next((c for c in self.status(name).get("conditions") or [] if c["type"] == type_), {})

    def pods(self, name: str) -> list[dict[str, Any]]:
        selector = f"glmops.io/finetunejob={name},glmops.io/component=trainer"
        raw = self.core.list_namespaced_pod(self.namespace, label_selector=selector, _preload_content=False).data
        return list(json.loads(raw)["items"])

    def jobs(self, name: str) -> list[dict[str, Any]]:
        raw = self.batch.list_namespaced_job(self.namespace, label_selector=f"glmops.io/finetunejob={name}", _preload_content=False).data
        return list(json.loads(raw)["items"])

    def services(self) -> list[str]:
        return [s.metadata.name for s in self.core.list_namespaced_service(self.namespace).items]

    def diagnostics(self, name: str) -> str:
        pods = self.cluster.kubectl("get", "pods,jobs", "-n", self.namespace, "-o", "wide", check=False).stdout
        logs = self.cluster.kubectl("logs", "-n", self.namespace, "-l", f"glmops.io/finetunejob={name}", "--tail", "25", "--prefix", check=False)
        return f"{pods}\n{logs.stdout[-6000:]}{logs.stderr}\n{json.dumps(self.status(name), indent=1)}\n{self.operator.log_tail(40)}"


def _ftj(name: str, spec: dict[str, Any]) -> str:
    return json.dumps({"apiVersion": f"{GROUP}/{VERSION}", "kind": "FineTuneJob", "metadata": {"name": name}, "spec": spec})


def test_two_ranks_with_one_fitting_node_never_leave_a_rank_holding_it(
    cluster, node_agent, multinode_operator: OperatorProcess, namespace: str, workdir: Path
) -> None:
    """Only sim-l40sx1 is allowed: one rank is placed and starts, the other cannot be placed (each
    rank needs a node of its own). The placed rank must not keep the GPU: the attempt is withdrawn
    with a reason, placed again after a backoff, and a cancel removes every rank."""
    k = Reads(cluster, namespace, multinode_operator)
    name = "gang"
    spec = {
        "model": {"variant": "flash", "source": f"file://{workdir}/no-model"},
        "dataset": {"source": f"file://{DATASET}"},
        "resources": {"nodes": 2, "gpusPerNode": 1, "gpuMemoryGiB": 44, "nodeSelector": {"kubernetes.io/hostname": "sim-l40sx1"}},
        "output": {"destination": f"file://{workdir}/out-gang", "formats": ["adapter"]},
    }
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=_ftj(name, spec))
    diagnose = lambda: k.diagnostics(name)

    def half_placed() -> dict[str, Any] | None:
        pods = k.pods(name)
        placed = [p for p in pods if p["spec"].get("nodeName")]
        stuck = [p for p in pods if any(c.get("reason") == "Unschedulable" for c in p["status"].get("conditions") or [])]
        return placed[0] if len(placed) == 1 and stuck and placed[0]["status"].get("phase") == "Running" else None

    held = wait_for("one rank running on sim-l40sx1 and the other unschedulable", half_placed, 120, diagnose)
    assert held["spec"]["nodeName"] == "sim-l40sx1"
    assert sorted(j["metadata"]["name"] for j in k.jobs(name)) == ["gang-trainer-r0", "gang-trainer-r1"]
    assert k.status(name)["phase"] == "Pending", "no rank trains before all ranks run"

    withdrawn = wait_for(
        "the half-placed attempt to be withdrawn",
        lambda: (c := k.condition(name, "Succeeded")).get("reason") == "GangUnschedulable" and c,
        GANG_PLACEMENT_SECONDS + 60,
        diagnose,
    )
    assert "rank" in withdrawn["message"] and "sim-l40sx1" in withdrawn["message"] and "hold no GPU" in withdrawn["message"]
    assert k.condition(name, "Scheduled")["reason"] == "GangUnschedulable"
    assert k.status(name)["placementRetries"] >= 1

    # The rank that held the node is stopped and gone, not left waiting at the rendezvous.
    held_uid = held["metadata"]["uid"]
    wait_for("the placed rank's pod to be removed", lambda: all(p["metadata"]["uid"] != held_uid for p in k.pods(name)), 90, diagnose)

    # After the backoff all ranks are placed again (and, the node still being one, withdrawn again).
    wait_for("a second attempt, withdrawn too", lambda: int(k.status(name).get("placementRetries") or 0) >= 2, 180, diagnose)
    assert k.status(name)["phase"] == "Pending"
    events = [e.reason for e in k.core.list_namespaced_event(namespace, field_selector=f"involvedObject.name={name}").items]
    assert "GangUnschedulable" in events

    k.custom.patch_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name, {"spec": {"cancel": True}}, _content_type=MERGE)
    wait_for("phase Cancelled", lambda: k.status(name).get("phase") == "Cancelled", 60, diagnose)
    wait_for("every rank's Job, pod and the Service to go", lambda: not k.jobs(name) and not k.pods(name) and not k.services(), 90, diagnose)


@pytest.mark.slow
def test_a_two_node_flagship_run_trains_through_the_operator_and_exports_its_adapter(
    cluster, node_agent, multinode_operator: OperatorProcess, namespace: str, workdir: Path
) -> None:
    """nodes: 2 x gpusPerNode: 2 of a tiny GLM-4.7 (glm4_moe): four CPU ranks under FSDP2, two per
    pod, each pod on its own simulated H100/H200 node; rank 1's torchrun reaches rank 0 by its
    Service name. Training -> Exporting -> Succeeded, the adapter exported."""
    tokenizer = build_tiny_tokenizer(workdir / "tokenizer")
    model = build_tiny_model("glm4_moe", workdir / "model", tokenizer, dtype=torch.float32, **SMALL_CPU_OVERRIDES["glm4_moe"])
    out = workdir / "out-flagship"
    k = Reads(cluster, namespace, multinode_operator)
    name = "two-nodes"
    spec = {
        "model": {"variant": "flagship", "source": f"file://{model}"},
        "dataset": {"source": f"file://{DATASET}", "validationSplit": 0},
        "training": {"maxSteps": 3, "sequenceLength": 512, "gradientAccumulationSteps": 1, "checkpointEvery": 2,
                     "learningRate": 5e-3, "lora": {"rank": 8}},
        "resources": {"nodes": 2, "gpusPerNode": 2},
        "output": {"destination": f"file://{out}", "formats": ["adapter"]},
    }  # fmt: skip
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=_ftj(name, spec))
    diagnose = lambda: k.diagnostics(name)

    def training() -> dict[str, Any] | None:
        status = k.status(name)
        return status if status.get("phase") in ("Training", "Exporting", "Succeeded") else None

    wait_for("both ranks placed and training", training, 600, diagnose)
    scheduled = k.condition(name, "Scheduled")
    assert scheduled["status"] == "True" and scheduled["message"].startswith("all 2 ranks are placed"), scheduled
    pods = {p["metadata"]["labels"]["glmops.io/node-rank"]: p for p in k.pods(name)}
    assert set(pods) == {"0", "1"}
    assert pods["0"]["spec"]["nodeName"] != pods["1"]["spec"]["nodeName"], "each rank on a node of its own"
    assert pods["0"]["status"]["podIP"] != pods["1"]["status"]["podIP"], "each rank in its own network namespace"
    command = pods["1"]["spec"]["containers"][0]["command"]
    assert "--master-addr=two-nodes-trainer-r0.two-nodes-trainer" in command

    done = wait_for("phase Succeeded", lambda: k.status(name).get("phase") in ("Succeeded", "Failed", "Cancelled") and k.status(name), 1500, diagnose)
    assert done["phase"] == "Succeeded", diagnose()
    assert done["plan"]["nodes"] == 2 and done["plan"]["gpusPerNode"] == 2
    assert done["progress"]["step"] == 3 and done["progress"]["totalSteps"] == 3
    assert done["artifacts"]["adapter"]["uri"] == f"file://{out}/adapter"
    adapter = out / "adapter"
    assert (adapter / "adapter_model.safetensors").stat().st_size > 0 and (adapter / "adapter_config.json").exists()
    succeeded = {p["metadata"]["labels"]["glmops.io/node-rank"]: p for p in k.pods(name) if p["status"]["phase"] == "Succeeded"}
    assert set(succeeded) == {"0", "1"}, "the run needed both ranks, not rank 0 alone"
    # One run of four processes over both pods, not two runs of two.
    log = cluster.kubectl("logs", "-n", namespace, succeeded["0"]["metadata"]["name"]).stdout
    assert "model placement: fsdp over 4 process(es)" in log, log[-3000:]
