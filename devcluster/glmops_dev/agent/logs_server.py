"""The kubelet's log endpoint, so that ``kubectl logs`` and the API's ``pods/log`` work for simulated nodes.

The API server answers ``GET /api/v1/namespaces/NS/pods/POD/log`` by calling
``https://<node address>:<kubeletEndpoint.Port>/containerLogs/NS/POD/CONTAINER`` with the query
parameters ``tailLines``, ``limitBytes``, ``sinceSeconds``, ``sinceTime``, ``timestamps``,
``follow`` and ``previous``. This server answers that over HTTPS with a self-signed certificate
made at start (the API server checks the kubelet's certificate only when
``--kubelet-certificate-authority`` is set) and asks for no client certificate: it listens on
the node's address only (loopback, or the host's end of the pod network's link), never on an
address other machines reach.
"""

from __future__ import annotations

import http.server
import itertools
import logging
import socket
import ssl
import subprocess
import threading
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

from glmops_dev.agent.logfiles import LogQuery, parse_time, stream_log

log = logging.getLogger("glmops_dev.agent")

HEALTH_BODY_PREFIX = "glmops-node-agent"
"""First word of ``/healthz``: how a second node agent recognises that the nodes are taken."""


class LogNotFound(Exception):
    """The log cannot be served; ``status`` is the HTTP status the kubelet would answer."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class LogTarget:
    """A log file and whether its container may still write to it."""

    path: Path
    running: Callable[[], bool]


class LogSource(Protocol):
    """Finds the log of a container by namespace, pod name and container name."""

    def find_log(self, namespace: str, pod: str, container: str, previous: bool) -> LogTarget:
        """The log to serve, or raise :class:`LogNotFound`."""
        ...


def self_signed_certificate(
    directory: Path, common_name: str = "glmops-node-agent", address: str = "127.0.0.1"
) -> tuple[Path, Path]:
    """A fresh ECDSA P-256 certificate and key for ``address``/localhost (made with the openssl CLI)."""
    names = ",".join(f"IP:{ip}" for ip in dict.fromkeys(["127.0.0.1", address]))
    directory.mkdir(parents=True, exist_ok=True)
    cert, key = directory / "kubelet.crt", directory / "kubelet.key"
    result = subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
            "-nodes", "-sha256", "-days", "365", "-subj", f"/CN={common_name}",
            "-addext", f"subjectAltName={names},DNS:localhost",
            "-keyout", str(key), "-out", str(cert),
        ],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    if result.returncode != 0:
        raise RuntimeError(f"openssl could not make the log server's certificate: {result.stderr.strip()}")
    key.chmod(0o600)
    return cert, key


def _flag(values: dict[str, list[str]], name: str) -> bool:
    return (values.get(name) or ["false"])[-1].lower() in ("true", "1")


def _int(values: dict[str, list[str]], name: str, minimum: int) -> int | None:
    raw = values.get(name)
    if not raw:
        return None
    try:
        number = int(raw[-1])
    except ValueError:
        raise LogNotFound(400, f"{name}={raw[-1]!r}: not an integer") from None
    if number < minimum:
        raise LogNotFound(400, f"{name}={number}: must be at least {minimum}")
    return number


def parse_query(query: str, now: datetime | None = None) -> LogQuery:
    """The ``containerLogs`` query string as a :class:`LogQuery`."""
    values = urllib.parse.parse_qs(query, keep_blank_values=True)
    since: datetime | None = None
    since_seconds = _int(values, "sinceSeconds", 1)
    if since_seconds is not None:
        since = (now or datetime.now(UTC)) - timedelta(seconds=since_seconds)
    if values.get("sinceTime"):
        try:
            since = parse_time(values["sinceTime"][-1])
        except ValueError as exc:
            raise LogNotFound(400, f"sinceTime: {exc}") from None
    return LogQuery(
        tail_lines=_int(values, "tailLines", 0),
        limit_bytes=_int(values, "limitBytes", 1),
        since=since,
        timestamps=_flag(values, "timestamps"),
        follow=_flag(values, "follow"),
        previous=_flag(values, "previous"),
    )


class _Handler(http.server.BaseHTTPRequestHandler):
    server: _Server
    # HTTP/1.0: a followed log ends when the connection closes, no chunked encoding needed.
    protocol_version = "HTTP/1.0"

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("log server: " + format, *args)

    def _text(self, status: int, body: str) -> None:
        data = body.encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        url = urllib.parse.urlsplit(self.path)
        parts = [urllib.parse.unquote(p) for p in url.path.split("/") if p]
        try:
            if parts == ["healthz"]:
                self._text(200, f"{HEALTH_BODY_PREFIX} {self.server.agent_id}\n")
            elif len(parts) == 4 and parts[0] == "containerLogs":
                self._logs(parts[1], parts[2], parts[3], url.query)
            else:
                self._text(
                    404,
                    f"{url.path}: the glmops node agent serves /containerLogs/NAMESPACE/POD/CONTAINER and "
                    "/healthz only (exec, attach and port-forward are not supported on simulated nodes)\n",
                )
        except LogNotFound as exc:
            self._text(exc.status, f"{exc}\n")
        except (BrokenPipeError, ConnectionResetError, ssl.SSLError):
            pass

    def _logs(self, namespace: str, pod: str, container: str, query: str) -> None:
        options = parse_query(query)
        target = self.server.source.find_log(namespace, pod, container, options.previous)
        if not target.path.exists():
            raise LogNotFound(404, f'no log for container "{container}" in pod "{pod}" yet')
        running = (target.running() for _ in itertools.count())
        chunks: Iterator[bytes] = stream_log(target.path, options, running)
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        if not options.follow:
            body = b"".join(chunks)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        self.end_headers()
        for chunk in chunks:
            self.wfile.write(chunk)
            self.wfile.flush()


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(
        self, address: tuple[str, int], source: LogSource, context: ssl.SSLContext, agent_id: str
    ) -> None:
        super().__init__(address, _Handler)
        self.source = source
        self.context = context
        self.agent_id = agent_id

    def finish_request(self, request: Any, client_address: Any) -> None:
        # The TLS handshake happens here, on the request's own thread, so a slow client never
        # holds up the accepting loop.
        assert isinstance(request, socket.socket)
        request.settimeout(30)
        try:
            tls = self.context.wrap_socket(request, server_side=True)
        except (ssl.SSLError, OSError) as exc:
            log.debug("log server: TLS handshake failed: %s", exc)
            return
        tls.settimeout(None)
        try:
            super().finish_request(tls, client_address)
        finally:
            # wrap_socket detached the plain socket, so closing it (the base class) ends nothing.
            tls.close()


class KubeletLogServer:
    """The HTTPS log endpoint on the node's address (a free port unless one is given)."""

    def __init__(
        self, source: LogSource, cert_dir: Path, agent_id: str, port: int = 0, address: str = "127.0.0.1"
    ) -> None:
        cert, key = self_signed_certificate(cert_dir, address=address)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, key)
        self.address = address
        self._server = _Server((address, port), source, context, agent_id)
        self.port: int = self._server.server_address[1]
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="kubelet-log-server", daemon=True
        )

    def start(self) -> KubeletLogServer:
        """Serve on a background thread; returns self."""
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close the socket."""
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
