"""kube-proxy (built from the same Kubernetes source as the control plane) in iptables mode.

It runs inside the slot's node namespace, so the rules it writes (and ``route_localnet``, which
it sets) belong to that namespace: traffic for a ClusterIP arrives there from pods (via the
bridge) and from the host (via the link; the host routes the Service range there) and is DNATed
to a pod. Flags that matter here:

- ``--cluster-cidr``: the slot's pod range, so traffic from outside it (the host) is masqueraded
  and its answers come back through the node namespace;
- ``--conntrack-*=0``: leave the kernel's conntrack settings (they are global) alone;
- ``--oom-score-adj=0``: do not make itself unkillable on a shared machine;
- healthz on the node namespace's link address (the host can ask it), metrics on its loopback.

:meth:`KubeProxy.stop` ends it and runs ``kube-proxy --cleanup`` in the namespace (which needs
``ipset``); deleting the namespace afterwards removes whatever is left.
"""

from __future__ import annotations

import logging
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

from glmops_dev.network import iproute
from glmops_dev.network.addresses import SlotPlan

log = logging.getLogger("glmops_dev.network")

HEALTHZ_PORT = 10256
METRICS_ADDRESS = "127.0.0.1:10249"


class KubeProxyError(iproute.PodNetworkError):
    """kube-proxy did not start or program the rules; the message carries its log's tail."""


def kube_proxy_args(plan: SlotPlan, kubeconfig: Path, node_name: str) -> list[str]:
    """kube-proxy's flags for a slot (see the module docstring)."""
    return [
        f"--kubeconfig={kubeconfig}",
        "--proxy-mode=iptables",
        f"--hostname-override={node_name}",
        f"--cluster-cidr={plan.pod_cidr}",
        "--conntrack-max-per-core=0",
        "--conntrack-tcp-timeout-established=0",
        "--conntrack-tcp-timeout-close-wait=0",
        f"--healthz-bind-address={plan.node_link_ip}:{HEALTHZ_PORT}",
        f"--metrics-bind-address={METRICS_ADDRESS}",
        "--oom-score-adj=0",
        "--v=1",
    ]


class KubeProxy:
    """One kube-proxy process in a slot's node namespace."""

    def __init__(
        self, binary: Path, plan: SlotPlan, kubeconfig: Path, node_name: str, log_path: Path
    ) -> None:
        self.binary = binary
        self.plan = plan
        self.kubeconfig = kubeconfig
        self.node_name = node_name
        self.log_path = log_path
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        """The process id while it runs."""
        return self._process.pid if self._process is not None and self._process.poll() is None else None

    def start(self, ready_service_ip: str | None, timeout_s: float = 90.0) -> KubeProxy:
        """Start it; return once it is healthy and (when given) a Service IP has its rules."""
        iproute.require_tools("iptables", "iptables-save", "iptables-restore")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        argv = [
            "ip", "netns", "exec", self.plan.node_netns,
            str(self.binary), *kube_proxy_args(self.plan, self.kubeconfig, self.node_name),
        ]  # fmt: skip
        with self.log_path.open("ab") as log_file:
            self._process = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                preexec_fn=iproute.set_parent_death_signal,  # noqa: PLW1509 - only a prctl before exec
            )
        deadline = time.monotonic() + timeout_s
        while not (self._healthy() and (ready_service_ip is None or self.has_rules_for(ready_service_ip))):
            if self._process.poll() is not None:
                raise KubeProxyError(
                    f"kube-proxy exited with code {self._process.returncode}; last lines of {self.log_path}:\n"
                    f"{_tail(self.log_path)}"
                )
            if time.monotonic() > deadline:
                raise KubeProxyError(
                    f"kube-proxy was not ready after {timeout_s:.0f} s; last lines of {self.log_path}:\n"
                    f"{_tail(self.log_path)}"
                )
            time.sleep(0.2)
        log.info("slot %d: kube-proxy %d ready", self.plan.slot, self._process.pid)
        return self

    def _healthy(self) -> bool:
        url = f"http://{self.plan.node_link_ip}:{HEALTHZ_PORT}/healthz"
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                return bool(response.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def rules(self) -> str:
        """``iptables-save`` of the node namespace (every table)."""
        return iproute.in_netns(self.plan.node_netns, "iptables-save", check=False)

    def has_rules_for(self, service_ip: str) -> bool:
        """Whether the rules send some traffic for ``service_ip`` to an endpoint (its KUBE-SVC chain exists)."""
        return any(
            f"-d {service_ip}/32" in line and "-j KUBE-SVC-" in line for line in self.rules().splitlines()
        )

    def stop(self) -> None:
        """End kube-proxy and remove its rules (``kube-proxy --cleanup`` in the namespace)."""
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        if iproute.netns_exists(self.plan.node_netns):
            result = subprocess.run(
                ["ip", "netns", "exec", self.plan.node_netns, str(self.binary), "--cleanup"],
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )
            with self.log_path.open("a") as log_file:
                log_file.write(f"--- kube-proxy --cleanup exited with {result.returncode}\n")
                log_file.write(result.stdout + result.stderr)


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""
