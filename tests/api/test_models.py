"""The API models: camelCase wire format, per-variant defaults, bounds and clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from glmops.api.defaults import VARIANT_DEFAULTS, default_gpus_per_node, resolve_training
from glmops.api.finetunejob import FineTuneJob, FineTuneJobSpec, LoraTarget, Method, Variant
from glmops.api.modeldeployment import ModelDeployment, ModelDeploymentSpec
from glmops.api.syntheticdataset import SyntheticDataset

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def _spec(**overrides: object) -> dict:
    spec: dict = {
        "model": {"variant": "flash", "source": "pvc://models/glm-4.7-flash"},
        "dataset": {"source": "pvc://datasets/train.jsonl"},
        "output": {"destination": "pvc://models/out"},
    }
    spec.update(overrides)
    return spec


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.yaml")), ids=lambda p: p.name)
def test_examples_parse(path: Path) -> None:
    doc = yaml.safe_load(path.read_text())
    model = {"FineTuneJob": FineTuneJob, "ModelDeployment": ModelDeployment, "SyntheticDataset": SyntheticDataset}[doc["kind"]]
    parsed = model.model_validate(doc)
    # What we would write back is what the user wrote, plus defaults (no renamed keys).
    wire = parsed.spec.to_wire()
    for key in doc["spec"]:
        assert key in wire


def test_wire_format_is_camel_case() -> None:
    spec = FineTuneJobSpec.model_validate(
        _spec(training={"learningRate": 1e-4, "sequenceLength": 4096}, resources={"gpuMemoryGiB": 80})
    )
    assert spec.training.learning_rate == 1e-4 and spec.resources.gpu_memory_gi_b == 80
    wire = spec.to_wire()
    assert wire["training"]["learningRate"] == 1e-4 and wire["resources"]["gpuMemoryGiB"] == 80
    assert "failurePolicy" in wire and "failure_policy" not in wire


@pytest.mark.parametrize("variant", list(Variant))
def test_unset_fields_take_the_variant_defaults(variant: Variant) -> None:
    spec = FineTuneJobSpec.model_validate(_spec(model={"variant": variant.value, "source": "hf://zai-org/GLM-4.7"}))
    resolved = resolve_training(spec)
    defaults = VARIANT_DEFAULTS[variant]
    assert resolved.method is Method.qlora
    assert resolved.lora_rank == defaults.lora_rank and resolved.lora_alpha == 2 * defaults.lora_rank
    assert resolved.lora_targets == defaults.lora_targets
    assert default_gpus_per_node(spec) == (1 if variant is Variant.flash else 8)


def test_user_values_win_over_defaults() -> None:
    spec = FineTuneJobSpec.model_validate(
        _spec(training={"method": "lora", "lora": {"rank": 64, "targets": ["attention"]}}, resources={"gpusPerNode": 2})
    )
    resolved = resolve_training(spec)
    assert (resolved.method, resolved.lora_rank, resolved.lora_alpha) == (Method.lora, 64, 128.0)
    assert resolved.lora_targets == (LoraTarget.attention,)
    assert default_gpus_per_node(spec) == 2


@pytest.mark.parametrize(
    "overrides,field",
    [
        ({"training": {"lora": {"rank": 0}}}, "training.lora.rank"),
        ({"training": {"learningRate": 0}}, "training.learningRate"),
        ({"model": {"variant": "huge", "source": "hf://x/y"}}, "model.variant"),
        ({"model": {"variant": "flash", "source": "http://x/y"}}, "model.source"),
        ({"output": {"destination": "hf://x/y"}}, "output.destination"),
        ({"output": {"destination": "pvc://m/o", "quantizations": ["Q2_K"]}}, "output.quantizations.0"),
        ({"dataset": {"source": "pvc://d/t.jsonl", "thinking": "maybe"}}, "dataset.thinking"),
        ({"resources": {"nodes": 0}}, "resources.nodes"),
        ({"training": {"epochs": "two"}}, "training.epochs"),
        ({"training": {"unknownKnob": 1}}, "training.unknownKnob"),
    ],
)
def test_bad_values_name_the_field(overrides: dict, field: str) -> None:
    with pytest.raises(ValidationError) as info:
        FineTuneJobSpec.model_validate(_spec(**overrides))
    locations = [".".join(str(p) for p in e["loc"]) for e in info.value.errors()]
    assert field in locations, locations


def test_modeldeployment_needs_exactly_one_source() -> None:
    base = {"servedModelName": "coder", "runtime": "llamacpp"}
    ModelDeploymentSpec.model_validate({**base, "source": {"fineTuneJob": "coder"}})
    ModelDeploymentSpec.model_validate({**base, "source": {"uri": "pvc://models/coder.gguf"}})
    for source in ({}, {"fineTuneJob": "coder", "uri": "pvc://m/x"}):
        with pytest.raises(ValidationError, match="exactly one of fineTuneJob and uri"):
            ModelDeploymentSpec.model_validate({**base, "source": source})


def test_replicas_are_bounded() -> None:
    with pytest.raises(ValidationError):
        ModelDeploymentSpec.model_validate({"servedModelName": "c", "source": {"fineTuneJob": "c"}, "replicas": 65})
