"""Two operator replicas from the chart, one active: the active one is killed during a burst of
FineTuneJobs, the standby takes the Lease over, and every job ends Succeeded exactly once.

The release is the chart's (two replicas, leader election on a Lease, cluster-wide RBAC), run by
the node agent as pods; the active replica is killed with SIGKILL (no hand-over: the standby
must wait the lease out). What "handled once" means, checked per job: one trainer Job and one
export Job (each with one pod), phases that never go back, each transition event posted once.

The trainer pods run a stand-in (a `sitecustomize` on their PYTHONPATH, for jobs named `ha-*`):
it keeps the pod running for a few seconds and ends with the trainer's result record, as the real
trainer does at its end. This test is about the operator's control loop; the real trainer runs
in tests/chart/test_chart_release.py and tests/operator.
"""

from __future__ import annotations

import json
import os
import signal
import textwrap
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from polling import wait_for
from statedir import state_dir
from watching import StatusRecorder

from glmops import kube
from glmops.leader import holder_pod
from glmops_dev.chart import (
    RELEASE,
    RELEASE_NAMESPACE,
    install_release,
    uninstall_release,
    wait_for_leader,
)

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]
GROUP, VERSION = "glmops.io", "v1alpha1"
JOBS = 10

STAND_IN = '''
"""Stand-in trainer for tests/ha (jobs named ha-*): run a few seconds, then end with a result record."""
import json
import os
import sys
import time

if os.environ.get("GLMOPS_JOB", "").startswith("ha-"):
    export = "export" in sys.argv
    time.sleep(2 if export else 5)
    record = {"v": 1, "status": "Succeeded", "step": 10, "totalSteps": 10, "trainLoss": 0.5,
              "modelBytes": 4096, "largestShardBytes": 2048, "adapterBytes": 512,
              "artifacts": {"adapter": "file:///ha/" + os.environ["GLMOPS_JOB"] + "/adapter"}}
    with open("/dev/termination-log", "w") as stream:
        json.dump(record, stream)
    os._exit(0)
'''


@pytest.fixture
def stand_in() -> Iterator[Path]:
    with state_dir("ha") as site:
        (site / "sitecustomize.py").write_text(textwrap.dedent(STAND_IN))
        yield site


def ftj(name: str) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "FineTuneJob", "metadata": {"name": name},
        "spec": {
            "model": {"variant": "flash", "source": "file:///models/glm-4.7-flash"},
            "dataset": {"source": "file:///data/agent.jsonl"},
            "output": {"destination": f"file:///out/{name}", "formats": ["adapter"]},
        },
    }


def holder_identity(cluster: Any) -> str:
    """The operator process that holds the Lease (pod name and a per-process suffix)."""
    with cluster.api_client() as api:
        lease = kube.get_lease(api, RELEASE_NAMESPACE, RELEASE)
    return str(((lease or {}).get("spec") or {}).get("holderIdentity") or "")


def running_pid(pod: dict[str, Any]) -> int | None:
    for status in (pod.get("status") or {}).get("containerStatuses") or []:
        if (status.get("state") or {}).get("running") and status.get("containerID", "").startswith("local://"):
            return int(status["containerID"].removeprefix("local://"))
    return None


def test_killing_the_active_operator_mid_burst_loses_no_job_and_handles_none_twice(
    cluster: Any, node_agent: Any, namespace: str, stand_in: Path
) -> None:
    core = client.CoreV1Api(cluster.api_client())
    custom = client.CustomObjectsApi(cluster.api_client())
    release = install_release(cluster, {
        "replicaCount": 2,
        "leaderElection": {"leaseDurationSeconds": 8, "renewDeadlineSeconds": 5, "retryPeriodSeconds": 1},
        "settings": {"extraTrainerEnv": {"PYTHONPATH": str(stand_in)}},
    })
    try:
        check_failover(cluster, namespace, core, custom)
    finally:
        uninstall_release(cluster, release)


def check_failover(cluster: Any, namespace: str, core: client.CoreV1Api, custom: client.CustomObjectsApi) -> None:
    with StatusRecorder(cluster.api_client(), namespace, "finetunejobs") as recorder:
        first = wait_for_leader(cluster)

        def pods() -> list[dict[str, Any]]:
            raw = core.list_namespaced_pod(RELEASE_NAMESPACE, label_selector=f"app.kubernetes.io/instance={RELEASE}", _preload_content=False)
            return list(json.loads(raw.data)["items"])

        def both_ready() -> bool:
            ready = [p for p in pods() if any(c["type"] == "Ready" and c["status"] == "True" for c in p["status"].get("conditions") or [])]
            return len(ready) == 2

        def diagnose() -> str:
            logs = "".join(
                cluster.kubectl("logs", "-n", RELEASE_NAMESPACE, p["metadata"]["name"], "--tail", "15", check=False).stdout for p in pods()
            )
            table = cluster.kubectl("get", "ftj,jobs,pods", "-n", namespace, check=False).stdout
            return f"{table}\n{dict(recorder.phases)}\n{logs}"

        wait_for("both replicas ready (leader and standby)", both_ready, 180, diagnose)
        for i in range(JOBS // 2):
            custom.create_namespaced_custom_object(GROUP, VERSION, namespace, "finetunejobs", ftj(f"ha-{i:02d}"))

        def some_admitted() -> bool:
            items = custom.list_namespaced_custom_object(GROUP, VERSION, namespace, "finetunejobs")["items"]
            return any((j.get("status") or {}).get("trainerJob") for j in items)

        wait_for("the leader to admit the first jobs", some_admitted, 120, diagnose)
        (active,) = [p for p in pods() if p["metadata"]["name"] == first]
        killed = holder_identity(cluster)
        pid = running_pid(active)
        assert pid is not None
        os.killpg(pid, signal.SIGKILL)  # a crash: the Lease is not handed over
        for i in range(JOBS // 2, JOBS):
            custom.create_namespaced_custom_object(GROUP, VERSION, namespace, "finetunejobs", ftj(f"ha-{i:02d}"))

        def new_leader() -> str | None:
            holder = holder_identity(cluster)
            return holder if holder and holder != killed else None

        # Usually the other pod: it has watched the Lease all along, while the killed container's
        # restart starts counting the lease duration anew when it first reads it.
        second = wait_for("a standby to take the Lease over", new_leader, 120, diagnose)

        def all_ended() -> bool:
            items = custom.list_namespaced_custom_object(GROUP, VERSION, namespace, "finetunejobs")["items"]
            phases = [(j.get("status") or {}).get("phase") for j in items]
            return len(items) == JOBS and all(p in ("Succeeded", "Failed", "Cancelled") for p in phases)

        wait_for(f"all {JOBS} jobs to end", all_ended, 600, diagnose)

    # None lost: every job succeeded, through the usual phases, never going back.
    items = custom.list_namespaced_custom_object(GROUP, VERSION, namespace, "finetunejobs")["items"]
    assert sorted((j["metadata"]["name"], j["status"]["phase"]) for j in items) == [(f"ha-{i:02d}", "Succeeded") for i in range(JOBS)]
    order = ["", "Pending", "Training", "Exporting", "Succeeded"]  # "": created, no status yet
    for name, phases in recorder.phases.items():
        assert phases == sorted(set(phases), key=order.index), f"{name}: {phases}"
        assert phases[-1] == "Succeeded"

    # None handled twice: one trainer Job and one export Job per job, each with its one pod.
    jobs = json.loads(client.BatchV1Api(cluster.api_client()).list_namespaced_job(namespace, _preload_content=False).data)["items"]
    per_job = Counter((j["metadata"]["labels"]["glmops.io/finetunejob"], j["metadata"]["labels"]["glmops.io/component"]) for j in jobs)
    assert per_job == Counter({(f"ha-{i:02d}", c): 1 for i in range(JOBS) for c in ("trainer", "export")})
    run_pods = json.loads(core.list_namespaced_pod(namespace, _preload_content=False).data)["items"]
    assert Counter(p["metadata"]["labels"]["job-name"] for p in run_pods) == Counter({j["metadata"]["name"]: 1 for j in jobs})
    # ... and each transition told once: no event reason twice for one job.
    events = json.loads(core.list_namespaced_event(namespace, _preload_content=False).data)["items"]
    told = Counter((e["involvedObject"]["name"], e["reason"]) for e in events if e["involvedObject"]["kind"] == "FineTuneJob")
    assert told and max(told.values()) == 1, [k for k, v in told.items() if v > 1]

    # The new leader kept the Lease; the killed container came back (restartPolicy Always), and the
    # replica that does not lead stands by.
    with cluster.api_client() as api:
        lease = kube.get_lease(api, RELEASE_NAMESPACE, RELEASE)
    assert lease is not None and lease["spec"]["holderIdentity"] == second and lease["spec"]["leaseTransitions"] >= 1
    standby = [p["metadata"]["name"] for p in pods() if p["metadata"]["name"] != holder_pod(second)]
    assert len(standby) == 1
    assert "stands by" in cluster.kubectl("logs", "-n", RELEASE_NAMESPACE, standby[0], check=False).stdout
