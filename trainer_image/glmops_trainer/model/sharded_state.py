"""Saving and restoring the trainable state of an FSDP-sharded LoRA model: adapter, optimizer.

Only LoRA weights train, so only they (and their AdamW moments) are gathered, never the 4-bit
base: on every rank `gathered_adapter_state` all-gathers each trainable parameter and rank 0 keeps
the full tensors; the optimizer goes through PyTorch's `get_optimizer_state_dict` /
`set_optimizer_state_dict` with full (unsharded) state keyed by parameter name, so a checkpoint can be
resumed on any number of ranks. All functions here are collectives: every rank calls them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

OPTIMIZER_FILE = "optimizer.pt"
"""The name transformers' Trainer gives its optimizer state; kept so checkpoint folders look the same."""


def _is_rank0() -> bool:
    return not torch.distributed.is_initialized() or torch.distributed.get_rank() == 0


def gathered_adapter_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Full CPU copies of every trainable parameter, by name, on rank 0 ({} elsewhere)."""
    from torch.distributed.tensor import DTensor

    state: dict[str, torch.Tensor] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        full = param.full_tensor() if isinstance(param, DTensor) else param.detach()
        if _is_rank0():
            state[name] = full.detach().to("cpu", copy=True)
    return state


def save_sharded_adapter(model: nn.Module, output_dir: Path) -> None:
    """Write the adapter (peft format) of a sharded peft model from rank 0."""
    state = gathered_adapter_state(model)
    if _is_rank0():
        model.save_pretrained(str(output_dir), state_dict=state)  # type: ignore[operator]


def load_sharded_adapter(model: nn.Module, adapter_dir: Path) -> None:
    """Load a saved adapter into a sharded peft model (every rank reads it and keeps its rows)."""
    from safetensors.torch import load_file
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    saved = load_file(str(adapter_dir / "adapter_model.safetensors"))
    adapter = getattr(model, "active_adapter", "default")
    # saved keys carry no adapter name (peft's convention); the model's parameters do
    expected = {name for name, p in model.named_parameters() if p.requires_grad}
    renamed = _peft_keys(saved, adapter, expected)
    missing = sorted(expected - set(renamed))
    if missing:
        raise ValueError(f"{adapter_dir}: the adapter lacks {missing[:3]}; it belongs to another model or targets")
    set_model_state_dict(model, renamed, options=StateDictOptions(full_state_dict=True, strict=False))


def _peft_keys(saved: dict[str, torch.Tensor], adapter: str, expected: set[str]) -> dict[str, torch.Tensor]:
    """Saved adapter keys (`...lora_A.weight`) under the model's parameter names (`...lora_A.<adapter>.weight`)."""
    renamed: dict[str, torch.Tensor] = {}
    for key, value in saved.items():
        for part in (".lora_A.", ".lora_B."):
            if part in key:
                name = key.replace(part, f"{part}{adapter}.")
                if name in expected:
                    renamed[name] = value
    return renamed


def save_sharded_optimizer(model: nn.Module, optimizer: torch.optim.Optimizer, output_dir: Path) -> None:
    """Write the full optimizer state (keyed by parameter name) from rank 0."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    state = get_optimizer_state_dict(
        model, optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True)
    )
    if _is_rank0():
        torch.save(state, output_dir / OPTIMIZER_FILE)


def load_sharded_optimizer(model: nn.Module, optimizer: torch.optim.Optimizer, checkpoint_dir: Path) -> None:
    """Restore the optimizer state saved by `save_sharded_optimizer`, each rank keeping its shards."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    state: Any = torch.load(checkpoint_dir / OPTIMIZER_FILE, map_location="cpu", weights_only=True)
    set_optimizer_state_dict(
        model, optimizer, optim_state_dict=state, options=StateDictOptions(full_state_dict=True)
    )
