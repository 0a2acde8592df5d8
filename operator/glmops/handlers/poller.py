"""One daemon thread per resource kind for what changes without a Kubernetes event.

A kopf index names the objects to look at: under "progress" those whose pod reports progress
(read every `progress_poll_seconds`), under "waiting" those waiting for something the cluster
lacks (a PVC, a Secret, a teacher), looked at on a backoff per object.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

import kopf

from glmops.settings import Settings

log = logging.getLogger(__name__)

WAIT_BACKOFF_SECONDS = (2.0, 4.0, 8.0, 15.0, 30.0)
"""Seconds between looks at a waiting object, by the number of looks so far (then the last)."""


class Poller:
    """Calls `look(namespace, name)` for the objects of the `polled` index; one daemon thread."""

    def __init__(
        self, settings: Settings, polled: kopf.Index[str, tuple[str, str]], look: Callable[[str, str], None], kind: str
    ) -> None:
        self.settings, self.polled, self.look, self.kind = settings, polled, look, kind
        self._stop = threading.Event()
        self._next_look: dict[tuple[str, str], tuple[float, int]] = {}  # waiting object -> (when, tries)
        self._thread = threading.Thread(target=self._run, name=f"glmops-poller-{kind.lower()}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _keys(self, which: str) -> list[tuple[str, str]]:
        for _ in range(3):  # the index changes in the event loop meanwhile; copy, retrying a torn read
            try:
                return list(self.polled.get(which, []))
            except RuntimeError:
                continue
        return []

    def _run(self) -> None:
        tick = min(2.0, self.settings.progress_poll_seconds)
        last_progress = 0.0
        while not self._stop.wait(tick):
            now = time.monotonic()
            if now - last_progress >= self.settings.progress_poll_seconds:
                last_progress = now
                for namespace, name in self._keys("progress"):
                    self._look(namespace, name)
            waiting = set(self._keys("waiting"))
            for key in [k for k in self._next_look if k not in waiting]:
                del self._next_look[key]
            for key in waiting:
                when, tries = self._next_look.get(key, (0.0, 0))
                if now >= when:
                    self._next_look[key] = (now + WAIT_BACKOFF_SECONDS[min(tries, len(WAIT_BACKOFF_SECONDS) - 1)], tries + 1)
                    self._look(*key)

    def _look(self, namespace: str, name: str) -> None:
        try:
            self.look(namespace, name)
        except kopf.TemporaryError:
            pass  # said in status; the next round tries again
        except Exception:
            log.exception("looking at %s %s/%s failed", self.kind, namespace, name)
