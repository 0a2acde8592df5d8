"""Container log files in the kubelet's (CRI) format, and reading them back as ``kubectl logs`` does.

Each record is ``<RFC3339Nano time> <stream> <F|P> <bytes>\\n``: ``F`` ends a line, ``P`` is a
piece of a longer line (no newline of its own). Keeping the time of each record is what makes
``sinceSeconds``, ``sinceTime`` and ``timestamps`` exact. Container processes write stdout and
stderr into one pipe, so that their order is kept; their records are all tagged ``stdout``.
"""

from __future__ import annotations

import io
import os
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO

MAX_RECORD_BYTES = 16 * 1024
"""Longer lines are split into ``P`` records (as container runtimes do)."""


def rfc3339_nano(moment: datetime) -> str:
    """``2024-05-01T12:00:00.123456000Z`` (nanosecond digits, as the kubelet prints them)."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f") + "000Z"


_RFC3339 = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d+))?(Z|[+-]\d\d:\d\d)$")


def parse_time(text: str) -> datetime:
    """Parse an RFC 3339 time with up to nine fractional digits."""
    match = _RFC3339.match(text.strip())
    if match is None:
        raise ValueError(f"not an RFC 3339 time: {text!r}")
    seconds, fraction, zone = match.groups()
    micros = (fraction or "0")[:6].ljust(6, "0")
    zone = "+00:00" if zone == "Z" else zone
    return datetime.fromisoformat(f"{seconds}.{micros}{zone}").astimezone(UTC)


class LogWriter:
    """Appends records of a container's stdout and stderr to one file (thread-safe)."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._file = path.open("ab", buffering=0)
        self._lock = threading.Lock()

    def write_record(self, stream: str, data: bytes, complete: bool, moment: datetime | None = None) -> None:
        """One record: ``data`` must not contain a newline."""
        stamp = rfc3339_nano(moment or datetime.now(UTC)).encode()
        tag = b"F" if complete else b"P"
        with self._lock:
            # A process that outlived its container may still write after the log was closed.
            if not self._file.closed:
                self._file.write(b"%s %s %s %s\n" % (stamp, stream.encode(), tag, data))

    def close(self) -> None:
        """Close the file."""
        with self._lock:
            self._file.close()


def pump(fd: int, stream: str, writer: LogWriter) -> None:
    """Copy a pipe into ``writer`` line by line until end-of-file, then close the pipe."""
    pending = b""
    try:
        while True:
            try:
                chunk = os.read(fd, 65536)
            except OSError:
                break
            if not chunk:
                break
            pending += chunk
            while True:
                newline = pending.find(b"\n")
                if newline == -1 or newline > MAX_RECORD_BYTES:
                    break
                writer.write_record(stream, pending[:newline], complete=True)
                pending = pending[newline + 1 :]
            while len(pending) > MAX_RECORD_BYTES:
                writer.write_record(stream, pending[:MAX_RECORD_BYTES], complete=False)
                pending = pending[MAX_RECORD_BYTES:]
        if pending:
            writer.write_record(stream, pending, complete=False)
    finally:
        os.close(fd)


@dataclass(frozen=True)
class Record:
    """One parsed record."""

    time: datetime
    stream: str
    complete: bool
    data: bytes

    def render(self, timestamps: bool) -> bytes:
        """The bytes ``kubectl logs`` shows for this record."""
        body = self.data + (b"\n" if self.complete else b"")
        if timestamps:
            return rfc3339_nano(self.time).encode() + b" " + body
        return body


def parse_record(line: bytes) -> Record | None:
    """A record from one line of a log file (None for a malformed line)."""
    parts = line.rstrip(b"\n").split(b" ", 3)
    if len(parts) < 3:
        return None
    try:
        moment = parse_time(parts[0].decode())
    except ValueError:
        return None
    return Record(
        moment, parts[1].decode(errors="replace"), parts[2] == b"F", parts[3] if len(parts) > 3 else b""
    )


def _tail_offset(handle: BinaryIO, lines: int) -> int:
    """Offset of the start of the last ``lines`` records, reading backwards in blocks."""
    handle.seek(0, io.SEEK_END)
    end = handle.tell()
    if lines <= 0:
        return end
    position = end
    newlines = 0
    block = 65536
    # The file ends with a newline, which is not the start of another record.
    skip_last = True
    while position > 0:
        start = max(0, position - block)
        handle.seek(start)
        data = handle.read(position - start)
        for index in range(len(data) - 1, -1, -1):
            if data[index] == 0x0A:
                if skip_last and start + index == end - 1:
                    continue
                newlines += 1
                if newlines == lines:
                    return start + index + 1
        skip_last = False
        position = start
    return 0


def read_records(path: Path, tail_lines: int | None = None) -> tuple[list[Record], int]:
    """The records of a file (the last ``tail_lines`` when given) and the offset where reading stopped."""
    with path.open("rb") as handle:
        offset = _tail_offset(handle, tail_lines) if tail_lines is not None else 0
        handle.seek(offset)
        data = handle.read()
    records = [r for r in (parse_record(line) for line in data.splitlines()) if r is not None]
    return records, offset + len(data)


def plain_text(path: Path, max_lines: int, max_bytes: int) -> str:
    """The last ``max_lines`` lines / ``max_bytes`` bytes of what the container printed (for messages)."""
    if not path.exists():
        return ""
    records, _ = read_records(path, tail_lines=max_lines)
    text = b"".join(r.render(timestamps=False) for r in records)
    return text[-max_bytes:].decode(errors="replace")


@dataclass(frozen=True)
class LogQuery:
    """The query parameters of the kubelet's ``containerLogs`` endpoint."""

    tail_lines: int | None = None
    limit_bytes: int | None = None
    since: datetime | None = None
    timestamps: bool = False
    follow: bool = False
    previous: bool = False


def stream_log(
    path: Path,
    query: LogQuery,
    still_writing: Iterator[bool] | None = None,
    poll_s: float = 0.2,
) -> Iterator[bytes]:
    """Chunks of a container log answering ``query``.

    With ``query.follow``, new records are sent as they arrive for as long as ``still_writing``
    yields True (the container runs); the records written before it ended are sent too.
    """
    budget = query.limit_bytes

    def emit(records: list[Record]) -> Iterator[bytes]:
        nonlocal budget
        for record in records:
            if query.since is not None and record.time < query.since:
                continue
            chunk = record.render(query.timestamps)
            if budget is not None:
                chunk = chunk[:budget]
                budget -= len(chunk)
            if chunk:
                yield chunk
            if budget is not None and budget <= 0:
                return

    records, offset = read_records(path, query.tail_lines)
    yield from emit(records)
    if not query.follow or still_writing is None or (budget is not None and budget <= 0):
        return
    pending = b""
    with path.open("rb") as handle:
        handle.seek(offset)
        while True:
            running = next(still_writing, False)
            data = handle.read()
            if data:
                pending += data
                complete, _, pending = pending.rpartition(b"\n")
                if complete:
                    parsed = [r for r in (parse_record(x) for x in complete.split(b"\n")) if r is not None]
                    yield from emit(parsed)
                    if budget is not None and budget <= 0:
                        return
                continue
            if not running:
                return
            threading.Event().wait(poll_s)
