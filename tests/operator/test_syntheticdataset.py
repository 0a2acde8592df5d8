"""SyntheticDataset on the local control plane: the operator creates the generator Job, the node
agent runs it as a pod in its own network namespace, the pod calls a teacher at the pod network's
host address, and the operator reads its progress and result into status. A FineTuneJob on
`dataset.source: synthetic://NAME` waits for it and trains on its output, or fails with it.

The teacher is `fake_teacher.FakeTeacher` (scripted answers), sometimes behind a `FaultProxy`
(429s, or no answer at all). The trainer's own validator reads what the pods wrote. The chart's
Argo CD health check runs over the statuses written here (and with GLMOPS_CAPTURE_ARGOCD_STATUS=1
they are kept for tests/chart/test_argocd_health.py).
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from argocd import health, keep_captured
from fake_teacher import MODEL, WEATHER_TOOL, FakeTeacher, FaultProxy
from kubernetes import client
from operator_support import OperatorProcess
from polling import wait_for
from statedir import state_dir

from glmops_dev.cluster import KubeCluster
from glmops_trainer.data.validate import load_and_validate

REPO = Path(__file__).resolve().parents[2]
GROUP, VERSION = "glmops.io", "v1alpha1"
MERGE = "application/merge-patch+json"


@pytest.fixture(scope="module")
def teacher_host(cluster: KubeCluster) -> str:
    """Where pods reach this machine: the pod network's host address (pods have no loopback route to it)."""
    network = getattr(cluster, "network", None)
    return network.plan.host_ip if network is not None else "127.0.0.1"


@pytest.fixture
def workdir() -> Iterator[Path]:
    """Prompts and outputs, which the generator pods read and write by file:// URI."""
    with state_dir("sds") as path:
        yield path


def write_prompts(path: Path, records: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def weather_prompt(city: str) -> dict[str, Any]:
    return {
        "prompt": f"What is the weather in {city}?",
        "tools": [WEATHER_TOOL],
        "tool_results": [{"name": "get_weather", "arguments": {"city": city}, "content": {"sky": "rain", "celsius": 12}}],
    }


def sds(name: str, teacher_url: str, prompts: Path, output: Path, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "SyntheticDataset",
        "metadata": {"name": name},
        "spec": {
            "teacher": {"url": teacher_url, "model": MODEL, "requestTimeoutSeconds": 30},
            "prompts": f"file://{prompts}",
            "output": f"file://{output}",
            "sampling": {"seed": 7},
            "filters": {"deduplicate": "exact"},
            **spec,
        },
    }


def ftj(name: str, dataset: str, out: Path) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "FineTuneJob",
        "metadata": {"name": name},
        "spec": {
            "model": {"variant": "flash", "source": f"file://{out}/no-model-here"},
            "dataset": {"source": f"synthetic://{dataset}", "validationSplit": 0},
            "output": {"destination": f"file://{out}/student", "formats": ["adapter"]},
        },
    }


class Api:
    """Reads and writes of one namespace, as plain JSON."""

    def __init__(self, cluster: KubeCluster, namespace: str, operator: OperatorProcess) -> None:
        self.cluster, self.namespace, self.operator = cluster, namespace, operator
        self.api = cluster.api_client()
        self.custom = client.CustomObjectsApi(self.api)
        self.core = client.CoreV1Api(self.api)
        self.batch = client.BatchV1Api(self.api)

    def create(self, plural: str, body: dict[str, Any]) -> None:
        self.custom.create_namespaced_custom_object(GROUP, VERSION, self.namespace, plural, body)

    def get(self, plural: str, name: str) -> dict[str, Any]:
        return dict(self.custom.get_namespaced_custom_object(GROUP, VERSION, self.namespace, plural, name))

    def status(self, plural: str, name: str) -> dict[str, Any]:
        return dict(self.get(plural, name).get("status") or {})

    def condition(self, plural: str, name: str, type_: str) -> dict[str, Any]:
        return next((c for c in self.status(plural, name).get("conditions") or [] if c["type"] == type_), {})

    def job(self, name: str) -> dict[str, Any] | None:
        try:
            raw = self.batch.read_namespaced_job(name, self.namespace, _preload_content=False).data
        except client.ApiException as exc:
            if exc.status == 404:
                return None
            raise
        return dict(json.loads(raw))

    def pods(self, selector: str) -> list[dict[str, Any]]:
        raw = self.core.list_namespaced_pod(self.namespace, label_selector=selector, _preload_content=False).data
        return sorted(json.loads(raw)["items"], key=lambda p: p["metadata"]["creationTimestamp"])

    def events(self, name: str) -> list[tuple[str, str]]:
        items = self.core.list_namespaced_event(self.namespace, field_selector=f"involvedObject.name={name}").items
        return [(e.type, e.reason) for e in items]

    def diagnostics(self, name: str) -> str:
        k = self.cluster.kubectl
        pods = k("get", "pods", "-n", self.namespace, "-o", "wide", check=False).stdout
        logs = k("logs", "-n", self.namespace, "-l", f"glmops.io/syntheticdataset={name}", "--tail", "30", check=False)
        sds = k("get", "sds,ftj", "-n", self.namespace, "-o", "yaml", check=False).stdout
        return f"{pods}\n{logs.stdout[-4000:]}{logs.stderr}\n{sds[-5000:]}\n{self.operator.log_tail(40)}"


def _running_pid(pod: dict[str, Any]) -> int | None:
    for cs in (pod.get("status") or {}).get("containerStatuses") or []:
        if (cs.get("state") or {}).get("running") and cs.get("containerID", "").startswith("local://"):
            return int(cs["containerID"].removeprefix("local://"))
    return None


def _lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_a_dataset_generates_through_its_job_and_a_waiting_finetunejob_trains_on_its_output(
    cluster: KubeCluster, node_agent: Any, glmops_operator: OperatorProcess, namespace: str, teacher_host: str, workdir: Path
) -> None:
    """The FineTuneJob applied first waits (dataset not found, then not ready with its progress);
    the generator Job (CPU only, owned by the dataset) runs; status counts progress while it
    runs and ends Ready with the output's sha256, kept and dropped counts; the job's trainer
    then reads the dataset's output file."""
    k = Api(cluster, namespace, glmops_operator)
    teacher = FakeTeacher(host=teacher_host, delay_s=0.7)
    try:
        prompts = write_prompts(
            workdir / "prompts.jsonl",
            [{"prompt": f"Explain idempotent payment retries, part {i}"} for i in range(5)]
            + [weather_prompt("Berlin"), weather_prompt("Lisbon"), {"prompt": "[truncate] a long essay"}],
        )
        output = workdir / "out" / "synthetic.jsonl"
        (workdir / "out").mkdir()
        k.create("finetunejobs", ftj("student", "teacher-data", workdir))

        def waiting_for(reason: str) -> dict[str, Any] | None:
            validated = k.condition("finetunejobs", "student", "Validated")
            return validated if validated.get("reason") == reason else None

        missing = wait_for("the job to wait for the missing dataset", lambda: waiting_for("SyntheticDatasetNotFound"), 60, lambda: k.diagnostics("teacher-data"))
        assert k.status("finetunejobs", "student")["phase"] == "Pending"
        assert "SyntheticDataset 'teacher-data' does not exist" in missing["message"] and missing["status"] == "False"

        k.create("syntheticdatasets", sds(
            "teacher-data", teacher.url, prompts, output,
            samplesPerPrompt=2, maxConcurrency=1, maxTurns=3, toolExecution="fixtures",
        ))  # fmt: skip
        generating: list[dict[str, Any]] = []
        seen: dict[str, dict[str, Any]] = {}  # the first object in each phase (Generating: once prompts are done)

        def ready() -> bool:
            obj = k.get("syntheticdatasets", "teacher-data")
            status = obj.get("status") or {}
            phase = str(status.get("phase") or "")
            if phase == "Generating" and (status.get("progress") or {}).get("promptsDone"):
                generating.append(status)
                seen.setdefault(phase, obj)
            elif phase != "Generating":
                seen.setdefault(phase, obj)
            return phase in ("Ready", "Failed")

        wait_for("the dataset to finish", ready, 300, lambda: k.diagnostics("teacher-data"))
        status = k.status("syntheticdatasets", "teacher-data")
        assert status["phase"] == "Ready", k.diagnostics("teacher-data")

        # Progress was counted from the running pod, between none and all prompts done.
        assert generating, "no Generating status with progress was seen"
        assert any(0 < s["progress"]["promptsDone"] < 8 and s["progress"]["promptsTotal"] == 8 for s in generating), generating

        # Ready: the output as written, with its sha256 and counts; the drops by reason.
        out = status["output"]
        assert out["uri"] == f"file://{output}"
        assert out["sha256"] == hashlib.sha256(output.read_bytes()).hexdigest()
        assert out["sizeBytes"] == output.stat().st_size
        records = _lines(output)
        assert out["samples"] == len(records) == 14  # 8 prompts x 2 samples, minus the 2 truncated
        progress = status["progress"]
        assert (progress["promptsDone"], progress["percent"], progress["samplesKept"]) == (8, 100, 14)
        assert progress["dropped"] == {"truncated": 2} and progress["samplesDropped"] == 2
        assert progress["tokensGenerated"] > 0
        assert Path(out["report"].removeprefix("file://")).is_file() and Path(out["histogram"].removeprefix("file://")).is_file()
        ready_condition = k.condition("syntheticdatasets", "teacher-data", "Ready")
        assert (ready_condition["status"], ready_condition["reason"]) == ("True", "Completed")
        assert status["teacher"] == {"url": teacher.url, "model": MODEL}
        # Argo CD's health: Healthy with where the samples are, and how far it got while generating.
        assert health(seen["Ready"]) == ("Healthy", ready_condition["message"])
        assert health(seen["Ready"])[1].endswith(out["uri"])
        midway = seen["Generating"]["status"]["progress"]
        assert health(seen["Generating"]) == (
            "Progressing", f"Generating: prompts {midway['promptsDone']}/8 done, {midway['samplesKept']} samples kept"
        )
        for phase in set(seen) - {"Ready", "Generating"}:
            assert health(seen[phase])[0] == "Progressing", (phase, health(seen[phase]))
        keep_captured("syntheticdatasets", list(seen.values()), {str(workdir): "/data/sds"})
        # Events are posted after the status write: wait for it rather than race it.
        wait_for("a Completed event", lambda: ("Normal", "Completed") in k.events("teacher-data"), 30, lambda: k.diagnostics("teacher-data"))

        # The tool-using prompts became multi-turn traces the trainer accepts with no issue.
        loaded = load_and_validate(output)
        assert loaded.report.issues == [] and loaded.report.valid == 14, loaded.report.format()
        traces = [r for r in records if any(m.get("tool_calls") for m in r["messages"])]
        assert len(traces) == 4
        for trace in traces:
            roles = [m["role"] for m in trace["messages"]]
            assert roles == ["user", "assistant", "tool", "assistant"], roles
            assert all(m.get("reasoning_content") for m in trace["messages"] if m["role"] == "assistant")

        # The generator Job: CPU only, owned by the dataset, one pod that succeeded.
        job = k.job(status["generatorJob"])
        assert job is not None and job["status"].get("succeeded") == 1
        owner = job["metadata"]["ownerReferences"][0]
        assert (owner["kind"], owner["name"], owner.get("controller")) == ("SyntheticDataset", "teacher-data", True)
        container = job["spec"]["template"]["spec"]["containers"][0]
        assert container["command"][:4] == ["python", "-m", "glmops_trainer", "generate"]
        assert "nvidia.com/gpu" not in json.dumps(container["resources"])

        # The waiting job was woken by the dataset's change and trains on its output.
        def trainer_job() -> dict[str, Any] | None:
            name = k.status("finetunejobs", "student").get("trainerJob")
            return k.job(name) if name else None

        trainer = wait_for("the FineTuneJob's trainer Job", trainer_job, 90, lambda: k.diagnostics("teacher-data"))
        config = json.loads(trainer["spec"]["template"]["metadata"]["annotations"]["glmops.io/trainer-config"])
        assert config["data"]["source"] == f"file://{output}"
        validated = k.condition("finetunejobs", "student", "Validated")
        assert validated["status"] == "True", validated
        # The spec keeps what the user wrote.
        spec = k.custom.get_namespaced_custom_object(GROUP, VERSION, namespace, "finetunejobs", "student")["spec"]
        assert spec["dataset"]["source"] == "synthetic://teacher-data"
        # Stop it: the model is not there and training is not what this test is about.
        k.custom.patch_namespaced_custom_object(GROUP, VERSION, namespace, "finetunejobs", "student", {"spec": {"cancel": True}}, _content_type=MERGE)
        wait_for("the job to end Cancelled", lambda: k.status("finetunejobs", "student").get("phase") == "Cancelled", 60)
    finally:
        teacher.stop()


def test_a_killed_generator_pod_is_replaced_and_the_next_continues_with_no_duplicate_and_no_loss(
    cluster: KubeCluster, node_agent: Any, glmops_operator: OperatorProcess, namespace: str, teacher_host: str, workdir: Path
) -> None:
    """SIGKILL the generator pod midway (as an OOM kill or a lost node would): the Job starts
    another pod, which continues from the journal; the output has exactly prompts x
    samplesPerPrompt samples (none dropped here), each once, and nothing done before is asked again."""
    k = Api(cluster, namespace, glmops_operator)
    teacher = FakeTeacher(host=teacher_host, delay_s=0.6)  # a 4 s window to kill it midway
    try:
        prompts = write_prompts(workdir / "prompts.jsonl", [{"prompt": f"Question number {i}"} for i in range(10)])
        output = workdir / "out" / "synthetic.jsonl"
        (workdir / "out").mkdir()
        k.create("syntheticdatasets", sds("killed", teacher.url, prompts, output, samplesPerPrompt=3, maxConcurrency=3))
        journal = workdir / "out" / "synthetic.jsonl.work" / "journal.jsonl"

        def first_pod_midway() -> int | None:
            pods = k.pods("glmops.io/syntheticdataset=killed")
            done = journal.read_text().count("\n") - 1 if journal.is_file() else 0
            return _running_pid(pods[0]) if len(pods) == 1 and done >= 9 else None

        pid = wait_for("the first generator pod to journal 9 samples", first_pod_midway, 180, lambda: k.diagnostics("killed"))
        os.killpg(pid, signal.SIGKILL)
        done_before = {(e["p"], e["s"]) for e in _lines(journal)[1:]}
        assert 9 <= len(done_before) < 30
        requests_before = len(teacher.chat_requests())

        wait_for("the dataset to finish", lambda: k.status("syntheticdatasets", "killed").get("phase") in ("Ready", "Failed"), 300,
                 lambda: k.diagnostics("killed"))  # fmt: skip
        status = k.status("syntheticdatasets", "killed")
        assert status["phase"] == "Ready", k.diagnostics("killed")
        pods = k.pods("glmops.io/syntheticdataset=killed")
        assert [p["status"]["phase"] for p in pods] == ["Failed", "Succeeded"]
        assert status["retries"] == 1

        records = _lines(output)
        ids = [r["id"] for r in records]
        assert ids == [f"line-{p + 1}-{s}" for p in range(10) for s in range(3)]  # all, once each, in prompt order
        assert (status["output"]["samples"], status["progress"]["samplesKept"], status["progress"]["dropped"]) == (30, 30, {})
        assert load_and_validate(output).report.issues == []
        entries = _lines(journal)[1:]
        assert Counter((e["p"], e["s"]) for e in entries).most_common(1)[0][1] == 1
        # The new pod asked only for what the journal lacked (and the requests the kill cut short).
        asked_again = teacher.chat_requests()[requests_before:]
        done_seeds = {(7 + p * 1_000_003 + s * 1_009) % 2**31 for p, s in done_before}
        assert not done_seeds & {r.body["seed"] for r in asked_again}
    finally:
        teacher.stop()


def test_a_throttling_teacher_slows_the_dataset_down_and_it_completes(
    cluster: KubeCluster, node_agent: Any, glmops_operator: OperatorProcess, namespace: str, teacher_host: str, workdir: Path
) -> None:
    """A teacher that answers 429 (Retry-After: 1) and then 500 for a while: every sample is still written."""
    k = Api(cluster, namespace, glmops_operator)
    teacher = FakeTeacher(host=teacher_host)
    throttled = FaultProxy(teacher.url, host=teacher_host, fail_first=6, fail_status=429, retry_after_s=1)
    broken = FaultProxy(throttled.url, host=teacher_host, fail_first=4, fail_status=500)
    try:
        prompts = write_prompts(workdir / "prompts.jsonl", [{"prompt": f"Question {i}"} for i in range(6)])
        output = workdir / "synthetic.jsonl"
        k.create("syntheticdatasets", sds("throttled", broken.url, prompts, output, samplesPerPrompt=2, maxConcurrency=4, maxAttempts=3))
        wait_for("the dataset to finish", lambda: k.status("syntheticdatasets", "throttled").get("phase") in ("Ready", "Failed"), 300,
                 lambda: k.diagnostics("throttled"))  # fmt: skip
        status = k.status("syntheticdatasets", "throttled")
        assert status["phase"] == "Ready", k.diagnostics("throttled")
        assert (status["output"]["samples"], status["progress"]["dropped"]) == (12, {})
        assert [s.status for s in broken.chat_requests()].count(500) == 4
        assert [s.status for s in throttled.chat_requests()].count(429) == 6
        assert len(_lines(output)) == 12
    finally:
        broken.stop()
        throttled.stop()
        teacher.stop()


def test_a_teacher_that_never_answers_fails_the_dataset_at_its_deadline_and_the_job_that_waits_for_it(
    cluster: KubeCluster, node_agent: Any, glmops_operator: OperatorProcess, namespace: str, teacher_host: str, workdir: Path
) -> None:
    """The generator stops itself at spec.deadlineSeconds and says why; the dataset ends Failed
    with that reason, no output, its generator Job deleted; the FineTuneJob waiting for it fails with the
    dataset's reason and never creates a trainer."""
    k = Api(cluster, namespace, glmops_operator)
    silent = FaultProxy("http://127.0.0.1:9/v1", host=teacher_host, hang=True)
    try:
        prompts = write_prompts(workdir / "prompts.jsonl", [{"prompt": f"Question {i}"} for i in range(3)])
        output = workdir / "synthetic.jsonl"
        k.create("syntheticdatasets", sds("silent", silent.url, prompts, output, deadlineSeconds=20))
        k.create("finetunejobs", ftj("student", "silent", workdir))
        wait_for("the dataset to fail", lambda: k.status("syntheticdatasets", "silent").get("phase") in ("Ready", "Failed"), 240,
                 lambda: k.diagnostics("silent"))  # fmt: skip
        ready = k.condition("syntheticdatasets", "silent", "Ready")
        assert (ready["status"], ready["reason"]) == ("False", "DeadlineExceeded"), k.diagnostics("silent")
        assert "spec.deadlineSeconds passed with 0 of 3 prompts done" in ready["message"]
        assert "did not answer within" in ready["message"]
        assert not output.exists()
        failed = k.get("syntheticdatasets", "silent")
        assert health(failed) == ("Degraded", ready["message"])
        keep_captured("syntheticdatasets", [failed], {str(workdir): "/data/sds"})
        wait_for("a DeadlineExceeded warning", lambda: ("Warning", "DeadlineExceeded") in k.events("silent"), 30, lambda: k.diagnostics("silent"))
        # A failure no new pod can change: the operator deletes the generator Job (before Kubernetes
        # 1.26 the Job controller knows no podFailurePolicy and would start pod after pod), and with it its pods.
        generator = k.status("syntheticdatasets", "silent")["generatorJob"]
        wait_for("the generator Job and its pods to be gone",
                 lambda: k.job(generator) is None and not k.pods("glmops.io/syntheticdataset=silent"), 60, lambda: k.diagnostics("silent"))  # fmt: skip
        assert k.status("syntheticdatasets", "silent")["phase"] == "Failed"  # and it stays so

        wait_for("the waiting job to fail", lambda: k.status("finetunejobs", "student").get("phase") == "Failed", 90,
                 lambda: k.diagnostics("silent"))  # fmt: skip
        job_status = k.status("finetunejobs", "student")
        failed = next(c for c in job_status["conditions"] if c["type"] == "Succeeded")
        assert failed["reason"] == "SyntheticDatasetFailed", job_status
        assert "SyntheticDataset 'silent' failed (DeadlineExceeded)" in failed["message"]
        assert not job_status.get("trainerJob")
    finally:
        silent.stop()


def test_the_teachers_key_secret_is_waited_for_and_never_leaves_it(
    cluster: KubeCluster, node_agent: Any, glmops_operator: OperatorProcess, namespace: str, teacher_host: str, workdir: Path
) -> None:
    """A dataset naming a key Secret that does not exist yet waits (Pending, Validated=False naming
    it) and starts once it is created; the key reaches the generator by secretKeyRef only: not in
    the Job, the dataset's status, its events, or the pod's log."""
    key = "sk-synthetic-7f3e9a"
    k = Api(cluster, namespace, glmops_operator)
    teacher = FakeTeacher(host=teacher_host, api_key=key)
    try:
        prompts = write_prompts(workdir / "prompts.jsonl", [{"prompt": f"Question {i}"} for i in range(3)])
        output = workdir / "synthetic.jsonl"
        body = sds("keyed", teacher.url, prompts, output)
        body["spec"]["teacher"]["apiKeySecret"] = {"name": "teacher-key", "key": "token"}
        k.create("syntheticdatasets", body)

        def waiting() -> dict[str, Any] | None:
            validated = k.condition("syntheticdatasets", "keyed", "Validated")
            return validated if validated.get("reason") == "SecretNotFound" else None

        validated = wait_for("the dataset to wait for its Secret", waiting, 60, lambda: k.diagnostics("keyed"))
        assert "Secret 'teacher-key' does not exist" in validated["message"] and "spec.teacher.apiKeySecret" in validated["message"]
        pending = k.get("syntheticdatasets", "keyed")
        assert pending["status"]["phase"] == "Pending"
        assert not pending["status"].get("generatorJob")
        # Argo CD shows what it waits for, once: Ready (reason SecretNotFound too) already says it.
        waiting_for_key = next(c for c in pending["status"]["conditions"] if c["type"] == "Ready")
        assert health(pending) == ("Progressing", f"Pending: {waiting_for_key['message']}")
        assert "Secret 'teacher-key' does not exist" in waiting_for_key["message"]
        keep_captured("syntheticdatasets", [pending], {str(workdir): "/data/sds"})

        k.core.create_namespaced_secret(namespace, {"metadata": {"name": "teacher-key"}, "stringData": {"token": key}})
        wait_for("the dataset to finish", lambda: k.status("syntheticdatasets", "keyed").get("phase") in ("Ready", "Failed"), 180,
                 lambda: k.diagnostics("keyed"))  # fmt: skip
        status = k.status("syntheticdatasets", "keyed")
        assert status["phase"] == "Ready" and status["output"]["samples"] == 3, k.diagnostics("keyed")
        assert all(s.status == 200 for s in teacher.chat_requests())  # the key was sent

        job = k.job(status["generatorJob"])
        env = job["spec"]["template"]["spec"]["containers"][0]["env"]
        assert {"name": "GLMOPS_TEACHER_API_KEY", "valueFrom": {"secretKeyRef": {"name": "teacher-key", "key": "token"}}} in env
        log = cluster.kubectl("logs", "-n", namespace, "-l", "glmops.io/syntheticdataset=keyed", "--tail", "-1").stdout
        events = k.core.list_namespaced_event(namespace).items
        seen = json.dumps(job) + json.dumps(status) + log + " ".join(str(e.message) for e in events) + glmops_operator.log_tail(400)
        assert log and key not in seen
    finally:
        teacher.stop()


def test_restarting_the_operator_while_a_dataset_generates_changes_nothing(
    cluster: KubeCluster, node_agent: Any, glmops_operator: OperatorProcess, namespace: str, teacher_host: str, workdir: Path
) -> None:
    """SIGKILL the operator right after the apply and again while the pod generates: one generator
    Job, one pod, and the dataset still ends Ready with every sample."""
    k = Api(cluster, namespace, glmops_operator)
    teacher = FakeTeacher(host=teacher_host, delay_s=0.5)
    try:
        prompts = write_prompts(workdir / "prompts.jsonl", [{"prompt": f"Question {i}"} for i in range(8)])
        output = workdir / "synthetic.jsonl"
        k.create("syntheticdatasets", sds("restarted", teacher.url, prompts, output, maxConcurrency=1))
        glmops_operator.restart()  # SIGKILL, maybe mid-admission

        def generating() -> bool:
            status = k.status("syntheticdatasets", "restarted")
            return status.get("phase") == "Generating" or status.get("phase") in ("Ready", "Failed")

        wait_for("the dataset to generate", generating, 120, lambda: k.diagnostics("restarted"))
        glmops_operator.restart()
        wait_for("the dataset to finish", lambda: k.status("syntheticdatasets", "restarted").get("phase") in ("Ready", "Failed"), 180,
                 lambda: k.diagnostics("restarted"))  # fmt: skip
        status = k.status("syntheticdatasets", "restarted")
        assert status["phase"] == "Ready" and status["output"]["samples"] == 8, k.diagnostics("restarted")
        jobs = json.loads(k.batch.list_namespaced_job(namespace, _preload_content=False).data)["items"]
        assert [j["metadata"]["name"] for j in jobs] == [status["generatorJob"]]
        assert len(k.pods("glmops.io/syntheticdataset=restarted")) == 1
    finally:
        teacher.stop()
