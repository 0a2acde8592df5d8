"""Plain-JSON use of the generated Kubernetes client.

The client's typed models follow the newest API; the local control plane is older, so these
helpers call the generated methods with ``_preload_content=False`` and handle the raw HTTP
response themselves. A raw response must be read to the end before its connection is reused.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any


class WatchExpired(Exception):
    """The watch's resourceVersion is too old (HTTP 410 Gone): list again."""


def read_json(response: Any) -> Any:
    """The parsed JSON body of a raw response (the connection goes back to the pool)."""
    try:
        return json.loads(response.data)
    finally:
        response.release_conn()


def read_json_or_none(method: Any, *args: Any, **kwargs: Any) -> Any:
    """Call a generated read method raw and parse its answer; None when the object is absent (404)."""
    from kubernetes.client.exceptions import ApiException

    try:
        return read_json(method(*args, _preload_content=False, **kwargs))
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise


def discard(response: Any) -> None:
    """Read and drop a raw response's body so that its connection can be reused."""
    try:
        response.drain_conn()
    finally:
        response.release_conn()


def watch_events(response: Any, what: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """(type, object) of each event of a raw watch response, until the server ends the stream.

    Events arrive as JSON lines split across chunks at any byte. An ERROR event ends the watch:
    :class:`WatchExpired` for 410 Gone, RuntimeError (naming `what`) otherwise. The caller owns
    the response (releasing it, closing it from another thread to stop early).
    """
    pending = b""
    for chunk in response.stream(amt=None, decode_content=False):
        pending += chunk
        *lines, pending = pending.split(b"\n")
        for line in lines:
            if not line.strip():
                continue
            event = json.loads(line)
            kind, obj = str(event.get("type")), event.get("object") or {}
            if kind == "ERROR":
                if obj.get("code") == 410:
                    raise WatchExpired(str(obj.get("message", "")))
                raise RuntimeError(f"{what} watch failed: {obj.get('message', obj)}")
            yield kind, obj
