"""A current apiextensions-apiserver (Kubernetes 1.36) and its etcd on loopback, for testing CEL rules.

The local control plane is Kubernetes 1.20, which drops the CRDs' `x-kubernetes-validations`;
this server is the part of kube-apiserver that serves CRDs and custom resources, built from
Debian sid's sources by `scripts/build-apiextensions-apiserver.sh` into
`~/.cache/glmops/apiextensions-apiserver-<version>/bin` (with sid's etcd).

Standalone it serves only CRDs and custom resources, so: clients authenticate with a certificate
in the `system:masters` group (always authorised, no SubjectAccessReview needed); the delegated
authentication and authorisation kubeconfigs point at the server itself; admission plugins that
need namespaces or webhooks are off; so is priority and fairness (it needs its own API objects).
"""

from __future__ import annotations

import datetime
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

VERSION = "0.36.4"
BUILD_RECIPE = "1"  # BUILD_RECIPE of scripts/build-apiextensions-apiserver.sh
REPO = Path(__file__).resolve().parents[2]
BUILD_SCRIPT = REPO / "scripts" / "build-apiextensions-apiserver.sh"
CRDS = sorted((REPO / "crds").glob("*.yaml"))
NAMESPACE = "cel-test"
"""Namespace of the test objects (the server has no namespace API; nothing checks it exists)."""
DISABLED_ADMISSION = (
    "NamespaceLifecycle,MutatingAdmissionWebhook,ValidatingAdmissionWebhook,"
    "ValidatingAdmissionPolicy,MutatingAdmissionPolicy"
)


def load_crds(paths: list[Path] = CRDS) -> list[dict[str, Any]]:
    """Every CustomResourceDefinition in crds/, as the files hold it."""
    return [doc for path in paths for doc in yaml.safe_load_all(path.read_text()) if doc and doc.get("kind") == "CustomResourceDefinition"]


class ApiextServerError(RuntimeError):
    """The server is not built or did not start; the message says why and how to fix it."""


def cache_dir() -> Path:
    """Where the build script caches the binaries."""
    explicit = os.environ.get("GLMOPS_CACHE_DIR")
    root = Path(explicit) if explicit else Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "glmops"
    return root / f"apiextensions-apiserver-{VERSION}"


def find_binaries(build: bool) -> tuple[Path, Path]:
    """(apiextensions-apiserver, etcd) from the cache; builds them first when allowed and missing."""
    folder = cache_dir()

    def complete() -> bool:
        try:
            stamp = (folder / "STAMP").read_text().splitlines()
        except FileNotFoundError:
            return False
        return f"recipe={BUILD_RECIPE}" in stamp and all(os.access(folder / "bin" / b, os.X_OK) for b in ("apiextensions-apiserver", "etcd"))

    if not complete() and build:
        result = subprocess.run(["bash", str(BUILD_SCRIPT)], capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise ApiextServerError(f"`bash {BUILD_SCRIPT.relative_to(REPO)}` failed:\n{result.stderr[-4000:]}")
    if not complete():
        raise ApiextServerError(
            f"no current build of the apiextensions-apiserver in {folder}; run "
            f"`bash {BUILD_SCRIPT.relative_to(REPO)}` (about 5 minutes, cached afterwards) or unset GLMOPS_NO_BUILD"
        )
    return folder / "bin" / "apiextensions-apiserver", folder / "bin" / "etcd"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _write_pki(folder: Path) -> None:
    """A CA, the server's certificate (127.0.0.1) and a client certificate in system:masters."""
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.UTC)

    def name(cn: str, org: str | None = None) -> x509.Name:
        parts = [x509.NameAttribute(NameOID.COMMON_NAME, cn)]
        if org:
            parts.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, org))
        return x509.Name(parts)

    def save(stem: str, key: ec.EllipticCurvePrivateKey, cert: x509.Certificate) -> None:
        (folder / f"{stem}.key").write_bytes(
            key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
        )
        (folder / f"{stem}.key").chmod(0o600)
        (folder / f"{stem}.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(name("glmops-cel-test-ca"))
        .issuer_name(name("glmops-cel-test-ca"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    save("ca", ca_key, ca)

    def leaf(stem: str, subject: x509.Name, usage: x509.ObjectIdentifier, server: bool) -> None:
        key = ec.generate_private_key(ec.SECP256R1())
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(ca.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        )
        if server:
            builder = builder.add_extension(
                x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]),
                critical=False,
            )
        save(stem, key, builder.sign(ca_key, hashes.SHA256()))

    leaf("server", name("apiextensions-apiserver"), ExtendedKeyUsageOID.SERVER_AUTH, server=True)
    leaf("admin", name("glmops-cel-test", "system:masters"), ExtendedKeyUsageOID.CLIENT_AUTH, server=False)


@dataclass
class ApiResponse:
    """Status code and decoded JSON body of one request."""

    status: int
    body: dict[str, Any]

    @property
    def message(self) -> str:
        """The Status message of an error response."""
        return str(self.body.get("message", ""))


class ApiextServer:
    """etcd + apiextensions-apiserver on loopback; `request` talks to it as a system:masters client."""

    def __init__(self, server_binary: Path, etcd_binary: Path) -> None:
        self.server_binary = server_binary
        self.etcd_binary = etcd_binary
        self.state = Path(tempfile.mkdtemp(prefix="glmops-apiext-"))
        self.processes: list[subprocess.Popen[bytes]] = []
        self.url = ""

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self, timeout_s: float = 120.0) -> ApiextServer:
        """Start etcd, then the server; wait until it serves CustomResourceDefinitions."""
        try:
            self._start(timeout_s)
        except BaseException:
            self.stop()
            raise
        return self

    def _launch(self, name: str, argv: list[str]) -> subprocess.Popen[bytes]:
        log = (self.state / f"{name}.log").open("ab")
        process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        log.close()
        self.processes.append(process)
        return process

    def log_tail(self, name: str, lines: int = 40) -> str:
        """The end of a component's log (`etcd`, `apiextensions-apiserver`)."""
        try:
            return "\n".join((self.state / f"{name}.log").read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return ""

    def _start(self, timeout_s: float) -> None:
        pki = self.state / "pki"
        pki.mkdir()
        _write_pki(pki)
        etcd_port, peer_port = _free_port(), _free_port()
        etcd_url = f"http://127.0.0.1:{etcd_port}"
        self._launch(
            "etcd",
            [
                str(self.etcd_binary),
                "--name=default",
                f"--data-dir={self.state / 'etcd'}",
                f"--listen-client-urls={etcd_url}",
                f"--advertise-client-urls={etcd_url}",
                f"--listen-peer-urls=http://127.0.0.1:{peer_port}",
                f"--initial-advertise-peer-urls=http://127.0.0.1:{peer_port}",
                f"--initial-cluster=default=http://127.0.0.1:{peer_port}",
                "--log-level=warn",
            ],
        )
        port = _free_port()
        self.url = f"https://127.0.0.1:{port}"
        kubeconfig = self.state / "kubeconfig"
        kubeconfig.write_text(
            yaml.safe_dump(
                {
                    "apiVersion": "v1",
                    "kind": "Config",
                    "clusters": [{"name": "apiext", "cluster": {"server": self.url, "certificate-authority": str(pki / "ca.crt")}}],
                    "users": [{"name": "admin", "user": {"client-certificate": str(pki / "admin.crt"), "client-key": str(pki / "admin.key")}}],
                    "contexts": [{"name": "apiext", "context": {"cluster": "apiext", "user": "admin"}}],
                    "current-context": "apiext",
                }
            )
        )
        self._launch(
            "apiextensions-apiserver",
            [
                str(self.server_binary),
                f"--etcd-servers={etcd_url}",
                "--bind-address=127.0.0.1",
                f"--secure-port={port}",
                f"--tls-cert-file={pki / 'server.crt'}",
                f"--tls-private-key-file={pki / 'server.key'}",
                f"--client-ca-file={pki / 'ca.crt'}",
                f"--kubeconfig={kubeconfig}",
                f"--authentication-kubeconfig={kubeconfig}",
                f"--authorization-kubeconfig={kubeconfig}",
                "--authentication-skip-lookup=true",
                f"--disable-admission-plugins={DISABLED_ADMISSION}",
                "--enable-priority-and-fairness=false",
                "--profiling=false",
            ],
        )
        deadline = time.monotonic() + timeout_s
        while True:
            for process in self.processes:
                if process.poll() is not None:
                    name = "etcd" if process is self.processes[0] else "apiextensions-apiserver"
                    raise ApiextServerError(f"{name} exited with {process.returncode}:\n{self.log_tail(name)}")
            try:
                # Not /readyz: standalone, the server's Service informer (for webhooks) never syncs.
                if self.request("GET", "/apis/apiextensions.k8s.io/v1/customresourcedefinitions").status == 200:
                    return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise ApiextServerError(f"not ready after {timeout_s:.0f} s:\n{self.log_tail('apiextensions-apiserver')}")
            time.sleep(0.5)

    def stop(self) -> None:
        """End both processes (SIGTERM, then SIGKILL) and remove the state folder."""
        for process in reversed(self.processes):
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        for process in reversed(self.processes):
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        self.processes.clear()
        shutil.rmtree(self.state, ignore_errors=True)

    # -- requests ----------------------------------------------------------------------------

    def _context(self) -> ssl.SSLContext:
        pki = self.state / "pki"
        context = ssl.create_default_context(cafile=str(pki / "ca.crt"))
        context.load_cert_chain(str(pki / "admin.crt"), str(pki / "admin.key"))
        return context

    def request(self, method: str, path: str, body: Any = None, content_type: str = "application/json") -> ApiResponse:
        """One request as system:masters; errors come back as responses, not exceptions."""
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.url + path, data=data, method=method, headers={"Content-Type": content_type})
        try:
            with urllib.request.urlopen(request, context=self._context(), timeout=30) as response:
                status, raw = response.status, response.read()
        except urllib.error.HTTPError as exc:
            status, raw = exc.code, exc.read()
        try:
            decoded = json.loads(raw) if raw else {}
        except json.JSONDecodeError:
            decoded = {"message": raw.decode(errors="replace")}
        return ApiResponse(status, decoded if isinstance(decoded, dict) else {"value": decoded})

    def install_crd(self, crd: dict[str, Any], timeout_s: float = 60.0) -> None:
        """Create a CRD as given and wait until it is Established (NamesAccepted and schema valid)."""
        created = self.request("POST", "/apis/apiextensions.k8s.io/v1/customresourcedefinitions", crd)
        if created.status != 201:
            raise ApiextServerError(f"CRD {crd['metadata']['name']} refused ({created.status}): {created.message}")
        deadline = time.monotonic() + timeout_s
        name = crd["metadata"]["name"]
        while time.monotonic() < deadline:
            current = self.request("GET", f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{name}").body
            conditions = (current.get("status") or {}).get("conditions") or []
            if any(c["type"] == "Established" and c["status"] == "True" for c in conditions):
                return
            time.sleep(0.2)
        raise ApiextServerError(f"CRD {name} not Established after {timeout_s:.0f} s: {conditions}")

    def version(self) -> dict[str, Any]:
        """/version of the server."""
        return self.request("GET", "/version").body
