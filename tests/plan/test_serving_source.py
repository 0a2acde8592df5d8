"""Artifact resolution: what a ModelDeployment waits for, what it refuses, and what it serves."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError
from serving_support import SHA, facts, ftj, plan, spec

from glmops.api.modeldeployment import ArtifactKind
from glmops.plan.serving_source import resolve_source, view_job

# --- waiting -------------------------------------------------------------------------------------


@pytest.mark.parametrize("phase", ["", "Pending", "Validating", "Training", "Exporting"])
def test_a_job_that_has_not_succeeded_is_waited_for_not_refused(phase: str) -> None:
    result = plan(spec(), facts(ftj(phase=phase)))
    assert result.problems == () and result.objects == ()
    (wait,) = result.waits
    assert wait.reason == "FineTuneJobNotSucceeded" and wait.field == "spec.source.fineTuneJob"
    assert "coder" in wait.message and "Succeeded" in wait.message


def test_a_job_that_does_not_exist_yet_is_waited_for() -> None:
    result = plan(spec(), facts())
    (wait,) = result.waits
    assert (wait.reason, wait.field) == ("FineTuneJobNotFound", "spec.source.fineTuneJob")
    assert result.problems == ()


def test_what_the_job_spec_rules_out_is_refused_while_it_still_trains() -> None:
    # No need to wait hours to learn that Q6_K will never exist.
    result = plan(spec(source={"quantization": "Q6_K"}), facts(ftj(phase="Training")))
    assert [p.reason for p in result.problems] == ["QuantizationNotProduced"]


def test_adapters_wait_for_every_job() -> None:
    cluster = facts(ftj(), ftj("team-b", phase="Training"))
    result = plan(
        spec(runtime="vllm", source={"artifact": "adapter"}, adapters=[{"fineTuneJob": "team-b", "servedModelName": "team-b"}]),
        cluster,
    )
    assert [(w.reason, w.field) for w in result.waits] == [("FineTuneJobNotSucceeded", "spec.adapters[0].fineTuneJob")]


# --- refusals: each names the field and the fix, and nothing is created ---------------------------

QUANTS_Q4 = ("Q4_K_M",)
REFUSALS: list[tuple[str, dict[str, Any], list[dict[str, Any]] | None, str, str, str]] = [
    # (case, spec fields, jobs (None: the default Succeeded `coder`), reason, field, a word of the fix)
    ("gguf-on-vllm", {"runtime": "vllm", "source": {"artifact": "gguf"}}, None, "ArtifactRuntimeMismatch", "spec.source.artifact", "merged"),
    ("merged-on-llamacpp", {"source": {"artifact": "merged"}}, None, "ArtifactRuntimeMismatch", "spec.source.artifact", "gguf"),
    ("adapter-on-llamacpp", {"source": {"artifact": "adapter"}}, None, "ArtifactRuntimeMismatch", "spec.source.artifact", "vllm"),
    ("gguf-not-exported", {}, [ftj(formats=("adapter", "merged"))], "ArtifactNotProduced", "spec.source.artifact", "formats"),
    ("merged-not-exported", {"runtime": "vllm"}, [ftj(formats=("adapter", "gguf"))], "ArtifactNotProduced", "spec.source.artifact", "formats"),
    ("merged-not-recorded", {"runtime": "vllm"}, [ftj(artifacts={"adapter": {"uri": "pvc://models/coder/adapter"}})], "ArtifactNotProduced", "spec.source.artifact", "status.artifacts"),
    ("quantization-not-made", {"source": {"quantization": "Q3_K_M"}}, None, "QuantizationNotProduced", "spec.source.quantization", "Q4_K_M"),
    ("quantization-not-recorded", {"source": {"quantization": "Q8_0"}}, [ftj(artifacts={"gguf": [{"quantization": "Q4_K_M", "uri": "pvc://models/coder/a.gguf"}]})], "QuantizationNotProduced", "spec.source.quantization", "recorded"),
    ("quantization-on-merged", {"runtime": "vllm", "source": {"quantization": "Q8_0"}}, None, "FieldNotForRuntime", "spec.source.quantization", "remove"),
    ("job-failed", {}, [ftj(phase="Failed")], "FineTuneJobFailed", "spec.source.fineTuneJob", "new FineTuneJob"),
    ("job-cancelled", {}, [ftj(phase="Cancelled")], "FineTuneJobFailed", "spec.source.fineTuneJob", "new FineTuneJob"),
    ("adapter-other-base", {"runtime": "vllm", "source": {"artifact": "adapter"}, "adapters": [{"fineTuneJob": "other", "servedModelName": "other"}]}, [ftj(), ftj("other", base="pvc://models/another-flash")], "AdapterBaseMismatch", "spec.adapters[0].fineTuneJob", "own base"),
    ("adapter-other-variant", {"runtime": "vllm", "source": {"uri": "pvc://models/glm-4.7-flash", "fineTuneJob": None, "variant": "flash"}, "adapters": [{"fineTuneJob": "big", "servedModelName": "big"}]}, [ftj("big", variant="flagship", base="hf://zai-org/GLM-4.7")], "AdapterBaseMismatch", "spec.adapters[0].fineTuneJob", "own base"),
    ("adapter-not-exported", {"runtime": "vllm", "source": {"artifact": "adapter"}, "adapters": [{"fineTuneJob": "noad", "servedModelName": "noad"}]}, [ftj(), ftj("noad", formats=("merged",))], "ArtifactNotProduced", "spec.adapters[0].fineTuneJob", "formats"),
    ("adapters-on-merged", {"runtime": "vllm", "adapters": [{"fineTuneJob": "coder", "servedModelName": "two"}]}, None, "AdapterNeedsBase", "spec.source", "spec.source.uri"),
    ("adapters-on-llamacpp", {"adapters": [{"fineTuneJob": "coder", "servedModelName": "two"}]}, None, "FieldNotForRuntime", "spec.adapters", "vllm"),
    ("duplicate-names", {"runtime": "vllm", "source": {"artifact": "adapter"}, "adapters": [{"fineTuneJob": "b", "servedModelName": "coder"}]}, [ftj(), ftj("b")], "DuplicateModelName", "spec.adapters[0].servedModelName", "own name"),
    ("adapter-base-on-s3", {"runtime": "vllm", "source": {"artifact": "adapter"}}, [ftj(base="s3://bucket/glm-4.7-flash")], "UriNotServable", "spec.source.fineTuneJob", "pvc://"),
    ("uri-on-s3", {"source": {"fineTuneJob": None, "uri": "s3://models/glm-4.7-flash-Q4_K_M.gguf", "variant": "flash"}}, [], "UriNotServable", "spec.source.uri", "PersistentVolumeClaim"),
    ("hub-repo-on-llamacpp", {"source": {"fineTuneJob": None, "uri": "hf://unsloth/GLM-4.7-Flash-GGUF", "variant": "flash"}}, [], "ArtifactRuntimeMismatch", "spec.source.uri", ".gguf"),
    ("token-without-hub", {"source": {"credentialsSecret": "hf-token"}}, None, "InvalidSpec", "spec.source.credentialsSecret", "hf://"),
    ("uri-without-variant", {"source": {"fineTuneJob": None, "uri": "pvc://models/coder.gguf"}}, [], "VariantRequired", "spec.source.variant", "flash"),
    ("uri-folder-on-llamacpp", {"source": {"fineTuneJob": None, "uri": "pvc://models/coder", "variant": "flash", "artifact": "gguf"}}, [], "ArtifactRuntimeMismatch", "spec.source.uri", ".gguf"),
    ("uri-gguf-on-vllm", {"runtime": "vllm", "source": {"fineTuneJob": None, "uri": "pvc://models/coder.gguf", "variant": "flash"}}, [], "ArtifactRuntimeMismatch", "spec.source.uri", "merged"),
    ("variant-with-job", {"source": {"variant": "flagship"}}, None, "InvalidSpec", "spec.source.variant", "remove"),
    ("context-too-long", {"contextLength": 262144}, None, "ContextTooLong", "spec.contextLength", "202752"),
    ("tp-not-dividing-heads", {"runtime": "vllm", "gpusPerReplica": 8}, None, "TensorParallelMismatch", "spec.gpusPerReplica", "1, 2, 4"),
    ("vllm-on-cpu", {"runtime": "vllm", "gpusPerReplica": 0}, None, "FieldNotForRuntime", "spec.gpusPerReplica", "llamacpp"),
    ("gpu-layers-on-vllm", {"runtime": "vllm", "gpuLayers": 20}, None, "FieldNotForRuntime", "spec.gpuLayers", "remove"),
    ("mtp-on-llamacpp", {"speculativeDecoding": "mtp"}, None, "FieldNotForRuntime", "spec.speculativeDecoding", "vllm"),
    ("gpu-too-small", {"gpuMemoryGiB": 16, "gpusPerReplica": 1}, None, "GpuMemoryTooSmall", "spec.gpuMemoryGiB", "gpuMemoryGiB to at least"),
    ("no-node-has-it", {"gpuMemoryGiB": 300}, None, "NotEnoughGpus", "spec.gpuMemoryGiB", "largest offer"),
    ("no-such-product", {"placement": {"gpuProduct": "NVIDIA-B200"}}, None, "NotEnoughGpus", "spec.placement.gpuProduct", "NVIDIA-B200"),
    ("extra-arg-port", {"extraArgs": ["--flash-attn", "on", "--port", "9000"]}, None, "ExtraArgOwned", "spec.extraArgs[2]", "--port"),
    ("extra-arg-api-key", {"extraArgs": ["--api-key=hunter2"]}, None, "ExtraArgOwned", "spec.extraArgs[0]", "--api-key"),
    ("extra-arg-vllm-model", {"runtime": "vllm", "extraArgs": ["--model=/other"]}, None, "ExtraArgOwned", "spec.extraArgs[0]", "--model"),
    ("expert-parallel-with-lora", {"runtime": "vllm", "source": {"artifact": "adapter"}, "extraArgs": ["--enable-expert-parallel"]}, None, "ExtraArgOwned", "spec.extraArgs[0]", "expert parallelism"),
]


@pytest.mark.parametrize(("case", "fields", "jobs", "reason", "field", "fix"), REFUSALS, ids=[r[0] for r in REFUSALS])
def test_what_cannot_work_is_refused_with_the_field_and_the_fix(
    case: str, fields: dict[str, Any], jobs: list[dict[str, Any]] | None, reason: str, field: str, fix: str
) -> None:
    cluster = facts(*(jobs if jobs is not None else [ftj()]))
    result = plan(spec(**fields), cluster)
    assert result.objects == () and not result.runnable
    matching = [p for p in result.problems if p.reason == reason and p.field == field]
    assert matching, f"{case}: {result.problems} {result.waits}"
    assert fix in matching[0].message, matching[0].message


def test_a_hub_uri_without_a_repository_is_refused_by_the_schema() -> None:
    """`hf://NAME` (no ORG/) never reaches the planner: the CRD's URI pattern refuses it at apply time."""
    with pytest.raises(ValidationError, match="source.uri"):
        spec(source={"fineTuneJob": None, "uri": "hf://GLM-4.7-Flash", "variant": "flash"})


def test_the_refusals_are_many_and_distinct() -> None:
    assert len({(r[3], r[4]) for r in REFUSALS}) >= 20


def test_a_bad_name_for_a_service_is_refused() -> None:
    from serving_support import META

    result = plan(spec(), meta=type(META)("9.coder", "ml", "u"))
    assert [(p.reason, p.field) for p in result.problems] == [("InvalidName", "metadata.name")]


# --- what a PVC or Secret that is missing means: wait, do not refuse -------------------------------


def test_a_missing_secret_or_claim_is_waited_for() -> None:
    result = plan(spec(apiKeySecret="absent"), facts(ftj(), pvcs=frozenset()))
    assert result.problems == () and result.objects == ()
    assert sorted((m.reason, m.field) for m in result.missing) == [
        ("PersistentVolumeClaimNotFound", "spec.source.fineTuneJob"),
        ("SecretNotFound", "spec.apiKeySecret"),
    ]
    secret = next(m for m in result.missing if m.reason == "SecretNotFound")
    assert "kubectl create secret generic absent --from-literal=api-key=" in secret.message


# --- what is served -------------------------------------------------------------------------------


def test_the_gguf_served_is_the_one_asked_for_with_its_sha256() -> None:
    resolution = resolve_source(spec(source={"quantization": "Q8_0"}), "ml", {"coder": ftj()})
    model = resolution.model
    assert model is not None and model.kind is ArtifactKind.gguf
    assert model.uri == "pvc://models/coder/gguf/Q8_0/coder-Q8_0.gguf" and model.sha256 == SHA
    assert model.quantization == "Q8_0" and model.size_bytes == 18_000_000_001


def test_the_default_gguf_is_the_first_one_recorded() -> None:
    model = resolve_source(spec(), "ml", {"coder": ftj()}).model
    assert model is not None and model.quantization == "Q4_K_M"


def test_vllm_serves_merged_weights_by_default() -> None:
    model = resolve_source(spec(runtime="vllm"), "ml", {"coder": ftj()}).model
    assert model is not None and model.kind is ArtifactKind.merged and model.uri == "pvc://models/coder/merged"


def test_an_adapter_source_serves_the_jobs_base_with_the_adapter_under_the_served_name() -> None:
    model = resolve_source(spec(runtime="vllm", source={"artifact": "adapter"}), "ml", {"coder": ftj()}).model
    assert model is not None
    assert model.uri == "pvc://models/glm-4.7-flash" and model.model_name == "coder-base"
    assert [(a.name, a.uri) for a in model.adapters] == [("coder", "pvc://models/coder/adapter")]
    assert model.served_names == ["coder-base", "coder"]


def test_adapters_of_several_jobs_share_one_base() -> None:
    jobs = {"coder": ftj(), "b": ftj("b", targets=["attention"]), "c": ftj("c", rank=64, targets=["attention"])}
    md = spec(
        runtime="vllm",
        source={"fineTuneJob": None, "uri": "pvc://models/glm-4.7-flash", "variant": "flash"},
        adapters=[{"fineTuneJob": n, "servedModelName": f"team-{n}"} for n in ("coder", "b", "c")],
    )
    model = resolve_source(md, "ml", jobs).model
    assert model is not None and model.model_name == "coder"
    # the trainer's adapters keep one rank everywhere, routed experts included (no peft rank_pattern)
    assert [(a.name, a.rank, a.fused_experts) for a in model.adapters] == [
        ("team-coder", 16, True), ("team-b", 16, False), ("team-c", 64, False),
    ]  # fmt: skip


def test_an_adapter_trained_from_the_hub_may_be_served_on_a_local_copy_with_a_note() -> None:
    jobs = {"hub": ftj("hub", base="hf://zai-org/GLM-4.7-Flash")}
    md = spec(
        runtime="vllm",
        source={"fineTuneJob": None, "uri": "pvc://models/glm-4.7-flash", "variant": "flash"},
        adapters=[{"fineTuneJob": "hub", "servedModelName": "hub"}],
    )
    resolution = resolve_source(md, "ml", jobs)
    assert resolution.model is not None and resolution.problems == ()
    assert any("cannot be compared" in note for note in resolution.notes)


def test_a_uri_gguf_takes_its_quantization_from_the_file_name() -> None:
    md = spec(source={"fineTuneJob": None, "uri": "file:///models/glm-4.7-flash-Q5_K_M.gguf", "variant": "flash"})
    model = resolve_source(md, "ml", {}).model
    assert model is not None and model.quantization == "Q5_K_M" and model.sha256 is None


def test_a_job_with_an_invalid_spec_is_refused_not_crashed_on() -> None:
    broken = ftj()
    broken["spec"]["output"]["formats"] = ["onnx"]
    assert isinstance(view_job(broken), str)
    result = plan(spec(), facts(broken))
    assert [p.reason for p in result.problems] == ["FineTuneJobFailed"]
