"""`kubectl apply` a Flash FineTuneJob on the local control plane and watch it train, export and succeed.

Everything is real but the GPU: the apiserver, scheduler and Job controller, the operator as a
process, the node agent running the pods as local processes, the trainer training a tiny
Flash-architecture model with QLoRA and serving its progress, and the export Job writing adapter,
merged weights and GGUF on CPU after the training pod has ended.

The trainer pods here also run a `sitecustomize` (through PYTHONPATH, keyed by the job's name):
for `spoof-*` jobs it prints lines carrying the old progress marker (a final event at step
999999) and, after training, 10,000 lines of noise; for `crash-*` jobs the process exits 1 at once.
The operator must not care: it never reads the log.
"""

from __future__ import annotations

import json
import os
import signal
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from operator_support import OperatorProcess, free_port
from polling import wait_for
from statedir import state_dir, tiny_flash_model

REPO = Path(__file__).resolve().parents[2]
DATASET = REPO / "tests" / "data" / "datasets" / "agentic_small.jsonl"
GROUP, VERSION, PLURAL = "glmops.io", "v1alpha1", "finetunejobs"
MERGE = "application/merge-patch+json"
FAKE_FINAL = 'GLMOPS_PROGRESS {"v":1,"step":999999,"totalSteps":1,"loss":0.0,"kind":"final","time":1}'

pytestmark = pytest.mark.slow

SITECUSTOMIZE = f'''
"""Test-only start-up hook of the trainer pods (see tests/operator/test_finetunejob_e2e.py)."""
import atexit
import os
import sys

_job = os.environ.get("GLMOPS_JOB", "")
if _job.startswith("crash-"):
    os._exit(1)
if _job.startswith("spoof-") and "export" not in " ".join(sys.argv):
    print({FAKE_FINAL!r}, flush=True)

    def _flood() -> None:
        for i in range(10_000):
            print(f"merge shard {{i}}: " + "x" * 40)
        print({FAKE_FINAL!r}, flush=True)

    atexit.register(_flood)
'''


@pytest.fixture(scope="module")
def workdir() -> Iterator[Path]:
    """A folder for the tiny model and the outputs, which the pods read and write by file:// URI."""
    with state_dir("e2e") as path:
        yield path


@pytest.fixture(scope="module")
def flash_model(workdir: Path) -> Path:
    return tiny_flash_model(workdir)


@pytest.fixture(scope="module")
def e2e_operator(cluster, glmops_operator: OperatorProcess, workdir: Path) -> Iterator[OperatorProcess]:
    """The operator with the start-up hook above in its trainer pods (the shared one pauses meanwhile)."""
    site = workdir / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(textwrap.dedent(SITECUSTOMIZE))
    glmops_operator.stop()
    op = OperatorProcess(cluster, workdir / "operator-logs", env={
        "GLMOPS_TRAINER_IMAGE": "ghcr.io/glmops/trainer:test",
        "GLMOPS_EXTRA_TRAINER_ENV": f"CUDA_VISIBLE_DEVICES=,HF_HUB_OFFLINE=1,OMP_NUM_THREADS=2,PYTHONPATH={site}",
        "GLMOPS_TRAINER_METRICS_PORT": str(free_port()),
        "GLMOPS_PROGRESS_POLL_SECONDS": "2",
    })
    (workdir / "operator-logs").mkdir()
    op.start()
    try:
        yield op
    finally:
        op.stop()
        glmops_operator.start()


def _ftj(name: str, model: Path, out: Path, max_steps: int, formats: list[str], **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "FineTuneJob",
        "metadata": {"name": name},
        "spec": {
            "model": {"variant": "flash", "source": f"file://{model}"},
            "dataset": {"source": f"file://{DATASET}", "validationSplit": 0},
            "training": {
                "maxSteps": max_steps,
                "learningRate": 5e-3,
                "sequenceLength": 1024,
                "gradientAccumulationSteps": 1,
                "checkpointEvery": 5,
                "lora": {"rank": 8},
            },
            "output": {"destination": f"file://{out}", "formats": formats, "quantizations": ["Q8_0"]},
            **spec,
        },
    }


class Cluster:
    """Reads of one namespace, as plain JSON."""

    def __init__(self, cluster: Any, namespace: str) -> None:
        self.cluster = cluster
        self.api = cluster.api_client()
        self.core = client.CoreV1Api(self.api)
        self.custom = client.CustomObjectsApi(self.api)
        self.namespace = namespace

    def ftj(self, name: str) -> dict[str, Any]:
        obj: dict[str, Any] = self.custom.get_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, name)
        return obj

    def status(self, name: str) -> dict[str, Any]:
        return dict(self.ftj(name).get("status") or {})

    def pods(self, selector: str) -> list[dict[str, Any]]:
        raw = self.core.list_namespaced_pod(self.namespace, label_selector=selector, _preload_content=False).data
        return sorted(json.loads(raw)["items"], key=lambda p: p["metadata"]["creationTimestamp"])

    def job(self, name: str) -> dict[str, Any] | None:
        try:
            raw = client.BatchV1Api(self.api).read_namespaced_job(name, self.namespace, _preload_content=False).data
        except client.ApiException as exc:
            if exc.status == 404:
                return None
            raise
        return dict(json.loads(raw))

    def diagnostics(self, name: str, operator: OperatorProcess) -> str:
        pods = self.cluster.kubectl("get", "pods", "-n", self.namespace, "-o", "wide", check=False).stdout
        messages = self.cluster.kubectl("get", "pods", "-n", self.namespace, "-o", "jsonpath={..terminated.message}", check=False).stdout
        logs = self.cluster.kubectl("logs", "-n", self.namespace, "-l", f"glmops.io/finetunejob={name}", "--tail", "20", check=False)
        return f"{pods}\n{messages[-3000:]}\n{logs.stdout[-4000:]}{logs.stderr}\n{json.dumps(self.status(name), indent=1)}\n{operator.log_tail(30)}"


def _running_pid(pod: dict[str, Any]) -> int | None:
    for cs in (pod.get("status") or {}).get("containerStatuses") or []:
        if (cs.get("state") or {}).get("running") and cs.get("containerID", "").startswith("local://"):
            return int(cs["containerID"].removeprefix("local://"))
    return None


@pytest.mark.llamacpp
def test_flash_trains_then_exports_in_its_own_cpu_job_and_ignores_its_log(
    cluster, node_agent, e2e_operator: OperatorProcess, namespace: str, flash_model: Path, workdir: Path
) -> None:
    """Training -> Exporting -> Succeeded; the GPU pod has ended before the export pod starts;
    an export pod killed midway is replaced and the next one finishes; progress comes from the
    trainer's endpoint, and neither a forged marker line nor 10,000 lines after the final event
    change a thing."""
    k = Cluster(cluster, namespace)
    out = workdir / "out-success"
    name = "spoof-e2e"
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(_ftj(name, flash_model, out, 40, ["adapter", "merged", "gguf"])))

    seen: list[tuple[str, int, int, bool]] = []  # phase, progress step, total, trainer pod running

    def look() -> dict[str, Any]:
        status = k.status(name)
        trainer_running = any(
            p["status"].get("phase") == "Running" for p in k.pods(f"glmops.io/finetunejob={name},glmops.io/component=trainer")
        )
        progress = status.get("progress") or {}
        seen.append((str(status.get("phase")), int(progress.get("step", 0)), int(progress.get("totalSteps", 0)), trainer_running))
        return status

    def training_with_progress() -> bool:
        status = look()
        return status.get("phase") == "Training" and (status.get("progress") or {}).get("step", 0) > 0

    wait_for("progress read from the trainer's endpoint while it trains", training_with_progress, 420, lambda: k.diagnostics(name, e2e_operator))
    row = cluster.kubectl("get", "ftj", name, "-n", namespace, "--no-headers").stdout.split()
    assert row[1] == "Training" and row[2] == "flash"

    # The export Job appears only once training is over; kill its first pod once it has published a file.
    export_name = wait_for("the export Job", lambda: look().get("exportJob"), 600, lambda: k.diagnostics(name, e2e_operator))
    journal = out / ".export-journal.jsonl"

    def export_pid() -> int | None:
        look()
        pods = k.pods(f"glmops.io/finetunejob={name},glmops.io/component=export")
        journaled = journal.is_file() and journal.read_text().strip()
        return _running_pid(pods[0]) if len(pods) == 1 and journaled else None

    pid = wait_for("the export to publish its first file", export_pid, 300, lambda: k.diagnostics(name, e2e_operator), interval_s=0.05)
    os.killpg(pid, signal.SIGKILL)

    def succeeded() -> bool:
        return look().get("phase") == "Succeeded"

    wait_for("phase Succeeded", succeeded, 900, lambda: k.diagnostics(name, e2e_operator))

    # Phases in order; the forged marker never showed as progress or as a phase.
    phases = [p for p, *_ in seen]
    order = [p for i, p in enumerate(phases) if i == 0 or phases[i - 1] != p]
    assert [p for p in order if p in ("Training", "Exporting", "Succeeded")] == ["Training", "Exporting", "Succeeded"], order
    assert all(step <= 40 and total in (0, 40) for _, step, total, _ in seen), seen
    assert not any(running and phase in ("Exporting", "Succeeded") for phase, _, _, running in seen), seen

    # The GPU pod ended before the export pod started; the export asked for no GPU.
    trainer_pods = k.pods(f"glmops.io/finetunejob={name},glmops.io/component=trainer")
    export_pods = k.pods(f"glmops.io/finetunejob={name},glmops.io/component=export")
    assert len(trainer_pods) == 1 and trainer_pods[0]["status"]["phase"] == "Succeeded"
    trainer_finished = trainer_pods[0]["status"]["containerStatuses"][0]["state"]["terminated"]["finishedAt"]
    assert len(export_pods) == 2, "the killed export pod was not replaced"
    assert all(p["status"]["startTime"] >= trainer_finished for p in export_pods)
    assert all("nvidia.com/gpu" not in json.dumps(p["spec"]["containers"][0]["resources"]) for p in export_pods)
    export_job = k.job(export_name)
    assert export_job is not None and export_job["status"].get("failed") == 1 and export_job["status"].get("succeeded") == 1

    # Artifacts, from the trainer's and the export's results.
    status = k.status(name)
    assert status["progress"]["percent"] == 100 and status["progress"]["totalSteps"] == 40
    artifacts = status["artifacts"]
    assert artifacts["adapter"]["uri"] == f"file://{out}/adapter" and artifacts["merged"]["uri"] == f"file://{out}/merged"
    assert artifacts["manifest"] == f"file://{out}/artifacts.json"
    assert artifacts["merged"]["mtpLayers"] == 0 and artifacts["merged"]["sizeBytes"] > 0  # the tiny Flash has no MTP layer
    assert [g["quantization"] for g in artifacts["gguf"]] == ["Q8_0"]
    gguf = Path(artifacts["gguf"][0]["uri"].removeprefix("file://"))
    assert gguf.is_file() and gguf.stat().st_size == artifacts["gguf"][0]["sizeBytes"]
    # The operator posts an event after the status write that it tells of.
    wait_for(
        "the Training, Exporting and Completed events",
        lambda: {"Training", "Exporting", "Completed"} <= {e.reason for e in k.core.list_namespaced_event(namespace).items},
        30,
    )

    # The spoof really ran: the forged final line and the flood are in the trainer's log.
    log = cluster.kubectl("logs", "-n", namespace, trainer_pods[0]["metadata"]["name"]).stdout
    assert log.count(FAKE_FINAL) == 2 and log.count("merge shard ") == 10_000


def test_a_restarted_operator_only_observes_and_deletion_needs_no_operator(
    cluster, node_agent, e2e_operator: OperatorProcess, namespace: str, flash_model: Path, workdir: Path
) -> None:
    """Restarted while the job trains, with its Secret deleted, every node cordoned and another
    job claiming its output, the operator leaves it training; deleting the job while the operator
    is down is not blocked by a finalizer, and its trainer goes with it."""
    k = Cluster(cluster, namespace)
    out = workdir / "out-observe"
    k.core.create_namespaced_secret(namespace, {"metadata": {"name": "hf-token"}, "stringData": {"HF_TOKEN": "hf_value"}})
    doc = _ftj("observe-e2e", flash_model, out, 2000, ["adapter"])
    doc["spec"]["model"]["credentialsSecret"] = "hf-token"
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(doc))

    def step() -> int:
        status = k.status("observe-e2e")
        return int((status.get("progress") or {}).get("step", 0)) if status.get("phase") == "Training" else 0

    wait_for("training with progress", step, 420, lambda: k.diagnostics("observe-e2e", e2e_operator))
    nodes = [n.metadata.name for n in k.core.list_node().items]
    e2e_operator.stop()
    try:
        k.core.delete_namespaced_secret("hf-token", namespace)
        for node in nodes:
            k.core.patch_node(node, {"spec": {"unschedulable": True}})
        rival = _ftj("claims-output", flash_model, out, 10, ["adapter"])
        k.custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, rival)
        e2e_operator.start()
        wait_for("the rival to be refused", lambda: k.status("claims-output").get("phase") == "Failed", 120, e2e_operator.log_tail)
        before = step()
        time.sleep(12)
        status = k.status("observe-e2e")
        assert status["phase"] == "Training", status
        assert step() > before, "progress stopped after the restart"
        validated = next(c for c in status["conditions"] if c["type"] == "Validated")
        assert (validated["status"], validated["reason"]) == ("True", "SpecValid")
        rival_condition = next(c for c in k.status("claims-output")["conditions"] if c["type"] == "Succeeded")
        assert rival_condition["reason"] == "OutputInUse"
        assert "finalizers" not in k.ftj("observe-e2e")["metadata"]

        # Deleted while the operator is down: nothing waits for it, the trainer goes too.
        e2e_operator.stop()
        k.custom.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "observe-e2e")

        def gone() -> bool:
            try:
                k.ftj("observe-e2e")
            except client.ApiException as exc:
                return exc.status == 404
            return False

        wait_for("the FineTuneJob to be deleted without the operator", gone, 60)
        wait_for(
            "its trainer Job and pod to be deleted",
            lambda: k.job("observe-e2e-trainer") is None
            and all(p["metadata"].get("deletionTimestamp") for p in k.pods("glmops.io/finetunejob=observe-e2e")),
            120,
        )
    finally:
        for node in nodes:
            k.core.patch_node(node, {"spec": {"unschedulable": False}})
        if e2e_operator.process is None:
            e2e_operator.start()


def test_max_retries_n_fails_after_n_plus_one_pods(cluster, node_agent, e2e_operator: OperatorProcess, namespace: str, workdir: Path) -> None:
    k = Cluster(cluster, namespace)
    doc = _ftj("crash-retries", workdir / "no-model", workdir / "out-crash", 10, ["adapter"], failurePolicy={"maxRetries": 2})
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(doc))
    wait_for("phase Failed", lambda: k.status("crash-retries").get("phase") == "Failed", 300, lambda: k.diagnostics("crash-retries", e2e_operator))
    status = k.status("crash-retries")
    succeeded = next(c for c in status["conditions"] if c["type"] == "Succeeded")
    assert succeeded["reason"] == "RetriesExhausted" and "maxRetries=2" in succeeded["message"]
    pods = k.pods("glmops.io/finetunejob=crash-retries")
    assert len(pods) == 3 and all(p["status"]["phase"] == "Failed" for p in pods)
    assert status["retries"] == 3


def test_a_killed_trainer_pod_resumes_from_its_checkpoint(
    cluster, node_agent, e2e_operator: OperatorProcess, namespace: str, flash_model: Path, workdir: Path
) -> None:
    k = Cluster(cluster, namespace)
    out = workdir / "out-resume"
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(_ftj("resume-e2e", flash_model, out, 40, ["adapter"])))

    def complete_checkpoint() -> bool:
        return any((d / "COMPLETE").exists() for d in (out / "checkpoints").glob("checkpoint-*"))

    wait_for("a complete checkpoint", complete_checkpoint, 420, e2e_operator.log_tail)
    pod = k.pods("glmops.io/finetunejob=resume-e2e,glmops.io/component=trainer")[0]
    first = pod["metadata"]["name"]
    # SIGKILL the trainer process, as an OOM kill or a node failure would: the pod fails (137).
    pid = _running_pid(pod)
    assert pid is not None
    os.killpg(pid, signal.SIGKILL)

    def second_pod() -> str | None:
        names = [p["metadata"]["name"] for p in k.pods("glmops.io/finetunejob=resume-e2e,glmops.io/component=trainer")]
        return next((n for n in names if n != first), None)

    replacement = wait_for("the Job controller to replace the killed pod", second_pod, 120, e2e_operator.log_tail)
    waited = cluster.kubectl("wait", "--for=condition=Succeeded", "ftj/resume-e2e", "-n", namespace, "--timeout=900s", check=False, timeout_s=960)
    assert waited.returncode == 0, k.diagnostics("resume-e2e", e2e_operator)
    log = cluster.kubectl("logs", "-n", namespace, replacement).stdout
    first_step = next(json.loads(line.split(" ", 1)[1])["step"] for line in log.splitlines() if line.startswith("GLMOPS_PROGRESS "))
    assert first_step >= 5, "the replacement pod started over instead of resuming from the checkpoint"
    assert k.status("resume-e2e")["retries"] >= 1
