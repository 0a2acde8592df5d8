"""A safetensors writer that streams one tensor at a time, hashing as it writes.

`safetensors.torch.save_file` needs every tensor of a file in memory at once. The merge knows
each output tensor's name, dtype and shape before computing it (they follow from the input
header), so it writes the header first and then each tensor as soon as it is ready, and only one
tensor is alive at a time. The format (8-byte little-endian header length, JSON header with
dtype/shape/data_offsets, then the raw little-endian data) is read back by the `safetensors`
library in the tests.
"""

from __future__ import annotations

import hashlib
import json
import struct
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import BinaryIO, Self

import torch

DTYPE_NAMES: dict[torch.dtype, str] = {
    torch.float64: "F64",
    torch.float32: "F32",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.int64: "I64",
    torch.int32: "I32",
    torch.int16: "I16",
    torch.int8: "I8",
    torch.uint8: "U8",
    torch.bool: "BOOL",
    torch.float8_e4m3fn: "F8_E4M3",
    torch.float8_e5m2: "F8_E5M2",
}
"""torch dtypes and their safetensors names."""
DTYPES_BY_NAME: dict[str, torch.dtype] = {name: dtype for dtype, name in DTYPE_NAMES.items()}


@dataclass(frozen=True)
class TensorSpec:
    """Name, dtype and shape of one tensor to be written."""

    name: str
    dtype: torch.dtype
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        """Size of the tensor's data in bytes."""
        count = 1
        for dim in self.shape:
            count *= dim
        return count * torch.empty((), dtype=self.dtype).element_size()


class StreamingSafetensorsWriter:
    """Writes a safetensors file whose tensors are declared up front and supplied one by one, in order."""

    def __init__(self, path: Path, specs: list[TensorSpec], metadata: dict[str, str] | None = None) -> None:
        names = [spec.name for spec in specs]
        if len(set(names)) != len(names):
            raise ValueError(f"{path}: duplicate tensor names in the declared layout")
        self._specs = specs
        self._next = 0
        self._digest = hashlib.sha256()
        header: dict[str, object] = {}
        if metadata:
            header["__metadata__"] = metadata
        offset = 0
        for spec in specs:
            header[spec.name] = {
                "dtype": DTYPE_NAMES[spec.dtype],
                "shape": list(spec.shape),
                "data_offsets": [offset, offset + spec.nbytes],
            }
            offset += spec.nbytes
        encoded = json.dumps(header, separators=(",", ":")).encode("utf-8")
        # The data section starts 8-byte aligned, as the reference writer does it.
        encoded += b" " * (-len(encoded) % 8)
        self._handle: BinaryIO = path.open("wb")
        self._emit(struct.pack("<Q", len(encoded)))
        self._emit(encoded)

    def _emit(self, data: bytes | memoryview) -> None:
        self._handle.write(data)
        self._digest.update(data)

    def write(self, name: str, tensor: torch.Tensor) -> None:
        """Write the next declared tensor; its name, dtype and shape must match the declaration."""
        if self._next >= len(self._specs):
            raise ValueError(f"tensor {name!r} was not declared")
        spec = self._specs[self._next]
        if spec.name != name or tensor.dtype != spec.dtype or tuple(tensor.shape) != spec.shape:
            raise ValueError(
                f"tensor {name!r} ({tensor.dtype}, {tuple(tensor.shape)}) does not match the declared "
                f"{spec.name!r} ({spec.dtype}, {spec.shape})"
            )
        flat = tensor.detach().to("cpu").contiguous().reshape(-1)
        if flat.numel():
            self._emit(flat.view(torch.uint8).numpy().data)
        self._next += 1

    def close(self) -> str:
        """Finish the file (all declared tensors must have been written); returns its sha256."""
        if self._next != len(self._specs):
            missing = [spec.name for spec in self._specs[self._next :]]
            self._handle.close()
            raise ValueError(f"{len(missing)} declared tensors were never written, first {missing[0]!r}")
        self._handle.flush()
        self._handle.close()
        return self._digest.hexdigest()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is not None:
            self._handle.close()
