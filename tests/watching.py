"""Recording every status a custom resource goes through, from a watch.

Polling samples: a phase that lasts less than one poll (a FineTuneJob's Pending, when the node
agent starts the trainer quickly) is missed now and then, and a test that expects it fails at
random. A watch started from a list's resourceVersion sees every change the apiserver commits.
"""

from __future__ import annotations

import threading
from collections import defaultdict
from typing import Any, Self

import urllib3
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from glmops_dev.rawapi import WatchExpired, read_json, watch_events

GROUP, VERSION = "glmops.io", "v1alpha1"


class StatusRecorder:
    """Every phase each object of `plural` in `namespace` shows, in order, and the first body
    seen in each phase ("" before the operator wrote one). Start it before creating the objects;
    use it as a context manager."""

    def __init__(self, api: client.ApiClient, namespace: str, plural: str) -> None:
        self.api, self.namespace, self.plural = api, namespace, plural
        self.phases: dict[str, list[str]] = defaultdict(list)
        self.bodies: dict[str, dict[str, dict[str, Any]]] = defaultdict(dict)
        self.errors: list[str] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name=f"watch-{plural}")
        self._version = ""

    @property
    def _path(self) -> str:
        return f"/apis/{GROUP}/{VERSION}/namespaces/{self.namespace}/{self.plural}"

    def _request(self, query: list[tuple[str, str]]) -> Any:
        serialized = self.api.param_serialize("GET", self._path, query_params=query, auth_settings=["BearerToken"])
        return self.api.call_api(*serialized).response

    def _list(self) -> None:
        """The objects as they are now, and the version to watch from."""
        listed = read_json(self._request([]))
        for body in listed["items"]:
            self._record(body)
        self._version = listed["metadata"]["resourceVersion"]

    def _record(self, body: dict[str, Any]) -> None:
        name = body["metadata"]["name"]
        phase = str((body.get("status") or {}).get("phase") or "")
        with self._lock:
            seen = self.phases[name]
            if not seen or seen[-1] != phase:
                seen.append(phase)
            self.bodies[name].setdefault(phase, body)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                query = [("watch", "1"), ("timeoutSeconds", "5"), ("resourceVersion", self._version)]
                response = self._request(query)
                try:
                    for _kind, obj in watch_events(response, self.plural):
                        self._record(obj)
                        self._version = obj["metadata"]["resourceVersion"]
                finally:
                    response.release_conn()
            except WatchExpired as exc:  # the version is gone (410): start over from a list
                self.errors.append(str(exc))
                self._list()
            except (ApiException, urllib3.exceptions.HTTPError, OSError, ValueError, RuntimeError) as exc:
                # a dropped connection or a failed watch: watch again from the last version
                if not self._stop.is_set():
                    self.errors.append(repr(exc))
                    self._stop.wait(0.5)

    def __enter__(self) -> Self:
        self._list()
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=15)

    def of(self, name: str) -> tuple[list[str], dict[str, dict[str, Any]]]:
        """The phases `name` went through, and its first body in each."""
        with self._lock:
            return list(self.phases.get(name, [])), dict(self.bodies.get(name, {}))
