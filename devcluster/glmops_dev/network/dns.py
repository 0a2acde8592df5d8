"""The local cluster DNS: dnsmasq on the bridge address, its records fed from Services and Endpoints.

:class:`ClusterDns` lists and watches Services and Endpoints, turns them into records
(:func:`~glmops_dev.network.dnsnames.service_records`), and on every change rewrites

- dnsmasq's hosts file (replaced by a rename, then ``SIGHUP`` makes dnsmasq read it again);
  dnsmasq runs in the slot's node namespace, listens on the bridge address only, has no
  upstream server and answers every other name with "no such name" at once;
- the slot's block in the host's ``/etc/hosts`` (``NAME.NS.svc`` and ``NAME.NS.svc.cluster.local``),
  so clients on the host resolve Service names without touching the host's own resolver.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from glmops_dev.network import hostsfile, iproute
from glmops_dev.network.addresses import CLUSTER_DOMAIN, SlotPlan
from glmops_dev.network.dnsnames import Record, dnsmasq_hosts, host_lines, service_records
from glmops_dev.network.dnsquery import DnsQueryError, query_a
from glmops_dev.rawapi import WatchExpired, read_json, watch_events

if TYPE_CHECKING:
    from kubernetes.client import ApiClient

log = logging.getLogger("glmops_dev.network")

WATCH_TIMEOUT_S = 30
REQUEST_TIMEOUT = (5.0, 30.0)


class ClusterDnsError(iproute.PodNetworkError):
    """The DNS server did not start or answer; the message carries its log's tail."""


class _Follower:
    """Keeps a dict of one resource (uid -> object) current through list + watch."""

    def __init__(
        self, kind: str, list_method: Any, changed: Callable[[], None], stopping: threading.Event
    ) -> None:
        self.kind = kind
        self.objects: dict[str, dict[str, Any]] = {}
        self.listed = threading.Event()
        self.errors: list[str] = []
        self._list = list_method
        self._changed = changed
        self._stopping = stopping
        self._response: Any = None
        self.thread = threading.Thread(target=self._run, name=f"dns-{kind}", daemon=True)

    def interrupt(self) -> None:
        response = self._response
        if response is not None:
            try:
                response.shutdown()
            except Exception as exc:  # noqa: BLE001 - the watch ends at its timeout anyway
                log.debug("interrupting the %s watch failed: %s", self.kind, exc)

    def _run(self) -> None:
        delay = 0.5
        while not self._stopping.is_set():
            try:
                body = read_json(self._list(_preload_content=False, _request_timeout=REQUEST_TIMEOUT))
                self.objects = {str(o["metadata"]["uid"]): o for o in body.get("items") or []}
                version = str(body["metadata"]["resourceVersion"])
                self.listed.set()
                self._changed()
                delay = 0.5
                while not self._stopping.is_set():
                    version = self._watch(version)
            except WatchExpired:
                continue
            except Exception as exc:  # noqa: BLE001 - list again after a pause
                if self._stopping.is_set():
                    return
                self.errors = [*self.errors[-4:], f"{time.strftime('%H:%M:%S')} {exc}"]
                log.debug("%s watch: %s", self.kind, exc)
                self._stopping.wait(delay)
                delay = min(delay * 2, 5.0)

    def _watch(self, version: str) -> str:
        response = self._list(
            watch=True,
            resource_version=version,
            timeout_seconds=WATCH_TIMEOUT_S,
            allow_watch_bookmarks=True,
            _preload_content=False,
            _request_timeout=(5.0, WATCH_TIMEOUT_S + 15.0),
        )
        self._response = response
        try:
            for kind, obj in watch_events(response, self.kind):
                meta = obj.get("metadata") or {}
                version = str(meta.get("resourceVersion") or version)
                if kind == "DELETED":
                    self.objects.pop(str(meta.get("uid")), None)
                elif kind in ("ADDED", "MODIFIED"):
                    self.objects[str(meta.get("uid"))] = obj
                else:
                    continue
                self._changed()
        finally:
            self._response = None
            response.release_conn()
        return version


class ClusterDns:
    """dnsmasq in the node namespace plus the threads that feed it; :meth:`start` and :meth:`stop`."""

    def __init__(
        self,
        plan: SlotPlan,
        api_client: ApiClient,
        runtime_dir: Path,
        log_path: Path,
        hosts_lock: Path,
        domain: str = CLUSTER_DOMAIN,
    ) -> None:
        """``api_client`` is used by this object alone (closed by :meth:`stop`)."""
        self.plan = plan
        self.domain = domain
        self.log_path = log_path
        self.hosts_path = runtime_dir / "dns" / "hosts"
        self.records: list[Record] = []
        """The records served now."""
        self._api_client = api_client
        self._hosts_lock = hosts_lock
        self._process: subprocess.Popen[bytes] | None = None
        self._stopping = threading.Event()
        self._dirty = threading.Event()
        self._lock = threading.Lock()
        from kubernetes.client import CoreV1Api

        core: Any = CoreV1Api(api_client)
        self._services = _Follower(
            "services", core.list_service_for_all_namespaces, self._dirty.set, self._stopping
        )
        self._endpoints = _Follower(
            "endpoints", core.list_endpoints_for_all_namespaces, self._dirty.set, self._stopping
        )
        self._writer = threading.Thread(target=self._write_loop, name="dns-writer", daemon=True)

    @property
    def errors(self) -> list[str]:
        """Recent errors of the watches."""
        return [*self._services.errors, *self._endpoints.errors]

    def start(self, timeout_s: float = 60.0) -> ClusterDns:
        """Start dnsmasq and the watches; return once dnsmasq answers for the ``kubernetes`` Service."""
        iproute.require_tools("dnsmasq")
        self.hosts_path.parent.mkdir(parents=True, exist_ok=True)
        self.hosts_path.parent.chmod(0o755)
        self._replace_hosts_file("")
        self._start_dnsmasq()
        deadline = time.monotonic() + timeout_s
        # dnsmasq must have its SIGHUP handler (it answers queries then) before the first reload.
        self._wait_answer("ready.invalid", lambda addresses: True, deadline)
        for thread in (self._services.thread, self._endpoints.thread, self._writer):
            thread.start()
        self._wait_answer(f"kubernetes.default.svc.{self.domain}", bool, deadline)
        return self

    def _wait_answer(self, name: str, good: Callable[[list[str]], bool], deadline: float) -> None:
        while True:
            if self._process is not None and self._process.poll() is not None:
                raise ClusterDnsError(
                    f"dnsmasq exited with code {self._process.returncode}; last lines of {self.log_path}:\n"
                    f"{_tail(self.log_path)}"
                )
            try:
                if good(query_a(self.plan.dns_ip, name, timeout_s=1.0)):
                    return
            except DnsQueryError:
                pass
            if time.monotonic() > deadline:
                raise ClusterDnsError(
                    f"the cluster DNS on {self.plan.dns_ip} did not answer {name} in time "
                    f"(watch errors: {self.errors[-3:]}); last lines of {self.log_path}:\n{_tail(self.log_path)}"
                )
            time.sleep(0.1)

    def stop(self) -> None:
        """Stop the watches and dnsmasq, and remove the slot's block from /etc/hosts."""
        self._stopping.set()
        self._dirty.set()
        for follower in (self._services, self._endpoints):
            follower.interrupt()
        for thread in (self._services.thread, self._endpoints.thread, self._writer):
            if thread.is_alive():
                thread.join(timeout=WATCH_TIMEOUT_S + 20)
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        hostsfile.remove_block(self._hosts_lock, self.plan.hosts_block_marker)
        self._api_client.close()  # type: ignore[no-untyped-call]

    # -- internals -------------------------------------------------------------------------

    def _start_dnsmasq(self) -> None:
        argv = [
            "ip", "netns", "exec", self.plan.node_netns,
            "dnsmasq",
            "--keep-in-foreground",
            "--conf-file=/dev/null",
            "--no-resolv",  # no upstream: the host's resolver is never asked
            "--no-hosts",  # the host's /etc/hosts holds other environments' blocks
            "--no-poll",
            f"--addn-hosts={self.hosts_path}",
            f"--listen-address={self.plan.dns_ip}",
            "--bind-interfaces",
            "--port=53",
            f"--pid-file={self.hosts_path.parent / 'dnsmasq.pid'}",
            # Root keeps the parent-death signal (a changed uid would clear it).
            "--user=root",
            "--group=root",
            "--local=/#/",  # every name not in the hosts file: "no such name", at once
            "--no-negcache",
            "--log-facility=-",
        ]  # fmt: skip
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log_file:
            self._process = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                preexec_fn=iproute.set_parent_death_signal,  # noqa: PLW1509 - only a prctl before exec
            )

    def _replace_hosts_file(self, text: str) -> None:
        staging = self.hosts_path.with_name(".hosts.new")
        staging.write_text(text)
        staging.chmod(0o644)
        os.replace(staging, self.hosts_path)

    def _write_loop(self) -> None:
        while not self._stopping.is_set():
            self._dirty.wait()
            if self._stopping.is_set():
                return
            # Let a burst of events (a Service and its Endpoints) land before writing.
            time.sleep(0.05)
            self._dirty.clear()
            if not (self._services.listed.is_set() and self._endpoints.listed.is_set()):
                continue
            try:
                self._publish()
            except Exception as exc:  # noqa: BLE001 - retried at the next change
                log.warning("updating the cluster DNS records failed: %s", exc)
                self._stopping.wait(1.0)
                self._dirty.set()

    def _publish(self) -> None:
        records = service_records(
            list(self._services.objects.values()), list(self._endpoints.objects.values()), self.domain
        )
        if records == self.records:
            return
        self._replace_hosts_file(dnsmasq_hosts(records))
        if self._process is not None and self._process.poll() is None:
            self._process.send_signal(signal.SIGHUP)
        hostsfile.set_block(self._hosts_lock, self.plan.hosts_block_marker, host_lines(records, self.domain))
        self.records = records


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""
