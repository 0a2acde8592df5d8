"""A FineTuneJob that reads its dataset from s3:// and writes its output to s3://, end to end.

The bucket lives on a real S3-compatible server started by the test (moto, signatures checked);
the keys reach the trainer pod only through the Secrets the job names (secretKeyRef), the
endpoint through `endpointUrl`. The trainer pod runs on the node agent, in a network namespace of its own; it reaches the
server at the local cluster's host address (or `GLMOPS_TEST_S3_HOST`, see tests/s3server.py), or
at an existing server named by `GLMOPS_TEST_S3_ENDPOINT`.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from polling import wait_for
from s3server import S3Server, start_s3_server
from statedir import state_dir, tiny_flash_model

from glmops_dev.cluster import KubeCluster

REPO = Path(__file__).resolve().parents[2]
DATASET = REPO / "tests" / "data" / "datasets" / "agentic_small.jsonl"
GROUP, VERSION, PLURAL = "glmops.io", "v1alpha1", "finetunejobs"

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def s3(cluster: KubeCluster) -> Iterator[S3Server]:
    # Trainer pods live in network namespaces of their own: they reach the host at the pod
    # network's host address (where the API server listens too), never at 127.0.0.1.
    network = getattr(cluster, "network", None)
    server = start_s3_server(host=network.plan.host_ip if network is not None else None)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def flash_model() -> Iterator[Path]:
    """A tiny Flash-architecture model the trainer pod reads by file:// URI."""
    with state_dir("s3-e2e") as path:
        yield tiny_flash_model(path)


def _objects(s3: S3Server, bucket: str, prefix: str) -> dict[str, bytes]:
    api = s3.client()
    found = {}
    for page in api.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for item in page.get("Contents", []):
            found[item["Key"]] = api.get_object(Bucket=bucket, Key=item["Key"])["Body"].read()
    return found


def test_an_s3_dataset_and_output_end_to_end(
    cluster, node_agent, glmops_operator, namespace: str, s3: S3Server, flash_model: Path
) -> None:
    api = cluster.api_client()
    core = client.CoreV1Api(api)
    bucket = f"glmops-e2e-{uuid.uuid4().hex[:8]}"
    s3.client().create_bucket(Bucket=bucket)
    s3.client().upload_file(str(DATASET), bucket, "datasets/agentic.jsonl")
    # One Secret per location, as two teams would own them; only keys, the endpoint is a field.
    for name in ("data-keys", "artifact-keys"):
        core.create_namespaced_secret(
            namespace,
            {"metadata": {"name": name}, "stringData": {"AWS_ACCESS_KEY_ID": s3.access_key, "AWS_SECRET_ACCESS_KEY": s3.secret_key, "AWS_REGION": "us-east-1"}},
        )
    destination = f"s3://{bucket}/runs/s3-e2e"
    doc: dict[str, Any] = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "FineTuneJob",
        "metadata": {"name": "s3-e2e"},
        "spec": {
            "model": {"variant": "flash", "source": f"file://{flash_model}"},
            "dataset": {
                "source": f"s3://{bucket}/datasets/agentic.jsonl",
                "validationSplit": 0,
                "credentialsSecret": "data-keys",
                "endpointUrl": s3.endpoint_url,
            },
            "training": {
                "maxSteps": 12,
                "learningRate": 5e-3,
                "sequenceLength": 1024,
                "gradientAccumulationSteps": 1,
                "checkpointEvery": 5,
                "lora": {"rank": 8},
            },
            "output": {
                "destination": destination,
                "formats": ["adapter", "merged"],
                "credentialsSecret": "artifact-keys",
                "endpointUrl": s3.endpoint_url,
            },
        },
    }
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(doc))

    def status() -> dict[str, Any]:
        obj = client.CustomObjectsApi(api).get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "s3-e2e")
        return dict(obj.get("status") or {})

    def diagnostics() -> str:
        logs = cluster.kubectl("logs", "-n", namespace, "-l", "glmops.io/finetunejob=s3-e2e", "--tail", "40", check=False)
        return f"{json.dumps(status(), indent=1)}\n{logs.stdout}{logs.stderr}\n{glmops_operator.log_tail(30)}"

    wait_for("the job to end", lambda: status().get("phase") in ("Succeeded", "Failed"), 900, diagnostics, interval_s=2)
    final = status()
    assert final["phase"] == "Succeeded", diagnostics()

    # status names the bucket, never the local staging folder
    artifacts = final["artifacts"]
    assert artifacts["adapter"]["uri"] == f"{destination}/adapter"
    assert artifacts["manifest"] == f"{destination}/artifacts.json"
    assert artifacts["merged"]["uri"] == f"{destination}/merged"

    objects = _objects(s3, bucket, "runs/s3-e2e/")
    manifest = json.loads(objects["runs/s3-e2e/artifacts.json"])
    assert manifest["job"]["name"] == "s3-e2e"
    listed = {a["path"]: a for a in manifest["artifacts"]}
    assert "adapter/adapter_model.safetensors" in listed
    assert any(path.startswith("merged/") and path.endswith(".safetensors") for path in listed)
    for path, artifact in listed.items():
        assert artifact["uri"] == f"{destination}/{path}"
        assert len(objects[f"runs/s3-e2e/{path}"]) == artifact["sizeBytes"]
    # Resumable checkpoints reached the bucket, each with its COMPLETE marker.
    assert any(key.endswith("/COMPLETE") for key in objects if "/checkpoints/checkpoint-" in key)
    assert not any(".model-cache/" in key or ".export-journal" in key for key in objects)
    assert json.loads(objects["runs/s3-e2e/result.json"])["outputUri"] == destination

    # The keys never reach status, events or the trainer's log.
    logs = cluster.kubectl("logs", "-n", namespace, "-l", "glmops.io/finetunejob=s3-e2e", "--tail", "-1").stdout
    events = json.dumps([e.to_dict() for e in core.list_namespaced_event(namespace).items], default=str)
    for text in (json.dumps(final), events, logs):
        assert s3.secret_key not in text
