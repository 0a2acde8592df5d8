"""`kubectl apply` a Flash FineTuneJob on the local control plane and watch it succeed.

Everything is real but the GPU: the apiserver, scheduler and Job controller, the operator as a
process, the node agent running the trainer pod as a local process, the trainer training a tiny
Flash-architecture model with QLoRA, and the export writing adapter, merged weights and GGUF.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from kubernetes import client
from polling import wait_for

from glmops_trainer.tiny.models import SMALL_CPU_OVERRIDES, build_tiny_model
from glmops_trainer.tiny.tokenizer import build_tiny_tokenizer

REPO = Path(__file__).resolve().parents[2]
DATASET = REPO / "tests" / "data" / "datasets" / "agentic_small.jsonl"
GROUP, VERSION, PLURAL = "glmops.io", "v1alpha1", "finetunejobs"

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def workdir() -> Iterator[Path]:
    """A folder for the tiny model and the outputs, which the trainer pod reads and writes by file:// URI."""
    path = REPO / ".state" / f"e2e-{uuid.uuid4().hex[:8]}"
    path.mkdir(parents=True)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def flash_model(workdir: Path) -> Path:
    tokenizer = build_tiny_tokenizer(workdir / "tokenizer")
    return build_tiny_model(
        "glm4_moe_lite", workdir / "model", tokenizer, dtype=torch.float32, **SMALL_CPU_OVERRIDES["glm4_moe_lite"]
    )


def _ftj(name: str, model: Path, out: Path, max_steps: int, formats: list[str]) -> dict[str, Any]:
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
        },
    }


def _get(api: client.ApiClient, namespace: str, name: str) -> dict[str, Any]:
    obj: dict[str, Any] = client.CustomObjectsApi(api).get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
    return obj


def test_flash_finetunejob_trains_exports_and_succeeds(
    cluster, node_agent, glmops_operator, namespace: str, flash_model: Path, workdir: Path
) -> None:
    api = cluster.api_client()
    out = workdir / "out-success"
    doc = _ftj("flash-e2e", flash_model, out, max_steps=40, formats=["adapter", "merged", "gguf"])
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(doc))

    def diagnostics() -> str:
        pods = cluster.kubectl("get", "pods", "-n", namespace, "-o", "wide", check=False).stdout
        pods += cluster.kubectl(
            "get", "pods", "-n", namespace, "-o", "jsonpath={..terminated.message}", check=False
        ).stdout[-3000:]
        logs = cluster.kubectl("logs", "-n", namespace, "-l", "glmops.io/finetunejob=flash-e2e", "--tail", "30", check=False)
        status = json.dumps(_get(api, namespace, "flash-e2e").get("status"), indent=1)
        return f"{pods}\n{logs.stdout}{logs.stderr}\n{status}\n{glmops_operator.log_tail(30)}"

    # Progress shows in status (and so in `kubectl get ftj`) while it runs.
    def progressing() -> dict[str, Any] | None:
        status = _get(api, namespace, "flash-e2e").get("status") or {}
        progress = status.get("progress") or {}
        if status.get("phase") in ("Training", "Exporting") and progress.get("step", 0) > 0:
            return status
        return None

    seen = wait_for("progress in status while the job runs", progressing, 300, diagnostics)
    assert seen["progress"]["totalSteps"] == 40 and seen["progress"]["loss"] is not None
    row = cluster.kubectl("get", "ftj", "flash-e2e", "-n", namespace, "--no-headers").stdout.split()
    assert row[1] in ("Training", "Exporting", "Succeeded") and row[2] == "flash"

    waited = cluster.kubectl(
        "wait", "--for=condition=Succeeded", "ftj/flash-e2e", "-n", namespace, "--timeout=600s", check=False, timeout_s=660
    )
    assert waited.returncode == 0, diagnostics()
    status = _get(api, namespace, "flash-e2e")["status"]
    assert status["phase"] == "Succeeded" and status["progress"]["percent"] == 100
    artifacts = status["artifacts"]
    assert artifacts["adapter"]["uri"] == f"file://{out}/adapter" and artifacts["merged"]["uri"] == f"file://{out}/merged"
    assert artifacts["manifest"] == f"file://{out}/artifacts.json"
    assert artifacts["merged"]["mtpLayers"] == 0 and artifacts["merged"]["sizeBytes"] > 0  # the tiny Flash has no MTP layer
    assert [g["quantization"] for g in artifacts["gguf"]] == ["Q8_0"]
    gguf = Path(artifacts["gguf"][0]["uri"].removeprefix("file://"))
    assert gguf.is_file() and gguf.stat().st_size == artifacts["gguf"][0]["sizeBytes"]
    assert (out / "artifacts.json").is_file()
    reasons = {e.reason for e in client.CoreV1Api(api).list_namespaced_event(namespace).items}
    assert {"Training", "Completed"} <= reasons


def test_a_killed_trainer_pod_resumes_from_its_checkpoint(
    cluster, node_agent, glmops_operator, namespace: str, flash_model: Path, workdir: Path
) -> None:
    api = cluster.api_client()
    core = client.CoreV1Api(api)
    out = workdir / "out-resume"
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(_ftj("resume-e2e", flash_model, out, 40, ["adapter"])))

    def complete_checkpoint() -> bool:
        return any((d / "COMPLETE").exists() for d in (out / "checkpoints").glob("checkpoint-*"))

    wait_for("a complete checkpoint", complete_checkpoint, 300, glmops_operator.log_tail)
    pod = core.list_namespaced_pod(namespace, label_selector="glmops.io/finetunejob=resume-e2e").items[0]
    first = pod.metadata.name
    # SIGKILL the trainer process, as an OOM kill or a node failure would: the pod fails (137).
    container_id = pod.status.container_statuses[0].container_id  # local://PID on the node agent
    os.killpg(int(container_id.removeprefix("local://")), signal.SIGKILL)

    def second_pod() -> str | None:
        names = [p.metadata.name for p in core.list_namespaced_pod(namespace, label_selector="glmops.io/finetunejob=resume-e2e").items]
        return next((n for n in names if n != first), None)

    replacement = wait_for("the Job controller to replace the killed pod", second_pod, 120, glmops_operator.log_tail)
    waited = cluster.kubectl("wait", "--for=condition=Succeeded", "ftj/resume-e2e", "-n", namespace, "--timeout=600s", check=False, timeout_s=660)
    assert waited.returncode == 0, glmops_operator.log_tail()
    log = cluster.kubectl("logs", "-n", namespace, replacement).stdout
    first_step = next(json.loads(line.split(" ", 1)[1])["step"] for line in log.splitlines() if line.startswith("GLMOPS_PROGRESS "))
    assert first_step >= 5, "the replacement pod started over instead of resuming from the checkpoint"
    assert _get(api, namespace, "resume-e2e")["status"]["retries"] >= 1
