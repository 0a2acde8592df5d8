"""Reading a GLM-4.7 checkpoint tensor by tensor, under the names transformers 5 gives the parameters.

The released checkpoints (and the tiny test models) store routed experts one by one
(`model.layers.L.mlp.experts.E.gate_proj.weight`, `up_proj`, `down_proj`), while transformers 5
holds them fused (`mlp.experts.gate_up_proj` of shape (E, 2I, H), `mlp.experts.down_proj` of
shape (E, H, I)). `CheckpointReader.parameter(name)` returns any model parameter or buffer by its
transformers name, assembling fused experts from the per-expert tensors (or reading a fused
tensor when the checkpoint has one); `experts(...)` reads only a range of experts and `rows(...)`
only a range of rows, which is all an FSDP rank keeps.

The reader parses each file's safetensors header and reads tensor bytes with positioned reads
(`os.pread`) into memory it owns. It does not memory-map the files: pages of a mapping stay in the
process's resident memory while the file is open, so a loader that maps its shards counts every
byte it has read as its own until it closes them. Here, what a rank holds is what it keeps plus
the one tensor it is converting. The MTP layer (layer index >= num_hidden_layers) is never read.
"""

from __future__ import annotations

import json
import os
import re
import struct
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Self

import torch

from glmops_trainer.export.safetensors_stream import DTYPES_BY_NAME

INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"
FUSED_EXPERTS = re.compile(r"^(?P<container>.+\.mlp\.experts)\.(?P<param>gate_up_proj|down_proj)$")
"""transformers 5's fused expert parameters; their checkpoint form is one tensor per expert and projection."""


class CheckpointError(ValueError):
    """The checkpoint lacks a tensor the model needs, or is not a safetensors checkpoint."""


@dataclass(frozen=True)
class _Entry:
    path: Path
    dtype: torch.dtype
    shape: tuple[int, ...]
    start: int
    """Absolute byte offset of the tensor's data in its file."""
    end: int


def _read_header(path: Path) -> dict[str, _Entry]:
    with path.open("rb") as handle:
        (length,) = struct.unpack("<Q", handle.read(8))
        header = json.loads(handle.read(length))
    entries = {}
    for key, info in header.items():
        if key == "__metadata__":
            continue
        if info["dtype"] not in DTYPES_BY_NAME:
            raise CheckpointError(f"{path}: tensor {key!r} has dtype {info['dtype']}, which this loader cannot read")
        first, last = info["data_offsets"]
        entries[key] = _Entry(path, DTYPES_BY_NAME[info["dtype"]], tuple(info["shape"]), 8 + length + first, 8 + length + last)
    return entries


class CheckpointReader:
    """Named tensors of a safetensors checkpoint folder (single file or sharded with an index)."""

    def __init__(self, model_dir: Path) -> None:
        self.model_dir = model_dir
        index = model_dir / INDEX_NAME
        if index.is_file():
            weight_map: dict[str, str] = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
            files = sorted({model_dir / name for name in weight_map.values()})
        elif (model_dir / SINGLE_NAME).is_file():
            files = [model_dir / SINGLE_NAME]
        else:
            raise CheckpointError(
                f"spec.model.source: {model_dir} has neither {INDEX_NAME} nor {SINGLE_NAME}; "
                "point it at a safetensors checkpoint"
            )
        self._entries: dict[str, _Entry] = {}
        for path in files:
            if not path.is_file():
                raise CheckpointError(f"spec.model.source: {index} names {path.name}, which is missing")
            self._entries.update(_read_header(path))
        self._fds: dict[Path, int] = {}

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close every open shard."""
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()

    def keys(self) -> set[str]:
        """Every tensor name of the checkpoint."""
        return set(self._entries)

    def _entry(self, key: str) -> _Entry:
        entry = self._entries.get(key)
        if entry is None:
            raise CheckpointError(
                f"spec.model.source: the checkpoint in {self.model_dir} has no tensor {key!r}; it is incomplete "
                "or not a GLM-4.7 checkpoint of this variant"
            )
        return entry

    def _read(self, entry: _Entry, start: int, size: int) -> bytearray:
        fd = self._fds.get(entry.path)
        if fd is None:
            fd = self._fds[entry.path] = os.open(entry.path, os.O_RDONLY)
        buffer = bytearray(size)
        view, done = memoryview(buffer), 0
        while done < size:
            got = os.preadv(fd, [view[done:]], start + done)
            if got <= 0:
                raise CheckpointError(f"{entry.path}: ended before byte {start + size}; the file is truncated")
            done += got
        return buffer

    def tensor(self, key: str) -> torch.Tensor:
        """One checkpoint tensor as stored (on the CPU, in its own dtype)."""
        entry = self._entry(key)
        return self._as_tensor(entry, self._read(entry, entry.start, entry.end - entry.start), entry.shape)

    def rows(self, key: str, first: int, count: int) -> torch.Tensor:
        """Rows first..first+count-1 (dim 0) of one checkpoint tensor, reading only those bytes."""
        entry = self._entry(key)
        if not entry.shape:
            return self.tensor(key)
        row_bytes = (entry.end - entry.start) // entry.shape[0] if entry.shape[0] else 0
        count = max(0, min(count, entry.shape[0] - first))
        data = self._read(entry, entry.start + first * row_bytes, count * row_bytes)
        return self._as_tensor(entry, data, (count, *entry.shape[1:]))

    @staticmethod
    def _as_tensor(entry: _Entry, data: bytearray, shape: tuple[int, ...]) -> torch.Tensor:
        if not data:
            return torch.empty(shape, dtype=entry.dtype)
        return torch.frombuffer(data, dtype=entry.dtype).reshape(shape)

    def experts(self, container: str, param: str, first: int, count: int) -> torch.Tensor:
        """Experts first..first+count-1 of fused parameter `param` ("gate_up_proj" or "down_proj") of
        `container` (e.g. `model.layers.3.mlp.experts`), shaped (count, O, I) like the fused parameter."""
        fused = f"{container}.{param}"
        if fused in self._entries:
            return self.rows(fused, first, count)
        stacked = []
        for expert in range(first, first + count):
            if param == "gate_up_proj":
                gate = self.tensor(f"{container}.{expert}.gate_proj.weight")
                up = self.tensor(f"{container}.{expert}.up_proj.weight")
                stacked.append(torch.cat([gate, up], dim=0))
            else:
                stacked.append(self.tensor(f"{container}.{expert}.down_proj.weight"))
        if not stacked:
            raise ValueError(f"{fused}: asked for no experts")
        return torch.stack(stacked)

    def parameter(self, name: str, num_experts: int | None = None) -> torch.Tensor:
        """The whole tensor of model parameter or buffer `name` (transformers 5 naming)."""
        match = FUSED_EXPERTS.match(name)
        if match is None or name in self._entries:
            return self.tensor(name)
        if num_experts is None:
            raise ValueError(f"{name}: a fused experts parameter needs num_experts")
        return self.experts(match["container"], match["param"], 0, num_experts)
