"""How much the operator costs over the minimal API writes, for a burst of FineTuneJobs.

    .venv/bin/python bench/operator_scale.py [--jobs 500] [--threads 8]

In one run, each side on a fresh local control plane (the test suite's):
  T_raw  a plain client makes the minimal writes for N jobs with T threads: create the
         FineTuneJob, create its trainer Job, patch the FineTuneJob's status.
  T_op   T threads create N FineTuneJobs while `glmops run` is running; the clock stops when
         every one has its trainer Job and a status phase.
Figures: ratio_vs_raw = T_op / T_raw (goal <= 2), operator_rss_mb = the operator's peak RSS
(goal <= 250). The last line is `RESULT key=value ...`.
"""

from __future__ import annotations

import argparse
import functools
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from kubernetes import client, watch

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
            "model": {"variant": "flash", "source": "file:///models/glm-4.7-flash"},
            "dataset": {"source": "file:///data/agent.jsonl"},
            "output": {"destination": f"file:///out/{name}", "formats": ["adapter"]},
        },
    }


def run_parallel(threads: int, fn: Any, items: list[Any]) -> float:
    start = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(fn, items))
    return time.perf_counter() - start


def raw_writes(api: client.ApiClient, namespace: str, jobs: int, threads: int) -> float:
    custom, batch = client.CustomObjectsApi(api), client.BatchV1Api(api)
    settings = Settings()

    def one(i: int) -> None:
        name = f"raw-{i:04d}"
        created = custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, ftj(name))
        spec = FineTuneJobSpec.model_validate(created["spec"])
        plan = plan_finetune(JobMeta(name, namespace, created["metadata"]["uid"]), spec, ClusterFacts(), settings)
        job = next(o for o in plan.objects if o["kind"] == "Job")
        response = batch.create_namespaced_job(namespace, job, _preload_content=False)
        response.drain_conn()  # a connection goes back to the pool only when read to the end
        response.release_conn()
        custom.patch_namespaced_custom_object_status(
            GROUP, VERSION, namespace, PLURAL, name, {"status": {"phase": "Pending"}}, _content_type=MERGE
        )

    return run_parallel(threads, one, list(range(jobs)))


def _watch_until(list_fn: Any, done: Any, stop: threading.Event, timeout_s: float) -> None:
    """Follow a watch (cheap: only changes travel) until done(objects) or stop is set."""
    seen: dict[str, dict[str, Any]] = {}
    w = watch.Watch()
    deadline = time.monotonic() + timeout_s
    for event in w.stream(list_fn, timeout_seconds=int(timeout_s)):
        obj = event["object"]
        obj = obj if isinstance(obj, dict) else obj.to_dict()
        seen[obj["metadata"]["name"]] = obj
        if done(seen) or stop.is_set() or time.monotonic() > deadline:
            w.stop()
            return


def operator_run(api: client.ApiClient, namespace: str, jobs: int, threads: int) -> float:
    """Create the FineTuneJobs; the clock stops when every one has a phase and a trainer Job."""
    custom, batch = client.CustomObjectsApi(api), client.BatchV1Api(api)
    stop = threading.Event()
    finished: dict[str, float] = {}

    def follow(kind: str, list_fn: Any, done: Any) -> None:
        _watch_until(list_fn, done, stop, 600)
        finished[kind] = time.perf_counter()

    ftj_list = functools.partial(custom.list_namespaced_custom_object, GROUP, VERSION, namespace, PLURAL)
    job_list = functools.partial(batch.list_namespaced_job, namespace)
    watchers = [
        threading.Thread(target=follow, args=("ftj", ftj_list, lambda seen: sum(1 for o in seen.values() if (o.get("status") or {}).get("phase")) >= jobs)),
        threading.Thread(target=follow, args=("job", job_list, lambda seen: len(seen) >= jobs)),
    ]
    for t in watchers:
        t.start()
    start = time.perf_counter()
    run_parallel(threads, lambda i: custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, ftj(f"op-{i:04d}")), list(range(jobs)))
    for t in watchers:
        t.join(620)
    stop.set()
    if len(finished) < 2:
        raise TimeoutError("not every FineTuneJob got a trainer Job and a phase within 600 s")
    return max(finished.values()) - start


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
    parser.add_argument("--operator-log", help="keep the operator's log in this file")
    args = parser.parse_args()

    # Each side gets a fresh control plane: the Jobs of one run spawn pods whose scheduling
    # attempts and events would otherwise still load the apiserver while the other is timed.
    with start_environment() as env:
        api = env.cluster.api_client()
        api.configuration.connection_pool_maxsize = args.threads * 2
        create_namespace(api, "scale-raw")
        t_raw = raw_writes(api, "scale-raw", args.jobs, args.threads)
    print(f"T_raw: {args.jobs} jobs' minimal writes in {t_raw:.2f} s", flush=True)

    with start_environment() as env, tempfile.TemporaryDirectory() as tmp:
        api = env.cluster.api_client()
        api.configuration.connection_pool_maxsize = args.threads * 2
        create_namespace(api, "scale-op")
        log = Path(args.operator_log) if args.operator_log else Path(tmp) / "operator.log"
        environ = dict(os.environ, KUBECONFIG=str(env.cluster.kubeconfig))
        with log.open("wb") as out:
            operator = subprocess.Popen(
                [sys.executable, "-m", "glmops.cli.main", "run", "--namespace", "scale-op"],
                env=environ, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            )
        try:
            time.sleep(5)  # let it start and list (nothing to list yet)
            cpu_before = cpu_seconds(operator.pid)
            t_op = operator_run(api, "scale-op", args.jobs, args.threads)
            rss = peak_rss_mb(operator.pid)
            cpu = cpu_seconds(operator.pid) - cpu_before
        finally:
            os.killpg(operator.pid, signal.SIGTERM)
            operator.wait(30)
    print(f"T_op: {args.jobs} FineTuneJobs reconciled in {t_op:.2f} s; operator peak RSS {rss:.0f} MB, {cpu:.1f} s CPU", flush=True)
    print(f"RESULT jobs={args.jobs} threads={args.threads} t_raw_s={t_raw:.2f} t_op_s={t_op:.2f} "
          f"ratio_vs_raw={t_op / t_raw:.2f} operator_rss_mb={rss:.0f} operator_cpu_s={cpu:.1f}")


if __name__ == "__main__":
    main()
