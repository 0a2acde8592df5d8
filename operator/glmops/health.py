"""Liveness and readiness of one operator replica: `/healthz` and `/readyz` on a port of its own.

Served by every replica, the active one and the standbys alike (kopf's own liveness endpoint
exists only once kopf runs, so a standby would fail it and be restarted forever). A replica is
healthy while its leader-election loop talks to the API; both answers say the replica's role.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

STALE_AFTER_S = 120.0
"""A replica whose election loop has not reached the API for this long reports itself unhealthy."""


class HealthServer:
    """A daemon thread answering /healthz and /readyz with 200 (role in the body) or 503."""

    def __init__(self, port: int, role: Callable[[], str], last_contact_s: Callable[[], float] | None = None, host: str = "0.0.0.0") -> None:
        self.role = role
        self.last_contact_s = last_contact_s
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path not in ("/healthz", "/readyz"):
                    self.send_error(404)
                    return
                healthy = server.healthy()
                body = f"{'ok' if healthy else 'stale'} {server.role()}\n".encode()
                self.send_response(200 if healthy else 503)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                return

        self._server = ThreadingHTTPServer((host, port), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="glmops-health", daemon=True)

    @property
    def port(self) -> int:
        """The port it listens on."""
        return int(self._server.server_address[1])

    def healthy(self) -> bool:
        """Whether the election loop (if any) reached the API recently."""
        return self.last_contact_s is None or time.monotonic() - self.last_contact_s() < STALE_AFTER_S

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
