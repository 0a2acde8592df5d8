"""glmops.kube's plain REST requests against the real apiserver."""

from __future__ import annotations

import base64
import json

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from glmops import kube


def test_a_secret_is_seen_to_exist_without_its_values_reaching_the_operator(cluster, namespace: str) -> None:
    api = cluster.api_client()
    client.CoreV1Api(api).create_namespaced_secret(
        namespace, {"metadata": {"name": "hf-token"}, "stringData": {"HF_TOKEN": "hf_do_not_leak"}}
    )
    assert kube.secret_exists(api, namespace, "hf-token")
    assert not kube.secret_exists(api, namespace, "absent")
    answer = kube.request_raw(api, "GET", f"/api/v1/namespaces/{namespace}/secrets/hf-token", accept=f"{kube.PARTIAL_METADATA}, application/json")
    parsed = json.loads(answer)
    assert parsed["kind"] == "PartialObjectMetadata" and "data" not in parsed
    assert b"hf_do_not_leak" not in answer and base64.b64encode(b"hf_do_not_leak") not in answer


def test_requests_name_the_failure(cluster, namespace: str) -> None:
    api = cluster.api_client()
    assert kube.get_job(api, namespace, "absent") is None
    with pytest.raises(ApiException) as failure:
        kube.request(api, "GET", f"/apis/batch/v1/namespaces/{namespace}/jobs/Not_A_Name")
    assert failure.value.status in (400, 404)
    with pytest.raises(ApiException) as refused:
        kube.apply_child(api, {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "bad", "namespace": namespace}, "spec": {}}, "uid")
    assert refused.value.status == 422 and "spec.template" in kube.describe_error(refused.value)
