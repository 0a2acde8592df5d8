"""Plain-JSON use of the generated Kubernetes client.

The client's typed models follow the newest API; the local control plane is older, so these
helpers call the generated methods with ``_preload_content=False`` and handle the raw HTTP
response themselves. A raw response must be read to the end before its connection is reused.
"""

from __future__ import annotations

import json
from typing import Any


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
