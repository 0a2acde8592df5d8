"""How much the operator costs over the minimal API requests, for a burst of FineTuneJobs.

    .venv/bin/python bench/operator_scale.py [--jobs 500] [--threads 8] [--background 2000]

In one run, each side on a fresh local control plane (the test suite's); every job names a PVC
(model, data, output) and a credentials Secret, so the operator's checks are paid:
  T_raw  a client makes the minimal requests for N jobs with T threads, through the same raw
         REST calls the operator uses (glmops.kube): create the FineTuneJob, check its Secret
         and its PVC (metadata only), create its trainer Job, write its status conditionally.
  T_op   T threads create N FineTuneJobs while `glmops run` is running; the clock stops when
         every one has its trainer Job and a status phase.
  churn  with --background B, before the burst: B unrelated pods and Jobs (not glmops') are
         created and deleted during a minute while the operator has nothing of its own to do;
         its CPU seconds over the wall seconds of that minute is what unrelated churn costs it.
Figures: ratio_vs_raw = T_op / T_raw (goal <= 2), operator_rss_mb = the operator's peak RSS
(goal <= 250), operator_cpu_share_under_churn (goal <= 0.05). The last line is `RESULT key=value ...`.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from kubernetes import client

from glmops import kube
from glmops.api.finetunejob import FineTuneJobSpec
from glmops.plan.finetune import ClusterFacts, JobMeta, plan_finetune
from glmops.settings import Settings
from glmops_dev.environment import start_environment
from glmops_dev.namespaces import create_namespace

GROUP, VERSION, PLURAL = "glmops.io", "v1alpha1", "finetunejobs"
MERGE = "application/merge-patch+json"


def ftj(name: str) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "FineTuneJob",
        "metadata": {"name": name},
        "spec": {
            "model": {"variant": "flash", "source": "pvc://store/models/glm-4.7-flash", "credentialsSecret": "hf-token"},
            "dataset": {"source": "pvc://store/data/agent.jsonl"},
            "output": {"destination": f"pvc://store/out/{name}", "formats": ["adapter"]},
        },
    }


def prepare_namespace(api: client.ApiClient, namespace: str) -> None:
    """The namespace, the PVC and the Secret every job names."""
    create_namespace(api, namespace)
    kube.request(api, "POST", f"/api/v1/namespaces/{namespace}/persistentvolumeclaims", body={
        "metadata": {"name": "store"},
        "spec": {"accessModes": ["ReadWriteMany"], "resources": {"requests": {"storage": "1Gi"}}},
    })
    kube.request(api, "POST", f"/api/v1/namespaces/{namespace}/secrets", body={
        "metadata": {"name": "hf-token"}, "stringData": {"HF_TOKEN": "not-a-real-token"},
    })


def run_parallel(threads: int, fn: Any, items: list[Any]) -> float:
    start = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(fn, items))
    return time.perf_counter() - start


def raw_writes(api: client.ApiClient, namespace: str, jobs: int, threads: int) -> float:
    """The minimal requests per job, through the operator's own REST layer (glmops.kube)."""
    settings = Settings()
    nodes = kube.gpu_nodes(api)  # the operator lists nodes once per burst too (NodeCache)
    path = f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/{PLURAL}"

    def one(i: int) -> None:
        name = f"raw-{i:04d}"
        created = kube.request(api, "POST", path, body=ftj(name))
        secrets = frozenset(s for s in ["hf-token"] if kube.secret_exists(api, namespace, s))
        pvcs = frozenset(c for c in ["store"] if kube.pvc_exists(api, namespace, c))
        spec = FineTuneJobSpec.model_validate(created["spec"])
        facts = ClusterFacts(server_minor=20, secrets=secrets, pvcs=pvcs, gpu_nodes=nodes)
        plan = plan_finetune(JobMeta(name, namespace, created["metadata"]["uid"]), spec, facts, settings)
        job = next(o for o in plan.objects if o["kind"] == "Job")
        kube.request(api, "POST", f"/apis/batch/v1/namespaces/{namespace}/jobs", body=job)
        kube.patch_custom_status(api, PLURAL, namespace, name, {"phase": "Pending"}, created["metadata"]["resourceVersion"])

    return run_parallel(threads, one, list(range(jobs)))


def _watch_until(api: client.ApiClient, path: str, done: Any, stop: threading.Event, reached: dict[str, float]) -> None:
    """Record in `reached` when each object at `path` first satisfies `done`, until stop is set.

    A raw watch, parsed line by line into plain dicts: the generated client's watch would
    build a typed model per event and take CPU from the operator being measured. A watch the
    server closes is resumed from the last resourceVersion seen.
    """
    version = ""
    while not stop.is_set():
        query = {"watch": "1", "timeoutSeconds": "60"} | ({"resourceVersion": version} if version else {})
        serialized = api.param_serialize("GET", path, query_params=list(query.items()), auth_settings=["BearerToken"])
        response = api.call_api(*serialized).response
        try:
            for line in _lines(response):
                event = json.loads(line)
                obj = event["object"]
                if event["type"] == "ERROR":  # e.g. 410 Gone: list again from now
                    version = ""
                    break
                version = obj["metadata"].get("resourceVersion", version)
                name = obj["metadata"]["name"]
                if name not in reached and done(obj):
                    reached[name] = time.perf_counter()
                if stop.is_set():
                    return
        finally:
            response.release_conn()


def _lines(response: Any) -> Any:
    """The newline-separated JSON documents of a streaming watch response."""
    pending = b""
    for chunk in response.stream(1 << 16, decode_content=True):
        pending += chunk
        *complete, pending = pending.split(b"\n")
        yield from (line for line in complete if line.strip())


def operator_run(api: client.ApiClient, namespace: str, jobs: int, threads: int) -> tuple[float, dict[str, float]]:
    """Create the FineTuneJobs; the clock stops when every one has a phase and a trainer Job.

    Returns T_op and, for reading where the time goes, when the creates ended and when half
    and all of the phases and Jobs were there (seconds from the start).
    """
    custom = client.CustomObjectsApi(api)
    stop = threading.Event()
    phased: dict[str, float] = {}
    created_jobs: dict[str, float] = {}

    ftj_path = f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/{PLURAL}"
    job_path = f"/apis/batch/v1/namespaces/{namespace}/jobs"
    watchers = [
        threading.Thread(target=_watch_until, args=(api, ftj_path, lambda o: bool((o.get("status") or {}).get("phase")), stop, phased), daemon=True),
        threading.Thread(target=_watch_until, args=(api, job_path, lambda o: True, stop, created_jobs), daemon=True),
    ]
    for t in watchers:
        t.start()
    start = time.perf_counter()
    run_parallel(threads, lambda i: custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, ftj(f"op-{i:04d}")), list(range(jobs)))
    creates_done = time.perf_counter() - start
    deadline = time.monotonic() + 600
    while (len(phased) < jobs or len(created_jobs) < jobs) and time.monotonic() < deadline:
        time.sleep(0.05)
    stop.set()  # the watcher threads are daemons: they end with their next event or with the process
    if len(phased) < jobs or len(created_jobs) < jobs:
        raise TimeoutError(f"after 600 s only {len(phased)} phases and {len(created_jobs)} Jobs of {jobs}")

    def at(times: dict[str, float], fraction: float) -> float:
        ordered = sorted(times.values())
        return ordered[max(0, int(fraction * len(ordered)) - 1)] - start

    timeline = {
        "creates_done_s": creates_done,
        "phase_p50_s": at(phased, 0.5), "phase_all_s": at(phased, 1.0),
        "job_p50_s": at(created_jobs, 0.5), "job_all_s": at(created_jobs, 1.0),
    }
    return max(timeline["phase_all_s"], timeline["job_all_s"]), timeline


def write_counts(api: client.ApiClient) -> Counter[str]:
    """The apiserver's count of writes so far, per verb and resource (from its /metrics)."""
    serialized = api.param_serialize("GET", "/metrics", header_params={"Accept": "text/plain"}, auth_settings=["BearerToken"])
    text = api.call_api(*serialized).read().decode()
    counts: Counter[str] = Counter()
    for line in text.splitlines():
        if line.startswith("apiserver_request_total{"):
            labels = dict(re.findall(r'(\w+)="([^"]*)"', line))
            if labels.get("verb") in ("POST", "PUT", "PATCH", "DELETE"):
                resource = "/".join(filter(None, (labels.get("resource"), labels.get("subresource"))))
                counts[f"{labels['verb']} {resource}"] += int(float(line.rsplit(" ", 1)[1]))
    return counts


def churn(api: client.ApiClient, namespace: str, objects: int, seconds: float, threads: int) -> float:
    """Create and delete `objects` unrelated pods and Jobs (half each) over about `seconds`; returns the wall time.

    They are not glmops': no managed-by label. Pods are bound to a node that does not exist
    (no scheduling, no kubelet) and Jobs run no pod (parallelism 0), so the churn is API events only.
    """
    pods = f"/api/v1/namespaces/{namespace}/pods"
    jobs = f"/apis/batch/v1/namespaces/{namespace}/jobs"
    start = time.perf_counter()

    def one(i: int) -> None:
        name = f"other-{i:05d}"
        if i % 2:
            kube.request(api, "POST", pods, body={
                "metadata": {"name": name, "labels": {"app": "someone-else"}},
                "spec": {"nodeName": "no-such-node", "containers": [{"name": "c", "image": "busybox"}]},
            })
            kube.request(api, "DELETE", f"{pods}/{name}", body={"gracePeriodSeconds": 0})
        else:
            kube.request(api, "POST", jobs, body={
                "metadata": {"name": name, "labels": {"app": "someone-else"}},
                "spec": {"parallelism": 0, "template": {"spec": {"restartPolicy": "Never",
                                                                  "containers": [{"name": "c", "image": "busybox"}]}}},
            })
            kube.request(api, "DELETE", f"{jobs}/{name}", body={"propagationPolicy": "Background"})
        # Spread the objects over the minute.
        due = start + seconds * (i + 1) / objects
        delay = due - time.perf_counter()
        if delay > 0:
            time.sleep(delay)

    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(one, range(objects)))
    return time.perf_counter() - start


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=500)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--background", type=int, default=0, help="unrelated pods and Jobs to churn for a minute")
    parser.add_argument("--operator-log", help="keep the operator's log in this file")
    args = parser.parse_args()

    # Each side gets a fresh control plane: the Jobs of one run spawn pods whose scheduling
    # attempts and events would otherwise still load the apiserver while the other is timed.
    with start_environment() as env:
        api = env.cluster.api_client()
        api.configuration.connection_pool_maxsize = args.threads * 2
        prepare_namespace(api, "scale-raw")
        t_raw = raw_writes(api, "scale-raw", args.jobs, args.threads)
    print(f"T_raw: {args.jobs} jobs' minimal writes in {t_raw:.2f} s", flush=True)

    with start_environment() as env, tempfile.TemporaryDirectory() as tmp:
        api = env.cluster.api_client()
        api.configuration.connection_pool_maxsize = args.threads * 2
        prepare_namespace(api, "scale-op")
        log = Path(args.operator_log) if args.operator_log else Path(tmp) / "operator.log"
        environ = dict(os.environ, KUBECONFIG=str(env.cluster.kubeconfig))
        with log.open("wb") as out:
            # All namespaces, as an operator is usually run: the churn namespace is watched too.
            operator = subprocess.Popen(
                [sys.executable, "-m", "glmops.cli.main", "run"],
                env=environ, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            )
        try:
            time.sleep(5)  # let it start and list (nothing to list yet)
            churn_share = float("nan")
            if args.background:
                # Before the burst, while the operator has nothing of its own to do: what it
                # spends on unrelated churn is all that is measured.
                create_namespace(api, "scale-churn")
                cpu_idle = cpu_seconds(operator.pid)
                wall = churn(api, "scale-churn", args.background, 60.0, 2 * args.threads)
                churn_share = (cpu_seconds(operator.pid) - cpu_idle) / wall
                print(f"churn: {args.background} unrelated pods and Jobs created and deleted in {wall:.1f} s; "
                      f"operator CPU share {churn_share:.3f}", flush=True)
            cpu_before = cpu_seconds(operator.pid)
            writes_before = write_counts(api)
            t_op, timeline = operator_run(api, "scale-op", args.jobs, args.threads)
            rss = peak_rss_mb(operator.pid)
            cpu = cpu_seconds(operator.pid) - cpu_before
            writes = write_counts(api) - writes_before
        finally:
            os.killpg(operator.pid, signal.SIGTERM)
            operator.wait(30)
    print(f"T_op: {args.jobs} FineTuneJobs reconciled in {t_op:.2f} s; operator peak RSS {rss:.0f} MB, {cpu:.1f} s CPU", flush=True)
    # The benchmark's creates and the operator's writes, next to what the control plane's own
    # controllers wrote meanwhile (pods, events, Job status), for reading where the time went.
    print("T_op writes: " + ", ".join(f"{k} {v}" for k, v in writes.most_common()), flush=True)
    print("T_op timeline: " + ", ".join(f"{k} {v:.2f}" for k, v in timeline.items()), flush=True)
    print(f"RESULT jobs={args.jobs} threads={args.threads} t_raw_s={t_raw:.2f} t_op_s={t_op:.2f} "
          f"ratio_vs_raw={t_op / t_raw:.2f} operator_rss_mb={rss:.0f} operator_cpu_s={cpu:.1f} "
          f"background={args.background} operator_cpu_share_under_churn={churn_share:.3f}")


if __name__ == "__main__":
    main()
