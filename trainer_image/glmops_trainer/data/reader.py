"""Reading dataset files into records that remember their line numbers.

JSONL is streamed line by line. A JSON array (Alpaca's usual layout) is parsed element by element so
that each element still knows the line it starts on. Anything else is raw text, read as
one document (split into sequence-sized windows when rendered).
"""

from __future__ import annotations

import bisect
import json
from collections.abc import Iterator
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from glmops_trainer.data.conversation import SourceRef
from glmops_trainer.data.issues import DataValidationError


class Container(StrEnum):
    """How records are laid out in the file."""

    jsonl = "jsonl"
    json_array = "json-array"
    raw_text = "raw-text"


@dataclass(frozen=True)
class RawRecord:
    """One record: its parsed JSON value, or the reason it could not be parsed."""

    source: SourceRef
    value: Any = None
    error: str | None = None


def detect_container(path: Path) -> Container:
    """JSONL when the first non-blank line opens an object, JSON array when it opens `[`, else raw text."""
    with path.open(encoding="utf-8") as handle:
        for line in handle:
            stripped = line.lstrip()
            if not stripped:
                continue
            if stripped.startswith("{"):
                return Container.jsonl
            if stripped.startswith("["):
                return Container.json_array
            break
    # A .jsonl/.json file whose first line is broken is still JSON: report its lines, do not guess text.
    return Container.jsonl if path.suffix in (".jsonl", ".json") else Container.raw_text


def read_records(path: Path, container: Container) -> Iterator[RawRecord]:
    """Yield the file's records in order, each with its 1-based starting line."""
    if container is Container.jsonl:
        yield from _read_jsonl(path)
    elif container is Container.json_array:
        yield from _read_json_array(path)
    else:
        yield from _read_raw_text(path)


def _read_jsonl(path: Path) -> Iterator[RawRecord]:
    with path.open(encoding="utf-8") as handle:
        for line_number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            source = SourceRef(path.name, line_number)
            try:
                yield RawRecord(source, value=json.loads(line.rstrip("\r\n")))
            except json.JSONDecodeError as exc:
                yield RawRecord(source, error=f"not valid JSON: {exc.msg} at column {exc.colno}")


def _read_json_array(path: Path) -> Iterator[RawRecord]:
    text = path.read_text(encoding="utf-8")
    newlines = [index for index, char in enumerate(text) if char == "\n"]

    def line_of(offset: int) -> int:
        return bisect.bisect_right(newlines, offset - 1) + 1

    decoder = json.JSONDecoder()
    position = _skip_space(text, 0)
    if position >= len(text) or text[position] != "[":
        raise DataValidationError(f"{path.name}:{line_of(position)}: expected a JSON array (start the file with '[')")
    position = _skip_space(text, position + 1)
    if position < len(text) and text[position] == "]":
        return
    while True:
        try:
            value, end = decoder.raw_decode(text, position)
        except json.JSONDecodeError as exc:
            # One broken element makes the rest of the array unreadable, so the file as a whole fails.
            raise DataValidationError(
                f"{path.name}:{exc.lineno}: not valid JSON: {exc.msg} at column {exc.colno} "
                "(fix the JSON syntax there, or convert the file to JSONL so one bad line only drops one sample)"
            ) from exc
        yield RawRecord(SourceRef(path.name, line_of(position)), value=value)
        position = _skip_space(text, end)
        if position < len(text) and text[position] == ",":
            position = _skip_space(text, position + 1)
            continue
        if position < len(text) and text[position] == "]":
            return
        raise DataValidationError(
            f"{path.name}:{line_of(position)}: expected ',' or ']' after an array element (fix the JSON syntax)"
        )


def _skip_space(text: str, position: int) -> int:
    while position < len(text) and text[position] in " \t\r\n":
        position += 1
    return position


def _read_raw_text(path: Path) -> Iterator[RawRecord]:
    # The whole file is one document: splitting prose at blank lines would cut the context that
    # language-model training is meant to learn from. Rendering splits it into sequence-sized windows.
    text = path.read_text(encoding="utf-8")
    yield RawRecord(SourceRef(path.name, 1), value={"text": text})
