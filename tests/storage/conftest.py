"""Fixtures of the storage tests: one S3-compatible server per session (moto on loopback), a bucket per test."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from s3server import S3Server, start_s3_server


@pytest.fixture(scope="session")
def s3() -> Iterator[S3Server]:
    """A running S3-compatible server that checks signatures, and a key it accepts."""
    server = start_s3_server()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def bucket(s3: S3Server) -> Iterator[str]:
    """A new empty bucket, emptied and deleted after the test."""
    name = f"glmops-test-{uuid.uuid4().hex[:12]}"
    client = s3.client()
    client.create_bucket(Bucket=name)
    try:
        yield name
    finally:
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=name):
            for item in page.get("Contents", []):
                client.delete_object(Bucket=name, Key=item["Key"])
        client.delete_bucket(Bucket=name)


@pytest.fixture
def output_env(s3: S3Server, monkeypatch: pytest.MonkeyPatch) -> S3Server:
    """The trainer's env for an s3:// output and dataset, as the operator sets it from their Secrets."""
    for prefix in ("GLMOPS_DATASET_", "GLMOPS_OUTPUT_"):
        for key, value in s3.env(prefix).items():
            monkeypatch.setenv(key, value)
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(key, raising=False)
    return s3
