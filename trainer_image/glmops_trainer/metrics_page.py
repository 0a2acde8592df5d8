"""A Prometheus text page served at `/metrics` from a daemon thread (no torch: the generator uses it too).

The trainer's and the generator's pods serve their progress this way on the pod IP, where the
operator reads it. A port that cannot be bound (taken) is logged and skipped: the work never
fails for it.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from glmops.contract.config import METRICS_PATH

log = logging.getLogger(__name__)


class PageServer:
    """Serves `page()` at METRICS_PATH; `port` is the bound one once `start` succeeded (0 asks for any)."""

    def __init__(self, address: str, port: int, page: Callable[[], str], thread_name: str) -> None:
        self.address, self.port = address, port
        self._page = page
        self._thread_name = thread_name
        self._server: ThreadingHTTPServer | None = None

    def start(self) -> bool:
        """Bind and serve in the background; returns whether the endpoint is up."""
        page = self._page

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path.split("?")[0] != METRICS_PATH:
                    self.send_error(404)
                    return
                body = page().encode("utf-8")
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass  # a scrape every few seconds is not news for the pod log

        try:
            self._server = ThreadingHTTPServer((self.address, self.port), Handler)
        except OSError as exc:
            log.warning("progress endpoint %s:%d not served: %s", self.address, self.port, exc)
            return False
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, name=self._thread_name, daemon=True).start()
        log.info("progress endpoint: http://%s:%d%s", self.address, self.port, METRICS_PATH)
        return True

    def stop(self) -> None:
        """Stop serving."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
