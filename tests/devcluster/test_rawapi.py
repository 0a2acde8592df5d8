"""The watch-stream reader that the node agent and the cluster DNS share, over byte streams as the
apiserver sends them (JSON lines cut into chunks at arbitrary bytes)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from glmops_dev.rawapi import WatchExpired, watch_events


class _Stream:
    """The one method of a raw urllib3 response that the reader uses."""

    def __init__(self, payload: bytes, chunk: int) -> None:
        self.chunks = [payload[i : i + chunk] for i in range(0, len(payload), chunk)]

    def stream(self, amt: Any = None, decode_content: bool = False) -> Iterator[bytes]:
        yield from self.chunks


def _lines(*events: dict[str, Any]) -> bytes:
    return b"".join(json.dumps(e).encode() + b"\n" for e in events)


POD = {"metadata": {"name": "p", "uid": "u1", "resourceVersion": "7"}, "status": {"phase": "Running"}}


@pytest.mark.parametrize("chunk", [1, 3, 17, 4096])
def test_events_come_whole_however_the_stream_is_cut(chunk: int) -> None:
    payload = _lines({"type": "ADDED", "object": POD}, {"type": "BOOKMARK", "object": {"metadata": {"resourceVersion": "9"}}})
    payload += b"\n" + _lines({"type": "DELETED", "object": POD})  # a blank line is skipped
    events = list(watch_events(_Stream(payload, chunk), "pod"))
    assert [kind for kind, _ in events] == ["ADDED", "BOOKMARK", "DELETED"]
    assert events[0][1] == POD and events[1][1]["metadata"]["resourceVersion"] == "9"


def test_a_gone_resource_version_says_list_again_and_other_errors_name_the_watch() -> None:
    gone = _lines({"type": "ADDED", "object": POD}, {"type": "ERROR", "object": {"code": 410, "message": "too old resource version"}})
    reader = watch_events(_Stream(gone, 5), "pod")
    assert next(reader)[0] == "ADDED"
    with pytest.raises(WatchExpired, match="too old"):
        next(reader)
    failed = _lines({"type": "ERROR", "object": {"code": 500, "message": "etcd unavailable"}})
    with pytest.raises(RuntimeError, match="services watch failed: etcd unavailable"):
        list(watch_events(_Stream(failed, 8), "services"))


def test_an_event_cut_off_by_the_end_of_the_stream_is_not_delivered() -> None:
    payload = _lines({"type": "ADDED", "object": POD}) + b'{"type": "MODIFIED", "obj'
    assert [kind for kind, _ in watch_events(_Stream(payload, 10), "pod")] == ["ADDED"]
