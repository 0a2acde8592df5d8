"""The demo: from `kubectl apply` to a fine-tuned model answering through its Service, on one machine.

On the local control plane (started by `python -m glmops_dev demo`) it starts the node agent and
the operator (`glmops run`, in its own process), applies `examples/` (they name PVCs and Secrets
that do not exist here, so they show how glmops waits for them), builds a tiny
GLM-4.7-Flash-architecture model, and applies `examples/demo/`: a FineTuneJob that teaches it the
two agentic conversations of `agent-lessons.jsonl` (an answer with its reasoning, and a tool call)
and a ModelDeployment that serves the job's Q8_0 GGUF with llama.cpp. It shows the training
progress, then asks the served model both questions through the Service and prints what the
fine-tune taught it, with the `glmops connect` settings for coding agents.

Every stage starts with a line `==> [STAGE] ...` (STAGES); `bench/demo_time.py` times them.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from glmops_dev.agent import NodeAgent, start_agent
from glmops_dev.binaries import repo_root
from glmops_dev.cluster import KubeCluster

DEMO_NAMESPACE = "glmops-demo"
DEMO_JOB = "tiny-flash-agent"
DEMO_DEPLOYMENT = "tiny-flash-agent"
DEMO_ROOT_IN_EXAMPLES = "/srv/glmops-demo"
"""The folder `examples/demo/*.yaml` name; the demo puts its files elsewhere and rewrites it."""
TERMINAL = ("Succeeded", "Failed", "Cancelled")
STAGES = ("cluster", "operator", "examples", "model", "training", "export", "serving", "answer")
"""The demo's stages in order, as its `==> [STAGE]` lines name them."""
ANSWER_MARKER = "==> [done]"
"""Starts the line printed right after the trained answer (what bench/demo_time.py waits for)."""
EXPORT = "Exporting"


class DemoError(RuntimeError):
    """The demo cannot go on; the message says what failed and where to look."""


@dataclass
class StageClock:
    """Prints each stage's header with the time since the demo started, and keeps the durations."""

    started: float = field(default_factory=time.monotonic)
    current: str = ""
    began: float = 0.0
    durations: dict[str, float] = field(default_factory=dict)

    def stage(self, name: str, title: str) -> None:
        """End the current stage and begin `name` (one of STAGES)."""
        assert name in STAGES, name
        now = time.monotonic()
        if self.current:
            self.durations[self.current] = now - self.began
        self.current, self.began = name, now
        print(f"\n==> [{name}] {title}  (+{now - self.started:.0f} s)", flush=True)

    def finish(self) -> None:
        """End the current stage."""
        if self.current:
            self.durations[self.current] = time.monotonic() - self.began
            self.current = ""

    def summary(self) -> str:
        """`cluster 41 s (9%), ...`: where the time went."""
        total = sum(self.durations.values()) or 1.0
        return ", ".join(f"{name} {secs:.0f} s ({100 * secs / total:.0f}%)" for name, secs in self.durations.items())


# --- the files the demo applies ----------------------------------------------------------------


def demo_examples_dir() -> Path:
    """`examples/demo/`: the FineTuneJob, the ModelDeployment and the dataset."""
    return repo_root() / "examples" / "demo"


def load_demo_manifest(name: str, workdir: Path) -> dict[str, Any]:
    """`examples/demo/NAME` with its /srv/glmops-demo paths pointed at `workdir`."""
    text = (demo_examples_dir() / name).read_text(encoding="utf-8")
    manifest = yaml.safe_load(text.replace(DEMO_ROOT_IN_EXAMPLES, str(workdir)))
    if not isinstance(manifest, dict):
        raise DemoError(f"examples/demo/{name}: expected one object")
    return manifest


def prepare_workdir(workdir: Path) -> None:
    """The tiny model (random weights, the official GLM-4.7 chat template) and the dataset in `workdir`."""
    import shutil

    import torch
    from transformers.utils import logging as transformers_logging

    from glmops_trainer.tiny.models import SMALL_CPU_OVERRIDES, build_tiny_model
    from glmops_trainer.tiny.tokenizer import build_tiny_tokenizer

    transformers_logging.disable_progress_bar()  # the demo prints its own progress
    workdir.mkdir(parents=True, exist_ok=True)
    model_dir = workdir / "model"
    if not (model_dir / "config.json").is_file():
        tokenizer = build_tiny_tokenizer(workdir / "tokenizer")
        overrides = SMALL_CPU_OVERRIDES["glm4_moe_lite"]
        build_tiny_model("glm4_moe_lite", model_dir, tokenizer, dtype=torch.float32, **overrides)
    shutil.copyfile(demo_examples_dir() / "agent-lessons.jsonl", workdir / "agent-lessons.jsonl")
    output = workdir / "out" / DEMO_JOB
    if output.exists():
        shutil.rmtree(output)  # a new run: never resume an earlier demo's checkpoints


def lesson_requests() -> list[dict[str, Any]]:
    """The chat requests the demo sends: each lesson's conversation up to the assistant's turn."""
    requests = []
    for line in (demo_examples_dir() / "agent-lessons.jsonl").read_text(encoding="utf-8").splitlines():
        record = json.loads(line)
        request: dict[str, Any] = {"messages": [m for m in record["messages"] if m["role"] != "assistant"]}
        if record.get("tools"):
            request["tools"] = record["tools"]
        requests.append(request)
    return requests


# --- the operator as a process -------------------------------------------------------------------


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Operator:
    """`glmops run` as a child process, its log in a file, its metrics on a loopback port."""

    def __init__(self, cluster: KubeCluster, log_path: Path) -> None:
        self.metrics_port = free_port()
        env = dict(
            os.environ,
            KUBECONFIG=str(cluster.kubeconfig),
            GLMOPS_TRAINER_IMAGE="ghcr.io/glmops/trainer:demo",
            # Pods run on this machine's CPUs, offline.
            GLMOPS_EXTRA_TRAINER_ENV="CUDA_VISIBLE_DEVICES=,HF_HUB_OFFLINE=1,OMP_NUM_THREADS=2",
            GLMOPS_SERVING_CPU_ONLY_CPUS="2",
            GLMOPS_PROGRESS_POLL_SECONDS="2",
            GLMOPS_METRICS_PORT=str(self.metrics_port),
            GLMOPS_METRICS_ADDRESS="127.0.0.1",
        )
        self.log_path = log_path
        with log_path.open("wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "glmops.cli.main", "run"], env=env, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()


# --- following the resources -----------------------------------------------------------------------


def _get(cluster: KubeCluster, kind: str, name: str) -> dict[str, Any]:
    result = cluster.kubectl("get", kind, name, "-n", DEMO_NAMESPACE, "-o", "json", check=False)
    return dict(json.loads(result.stdout)) if result.returncode == 0 and result.stdout else {}


def _phase(body: dict[str, Any]) -> str:
    return str((body.get("status") or {}).get("phase") or "")


def follow_training(cluster: KubeCluster, clock: StageClock, timeout_s: float = 1800) -> dict[str, Any]:
    """Show the job's progress until it ends (the export stage begins when training does);
    returns the final job."""
    from glmops.cli.progress import progress_text

    interactive = sys.stdout.isatty()
    deadline = time.monotonic() + timeout_s
    shown: tuple[str, Any] = ("", None)
    while time.monotonic() < deadline:
        job = _get(cluster, "ftj", DEMO_JOB)
        phase = _phase(job)
        if phase == EXPORT and clock.current == "training":
            if interactive:
                print()
            clock.stage("export", "Training done; merging the adapter, converting to GGUF, quantizing (a CPU-only Job)")
        line = f"  {phase or 'Pending':<10} {progress_text(job)}" if job else "  (not created yet)"
        if interactive:
            print("\r\033[K" + line, end="", flush=True)
        elif (phase, ((job.get("status") or {}).get("progress") or {}).get("step")) != shown:
            print(line, flush=True)  # into a pipe or file: a line per step, not per second
            shown = (phase, ((job.get("status") or {}).get("progress") or {}).get("step"))
        if phase in TERMINAL:
            if interactive:
                print()
            return job
        time.sleep(1)
    raise DemoError(f"{DEMO_JOB} did not finish within {timeout_s:.0f} s (kubectl glmops logs {DEMO_JOB} -n {DEMO_NAMESPACE})")


def wait_ready(cluster: KubeCluster, timeout_s: float = 600) -> dict[str, Any]:
    """Wait for the ModelDeployment to be Ready; returns it."""
    deadline = time.monotonic() + timeout_s
    shown = ""
    while time.monotonic() < deadline:
        deployment = _get(cluster, "mdep", DEMO_DEPLOYMENT)
        status = deployment.get("status") or {}
        line = f"  {status.get('phase') or 'Pending':<12} ready {status.get('ready') or '0/1'}"
        if line != shown:
            print(line, flush=True)
            shown = line
        if status.get("phase") == "Ready" and status.get("endpoint"):
            return deployment
        time.sleep(1)
    raise DemoError(f"ModelDeployment {DEMO_DEPLOYMENT} was not Ready within {timeout_s:.0f} s: {json.dumps(_get(cluster, 'mdep', DEMO_DEPLOYMENT).get('status'))}")


def chat(base_url: str, model: str, request: dict[str, Any], timeout_s: float = 180) -> dict[str, Any]:
    """One greedy chat completion through the Service; retried while the Service's rules settle."""
    body = json.dumps({"model": model, "temperature": 0, "max_tokens": 96, **request}).encode()
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            req = urllib.request.Request(f"{base_url}/chat/completions", data=body, headers={"Content-Type": "application/json"})
            with urllib.request.urlopen(req, timeout=120) as response:
                return dict(json.loads(response.read())["choices"][0]["message"])
        except (urllib.error.URLError, ConnectionError) as exc:
            if time.monotonic() > deadline:
                raise DemoError(f"{base_url}: no answer: {exc}") from exc
            time.sleep(2)


def show_answer(question: dict[str, Any], message: dict[str, Any]) -> None:
    """Print the question and what the fine-tuned model answered."""
    asked = next(m["content"] for m in reversed(question["messages"]) if m["role"] == "user")
    tools = ", ".join(t["function"]["name"] for t in question.get("tools") or [])
    print(f"\n  You:        {asked}" + (f"   (tools offered: {tools})" if tools else ""))
    if message.get("reasoning_content"):
        print(f"  Reasoning:  {message['reasoning_content'].strip()}")
    for call in message.get("tool_calls") or []:
        function = call.get("function") or {}
        arguments = str(function.get("arguments") or "")
        try:
            arguments = json.dumps(json.loads(arguments))  # one spelling, whatever spacing the server chose
        except ValueError:
            pass
        print(f"  Tool call:  {function.get('name')}({arguments})")
    if (message.get("content") or "").strip():
        print(f"  Answer:     {message['content'].strip()}")


# --- the demo -------------------------------------------------------------------------------------------


def waiting_reasons(cluster: KubeCluster, width: int = 150) -> str:
    """Why each example waits: a FineTuneJob's Succeeded condition, a ModelDeployment's Resolved one."""
    lines = []
    for kind, condition in (("ftj", "Succeeded"), ("mdep", "Resolved")):
        listed = cluster.kubectl("get", kind, "-A", "-o", "json", check=False)
        for item in json.loads(listed.stdout or "{}").get("items", []):
            found = [c for c in (item.get("status") or {}).get("conditions") or [] if c.get("type") == condition]
            message = str(found[0].get("message") or "") if found else "(not looked at yet)"
            text = f"  {item['kind']}/{item['metadata']['name']}: {message}"
            lines.append(text if len(text) <= width else text[: width - 3] + "...")
    return "\n".join(lines)


def _check_llama_cpp() -> None:
    from glmops_trainer.export.llamacpp_build import LlamaCppToolError, find_tool

    try:
        for tool in ("llama-quantize", "llama-server"):
            find_tool(tool)
    except LlamaCppToolError as exc:
        raise DemoError(f"{exc} (`make demo` builds it: make llamacpp)") from exc


def run_demo(
    cluster: KubeCluster,
    state_dir: Path,
    apply_examples: Callable[[KubeCluster, Path], None],
    clock: StageClock,
    stoppers: list[Callable[[], None]],
) -> dict[str, Any]:
    """Run the demo on a started cluster; what it starts is added to `stoppers`. Returns the
    messages the served model answered, by question."""
    _check_llama_cpp()
    clock.stage("operator", "Starting the node agent (runs the pods of the simulated GPU nodes) and the operator")
    state_dir.mkdir(parents=True, exist_ok=True)
    agent: NodeAgent = start_agent(cluster, state_dir / "agent")
    stoppers.append(agent.stop)
    operator = Operator(cluster, state_dir / "operator.log")
    stoppers.append(operator.stop)
    print(f"  operator log: {operator.log_path}\n  operator metrics: {operator.metrics_url}")

    clock.stage("examples", "Applying examples/: their PVCs and Secrets do not exist here, so they wait, saying what for")
    apply_examples(cluster, repo_root() / "examples")
    time.sleep(3)  # the operator's first look at them
    print(waiting_reasons(cluster))

    workdir = repo_root() / ".state" / "demo"
    clock.stage("model", f"Building a tiny GLM-4.7-Flash-architecture model in {workdir} (random weights, official chat template)")
    prepare_workdir(workdir)

    clock.stage("training", "kubectl apply -f examples/demo/: a FineTuneJob, and a ModelDeployment that waits for it")
    if cluster.kubectl("get", "namespace", DEMO_NAMESPACE, check=False).returncode != 0:
        cluster.kubectl("create", "namespace", DEMO_NAMESPACE)
    for name in ("finetunejob.yaml", "modeldeployment.yaml"):
        manifest = load_demo_manifest(name, workdir)
        cluster.kubectl("apply", "-f", "-", input=json.dumps(manifest))
    print(f"  {DEMO_JOB}: LoRA on agent-lessons.jsonl (an answer with its reasoning, a get_weather tool call)")
    job = follow_training(cluster, clock)
    status = job.get("status") or {}
    if _phase(job) != "Succeeded":
        from glmops.cli.progress import job_message

        raise DemoError(
            f"{DEMO_JOB} ended {_phase(job)}: {job_message(job)}\n"
            f"  its log: KUBECONFIG={cluster.kubeconfig} kubectl glmops logs {DEMO_JOB} -n {DEMO_NAMESPACE}"
        )
    for gguf in (status.get("artifacts") or {}).get("gguf", []):
        print(f"  gguf {gguf['quantization']}: {gguf['uri']} ({gguf.get('sizeBytes')} bytes)")
    _plot(workdir)

    clock.stage("serving", "The ModelDeployment rolls out: llama.cpp serves the GGUF behind a Service")
    deployment = wait_ready(cluster)
    endpoint = str(deployment["status"]["endpoint"])
    model = str(deployment["spec"]["servedModelName"])
    print(f"  endpoint: {endpoint}")

    clock.stage("answer", f"Asking {model} through its Service (temperature 0)")
    answers: dict[str, Any] = {}
    for request in lesson_requests():
        message = chat(endpoint, model, request)
        show_answer(request, message)
        answers[request["messages"][-1]["content"]] = message
    clock.finish()
    print(f"\n{ANSWER_MARKER} the fine-tuned model answered after {time.monotonic() - clock.started:.0f} s; {clock.summary()}")

    from glmops.cli.connect import connection_from, render

    print(f"\nConnect a coding agent (kubectl glmops connect {DEMO_DEPLOYMENT} -n {DEMO_NAMESPACE} --client claude-code):")
    print(render("claude-code", connection_from(deployment)).rstrip())
    print(f"\nMore: export KUBECONFIG={cluster.kubeconfig}; kubectl glmops status -A; "
          f"kubectl glmops plot {DEMO_JOB} -n {DEMO_NAMESPACE}; curl {operator.metrics_url}")  # fmt: skip
    return answers


def _plot(workdir: Path) -> None:
    from glmops.losscurve import plot_loss_curve, read_loss_history

    history = read_loss_history(workdir / "out" / DEMO_JOB / "progress.jsonl")
    if history.train:
        png = plot_loss_curve(history, workdir / "loss.png", title=DEMO_JOB)
        first, last = history.train[0][1], history.train[-1][1]
        print(f"  loss {first:.3f} -> {last:.4f} over {len(history.train)} steps; curve: {png}")
