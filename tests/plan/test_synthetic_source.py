"""A FineTuneJob on `dataset.source: synthetic://NAME`: it waits, trains on the output, or fails with the dataset."""

from __future__ import annotations

import re
from typing import Any

import pytest

from glmops.api.finetunejob import FineTuneJobSpec
from glmops.conditions import Reason
from glmops.contract.config import TrainerConfig
from glmops.contract.uris import (
    UriError,
    UriRole,
    finetune_dataset_pattern,
    parse_uri,
    pattern,
    synthetic_name,
)
from glmops.plan.changes import changed_sections, parse_section_hashes
from glmops.plan.finetune import SPEC_SECTIONS_ANNOTATION, ClusterFacts, JobMeta, plan_finetune
from glmops.plan.synthetic_source import resolve_dataset_source
from glmops.settings import Settings

META = JobMeta(name="student", namespace="ml", uid="u-1")
FACTS = ClusterFacts(server_minor=30, pvcs=frozenset({"models", "datasets"}))


def _dataset(phase: str, **status: Any) -> dict[str, Any]:
    return {"metadata": {"name": "synth"}, "status": {"phase": phase, **status}}


def test_the_uri_grammar_has_a_synthetic_scheme_for_datasets_only() -> None:
    assert synthetic_name("synthetic://payments-synth") == "payments-synth"
    assert synthetic_name("pvc://payments-synth/x.jsonl") is None
    assert synthetic_name("synthetic://a/b.jsonl") is None
    assert re.fullmatch(finetune_dataset_pattern(), "synthetic://payments-synth")
    assert re.fullmatch(finetune_dataset_pattern(), "pvc://datasets/a.jsonl")
    for wrong in ("synthetic://Payments", "synthetic://a/b.jsonl", "synthetic://"):
        assert not re.fullmatch(finetune_dataset_pattern(), wrong), wrong
    # Only the FineTuneJob's dataset.source field knows it: no storage role, so the trainer never sees one.
    assert not re.fullmatch(pattern(UriRole.dataset), "synthetic://payments-synth")
    for role in UriRole:
        with pytest.raises(UriError, match="not supported here"):
            parse_uri("synthetic://a", "spec.model.source", role)


def test_a_synthetic_datasets_files_live_on_claims_or_node_paths() -> None:
    files = pattern(UriRole.dataset, ("pvc", "file"))
    assert re.fullmatch(files, "pvc://datasets/p.jsonl") and re.fullmatch(files, "file:///data/p.jsonl")
    for wrong in ("s3://bucket/p.jsonl", "hf://datasets/org/name/p.jsonl", "pvc://datasets/folder/"):
        assert not re.fullmatch(files, wrong), wrong
    with pytest.raises(UriError, match="scheme 's3' is not supported here"):
        parse_uri("s3://bucket/p.jsonl", "spec.output", UriRole.dataset, ("pvc", "file"))
    with pytest.raises(ValueError, match="not a subset"):
        pattern(UriRole.output, ("hf",))


def test_other_sources_pass_through() -> None:
    assert resolve_dataset_source("pvc://datasets/a.jsonl", "ml", None) == ("pvc://datasets/a.jsonl", None)


@pytest.mark.parametrize(
    ("dataset", "reason", "words", "waits"),
    [
        (None, Reason.synthetic_dataset_not_found, "SyntheticDataset 'synth' does not exist in namespace ml", True),
        (_dataset("Pending"), Reason.synthetic_dataset_not_ready, "is Pending; training starts once it is Ready", True),
        (_dataset("Generating", progress={"promptsDone": 3, "promptsTotal": 10, "samplesKept": 5}), Reason.synthetic_dataset_not_ready,
         "is Generating (3/10 prompts, 5 samples kept)", True),
        (_dataset("Ready"), Reason.synthetic_dataset_not_ready, "is Ready", True),  # Ready without an output: not yet written in status
        (_dataset("Failed", conditions=[{"type": "Ready", "status": "False", "reason": "DeadlineExceeded", "message": "spec.deadlineSeconds passed"}]),
         Reason.synthetic_dataset_failed, "failed (DeadlineExceeded): spec.deadlineSeconds passed", False),
    ],
)  # fmt: skip
def test_the_job_waits_for_the_dataset_and_fails_with_it(dataset: Any, reason: str, words: str, waits: bool) -> None:
    source, problem = resolve_dataset_source("synthetic://synth", "ml", dataset)
    assert source is None and problem is not None
    assert (problem.reason, problem.field, problem.waits) == (reason, "spec.dataset.source", waits)
    assert words in problem.message


def test_a_ready_dataset_is_trained_on_from_its_output_and_the_spec_stays_as_written() -> None:
    ready = _dataset("Ready", output={"uri": "pvc://datasets/payments/synthetic.jsonl", "sha256": "ab" * 32})
    source, problem = resolve_dataset_source("synthetic://synth", "ml", ready)
    assert (source, problem) == ("pvc://datasets/payments/synthetic.jsonl", None)
    spec = FineTuneJobSpec.model_validate({
        "model": {"variant": "flash", "source": "pvc://models/glm-4.7-flash"},
        "dataset": {"source": "synthetic://synth"},
        "output": {"destination": "pvc://models/student"},
    })  # fmt: skip
    plan = plan_finetune(META, spec, ClusterFacts(**{**FACTS.__dict__, "dataset_source": source}), Settings())
    assert plan.problems == ()
    assert TrainerConfig.model_validate(plan.trainer_config).data.source == "pvc://datasets/payments/synthetic.jsonl"
    pod = plan.objects[-1]["spec"]["template"]["spec"]
    claims = {v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"] if "persistentVolumeClaim" in v}
    assert claims == {"models", "datasets"}  # the dataset's claim is mounted (read-only)
    hashes = parse_section_hashes(plan.objects[-1]["metadata"]["annotations"][SPEC_SECTIONS_ANNOTATION])
    assert changed_sections(hashes, spec) == []  # the Job remembers the spec as written, not as resolved
    # Unresolved, the planner refuses rather than hand the trainer a URI it cannot read; a missing
    # claim of the resolved output waits like any missing claim.
    assert [p.reason for p in plan_finetune(META, spec, FACTS, Settings()).problems] == [Reason.synthetic_dataset_not_ready]
    missing = plan_finetune(META, spec, ClusterFacts(server_minor=30, pvcs=frozenset({"models"}), dataset_source=source), Settings())
    assert [(p.reason, p.field) for p in missing.problems] == [(Reason.pvc_not_found, "spec.dataset.source")]
