"""Storage of a FineTuneJob's locations: Secrets by reference per location, endpoints, and what is refused up front."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from glmops.api.finetunejob import FineTuneJobSpec
from glmops.conditions import Reason
from glmops.plan.finetune import ClusterFacts, JobMeta, plan_finetune
from glmops.plan.storage import CREDENTIAL_KEYS
from glmops.settings import Settings

META = JobMeta(name="payments-coder", namespace="ml", uid="uid-1", generation=1)
FACTS = ClusterFacts(secrets=frozenset({"hf-token", "data-keys", "out-keys"}), pvcs=frozenset({"models"}))


def _spec(**sections: dict[str, Any]) -> FineTuneJobSpec:
    raw: dict[str, Any] = {
        "model": {"variant": "flash", "source": "pvc://models/glm-4.7-flash"},
        "dataset": {"source": "s3://ml-data/payments/train.jsonl"},
        "output": {"destination": "s3://ml-artifacts/payments-coder", "quantizations": ["Q4_K_M"]},
    }
    for key, value in sections.items():
        raw[key] = {**raw.get(key, {}), **value}
    return FineTuneJobSpec.model_validate(raw)


def _env(spec: FineTuneJobSpec, facts: ClusterFacts = FACTS) -> dict[str, dict[str, Any]]:
    plan = plan_finetune(META, spec, facts, Settings())
    assert plan.problems == (), plan.problems
    job = next(o for o in plan.objects if o["kind"] == "Job")
    return {e["name"]: e for e in job["spec"]["template"]["spec"]["containers"][0]["env"]}


def test_each_locations_secret_is_referenced_under_its_own_prefix() -> None:
    env = _env(
        _spec(
            model={"credentialsSecret": "hf-token"},
            dataset={"credentialsSecret": "data-keys"},
            output={"credentialsSecret": "out-keys"},
        )
    )
    for prefix, secret in (("", "hf-token"), ("GLMOPS_DATASET_", "data-keys"), ("GLMOPS_OUTPUT_", "out-keys")):
        for key in CREDENTIAL_KEYS:
            entry = env[prefix + key]
            # Referenced, never copied: no value, the kubelet reads the Secret; every key optional.
            assert "value" not in entry
            assert entry["valueFrom"] == {"secretKeyRef": {"name": secret, "key": key, "optional": True}}


def test_no_secret_no_credential_env() -> None:
    env = _env(_spec())
    assert not [name for name in env if any(name.endswith(key) for key in CREDENTIAL_KEYS)]


def test_an_endpoint_field_becomes_the_locations_endpoint_and_wins_over_the_secrets_key() -> None:
    env = _env(
        _spec(
            dataset={"credentialsSecret": "data-keys", "endpointUrl": "http://minio.storage.svc:9000"},
            output={"endpointUrl": "https://rgw.ceph.example:7480/"},
        )
    )
    assert env["GLMOPS_DATASET_AWS_ENDPOINT_URL"] == {"name": "GLMOPS_DATASET_AWS_ENDPOINT_URL", "value": "http://minio.storage.svc:9000"}
    assert env["GLMOPS_OUTPUT_AWS_ENDPOINT_URL"]["value"] == "https://rgw.ceph.example:7480/"
    assert env["GLMOPS_DATASET_AWS_ACCESS_KEY_ID"]["valueFrom"]["secretKeyRef"]["name"] == "data-keys"
    names = [name for name in env if name == "GLMOPS_DATASET_AWS_ENDPOINT_URL"]
    assert names == ["GLMOPS_DATASET_AWS_ENDPOINT_URL"]  # one entry: the field, not also the Secret's key


@pytest.mark.parametrize(
    ("sections", "field", "reason"),
    [
        ({"dataset": {"credentialsSecret": "missing-keys"}}, "spec.dataset.credentialsSecret", Reason.secret_not_found),
        ({"output": {"credentialsSecret": "missing-keys"}}, "spec.output.credentialsSecret", Reason.secret_not_found),
        ({"model": {"credentialsSecret": "missing-token"}}, "spec.model.credentialsSecret", Reason.secret_not_found),
        ({"resources": {"nodes": 2, "gpusPerNode": 1}}, "spec.output.destination", Reason.invalid_spec),
        ({"model": {"endpointUrl": "http://minio:9000"}}, "spec.model.endpointUrl", Reason.invalid_spec),
    ],
)
def test_what_cannot_work_is_a_problem_naming_the_field(sections: dict[str, Any], field: str, reason: Reason) -> None:
    plan = plan_finetune(META, _spec(**sections), FACTS, Settings())
    assert [(p.field, p.reason) for p in plan.problems] == [(field, reason)]
    assert plan.objects == ()


def test_a_missing_secrets_message_says_how_to_create_it() -> None:
    plan = plan_finetune(META, _spec(output={"credentialsSecret": "out-missing"}), FACTS, Settings())
    message = plan.problems[0].message
    assert "'out-missing' does not exist in namespace ml" in message and "AWS_ACCESS_KEY_ID=" in message


@pytest.mark.parametrize(
    ("section", "value"),
    [
        ("dataset", {"source": "s3://ml-data"}),
        ("dataset", {"source": "s3://ml-data/payments/"}),
        ("dataset", {"source": "hf://zai-org/agent-traces"}),
        ("dataset", {"source": "hf://datasets/zai-org/agent-traces"}),
        ("output", {"destination": "hf://zai-org/out"}),
        ("output", {"destination": "s3://Bad_Bucket/out"}),
        ("output", {"endpointUrl": "minio:9000"}),
    ],
)
def test_locations_the_trainer_cannot_read_are_refused_by_the_model(section: str, value: dict[str, str]) -> None:
    with pytest.raises(ValidationError) as info:
        _spec(**{section: value})
    assert section in str(info.value)
