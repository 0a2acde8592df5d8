"""The files the demo applies are valid resources, and it asks what the dataset teaches (no cluster)."""

from __future__ import annotations

import json
from pathlib import Path

from glmops.api.finetunejob import FineTuneJob
from glmops.api.modeldeployment import ModelDeployment
from glmops_dev.demo import DEMO_ROOT_IN_EXAMPLES, STAGES, StageClock, lesson_requests, load_demo_manifest


def test_the_manifests_point_at_the_demo_folder_and_validate(tmp_path: Path) -> None:
    job = load_demo_manifest("finetunejob.yaml", tmp_path)
    deployment = load_demo_manifest("modeldeployment.yaml", tmp_path)

    assert DEMO_ROOT_IN_EXAMPLES not in json.dumps(job)
    spec = FineTuneJob.model_validate(job).spec
    assert spec.model.source == f"file://{tmp_path}/model"
    assert spec.dataset.source == f"file://{tmp_path}/agent-lessons.jsonl"
    assert spec.output.destination == f"file://{tmp_path}/out/tiny-flash-agent"
    served = ModelDeployment.model_validate(deployment).spec
    assert served.source.fine_tune_job == job["metadata"]["name"]
    assert served.source.quantization is not None and served.source.quantization.value in [q.value for q in spec.output.quantizations]


def test_the_questions_are_the_lessons_without_their_answers() -> None:
    requests = lesson_requests()

    assert [r["messages"][-1]["content"] for r in requests] == ["What should I pack?", "What is the weather in Paris today?"]
    assert all(m["role"] != "assistant" for r in requests for m in r["messages"])
    assert [t["function"]["name"] for t in requests[1]["tools"]] == ["get_weather"]
    assert "tools" not in requests[0]


def test_the_dataset_is_valid_training_data_for_the_trainer() -> None:
    from glmops_dev.demo import demo_examples_dir
    from glmops_trainer.data.conversation import SourceRef
    from glmops_trainer.data.formats import parse_openai_chat
    from glmops_trainer.data.reader import RawRecord

    lines = (demo_examples_dir() / "agent-lessons.jsonl").read_text().splitlines()
    for number, line in enumerate(lines, start=1):
        conversation, issues = parse_openai_chat(RawRecord(SourceRef("agent-lessons.jsonl", number), json.loads(line)))
        assert conversation is not None and not issues, issues


def test_the_stage_clock_times_each_stage_in_order(capsys) -> None:
    clock = StageClock()
    clock.stage("cluster", "starting")
    clock.stage("operator", "next")
    clock.finish()

    assert list(clock.durations) == ["cluster", "operator"]
    out = capsys.readouterr().out
    assert "==> [cluster] starting" in out and "==> [operator] next" in out
    assert clock.summary().startswith("cluster ")
    assert STAGES[0] == "cluster" and STAGES[-1] == "answer"
