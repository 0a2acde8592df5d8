"""Remote locations parse into what the storage functions take; credentials come from the location's own variables."""

from __future__ import annotations

import pytest

from glmops_trainer.storage import (
    HfLocation,
    Role,
    S3Location,
    S3Settings,
    StorageError,
    hf_token,
    parse_remote,
    s3_settings,
)


@pytest.mark.parametrize(
    ("uri", "role", "expected"),
    [
        ("s3://ml-data/payments/train.jsonl", Role.dataset, S3Location("ml-data", "payments/train.jsonl")),
        ("s3://ml-data/out/", Role.output, S3Location("ml-data", "out")),
        ("s3://ml-data", Role.output, S3Location("ml-data", "")),
        ("s3://ml-data/models/glm", Role.model, S3Location("ml-data", "models/glm")),
        ("hf://datasets/zai-org/agent-traces/data/train.jsonl", Role.dataset, HfLocation("zai-org/agent-traces", "data/train.jsonl")),
        ("hf://datasets/zai-org/agent-traces@v1.2/train.jsonl", Role.dataset, HfLocation("zai-org/agent-traces", "train.jsonl", "v1.2")),
        # The Hub's forms of revisions with a slash: special refs as they are, branch names with %2F.
        ("hf://datasets/org/name@refs/pr/3/a.jsonl", Role.dataset, HfLocation("org/name", "a.jsonl", "refs/pr/3")),
        ("hf://datasets/org/name@feature%2Fnew-data/a.jsonl", Role.dataset, HfLocation("org/name", "a.jsonl", "feature/new-data")),
        ("hf://zai-org/GLM-4.7-Flash@v1", Role.model, HfLocation("zai-org/GLM-4.7-Flash", "", "v1", "model")),
    ],
)
def test_parse(uri: str, role: Role, expected: S3Location | HfLocation) -> None:
    assert parse_remote(uri, "f", role) == expected
    assert parse_remote(expected.uri, "f", role) == expected  # the URI form round-trips


@pytest.mark.parametrize(
    ("uri", "role", "hint"),
    [
        ("s3://ML_Data/x.jsonl", Role.dataset, "valid bucket name"),
        ("s3://ml-data/a/../b.jsonl", Role.dataset, "'..'"),
        ("s3://ml-data/payments/", Role.dataset, "names a folder, not a file"),
        ("hf://zai-org/agent-traces", Role.dataset, "hf://datasets/ORG/NAME[@REVISION]/PATH"),
        ("hf://datasets/zai-org/agent-traces", Role.dataset, "not a file in it"),
        ("hf://datasets/zai-org/agent-traces@/x.jsonl", Role.dataset, "empty revision"),
        ("hf://datasets/zai org/traces/x.jsonl", Role.dataset, "not a Hub repository id"),
        # The old form, revision after the path, is refused with the Hub's order.
        ("hf://datasets/zai-org/traces/x.jsonl@v1", Role.dataset, "revision goes right after the name"),
        ("hf://zai-org/out", Role.output, "only read from"),
        ("gs://bucket/x", Role.dataset, "not a remote location"),
    ],
)
def test_malformed_locations_name_the_field_and_the_form(uri: str, role: Role, hint: str) -> None:
    with pytest.raises(StorageError) as info:
        parse_remote(uri, "dataset.source", role)
    assert str(info.value).startswith("dataset.source: ") and hint in str(info.value), str(info.value)
    assert not info.value.transient


def test_child_locations() -> None:
    root = S3Location("ml-data", "")
    assert root.child("adapter/x.json") == S3Location("ml-data", "adapter/x.json")
    assert S3Location("ml-data", "runs/a").child("/checkpoints/").uri == "s3://ml-data/runs/a/checkpoints"


def test_a_location_with_its_own_secret_uses_only_its_own_keys_and_endpoint() -> None:
    env = {
        # the model's Secret: standard names, a MinIO endpoint
        "AWS_ACCESS_KEY_ID": "model-key",
        "AWS_SECRET_ACCESS_KEY": "model-secret",
        "AWS_SESSION_TOKEN": "model-token",
        "AWS_ENDPOINT_URL": "http://minio:9000",
        # the dataset's Secret: AWS itself, no endpoint
        "GLMOPS_DATASET_AWS_ACCESS_KEY_ID": "data-key",
        "GLMOPS_DATASET_AWS_SECRET_ACCESS_KEY": "data-secret",
        "GLMOPS_DATASET_AWS_REGION": "eu-west-1",
    }
    assert s3_settings(Role.dataset, env) == S3Settings("data-key", "data-secret", None, None, "eu-west-1")
    assert s3_settings(Role.model, env) == S3Settings("model-key", "model-secret", "model-token", "http://minio:9000", None)
    # No Secret of its own: the output shares the model's keys and endpoint.
    assert s3_settings(Role.output, env) == s3_settings(Role.model, env)


def test_an_endpoint_field_wins_and_keeps_the_shared_keys() -> None:
    env = {
        "AWS_ACCESS_KEY_ID": "key",
        "AWS_SECRET_ACCESS_KEY": "secret",
        "AWS_ENDPOINT_URL": "http://other:9000",
        "GLMOPS_OUTPUT_AWS_ENDPOINT_URL": "http://ceph-rgw:7480",
    }
    settings = s3_settings(Role.output, env)
    assert (settings.access_key_id, settings.endpoint_url) == ("key", "http://ceph-rgw:7480")
    # AWS_ENDPOINT_URL_S3 (the service-specific variable) beats the generic one.
    assert s3_settings(Role.dataset, {"AWS_ENDPOINT_URL_S3": "http://s3only:9000", "AWS_ENDPOINT_URL": "http://x"}).endpoint_url == "http://s3only:9000"


def test_settings_never_show_secrets() -> None:
    settings = S3Settings("AKIAEXAMPLE", "very-secret", "session-secret", "http://minio:9000")
    assert "very-secret" not in repr(settings) and "session-secret" not in repr(settings) and "AKIA" not in repr(settings)


def test_hf_token_of_the_dataset() -> None:
    assert hf_token(Role.dataset, "HF_TOKEN", {"HF_TOKEN": "model", "GLMOPS_DATASET_HF_TOKEN": "data"}) == "data"
    assert hf_token(Role.dataset, "HF_TOKEN", {"HF_TOKEN": "model"}) == "model"
    assert hf_token(Role.dataset, "HF_TOKEN", {}) is None
