"""A real Kubernetes control plane on loopback: etcd, kube-apiserver, controller-manager, scheduler.

``LocalCluster`` starts the four processes with free ports, a fresh CA and service-account key,
static-token authentication and RBAC, waits until each is healthy, and writes a kubeconfig for
clients. Stopping it (context manager, ``stop()``, garbage collection or interpreter exit) ends
every process group and removes the state folder. No kubelet runs: nodes are API objects
(:mod:`glmops_dev.nodes`), so pods are scheduled but only run where a node agent runs them.

``ExistingCluster`` wraps a cluster named by ``KUBECONFIG`` behind the same interface;
:meth:`LocalCluster.from_env` picks one or the other.

Where the API server listens and which Service range it hands out come from a
:class:`ClusterAddressing`: by default 127.0.0.1 and a range of the pod-network block that no
kube-proxy serves; with a pod network (:mod:`glmops_dev.network`), the host's address on the
slot's link and the slot's Service range, so that pods reach the API server through the
``kubernetes`` Service as in any cluster.
"""

from __future__ import annotations

import base64
import json
import os
import re
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
import weakref
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

import yaml

from glmops_dev.binaries import ControlPlaneBinaries, ensure_binaries, tail
from glmops_dev.network.addresses import STANDALONE_KUBERNETES_SERVICE_IP, STANDALONE_SERVICE_CIDR, SlotPlan
from glmops_dev.network.iproute import set_parent_death_signal
from glmops_dev.rawapi import read_json

if TYPE_CHECKING:
    from kubernetes.client import ApiClient

    from glmops_dev.network import ClusterNetwork

LOOPBACK = "127.0.0.1"
KUBE_PROXY_USER = "system:kube-proxy"
"""The user Kubernetes' bootstrap policy binds to ``system:node-proxier`` (what kube-proxy may do)."""
SERVICE_ACCOUNT_ISSUER = "https://kubernetes.default.svc.cluster.local"
ADMIN_USER = "glmops-admin"
STATE_MARKER = ".glmops-devcluster"
USE_EXISTING_ENV = "GLMOPS_USE_EXISTING_CLUSTER"


class ClusterStartError(RuntimeError):
    """A component did not come up; the message carries the tail of its log."""


@dataclass(frozen=True)
class ClusterAddressing:
    """Where the API server listens and the ranges the control plane hands out."""

    bind_address: str = LOOPBACK
    """The API server's address (its kubeconfig's server); also its advertised address."""
    service_cidr: str = STANDALONE_SERVICE_CIDR
    """``--service-cluster-ip-range``."""
    kubernetes_service_ip: str = STANDALONE_KUBERNETES_SERVICE_IP
    """The ``kubernetes`` Service's ClusterIP (the first of ``service_cidr``)."""
    pod_cidr: str | None = None
    """The controller-manager's ``--cluster-cidr`` (None: no pod network)."""

    @classmethod
    def for_slot(cls, plan: SlotPlan) -> ClusterAddressing:
        """The API server on the host's end of the slot's link; the slot's Service and pod ranges."""
        return cls(plan.host_ip, plan.service_cidr, plan.kubernetes_service_ip, plan.pod_cidr)

    @property
    def publishes_endpoints(self) -> bool:
        """Whether the API server can be an Endpoints address (loopback cannot)."""
        return self.bind_address != LOOPBACK


class KubectlError(subprocess.CalledProcessError):
    """kubectl exited non-zero; ``str()`` includes its stderr."""

    def __str__(self) -> str:
        stderr = self.stderr if isinstance(self.stderr, str) else ""
        return f"{super().__str__()}\n{stderr.strip()}"


def free_port(host: str = LOOPBACK) -> int:
    """A TCP port on ``host`` that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def wants_existing_cluster(use_existing: bool | None = None) -> bool:
    """``use_existing`` when given, else whether ``GLMOPS_USE_EXISTING_CLUSTER`` is 1/true/yes."""
    if use_existing is not None:
        return use_existing
    return os.environ.get(USE_EXISTING_ENV, "").strip().lower() in {"1", "true", "yes"}


def parse_version(text: str) -> tuple[int, int]:
    """``(major, minor)`` from strings such as ``Kubernetes v1.20.2`` or ``v1.28.3+k3s1``."""
    match = re.search(r"v?(\d+)\.(\d+)", text)
    if match is None:
        raise ValueError(f"no Kubernetes version in {text!r}")
    return int(match.group(1)), int(match.group(2))


def api_server_version(api_client: ApiClient) -> tuple[int, int]:
    """The ``(major, minor)`` version of the API server a client talks to."""
    from kubernetes.client import VersionApi

    info: Any = VersionApi(api_client).get_code(_preload_content=False)
    return parse_version(str(read_json(info)["gitVersion"]))


class KubeCluster:
    """What tests and tools need from any cluster: a kubeconfig, a client, kubectl."""

    kubeconfig: Path
    """Path of a kubeconfig that reaches the cluster with admin rights."""
    server: str
    """The API server's URL."""
    kubectl_path: str
    """The kubectl binary :meth:`kubectl` runs."""
    kube_proxy_kubeconfig: Path
    """The kubeconfig kube-proxy uses (its own user on a local cluster)."""
    network: ClusterNetwork | None = None
    """The pod network serving this cluster (set by :func:`glmops_dev.environment.start_environment`)."""

    def api_client(self) -> ApiClient:
        """A new ``kubernetes.client.ApiClient`` configured from :attr:`kubeconfig`."""
        from kubernetes import config

        client: ApiClient = config.new_client_from_config(config_file=str(self.kubeconfig))  # type: ignore[no-untyped-call]
        return client

    def kubectl(
        self,
        *args: str,
        check: bool = True,
        input: str | None = None,
        timeout_s: float = 120.0,
    ) -> subprocess.CompletedProcess[str]:
        """Run kubectl against this cluster (argv list, text output captured)."""
        env = dict(os.environ, KUBECONFIG=str(self.kubeconfig))
        argv = [self.kubectl_path, *args]
        result = subprocess.run(
            argv, env=env, input=input, capture_output=True, text=True, timeout=timeout_s, check=False
        )
        if check and result.returncode != 0:
            raise KubectlError(result.returncode, argv, result.stdout, result.stderr)
        return result

    def server_version(self) -> tuple[int, int]:
        """The API server's ``(major, minor)`` version."""
        with self.api_client() as client:
            return api_server_version(client)

    def stop(self) -> None:
        """Release what this object started (nothing for an existing cluster)."""

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


class ExistingCluster(KubeCluster):
    """A cluster that runs elsewhere, reached through a kubeconfig; never started or stopped here."""

    def __init__(self, kubeconfig: Path, kubectl_path: str | None = None) -> None:
        self.kubeconfig = kubeconfig
        self.kube_proxy_kubeconfig = kubeconfig
        self.kubectl_path = kubectl_path or shutil.which("kubectl") or "kubectl"
        client = self.api_client()
        try:
            self.server = str(client.configuration.host)
            from kubernetes.client import VersionApi

            read_json(VersionApi(client).get_code(_request_timeout=10, _preload_content=False))
        except Exception as exc:  # any failure means: not reachable
            raise ClusterStartError(
                f"The cluster of KUBECONFIG={kubeconfig} is not reachable: {exc}"
            ) from exc
        finally:
            client.close()  # type: ignore[no-untyped-call]


@dataclass
class _Component:
    name: str
    process: subprocess.Popen[bytes]
    log_path: Path


def _stop_processes(processes: list[subprocess.Popen[bytes]], grace_s: float) -> None:
    """SIGTERM every process group (last started first), then SIGKILL what is left."""
    for proc in reversed(processes):
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
    deadline = time.monotonic() + grace_s
    for proc in reversed(processes):
        try:
            proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            pass
    for proc in processes:
        # Also catches children the component left in its group.
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        proc.wait()


def _teardown(processes: list[subprocess.Popen[bytes]], state_dir: Path, remove_state: bool) -> None:
    _stop_processes(processes, grace_s=10.0)
    processes.clear()
    if remove_state:
        shutil.rmtree(state_dir, ignore_errors=True)


class LocalCluster(KubeCluster):
    """etcd + kube-apiserver + kube-controller-manager + kube-scheduler on this machine.

    Use as a context manager (``with LocalCluster() as cluster: ...``) or call :meth:`start`
    and :meth:`stop`. Every process runs in its own process group and logs to
    ``<state_dir>/<component>.log``; when a component fails, the error shows its log's tail.
    The processes get SIGKILL when the thread that started them ends (parent-death signal), so
    a run killed outright leaves none behind: start it from a thread that outlives it.
    """

    def __init__(
        self,
        state_dir: Path | None = None,
        *,
        binaries: ControlPlaneBinaries | None = None,
        keep_state: bool = False,
        startup_timeout_s: float = 120.0,
        addressing: ClusterAddressing | None = None,
    ) -> None:
        """``state_dir``: where certificates, logs and etcd data go (a new temp folder when None).

        ``keep_state``: leave the state folder in place after :meth:`stop` (for debugging).
        ``addressing``: where the API server listens and the ranges (default: loopback, no pod network).
        """
        self.addressing = addressing or ClusterAddressing()
        self._requested_state_dir = state_dir
        self._binaries = binaries
        self._keep_state = keep_state
        self.startup_timeout_s = startup_timeout_s
        self._components: list[_Component] = []
        self._processes: list[subprocess.Popen[bytes]] = []
        self._finalizer: weakref.finalize[Any, Any] | None = None
        self.state_dir = Path()
        self.kubeconfig = Path()
        self.kube_proxy_kubeconfig = Path()
        self.server = ""
        self.kubectl_path = "kubectl"
        self.admin_token = ""
        self.ca_file = Path()
        self.version: tuple[int, int] = (0, 0)

    # -- public API --------------------------------------------------------------------------

    @classmethod
    def from_env(cls, use_existing: bool | None = None, **kwargs: Any) -> KubeCluster:
        """The cluster named by ``KUBECONFIG`` when asked for, else a started ``LocalCluster``.

        ``use_existing`` defaults to the environment variable ``GLMOPS_USE_EXISTING_CLUSTER=1``.
        Asking for an existing cluster that is not reachable raises :class:`ClusterStartError`.
        """
        if wants_existing_cluster(use_existing):
            kubeconfig = os.environ.get("KUBECONFIG")
            if not kubeconfig:
                raise ClusterStartError(
                    f"An existing cluster was asked for ({USE_EXISTING_ENV}=1) but KUBECONFIG is not set."
                )
            return ExistingCluster(Path(kubeconfig))
        return cls(**kwargs).start()

    @property
    def running(self) -> bool:
        """True while every component process is alive."""
        return bool(self._components) and all(c.process.poll() is None for c in self._components)

    @property
    def pids(self) -> dict[str, int]:
        """Process id of each component, by name (etcd, kube-apiserver, ...)."""
        return {c.name: c.process.pid for c in self._components}

    def log_path(self, component: str) -> Path:
        """Where a component (``etcd``, ``kube-apiserver``, ...) writes its log."""
        return self.state_dir / f"{component}.log"

    def start(self) -> LocalCluster:
        """Start every component and wait until the cluster serves requests; returns self."""
        if self._components:
            raise RuntimeError("LocalCluster.start() called twice")
        binaries = self._binaries or ensure_binaries(build=False)
        self.kubectl_path = str(binaries.kubectl)
        self._prepare_state_dir()
        try:
            self._start(binaries)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop every process (SIGTERM, then SIGKILL after 10 s) and remove the state folder."""
        if self._finalizer is not None:
            self._finalizer()

    def __enter__(self) -> Self:
        if not self._components:
            self.start()
        return self

    # -- start-up ----------------------------------------------------------------------------

    def _prepare_state_dir(self) -> None:
        if self._requested_state_dir is None:
            self.state_dir = Path(tempfile.mkdtemp(prefix="glmops-devcluster-"))
        else:
            state = self._requested_state_dir.resolve()
            if state.exists() and any(state.iterdir()):
                if not (state / STATE_MARKER).exists():
                    raise ClusterStartError(
                        f"State folder {state} is not empty and was not made by LocalCluster; "
                        "pass an empty or new folder."
                    )
                shutil.rmtree(state)
            state.mkdir(parents=True, exist_ok=True)
            self.state_dir = state
        (self.state_dir / STATE_MARKER).write_text("state folder of glmops_dev.LocalCluster\n")
        self._finalizer = weakref.finalize(
            self, _teardown, self._processes, self.state_dir, not self._keep_state
        )

    def _start(self, binaries: ControlPlaneBinaries) -> None:
        state = self.state_dir
        self.version = parse_version(_run_text([str(binaries.kube_apiserver), "--version"]))
        pki = state / "pki"
        pki.mkdir()
        addressing = self.addressing
        self.ca_file = _write_pki(pki, addressing)

        tokens = {
            name: secrets.token_hex(16) for name in ("admin", "controller-manager", "scheduler", "kube-proxy")
        }
        self.admin_token = tokens["admin"]
        token_file = pki / "tokens.csv"
        token_file.write_text(
            f'{tokens["admin"]},{ADMIN_USER},{ADMIN_USER},"system:masters"\n'
            f"{tokens['controller-manager']},system:kube-controller-manager,system:kube-controller-manager\n"
            f"{tokens['scheduler']},system:kube-scheduler,system:kube-scheduler\n"
            f"{tokens['kube-proxy']},{KUBE_PROXY_USER},{KUBE_PROXY_USER}\n"
        )
        token_file.chmod(0o600)

        etcd_port, etcd_peer_port = free_port(), free_port()
        etcd_url = f"http://127.0.0.1:{etcd_port}"
        self._launch(
            "etcd",
            [
                str(binaries.etcd),
                "--name=default",
                f"--data-dir={state / 'etcd'}",
                f"--listen-client-urls={etcd_url}",
                f"--advertise-client-urls={etcd_url}",
                f"--listen-peer-urls=http://127.0.0.1:{etcd_peer_port}",
                f"--initial-advertise-peer-urls=http://127.0.0.1:{etcd_peer_port}",
                f"--initial-cluster=default=http://127.0.0.1:{etcd_peer_port}",
                "--log-level=warn",
                "--logger=zap",
            ],
        )
        self._wait_until("etcd", lambda: _http_ok(f"{etcd_url}/health"))

        api_port = free_port(addressing.bind_address)
        self.server = f"https://{addressing.bind_address}:{api_port}"
        apiserver_args = [
            str(binaries.kube_apiserver),
            f"--etcd-servers={etcd_url}",
            f"--bind-address={addressing.bind_address}",
            f"--advertise-address={addressing.bind_address}",
            f"--secure-port={api_port}",
            f"--cert-dir={state / 'apiserver-certs'}",
            f"--tls-cert-file={pki / 'apiserver.crt'}",
            f"--tls-private-key-file={pki / 'apiserver.key'}",
            f"--client-ca-file={pki / 'ca.crt'}",
            f"--token-auth-file={token_file}",
            "--authorization-mode=Node,RBAC",
            f"--service-account-issuer={SERVICE_ACCOUNT_ISSUER}",
            f"--service-account-key-file={pki / 'sa.pub'}",
            f"--service-account-signing-key-file={pki / 'sa.key'}",
            f"--service-cluster-ip-range={addressing.service_cidr}",
            "--allow-privileged=true",
            # Simulated nodes have unresolvable hostnames; the node agent serves their logs on
            # their InternalIP (1.20 tries only the first address type it prefers).
            "--kubelet-preferred-address-types=InternalIP,Hostname,InternalDNS,ExternalDNS,ExternalIP",
            "--profiling=false",
            "--v=1",
        ]
        if not addressing.publishes_endpoints:
            # The loopback address cannot be an Endpoints address, so keep the `kubernetes`
            # Service without endpoints instead of failing to reconcile them every 10 s.
            apiserver_args.append("--endpoint-reconciler-type=none")
        if self.version < (1, 24):
            apiserver_args.append("--insecure-port=0")
        self._launch("kube-apiserver", apiserver_args)
        self._wait_until("kube-apiserver", lambda: self._api_get("/readyz") is not None)

        self.kubeconfig = state / "kubeconfig"
        _write_kubeconfig(self.kubeconfig, self.server, self.ca_file, ADMIN_USER, tokens["admin"])
        cm_kubeconfig = state / "controller-manager.kubeconfig"
        _write_kubeconfig(
            cm_kubeconfig, self.server, self.ca_file, "controller-manager", tokens["controller-manager"]
        )
        scheduler_kubeconfig = state / "scheduler.kubeconfig"
        _write_kubeconfig(scheduler_kubeconfig, self.server, self.ca_file, "scheduler", tokens["scheduler"])
        self.kube_proxy_kubeconfig = state / "kube-proxy.kubeconfig"
        _write_kubeconfig(self.kube_proxy_kubeconfig, self.server, self.ca_file, "kube-proxy", tokens["kube-proxy"])

        cm_port = free_port()
        cm_args = [
            str(binaries.kube_controller_manager),
            f"--kubeconfig={cm_kubeconfig}",
            f"--authentication-kubeconfig={cm_kubeconfig}",
            f"--authorization-kubeconfig={cm_kubeconfig}",
            "--leader-elect=false",
            # No kubelets: the node lifecycle controller would taint and evict every node.
            "--controllers=*,-nodelifecycle",
            f"--service-account-private-key-file={pki / 'sa.key'}",
            f"--root-ca-file={pki / 'ca.crt'}",
            f"--cluster-signing-cert-file={pki / 'ca.crt'}",
            f"--cluster-signing-key-file={pki / 'ca.key'}",
            "--use-service-account-credentials=true",
            f"--service-cluster-ip-range={addressing.service_cidr}",
            *([f"--cluster-cidr={addressing.pod_cidr}"] if addressing.pod_cidr else []),
            "--bind-address=127.0.0.1",
            f"--secure-port={cm_port}",
            f"--cert-dir={state / 'controller-manager-certs'}",
            "--profiling=false",
            "--v=1",
        ]
        if self.version < (1, 24):
            cm_args.append("--port=0")
        self._launch("kube-controller-manager", cm_args)

        scheduler_port = free_port()
        scheduler_args = [
            str(binaries.kube_scheduler),
            f"--kubeconfig={scheduler_kubeconfig}",
            f"--authentication-kubeconfig={scheduler_kubeconfig}",
            f"--authorization-kubeconfig={scheduler_kubeconfig}",
            "--leader-elect=false",
            "--bind-address=127.0.0.1",
            f"--secure-port={scheduler_port}",
            f"--cert-dir={state / 'scheduler-certs'}",
            "--profiling=false",
            "--v=1",
        ]
        if self.version < (1, 23):
            scheduler_args.append("--port=0")
        self._launch("kube-scheduler", scheduler_args)

        self._wait_until("kube-controller-manager", lambda: _https_healthz(cm_port))
        self._wait_until("kube-scheduler", lambda: _https_healthz(scheduler_port))
        # Pods need the `default` ServiceAccount (and, before 1.24, its token Secret): this
        # proves the controller-manager's controllers run.
        self._wait_until("kube-controller-manager", self._default_service_account_ready)

    def _launch(self, name: str, argv: list[str]) -> None:
        log_path = self.log_path(name)
        with log_path.open("ab") as log:
            process = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.state_dir,
                start_new_session=True,
                # A run killed outright must not leave an API server on its pod network's address.
                preexec_fn=set_parent_death_signal,  # noqa: PLW1509 - only a prctl before exec
            )
        self._processes.append(process)
        self._components.append(_Component(name, process, log_path))

    def _wait_until(self, name: str, ready: Any) -> None:
        deadline = time.monotonic() + self.startup_timeout_s
        delay = 0.05
        while True:
            for component in self._components:
                code = component.process.poll()
                if code is not None:
                    raise ClusterStartError(
                        f"{component.name} exited with code {code} while waiting for {name}; "
                        f"last lines of {component.log_path}:\n{tail(component.log_path)}"
                    )
            if ready():
                return
            if time.monotonic() > deadline:
                log_path = self.log_path(name)
                raise ClusterStartError(
                    f"{name} was not ready after {self.startup_timeout_s:.0f} s; "
                    f"last lines of {log_path}:\n{tail(log_path)}"
                )
            time.sleep(delay)
            delay = min(delay * 2, 0.5)

    def _ssl_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca_file))

    def _api_get(self, path: str) -> Any:
        """GET a path of the API server as admin: parsed JSON (or text), None on any failure."""
        request = urllib.request.Request(
            self.server + path, headers={"Authorization": f"Bearer {self.admin_token}"}
        )
        try:
            with urllib.request.urlopen(request, context=self._ssl_context(), timeout=5) as response:
                body = response.read().decode()
        except (urllib.error.URLError, OSError, ValueError):
            return None
        try:
            return json.loads(body)
        except json.JSONDecodeError:
            return body

    def _default_service_account_ready(self) -> bool:
        account = self._api_get("/api/v1/namespaces/default/serviceaccounts/default")
        if not isinstance(account, dict):
            return False
        return self.version >= (1, 24) or bool(account.get("secrets"))


def _run_text(argv: list[str]) -> str:
    return subprocess.run(argv, capture_output=True, text=True, check=True, timeout=60).stdout


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def _https_healthz(port: int) -> bool:
    """True when a component's self-signed HTTPS endpoint answers /healthz with 200."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    try:
        with urllib.request.urlopen(
            f"https://127.0.0.1:{port}/healthz", context=context, timeout=2
        ) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def _openssl(*args: str) -> None:
    result = subprocess.run(["openssl", *args], capture_output=True, text=True, check=False, timeout=60)
    if result.returncode != 0:
        raise ClusterStartError(f"openssl {' '.join(args[:2])} failed: {result.stderr.strip()}")


def _write_pki(pki: Path, addressing: ClusterAddressing) -> Path:
    """A CA, the API server's serving certificate and the service-account key pair; returns the CA."""
    ca_key, ca_crt = pki / "ca.key", pki / "ca.crt"
    _openssl(
        "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-sha256", "-days", "3650",
        "-keyout", str(ca_key), "-out", str(ca_crt), "-subj", "/CN=glmops-devcluster-ca",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        "-addext", "subjectKeyIdentifier=hash",
    )  # fmt: skip
    server_key, server_csr, server_crt = pki / "apiserver.key", pki / "apiserver.csr", pki / "apiserver.crt"
    _openssl(
        "req", "-new", "-newkey", "rsa:2048", "-nodes", "-sha256",
        "-keyout", str(server_key), "-out", str(server_csr), "-subj", "/CN=kube-apiserver",
    )  # fmt: skip
    addresses = dict.fromkeys([LOOPBACK, addressing.bind_address, addressing.kubernetes_service_ip])
    names = [
        *(f"IP:{address}" for address in addresses),
        "DNS:localhost",
        "DNS:kubernetes",
        "DNS:kubernetes.default",
        "DNS:kubernetes.default.svc",
        "DNS:kubernetes.default.svc.cluster.local",
    ]
    extensions = pki / "apiserver.ext"
    extensions.write_text(
        "basicConstraints=critical,CA:FALSE\n"
        "keyUsage=critical,digitalSignature,keyEncipherment\n"
        "extendedKeyUsage=serverAuth\n"
        "subjectKeyIdentifier=hash\n"
        "authorityKeyIdentifier=keyid,issuer\n"
        f"subjectAltName={','.join(names)}\n"
    )
    _openssl(
        "x509", "-req", "-sha256", "-days", "365", "-in", str(server_csr),
        "-CA", str(ca_crt), "-CAkey", str(ca_key), "-CAcreateserial",
        "-out", str(server_crt), "-extfile", str(extensions),
    )  # fmt: skip
    sa_key = pki / "sa.key"
    _openssl("genrsa", "-out", str(sa_key), "2048")
    _openssl("rsa", "-in", str(sa_key), "-pubout", "-out", str(pki / "sa.pub"))
    for key in (ca_key, server_key, sa_key):
        key.chmod(0o600)
    return ca_crt


def _write_kubeconfig(path: Path, server: str, ca_file: Path, user: str, token: str) -> None:
    """A single-context kubeconfig with bearer-token auth that trusts ``ca_file``."""
    ca_data = base64.b64encode(ca_file.read_bytes()).decode()
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {"name": "glmops-dev", "cluster": {"server": server, "certificate-authority-data": ca_data}}
        ],
        "users": [{"name": user, "user": {"token": token}}],
        "contexts": [{"name": "glmops-dev", "context": {"cluster": "glmops-dev", "user": user}}],
        "current-context": "glmops-dev",
        "preferences": {},
    }
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    path.chmod(0o600)
