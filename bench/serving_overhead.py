"""What serving through a ModelDeployment costs over llama-server started by hand.

    .venv/bin/python bench/serving_overhead.py [--rounds 40] [--max-tokens 16] [--threads 1] [--workdir DIR] [--keep]

Runs as root: the local cluster's pod network (network namespaces, veth pairs, kube-proxy's
iptables rules in the node namespace, /etc/hosts names) needs it.

In one run, on a fresh local control plane with the node agent and `glmops run` (as the operator
tests start them), the same tiny GLM-4.7-Flash-architecture Q8_0 GGUF (built as the serving tests
build it) is served twice:

  direct   llama-server started here, with the argv the planner put in the Deployment's pod
           template (only --host/--port changed: loopback, a free port);
  service  a ModelDeployment (one replica, llama.cpp on CPU) reached by its status.endpoint:
           the name resolves through /etc/hosts, kube-proxy forwards the ClusterIP to the pod.

Both get the same fixed chat completions (greedy, a fixed number of generated tokens),
alternating which side goes first, over one kept-alive connection per side (as the OpenAI
client does) and, as a second figure, a new connection (and name lookup) per request. Then a
client loop (the OpenAI client, no retries) sends requests through the Service while the source
switches to a second job's GGUF.

Figures (the last line):
- overhead_ratio: p50 latency through the Service / p50 direct, kept-alive connections; goal <= 1.10.
- rollout_failed_requests: failed requests of the loop during the switch; goal 0.
- apply_to_ready_s: from creating the ModelDeployment to phase Ready (reported).
plus the p50s, the same ratio with a new connection per request, llama-server's own compute time
per request (its `timings`) on each side, and the p50 of a `GET /health` round trip on each side:
the path's own cost, with no inference behind it.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import select
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

REPO = Path(__file__).resolve().parents[1]
# The tiny GGUFs, the FineTuneJob/ModelDeployment helpers and the operator process are the
# serving tests' own.
sys.path[:0] = [str(REPO / "tests"), str(REPO / "tests" / "operator")]

from kubernetes import client
from modeldeployment_support import (
    build_tiny_ggufs,
    create_job,
    create_mdep,
    gguf_artifacts,
    mdep,
    patch_mdep,
    set_job_status,
    sha256_of,
)
from operator_support import OperatorProcess

from glmops_dev.agent import start_agent
from glmops_dev.agent.images import llama_server_path
from glmops_dev.environment import start_environment
from glmops_dev.namespaces import create_namespace

NAME = "bench"
PROMPTS = (
    "hello",
    "What is the weather in Paris?",
    "Write a function that adds two numbers.",
    "Summarise the invoice in one line.",
    "Which is warmer, Paris or Berlin?",
    "List three payment methods.",
)
OVERHEAD_GOAL = 1.10


def wait(what: str, probe: Any, timeout_s: float, diagnose: Any = lambda: "", interval_s: float = 0.1) -> Any:
    """Poll `probe` until it returns something truthy; raise naming `what` after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout_s:.0f} s waiting for {what}\n{diagnose()}")
        time.sleep(interval_s)


def chat_body(prompt: str, max_tokens: int) -> bytes:
    """A greedy chat completion that generates exactly `max_tokens` tokens (llama-server's ignore_eos)."""
    return json.dumps(
        {
            "model": NAME,
            "messages": [{"role": "user", "content": prompt}],
            "max_tokens": max_tokens,
            "temperature": 0,
            "ignore_eos": True,
        }
    ).encode()


@dataclass
class Side:
    """One way to the server: its base URL, a kept-alive connection, and what was measured."""

    label: str
    root: str  # http://HOST:PORT
    keepalive_s: list[float] = field(default_factory=list)
    fresh_s: list[float] = field(default_factory=list)
    server_ms: list[float] = field(default_factory=list)
    server_fresh_ms: list[float] = field(default_factory=list)
    health_s: list[float] = field(default_factory=list)
    answers: dict[str, str] = field(default_factory=dict)
    _connection: http.client.HTTPConnection | None = None

    def _new_connection(self) -> http.client.HTTPConnection:
        url = urllib.parse.urlsplit(self.root)
        return http.client.HTTPConnection(url.hostname or "", url.port, timeout=120)

    def request(self, method: str, path: str, body: bytes | None, fresh: bool) -> tuple[float, bytes]:
        """(seconds, body) of one request answered 200; `fresh`: on a new connection (and name lookup)."""
        start = time.perf_counter()
        if fresh:
            connection = self._new_connection()
        else:
            if self._connection is None or _dropped(self._connection):
                # llama-server closes a connection idle for 5 s; a pooling client (urllib3, httpx)
                # sees that before reusing it and opens a new one, and so does this one.
                if self._connection is not None:
                    self._connection.close()
                self._connection = self._new_connection()
            connection = self._connection
        connection.request(method, path, body, {"Content-Type": "application/json"} if body else {})
        response = connection.getresponse()
        data = response.read()
        elapsed = time.perf_counter() - start
        if fresh:
            connection.close()
        if response.status != 200:
            raise RuntimeError(f"{self.label}: {method} {path}: HTTP {response.status}: {data[:300]!r}")
        return elapsed, data

    def measure(self, prompt: str, max_tokens: int, fresh: bool) -> None:
        """One chat completion: its latency, llama-server's compute time, and (once per prompt) the answer."""
        elapsed, data = self.request("POST", "/v1/chat/completions", chat_body(prompt, max_tokens), fresh)
        answer = json.loads(data)
        (self.fresh_s if fresh else self.keepalive_s).append(elapsed)
        timings = answer.get("timings") or {}
        (self.server_fresh_ms if fresh else self.server_ms).append(
            float(timings.get("prompt_ms", 0.0)) + float(timings.get("predicted_ms", 0.0))
        )
        generated = answer["usage"]["completion_tokens"]
        if generated != max_tokens:
            raise RuntimeError(f"{self.label}: {generated} tokens generated, expected {max_tokens}")
        message = answer["choices"][0]["message"]
        self.answers.setdefault(prompt, f"{message.get('reasoning_content')}|{message.get('content')}")

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()


def _dropped(connection: http.client.HTTPConnection) -> bool:
    """Whether the peer closed a kept-alive connection (its socket reads as ready: EOF)."""
    if connection.sock is None:
        return False
    readable, _, _ = select.select([connection.sock], [], [], 0)
    return bool(readable)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_direct_server(pod_args: list[str], workdir: Path) -> tuple[subprocess.Popen[bytes], str]:
    """llama-server on loopback with the pod's argv (host and port changed); (process, root URL)."""
    args = list(pod_args)
    port = free_port()
    args[args.index("--host") + 1] = "127.0.0.1"
    args[args.index("--port") + 1] = str(port)
    scratch = workdir / "direct-scratch"
    scratch.mkdir(exist_ok=True)
    env = {"PATH": os.environ.get("PATH", ""), "HOME": str(scratch), "TMPDIR": str(scratch)}
    log = (workdir / "direct-llama-server.log").open("wb")
    process = subprocess.Popen(
        [str(llama_server_path()), *args],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    log.close()
    root = f"http://127.0.0.1:{port}"

    def healthy() -> bool:
        if process.poll() is not None:
            raise RuntimeError(
                f"llama-server exited {process.returncode}; see {workdir / 'direct-llama-server.log'}"
            )
        try:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            try:
                connection.request("GET", "/health")
                return connection.getresponse().status == 200
            finally:
                connection.close()
        except OSError:
            return False

    wait("the direct llama-server to load", healthy, 120)
    return process, root


def stop_process(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def p50_ms(samples: list[float]) -> float:
    return statistics.median(samples) * 1000


def p90_ms(samples: list[float]) -> float:
    return statistics.quantiles(samples, n=10)[-1] * 1000


def interleaved(direct: Side, service: Side, rounds: int, max_tokens: int) -> None:
    """Every prompt on both sides in both modes, alternating which side and which mode go first.

    A side's consecutive requests always carry different prompts, so llama-server's prompt cache
    helps every request alike.
    """
    for round_ in range(rounds):
        for fresh in (False, True) if round_ % 2 == 0 else (True, False):
            for index, prompt in enumerate(PROMPTS):
                pair = (direct, service) if (round_ + index) % 2 == 0 else (service, direct)
                for side in pair:
                    side.measure(prompt, max_tokens, fresh)


def health_round_trips(direct: Side, service: Side, count: int) -> None:
    """GET /health, kept-alive, alternating sides: the path's own cost, with no inference behind it."""
    for index in range(count):
        for side in (direct, service) if index % 2 == 0 else (service, direct):
            elapsed, _ = side.request("GET", "/health", None, fresh=False)
            side.health_s.append(elapsed)


def paired_difference_ms(service: list[float], direct: list[float]) -> float:
    """Median of (service - direct) over the requests sent back to back with the same prompt."""
    return statistics.median(s - d for s, d in zip(service, direct, strict=True)) * 1000


def rollout_under_load(
    cluster: Any, namespace: str, base_url: str, new_sha256: str, diagnose: Any
) -> tuple[int, int, float, list[str]]:
    """Switch the source to job `tiny-b` while a loop sends requests through the Service.

    Returns (requests, failed, seconds from the patch to the new artifact serving everywhere, first errors).
    """
    import openai

    api = openai.OpenAI(base_url=base_url, api_key="none", max_retries=0, timeout=60)
    outcomes: list[str] = []
    stop = threading.Event()

    def loop() -> None:
        while not stop.is_set():
            try:
                api.chat.completions.create(
                    model=NAME, messages=[{"role": "user", "content": "hi"}], max_tokens=4, temperature=0
                )
                outcomes.append("ok")
            except openai.OpenAIError as exc:
                outcomes.append(f"{type(exc).__name__}: {exc}")
            time.sleep(0.02)

    sender = threading.Thread(target=loop, daemon=True)
    sender.start()
    try:
        time.sleep(2)  # traffic flows before the switch
        start = time.monotonic()
        patch_mdep(cluster, namespace, NAME, {"source": {"fineTuneJob": "tiny-b"}})

        def rolled_out() -> bool:
            status = mdep(cluster, namespace, NAME).get("status") or {}
            served = (status.get("servedArtifact") or {}).get("sha256")
            return (
                served == new_sha256
                and status.get("phase") == "Ready"
                and status.get("ready") == "1/1"
                and status.get("replicas") == 1
            )

        wait("the surge rollout to finish", rolled_out, 600, diagnose, interval_s=0.5)
        took = time.monotonic() - start
        # The old pod's preStop keeps it answering while Endpoints and kube-proxy drop it; keep
        # sending until it is gone.
        core = client.CoreV1Api(cluster.api_client())
        wait(
            "the old pod to go",
            lambda: len(core.list_namespaced_pod(namespace).items) == 1,
            120,
            diagnose,
            interval_s=0.5,
        )
        time.sleep(2)
    finally:
        stop.set()
        sender.join(timeout=120)
    failures = [o for o in outcomes if o != "ok"]
    return len(outcomes), len(failures), took, failures[:5]


def run(args: argparse.Namespace, workdir: Path) -> str:
    print("building the tiny GGUFs ...", flush=True)
    ggufs = build_tiny_ggufs(workdir / "gguf")
    env = start_environment(heartbeat_interval_s=10.0)
    cluster = env.cluster
    agent = operator = direct_process = None
    sides: list[Side] = []
    try:
        agent = start_agent(cluster, workdir / "node-agent", heartbeat_interval_s=5.0)
        # llama-server's --threads in the pod (the direct server gets the same argv)
        operator = OperatorProcess(cluster, workdir, env={"GLMOPS_SERVING_CPU_ONLY_CPUS": str(args.threads)})
        operator.start()
        namespace = "serving-overhead"
        with cluster.api_client() as api_client:
            create_namespace(api_client, namespace)
        for job, q8 in (("tiny-a", "a"), ("tiny-b", "b")):
            create_job(cluster, namespace, job, formats=("gguf",), diagnose=operator.log_tail)
            set_job_status(cluster, namespace, job, "Succeeded", gguf_artifacts(ggufs, q8))

        def diagnose() -> str:
            status = json.dumps(mdep(cluster, namespace, NAME).get("status"), indent=1)[-3000:]
            return f"{status}\n{operator.log_tail() if operator else ''}"

        start = time.monotonic()
        create_mdep(
            cluster,
            namespace,
            NAME,
            servedModelName=NAME,
            source={"fineTuneJob": "tiny-a", "quantization": "Q8_0"},
            replicas=1,
            gpusPerReplica=0,
            contextLength=1024,
            parallelSlots=1,
        )
        wait(
            "the ModelDeployment to be Ready",
            lambda: (mdep(cluster, namespace, NAME).get("status") or {}).get("phase") == "Ready",
            600,
            diagnose,
        )
        apply_to_ready_s = time.monotonic() - start
        status = mdep(cluster, namespace, NAME)["status"]
        print(f"Ready {apply_to_ready_s:.1f} s after the apply; endpoint {status['endpoint']}", flush=True)

        apps = client.AppsV1Api(cluster.api_client())
        deployment = json.loads(apps.read_namespaced_deployment(NAME, namespace, _preload_content=False).data)
        pod_args: list[str] = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
        direct_process, direct_root = start_direct_server(pod_args, workdir)
        print(f"direct: llama-server {' '.join(pod_args)} (host/port: {direct_root})", flush=True)
        direct = Side("direct", direct_root)
        service = Side("service", status["endpoint"].removesuffix("/v1"))
        sides = [direct, service]

        for side in sides:  # warm up: connections, caches, the servers' first requests
            for prompt in PROMPTS:
                side.measure(prompt, args.max_tokens, fresh=False)
            side.keepalive_s.clear()
            side.server_ms.clear()
        load_before = os.getloadavg()[0]
        interleaved(direct, service, args.rounds, args.max_tokens)
        health_round_trips(direct, service, args.rounds * 10)
        load_after = os.getloadavg()[0]
        differing = [p for p in PROMPTS if direct.answers[p] != service.answers[p]]
        if differing:
            raise RuntimeError(
                f"the two servers answered differently (not the same model and argv?): {differing}"
            )

        requests, failed, rollout_s, errors = rollout_under_load(
            cluster, namespace, status["endpoint"], sha256_of(ggufs["b"]), diagnose
        )
        print(
            f"rollout: {requests} requests through the Service, {failed} failed, new artifact serving after {rollout_s:.1f} s",
            flush=True,
        )
        for error in errors:
            print(f"  failed: {error}", flush=True)

        samples = len(direct.keepalive_s)
        print(
            f"load average {load_before:.1f} before, {load_after:.1f} after the measurement; {samples} requests per side and mode",
            flush=True,
        )
        for side in sides:
            print(
                f"{side.label:8s} kept-alive p50 {p50_ms(side.keepalive_s):.2f} ms p90 {p90_ms(side.keepalive_s):.2f} ms | "
                f"new connection p50 {p50_ms(side.fresh_s):.2f} ms p90 {p90_ms(side.fresh_s):.2f} ms | "
                f"llama-server compute p50 {statistics.median(side.server_ms):.2f} ms "
                f"(new connection {statistics.median(side.server_fresh_ms):.2f} ms) | "
                f"GET /health p50 {p50_ms(side.health_s):.3f} ms",
                flush=True,
            )
        ratio = p50_ms(service.keepalive_s) / p50_ms(direct.keepalive_s)
        print(
            f"service - direct, same prompt back to back: median {paired_difference_ms(service.keepalive_s, direct.keepalive_s):+.2f} ms "
            f"kept-alive, {paired_difference_ms(service.fresh_s, direct.fresh_s):+.2f} ms new connection",
            flush=True,
        )
        ratio_fresh = p50_ms(service.fresh_s) / p50_ms(direct.fresh_s)
        compute_ratio = statistics.median(service.server_ms) / statistics.median(direct.server_ms)
        verdict = "meets" if ratio <= OVERHEAD_GOAL else "misses"
        print(f"overhead_ratio {ratio:.3f} {verdict} the goal <= {OVERHEAD_GOAL}", flush=True)
        return (
            f"RESULT overhead_ratio={ratio:.3f} rollout_failed_requests={failed} apply_to_ready_s={apply_to_ready_s:.1f} "
            f"p50_service_ms={p50_ms(service.keepalive_s):.2f} p50_direct_ms={p50_ms(direct.keepalive_s):.2f} "
            f"overhead_ratio_new_connection={ratio_fresh:.3f} p50_service_new_connection_ms={p50_ms(service.fresh_s):.2f} "
            f"p50_direct_new_connection_ms={p50_ms(direct.fresh_s):.2f} server_compute_ratio={compute_ratio:.3f} "
            f"p50_health_service_ms={p50_ms(service.health_s):.3f} p50_health_direct_ms={p50_ms(direct.health_s):.3f} "
            f"rollout_requests={requests} rollout_s={rollout_s:.1f} samples={samples} max_tokens={args.max_tokens} threads={args.threads} "
            f"load_avg={load_before:.1f}"
        )
    finally:
        for side in sides:
            side.close()
        if direct_process is not None:
            stop_process(direct_process)
        if operator is not None:
            operator.stop()
        if agent is not None:
            agent.stop()
        env.close()


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=40,
        help=f"times each of the {len(PROMPTS)} prompts is sent per side and mode",
    )
    parser.add_argument("--max-tokens", type=int, default=16, help="tokens generated per request")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="llama-server threads (the operator's GLMOPS_SERVING_CPU_ONLY_CPUS); on a busy machine one thread "
        "waits on no other, so the figures are steadier",
    )
    parser.add_argument(
        "--workdir",
        type=Path,
        help="folder for the GGUFs and logs, kept (default: a new one under .state/, removed)",
    )
    parser.add_argument(
        "--keep", action="store_true", help="keep the folder (logs of the operator and the direct server)"
    )
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit(
            "bench/serving_overhead.py needs root: the local cluster's pod network creates network namespaces, "
            "veth pairs and a bridge, runs kube-proxy (iptables) and writes Service names into /etc/hosts. "
            "Run it as root, e.g. `sudo .venv/bin/python bench/serving_overhead.py`."
        )
    if args.workdir is None:
        (REPO / ".state").mkdir(exist_ok=True)
        workdir = Path(tempfile.mkdtemp(prefix="serving-overhead-", dir=REPO / ".state"))
    else:
        workdir = args.workdir
        workdir.mkdir(parents=True, exist_ok=True)
    # A SIGTERM ends the run through its cleanup (pods, operator, control plane, pod network).
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        result = run(args, workdir)
    finally:
        if args.keep or args.workdir is not None:
            print(f"kept {workdir}", flush=True)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    print(result, flush=True)


if __name__ == "__main__":
    main()
