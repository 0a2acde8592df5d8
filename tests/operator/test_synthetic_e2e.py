"""The flagship teaches Flash, end to end on the local control plane, with nothing simulated but the GPU.

1. A tiny GLM-4.7 (flagship architecture, `glm4_moe`) learns two agentic answers (a reasoned
   reply, and a `get_weather` tool call) and is converted to GGUF by llama.cpp's converter.
2. A ModelDeployment serves it with llama-server (`--jinja`: the model's own chat template, GLM
   tool calls parsed into `tool_calls`, reasoning returned as `reasoning_content`).
3. A SyntheticDataset names that deployment as its teacher, with tool-using prompts; its generator
   Job calls the deployment's Service and writes OpenAI chat JSONL.
4. A FineTuneJob of a tiny GLM-4.7-Flash (`glm4_moe_lite`), applied at the same time with
   `dataset.source: synthetic://NAME`, waits for the dataset, trains on its output with QLoRA and
   Succeeds; its trainer's validation skips nothing.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from kubernetes import client
from operator_support import OperatorProcess
from polling import wait_for
from statedir import state_dir

from glmops_dev.cluster import KubeCluster
from glmops_trainer.data.validate import load_and_validate
from glmops_trainer.tiny.models import SMALL_CPU_OVERRIDES, build_tiny_model

# The taught tiny models live with the serving tests, which serve them too.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "serving"))
from tinyserve import (
    ANSWER,
    REASONING,
    SYSTEM,
    TOOL_ARGUMENTS,
    TOOL_NAME,
    TOOL_REASONING,
    lessons,
    teach_tiny_model,
)

REPO = Path(__file__).resolve().parents[2]
GROUP, VERSION = "glmops.io", "v1alpha1"

pytestmark = [pytest.mark.slow, pytest.mark.llamacpp]


@pytest.fixture(scope="module")
def workdir() -> Iterator[Path]:
    with state_dir("synthetic-e2e") as path:
        yield path


@pytest.fixture(scope="module")
def teacher_gguf(workdir: Path) -> Path:
    """The taught flagship-architecture model as an F32 GGUF (greedy answers as taught)."""
    from glmops_trainer.export.gguf import convert_to_gguf

    taught = teach_tiny_model(workdir / "teacher", "glm4_moe")
    gguf = convert_to_gguf(taught.merged_dir, workdir / "teacher" / "teacher-F32.gguf", "f32")
    gguf.chmod(0o644)
    return gguf


@pytest.fixture(scope="module")
def student_model(workdir: Path, teacher_gguf: Path) -> Path:
    """A tiny random Flash-architecture model with the same tokenizer (the one the teacher was taught with)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(workdir / "teacher" / "tokenizer"))
    return build_tiny_model(
        "glm4_moe_lite", workdir / "student-base", tokenizer, dtype=torch.float32, **SMALL_CPU_OVERRIDES["glm4_moe_lite"]
    )


def _prompts(path: Path) -> Path:
    """The lessons' questions as prompts: one plain, one offering the weather tool (asked twice each)."""
    records = []
    for lesson in lessons():
        messages = [m for m in lesson["messages"] if m["role"] != "assistant"]
        records.append({"messages": messages, **({"tools": lesson["tools"]} if "tools" in lesson else {})})
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def _create(api: client.CustomObjectsApi, namespace: str, plural: str, kind: str, name: str, spec: dict[str, Any]) -> None:
    body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": kind, "metadata": {"name": name}, "spec": spec}
    api.create_namespaced_custom_object(GROUP, VERSION, namespace, plural, body)


def test_a_served_teacher_writes_tool_using_data_that_a_flash_student_trains_on(
    cluster: KubeCluster,
    node_agent: Any,
    glmops_operator: OperatorProcess,
    namespace: str,
    workdir: Path,
    teacher_gguf: Path,
    student_model: Path,
) -> None:
    custom = client.CustomObjectsApi(cluster.api_client())

    def status(plural: str, name: str) -> dict[str, Any]:
        return dict(custom.get_namespaced_custom_object(GROUP, VERSION, namespace, plural, name).get("status") or {})

    def diagnose() -> str:
        k = cluster.kubectl
        pods = k("get", "pods", "-n", namespace, "-o", "wide", check=False).stdout
        objects = k("get", "mdep,sds,ftj", "-n", namespace, "-o", "yaml", check=False).stdout
        logs = k("logs", "-n", namespace, "-l", "glmops.io/syntheticdataset=teacher-data", "--tail", "30", check=False).stdout
        return f"{pods}\n{objects[-6000:]}\n{logs[-3000:]}\n{glmops_operator.log_tail(40)}"

    output = workdir / "data" / "synthetic.jsonl"
    (workdir / "data").mkdir()
    prompts = _prompts(workdir / "data" / "prompts.jsonl")

    # All three at once, in the order a GitOps tool might apply them: each waits for the one before.
    _create(custom, namespace, "finetunejobs", "FineTuneJob", "flash-student", {
        "model": {"variant": "flash", "source": f"file://{student_model}"},
        "dataset": {"source": "synthetic://teacher-data", "validationSplit": 0},
        "training": {"method": "qlora", "maxSteps": 4, "learningRate": 5e-3, "sequenceLength": 512,
                     "gradientAccumulationSteps": 1, "checkpointEvery": 2, "lora": {"rank": 8}},
        "output": {"destination": f"file://{workdir}/student", "formats": ["adapter"]},
    })  # fmt: skip
    _create(custom, namespace, "syntheticdatasets", "SyntheticDataset", "teacher-data", {
        "teacher": {"modelDeployment": "glm47-teacher", "requestTimeoutSeconds": 120},
        "prompts": f"file://{prompts}",
        "output": f"file://{output}",
        "samplesPerPrompt": 2,
        # Greedy: the taught answers exactly, so both samples of a prompt are the same and one is dropped.
        "sampling": {"temperature": 0, "maxTokens": 96, "seed": 1},
        "filters": {"deduplicate": "exact"},
        "maxConcurrency": 2,
        "deadlineSeconds": 1800,
    })  # fmt: skip

    def teacher_waited() -> bool:
        teacher = next((c for c in status("syntheticdatasets", "teacher-data").get("conditions") or [] if c["type"] == "TeacherReady"), {})
        return teacher.get("reason") == "TeacherNotFound"

    wait_for("the dataset to wait for its teacher", teacher_waited, 60, diagnose)
    _create(custom, namespace, "modeldeployments", "ModelDeployment", "glm47-teacher", {
        "source": {"uri": f"file://{teacher_gguf}", "variant": "flagship"},
        "runtime": "llamacpp",
        "servedModelName": "glm-4.7",
        "gpusPerReplica": 0,
        "contextLength": 1024,
        "parallelSlots": 2,
    })  # fmt: skip

    wait_for("the teacher to be Ready", lambda: status("modeldeployments", "glm47-teacher").get("phase") == "Ready", 300, diagnose)
    wait_for("the dataset to finish", lambda: status("syntheticdatasets", "teacher-data").get("phase") in ("Ready", "Failed"), 600, diagnose)
    dataset = status("syntheticdatasets", "teacher-data")
    assert dataset["phase"] == "Ready", diagnose()
    endpoint = status("modeldeployments", "glm47-teacher")["endpoint"]
    assert dataset["teacher"] == {"url": endpoint, "model": "glm-4.7"}  # the deployment's Service, by name
    assert (dataset["output"]["samples"], dataset["progress"]["dropped"]) == (2, {"duplicate": 2})

    # What the teacher wrote: its taught answers, with reasoning, and a parsed GLM tool call.
    loaded = load_and_validate(output)
    assert loaded.report.issues == [] and loaded.report.valid == 2, loaded.report.format()
    answer, call = (json.loads(line)["messages"] for line in output.read_text().splitlines())
    assert answer[0] == {"role": "system", "content": SYSTEM}
    assert (answer[-1]["content"], answer[-1]["reasoning_content"]) == (ANSWER, REASONING)
    assert call[-1]["reasoning_content"] == TOOL_REASONING
    (tool_call,) = call[-1]["tool_calls"]
    assert tool_call["function"]["name"] == TOOL_NAME and json.loads(tool_call["function"]["arguments"]) == TOOL_ARGUMENTS
    assert json.loads(output.read_text().splitlines()[1])["tools"][0]["function"]["name"] == TOOL_NAME

    # The student trains on exactly that file and succeeds.
    wait_for("the student to finish", lambda: status("finetunejobs", "flash-student").get("phase") in ("Succeeded", "Failed"), 900, diagnose)
    job = status("finetunejobs", "flash-student")
    assert job["phase"] == "Succeeded", diagnose()
    assert (workdir / "student" / "adapter" / "adapter_model.safetensors").is_file()
    trainer = client.BatchV1Api(cluster.api_client()).read_namespaced_job(job["trainerJob"], namespace)
    config = json.loads(trainer.spec.template.metadata.annotations["glmops.io/trainer-config"])
    assert config["data"]["source"] == f"file://{output}"
    # The trainer's own validation found nothing to skip: both samples train.
    log = cluster.kubectl("logs", "-n", namespace, "-l", "glmops.io/finetunejob=flash-student,glmops.io/component=trainer", "--tail", "-1").stdout
    assert "openai-chat: 2 train / 0 eval samples" in log, log[-3000:]
    assert "invalid samples" not in log
