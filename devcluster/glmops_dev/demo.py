"""The demo: the whole path on one machine, from `kubectl apply` to a GGUF on disk.

On the local control plane it starts the node agent and the operator (as `glmops run`, in its
own process), applies `examples/` (they name PVCs and Secrets that do not exist here, so they
show how glmops waits for them: Pending, with the missing object named), then builds a tiny
GLM-4.7-Flash-architecture model and runs a real FineTuneJob on it: QLoRA on agentic
conversations, export to adapter, merged weights and a Q8_0 GGUF, printed as it progresses.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from glmops_dev.agent import NodeAgent, start_agent
from glmops_dev.binaries import repo_root
from glmops_dev.cluster import KubeCluster

DEMO_NAMESPACE = "glmops-demo"
DEMO_JOB = "tiny-flash-agent"
TERMINAL = ("Succeeded", "Failed", "Cancelled")


def _build_tiny_flash(workdir: Path) -> Path:
    """A tiny random-weight GLM-4.7-Flash-architecture model with the official chat template."""
    import torch

    from glmops_trainer.tiny.models import SMALL_CPU_OVERRIDES, build_tiny_model
    from glmops_trainer.tiny.tokenizer import build_tiny_tokenizer

    model_dir = workdir / "model"
    if not (model_dir / "config.json").exists():
        tokenizer = build_tiny_tokenizer(workdir / "tokenizer")
        build_tiny_model("glm4_moe_lite", model_dir, tokenizer, dtype=torch.float32, **SMALL_CPU_OVERRIDES["glm4_moe_lite"])
    return model_dir


def demo_job(model_dir: Path, dataset: Path, output: Path) -> dict[str, Any]:
    """The FineTuneJob the demo runs: every field is what a user would write."""
    return {
        "apiVersion": "glmops.io/v1alpha1",
        "kind": "FineTuneJob",
        "metadata": {"name": DEMO_JOB, "namespace": DEMO_NAMESPACE},
        "spec": {
            "model": {"variant": "flash", "source": f"file://{model_dir}"},
            "dataset": {"source": f"file://{dataset}", "thinking": "preserve", "validationSplit": 0},
            "training": {
                "maxSteps": 40,
                "learningRate": 5e-3,
                "sequenceLength": 1024,
                "gradientAccumulationSteps": 1,
                "checkpointEvery": 10,
                "lora": {"rank": 8},
            },
            "output": {"destination": f"file://{output}", "formats": ["adapter", "merged", "gguf"], "quantizations": ["Q8_0"]},
        },
    }


class Operator:
    """`glmops run` as a child process, its log in a file."""

    def __init__(self, cluster: KubeCluster, log_path: Path) -> None:
        env = dict(
            os.environ,
            KUBECONFIG=str(cluster.kubeconfig),
            GLMOPS_TRAINER_IMAGE="ghcr.io/glmops/trainer:demo",
            GLMOPS_EXTRA_TRAINER_ENV="CUDA_VISIBLE_DEVICES=,HF_HUB_OFFLINE=1",
        )
        self.log_path = log_path
        with log_path.open("wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "glmops.cli.main", "run"], env=env, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)


def _status(cluster: KubeCluster) -> dict[str, Any]:
    out = cluster.kubectl("get", "ftj", DEMO_JOB, "-n", DEMO_NAMESPACE, "-o", "json", check=False).stdout
    return dict(json.loads(out).get("status") or {}) if out else {}


def follow_job(cluster: KubeCluster, timeout_s: float = 1800) -> dict[str, Any]:
    """Print `kubectl get ftj` whenever it changes until the job ends; returns the final status."""
    deadline = time.monotonic() + timeout_s
    last = ""
    while time.monotonic() < deadline:
        row = cluster.kubectl("get", "ftj", DEMO_JOB, "-n", DEMO_NAMESPACE, "--no-headers", check=False).stdout.strip()
        without_age = row.rsplit(None, 1)[0] if row else ""
        if without_age and without_age != last:
            print(f"  {row}", flush=True)
            last = without_age
        status = _status(cluster)
        if status.get("phase") in TERMINAL:
            return status
        time.sleep(3)
    raise TimeoutError(f"{DEMO_JOB} did not finish within {timeout_s:.0f} s")


def run_demo(cluster: KubeCluster, state_dir: Path, apply_examples: Any) -> tuple[NodeAgent, Operator]:
    """Start the agent and the operator, show the examples being validated, run the tiny job."""
    state_dir.mkdir(parents=True, exist_ok=True)
    agent = start_agent(cluster, state_dir / "agent")
    operator = Operator(cluster, state_dir / "operator.log")
    print(f"Node agent and operator running (operator log: {operator.log_path}).\n")

    print("Applying examples/ (their PVCs and Secrets do not exist here: watch glmops wait for them):")
    apply_examples(cluster, repo_root() / "examples")
    time.sleep(5)
    print(cluster.kubectl("get", "ftj", "-A", check=False).stdout)
    failed = cluster.kubectl(
        "get", "ftj", "-A", "-o", "jsonpath={range .items[*]}{.metadata.name}: {.status.conditions[?(@.type=='Succeeded')].message}{'\\n'}{end}",
        check=False,
    ).stdout
    print(failed)

    workdir = repo_root() / ".state" / "demo"
    print(f"Building a tiny GLM-4.7-Flash-architecture model in {workdir} ...", flush=True)
    model_dir = _build_tiny_flash(workdir)
    dataset = repo_root() / "tests" / "data" / "datasets" / "agentic_small.jsonl"
    output = workdir / f"out-{int(time.time())}"
    if cluster.kubectl("get", "namespace", DEMO_NAMESPACE, check=False).returncode != 0:
        cluster.kubectl("create", "namespace", DEMO_NAMESPACE)
    cluster.kubectl("apply", "-f", "-", input=json.dumps(demo_job(model_dir, dataset, output)))
    print(f"\nkubectl get ftj {DEMO_JOB} -n {DEMO_NAMESPACE} (QLoRA on agentic conversations, then export):")
    status = follow_job(cluster)
    print(f"\n{DEMO_JOB}: {status.get('phase')}")
    for condition in status.get("conditions", []):
        print(f"  {condition['type']}={condition['status']} {condition['reason']}: {condition.get('message', '')}")
    artifacts = status.get("artifacts") or {}
    for kind in ("adapter", "merged"):
        if artifacts.get(kind):
            print(f"  {kind}: {artifacts[kind]['uri']}")
    for gguf in artifacts.get("gguf", []):
        print(f"  gguf {gguf['quantization']}: {gguf['uri']} ({gguf.get('sizeBytes')} bytes)")
    return agent, operator
