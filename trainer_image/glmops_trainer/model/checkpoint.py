"""Reading a GLM-4.7 checkpoint tensor by tensor, under the names transformers 5 gives the parameters.

The released checkpoints (and the tiny test models) store routed experts one by one
(`model.layers.L.mlp.experts.E.gate_proj.weight`, `up_proj`, `down_proj`), while transformers 5
holds them fused (`mlp.experts.gate_up_proj` of shape (E, 2I, H), `mlp.experts.down_proj` of
shape (E, H, I)). `CheckpointReader.parameter(name)` returns any model parameter or buffer by its
transformers name, assembling fused experts from the per-expert tensors (or reading a fused
tensor when the checkpoint has one), and `experts(...)` reads only a range of experts, which is
all an FSDP rank keeps. Tensors are read from the memory-mapped safetensors one at a time; the
MTP layer (layer index >= num_hidden_layers) is never read.
"""

from __future__ import annotations

import contextlib
import json
import re
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import torch
from safetensors import safe_open

INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"
FUSED_EXPERTS = re.compile(r"^(?P<container>.+\.mlp\.experts)\.(?P<param>gate_up_proj|down_proj)$")
"""transformers 5's fused expert parameters; their checkpoint form is one tensor per expert and projection."""


class CheckpointError(ValueError):
    """The checkpoint lacks a tensor the model needs, or is not a safetensors checkpoint."""


class CheckpointReader:
    """Named tensors of a safetensors checkpoint folder (single file or sharded with an index)."""

    def __init__(self, model_dir: Path) -> None:
        self.model_dir = model_dir
        index = model_dir / INDEX_NAME
        if index.is_file():
            weight_map: dict[str, str] = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
            self._files = {key: model_dir / name for key, name in weight_map.items()}
        elif (model_dir / SINGLE_NAME).is_file():
            with safe_open(str(model_dir / SINGLE_NAME), framework="pt") as handle:
                self._files = dict.fromkeys(handle.keys(), model_dir / SINGLE_NAME)
        else:
            raise CheckpointError(
                f"spec.model.source: {model_dir} has neither {INDEX_NAME} nor {SINGLE_NAME}; "
                "point it at a safetensors checkpoint"
            )
        self._stack = contextlib.ExitStack()
        self._handles: dict[Path, Any] = {}

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close every open shard."""
        self._stack.close()
        self._handles.clear()

    def keys(self) -> set[str]:
        """Every tensor name of the checkpoint."""
        return set(self._files)

    def tensor(self, key: str) -> torch.Tensor:
        """One checkpoint tensor as stored (on the CPU, in its own dtype)."""
        path = self._files.get(key)
        if path is None:
            raise CheckpointError(
                f"spec.model.source: the checkpoint in {self.model_dir} has no tensor {key!r}; it is incomplete "
                "or not a GLM-4.7 checkpoint of this variant"
            )
        handle = self._handles.get(path)
        if handle is None:
            handle = self._stack.enter_context(safe_open(str(path), framework="pt", device="cpu"))
            self._handles[path] = handle
        value: torch.Tensor = handle.get_tensor(key)
        return value

    def experts(self, container: str, param: str, first: int, count: int) -> torch.Tensor:
        """Experts first..first+count-1 of fused parameter `param` ("gate_up_proj" or "down_proj") of
        `container` (e.g. `model.layers.3.mlp.experts`), shaped (count, O, I) like the fused parameter."""
        fused = f"{container}.{param}"
        if fused in self._files:
            return self.tensor(fused)[first : first + count]
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
        if match is None or name in self._files:
            return self.tensor(name)
        if num_experts is None:
            raise ValueError(f"{name}: a fused experts parameter needs num_experts")
        return self.experts(match["container"], match["param"], 0, num_experts)
