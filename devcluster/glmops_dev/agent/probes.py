"""Readiness, liveness and startup probes, run as the kubelet runs them: from the node, against the pod's IP.

``httpGet`` (2xx/3xx is success), ``tcpSocket`` (a connection is success) and ``exec`` (exit 0,
run with the container's mounts, environment and network namespace) go to the pod's address
unless the probe names a ``host``. They follow the kubelet's timing: nothing before
``initialDelaySeconds``, then one try every ``periodSeconds`` with ``timeoutSeconds``; the result
flips after ``successThreshold`` successes or ``failureThreshold`` failures in a row.
"""

from __future__ import annotations

import http.client
import socket
import ssl
import threading
from collections.abc import Callable, Mapping
from typing import Any

READINESS, LIVENESS, STARTUP = "readiness", "liveness", "startup"
INITIAL_RESULT = {READINESS: False, LIVENESS: True, STARTUP: False}
"""What a probe reports before its first try (the kubelet's defaults)."""

ExecRunner = Callable[[list[str], float], tuple[int, str]]
"""Runs a command in the container's context: (argv, timeout_s) -> (exit code, output)."""


def resolve_port(port: Any, container: Mapping[str, Any], where: str) -> int:
    """A probe's port: a number, or the name of one of the container's ``ports``."""
    if isinstance(port, int):
        return port
    text = str(port)
    if text.isdigit():
        return int(text)
    for item in container.get("ports") or []:
        if item.get("name") == text:
            return int(item["containerPort"])
    raise ValueError(f"{where}.port: the container has no port named {text!r}")


def run_probe(
    probe: Mapping[str, Any],
    container: Mapping[str, Any],
    exec_runner: ExecRunner,
    where: str,
    pod_ip: str,
) -> tuple[bool, str]:
    """Try a probe (or a lifecycle handler: same shape) once: (success, what happened)."""
    timeout_s = float(probe.get("timeoutSeconds") or 1)
    try:
        if "httpGet" in probe:
            return _http_get(probe["httpGet"], container, timeout_s, f"{where}.httpGet", pod_ip)
        if "tcpSocket" in probe:
            spec = probe["tcpSocket"]
            port = resolve_port(spec.get("port"), container, f"{where}.tcpSocket")
            host = str(spec.get("host") or pod_ip)
            with socket.create_connection((host, port), timeout=timeout_s):
                return True, f"connected to {host}:{port}"
        if "exec" in probe:
            command = [str(x) for x in probe["exec"].get("command") or []]
            code, output = exec_runner(command, timeout_s)
            return code == 0, output.strip()[-1024:] or f"exit code {code}"
    except (OSError, ValueError, http.client.HTTPException) as exc:
        return False, str(exc)
    return False, f"{where}: no httpGet, tcpSocket or exec handler (grpc probes are not supported)"


def _http_get(
    spec: Mapping[str, Any], container: Mapping[str, Any], timeout_s: float, where: str, pod_ip: str
) -> tuple[bool, str]:
    port = resolve_port(spec.get("port"), container, where)
    host = str(spec.get("host") or pod_ip)
    path = str(spec.get("path") or "/")
    if not path.startswith("/"):
        path = "/" + path
    headers = {"User-Agent": "kube-probe/1.20", "Accept": "*/*"}
    headers.update({str(h["name"]): str(h["value"]) for h in spec.get("httpHeaders") or []})
    connection: http.client.HTTPConnection
    if str(spec.get("scheme") or "HTTP").upper() == "HTTPS":
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        connection = http.client.HTTPSConnection(host, port, timeout=timeout_s, context=context)
    else:
        connection = http.client.HTTPConnection(host, port, timeout=timeout_s)
    try:
        connection.request("GET", path, headers=headers)
        response = connection.getresponse()
        response.read(10240)
        status = response.status
    finally:
        connection.close()
    if 200 <= status < 400:
        return True, f"HTTP probe succeeded with statuscode: {status}"
    return False, f"HTTP probe failed with statuscode: {status}"


class Prober:
    """Runs one probe of one container on its own thread and reports each change of its result."""

    def __init__(
        self,
        kind: str,
        probe: Mapping[str, Any],
        container: Mapping[str, Any],
        exec_runner: ExecRunner,
        on_change: Callable[[str, bool, str], None],
        gate: Callable[[], bool] | None = None,
        pod_ip: str = "127.0.0.1",
    ) -> None:
        """``on_change(kind, result, message)`` is called from the probe's thread; ``gate`` delays tries until True.

        ``pod_ip``: where ``httpGet`` and ``tcpSocket`` probes connect unless they name a ``host``.
        """
        self.kind = kind
        self.pod_ip = pod_ip
        self.result = INITIAL_RESULT[kind]
        self.gave_up = False
        """True once a liveness or startup probe failed ``failureThreshold`` times: restart the container."""
        self._probe = probe
        self._container = container
        self._exec_runner = exec_runner
        self._on_change = on_change
        self._gate = gate
        self._stop = threading.Event()
        self._where = f"container {container.get('name')}: {kind}Probe"
        self._thread = threading.Thread(
            target=self._run, name=f"probe-{kind}-{container.get('name')}", daemon=True
        )

    def start(self) -> Prober:
        """Start probing; returns self."""
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop probing (does not wait for a probe in flight)."""
        self._stop.set()

    def _run(self) -> None:
        period_s = float(self._probe.get("periodSeconds") or 10)
        success_threshold = int(self._probe.get("successThreshold") or 1)
        failure_threshold = int(self._probe.get("failureThreshold") or 3)
        if self._stop.wait(float(self._probe.get("initialDelaySeconds") or 0)):
            return
        successes = failures = 0
        while not self._stop.is_set():
            if self._gate is not None and not self._gate():
                self._stop.wait(min(period_s, 0.5))
                continue
            ok, message = run_probe(self._probe, self._container, self._exec_runner, self._where, self.pod_ip)
            if self._stop.is_set():
                return
            if ok:
                successes, failures = successes + 1, 0
                if not self.result and successes >= success_threshold:
                    self.result = True
                    self._on_change(self.kind, True, message)
            else:
                successes, failures = 0, failures + 1
                if (
                    failures >= failure_threshold
                    and self.kind != READINESS
                    and (self.result or self.kind == STARTUP)
                ):
                    self.result = False
                    self.gave_up = True
                    self._on_change(self.kind, False, message)
                    return
                if self.result and failures >= failure_threshold:
                    self.result = False
                    self._on_change(self.kind, False, message)
                elif not self.result and failures == 1:
                    # Report the first failure of a not-yet-passing probe once, for events.
                    self._on_change(self.kind, False, message)
            self._stop.wait(period_s)
