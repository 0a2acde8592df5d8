"""The running operator serves its metrics on GLMOPS_METRICS_PORT, and they follow the cluster."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import Samples, free_port, scrape
from kubernetes import client
from polling import wait_for

GROUP, VERSION = "glmops.io", "v1alpha1"


@pytest.fixture
def operator_metrics_url(cluster: Any, namespace: str, tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """`glmops run -n NAMESPACE` as users run it, its metrics on a free loopback port."""
    port = free_port()
    env = {
        **os.environ,
        "KUBECONFIG": str(cluster.kubeconfig),
        "GLMOPS_METRICS_PORT": str(port),
        "GLMOPS_METRICS_ADDRESS": "127.0.0.1",
        "GLMOPS_PROGRESS_POLL_SECONDS": "2",
    }
    log = tmp_path / "operator.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "glmops.cli.main", "run", "-n", namespace],
            env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    try:
        yield f"http://127.0.0.1:{port}/metrics", log
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def _ftj(name: str, **resources: Any) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "FineTuneJob",
        "metadata": {"name": name},
        "spec": {
            "model": {"variant": "flash", "source": "pvc://models/glm-4.7-flash"},
            "dataset": {"source": "pvc://datasets/agent.jsonl"},
            "output": {"destination": f"pvc://outputs/{name}", "formats": ["adapter"]},
            "resources": resources,
        },
    }


def test_the_operator_counts_reconciles_and_reports_jobs_and_deployments(
    cluster: Any, namespace: str, operator_metrics_url: tuple[str, Path]
) -> None:
    url, log = operator_metrics_url
    def diagnose() -> str:
        page = scrape(url)
        shown = {k: v for k, v in page[0].items() if k.startswith("glmops_")} if page else "no page"
        return f"{shown}\n{log.read_text(errors='replace')[-3000:]}"

    first = wait_for("the operator's metrics endpoint", lambda: scrape(url), 120, diagnose)
    samples, kinds = first
    assert kinds["glmops_reconciles"] == "counter" and kinds["glmops_reconcile_duration_seconds"] == "histogram"
    assert kinds["glmops_finetunejobs"] == "gauge" and kinds["process_resident_memory_bytes"] == "gauge"

    custom = client.CustomObjectsApi(cluster.api_client())
    # Refused for good (16 GiB GPUs cannot hold the plan), waiting for its PVCs, and a deployment
    # waiting for a job not applied yet.
    custom.create_namespaced_custom_object(GROUP, VERSION, namespace, "finetunejobs", _ftj("refused", gpuMemoryGiB=16))
    custom.create_namespaced_custom_object(GROUP, VERSION, namespace, "finetunejobs", _ftj("waiting"))
    custom.create_namespaced_custom_object(GROUP, VERSION, namespace, "modeldeployments", {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "ModelDeployment", "metadata": {"name": "coder"},
        "spec": {"source": {"fineTuneJob": "applied-later", "artifact": "gguf", "quantization": "Q4_K_M"},
                 "runtime": "llamacpp", "servedModelName": "coder", "replicas": 2},
    })  # fmt: skip

    def settled() -> Samples | None:
        page = scrape(url)
        if page is None:
            return None
        samples = page[0]
        jobs = samples.get("glmops_finetunejobs", {})
        deployments = samples.get("glmops_modeldeployments", {})
        if (
            jobs.get((("namespace", namespace), ("phase", "Failed"))) == 1
            and jobs.get((("namespace", namespace), ("phase", "Pending"))) == 1
            and deployments.get((("namespace", namespace), ("phase", "Pending"))) == 1
        ):
            return samples
        return None

    samples = wait_for("both jobs and the deployment on the metrics page", settled, 120, diagnose)
    jobs = samples["glmops_finetunejobs"]
    assert jobs[(("namespace", namespace), ("phase", "Training"))] == 0
    assert sum(v for k, v in jobs.items() if ("namespace", namespace) in k) == 2
    deployment = (("modeldeployment", "coder"), ("namespace", namespace))
    assert samples["glmops_modeldeployment_ready"][deployment] == 0
    assert samples["glmops_modeldeployment_replicas"][deployment] == 2
    assert samples["glmops_modeldeployment_ready_replicas"][deployment] == 0

    reconciles = samples["glmops_reconciles_total"]
    assert reconciles[(("kind", "FineTuneJob"),)] >= 2 and reconciles[(("kind", "ModelDeployment"),)] >= 1
    timed = samples["glmops_reconcile_duration_seconds_count"]
    assert timed[(("kind", "FineTuneJob"),)] == reconciles[(("kind", "FineTuneJob"),)]
    assert samples["glmops_reconcile_duration_seconds_sum"][(("kind", "FineTuneJob"),)] > 0
    # A refused spec and a missing PVC are outcomes, not errors of the operator.
    assert samples["glmops_reconcile_errors_total"][(("kind", "FineTuneJob"),)] == 0
