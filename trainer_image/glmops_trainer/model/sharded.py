"""Loading the flagship for FSDP2: every rank builds the model empty, shards it, then reads only what it keeps.

The flagship runs one process per GPU under FSDP2 (`glmops.plan.memory.sharding_for`): every
parameter is split along dim 0 over all ranks, each rank trains its own micro-batch, and FSDP
all-gathers one decoder layer at a time for compute. It does not fit one GPU even in 4-bit, so no
rank may ever hold the whole model, on the GPU or in host memory. `load_sharded_model`:

1. builds the model on the meta device (no memory) with the same 4-bit modules the single-process
   loader uses: bitsandbytes `Linear4bit` for the linears (through the same quantizer class) and
   `NF4Experts` for the routed experts, whose packed rows (codes + statistics, one row per expert)
   are what FSDP shards; lm_head becomes a `ChunkedLossHead` (the loss a chunk at a time);
2. freezes it, turns on non-reentrant gradient checkpointing and attaches LoRA (still on meta);
3. shards it (`fully_shard` on the embeddings, each decoder layer, the lm_head and the root) and
   allocates only the local shards (`to_empty`);
4. fills the shards from the checkpoint, tensor by tensor: a routed-experts weight reads and
   quantizes only this rank's experts, EXPERTS_PER_READ at a time; a 4-bit linear is quantized whole on the device (its
   bitsandbytes statistics stay whole on every rank, as module state) and the rank keeps its slice of
   the codes; of everything else the rank reads only its rows; LoRA A is drawn from a generator seeded by the
   run's seed and the parameter's name (the same values whatever the number of ranks), LoRA B is zero.

Without a process group (`shard=False`) the same steps build an unsharded model on one device: the
reference that the multi-rank tests compare with. The frozen unquantized weights (embeddings,
norms, router, lm_head) stay in the compute dtype rather than fp32 as peft's
`prepare_model_for_kbit_training` would make them: they are never updated, and the bf16 residual
stream halves the activations every rank keeps (the memory plan's `fsdp` terms follow this).
"""

from __future__ import annotations

import math
import zlib
from pathlib import Path
from typing import Any

import bitsandbytes.functional as bnbf
import torch
from bitsandbytes.nn import Linear4bit, Params4bit
from peft import PeftModel
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedModel

from glmops_trainer.config import LoraConfig, Method, Variant
from glmops_trainer.model.checkpoint import CheckpointReader
from glmops_trainer.model.chunked_loss import use_chunked_loss
from glmops_trainer.model.experts4bit import (
    EXPERT_WEIGHT_NAMES,
    NF4_BLOCKSIZE,
    NF4Experts,
    dense_experts_classes,
    quantize_expert_rows,
)
from glmops_trainer.model.load import (
    ExpertsNF4Config,
    ExpertsNF4Quantizer,
    check_architecture,
    read_model_config,
)
from glmops_trainer.model.targets import apply_lora


def load_sharded_model(
    model_dir: Path,
    variant: Variant,
    method: Method,
    lora: LoraConfig,
    *,
    device: torch.device,
    compute_dtype: torch.dtype,
    gradient_checkpointing: bool = True,
    seed: int = 0,
    shard: bool = True,
) -> PeftModel:
    """The LoRA model of `model_dir` ready for training, sharded over the default process group (see module doc)."""
    config_dict = read_model_config(model_dir)
    check_architecture(config_dict, variant, where=str(model_dir / "config.json"))
    config = AutoConfig.from_pretrained(model_dir)
    with torch.device("meta"):
        model: PreTrainedModel = AutoModelForCausalLM.from_config(config, dtype=compute_dtype)
    model.config.use_cache = False
    if method is Method.qlora:
        _quantized_skeleton_(model, compute_dtype)
    model.requires_grad_(False)
    if gradient_checkpointing:
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    use_chunked_loss(model)
    # Module names before peft wraps them are the checkpoint's names; the objects stay the same.
    base_modules = dict(model.named_modules())

    peft_model = apply_lora(model, lora, variant)
    if shard:
        shard_for_fsdp_(peft_model)
    peft_model.to_empty(device=device)

    with CheckpointReader(model_dir) as reader:
        for name, module in base_modules.items():
            _fill_module_(name, module, reader, device, compute_dtype)
    _init_lora_(peft_model, seed)
    _reset_rotary_(model, device)
    return peft_model


def shard_for_fsdp_(peft_model: PeftModel) -> None:
    """fully_shard the embeddings, each decoder layer, the lm_head and the rest (the root), over all ranks.

    The lm_head has a unit of its own so that FSDP frees its gathered weight after the loss; the root then
    holds only the final norm.
    """
    from torch.distributed.fsdp import fully_shard

    base = peft_model.get_base_model()
    fully_shard(base.model.embed_tokens)
    for layer in base.model.layers:
        fully_shard(layer)
    fully_shard(base.lm_head)
    fully_shard(peft_model)


def _quantized_skeleton_(model: PreTrainedModel, compute_dtype: torch.dtype) -> None:
    """Swap in the 4-bit modules (as the single-process loader's quantizer does) with packed meta storage."""
    quantizer = ExpertsNF4Quantizer(ExpertsNF4Config(bnb_4bit_compute_dtype=compute_dtype), pre_quantized=False)
    quantizer._process_model_before_weight_loading(model, device_map=None)
    for module in model.modules():
        if isinstance(module, NF4Experts):
            module.use_packed_placeholders_()
        elif isinstance(module, Linear4bit):
            values = module.in_features * module.out_features
            if values % NF4_BLOCKSIZE:
                raise ValueError(f"{module}: {values} values is not a multiple of the NF4 block size")
            packed = torch.empty(((values + 1) // 2, 1), dtype=torch.uint8, device="meta")
            module.weight = Params4bit(
                packed,
                requires_grad=False,
                compress_statistics=True,
                quant_type="nf4",
                quant_storage=torch.uint8,
                module=module,
                bnb_quantized=True,
            )
    model.is_loaded_in_4bit = True  # what transformers' bnb loader sets; peft reads it


def local_rows(param: torch.Tensor) -> tuple[int, int]:
    """(first row, row count) of dim 0 that this rank holds of `param` (all of it when not sharded)."""
    from torch.distributed.tensor import DTensor

    if isinstance(param, DTensor):
        from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

        shape, offset = compute_local_shape_and_global_offset(param.shape, param.device_mesh, param.placements)
        return int(offset[0]) if shape[0] else 0, int(shape[0])
    return 0, int(param.shape[0]) if param.dim() else 1


def local_tensor(param: torch.Tensor) -> torch.Tensor:
    """The storage this rank holds of `param` (the local shard of a DTensor)."""
    from torch.distributed.tensor import DTensor

    return param.to_local() if isinstance(param, DTensor) else param.data


EXPERTS_PER_READ = 2
"""Routed experts read, converted and quantized at a time: what bounds the loader's transient memory."""


@torch.no_grad()
def _assign_rows_(param: torch.Tensor, full: torch.Tensor) -> None:
    """Copy this rank's rows of `full` (the whole tensor) into `param`."""
    first, count = local_rows(param)
    target = local_tensor(param)
    if count == 0:
        return
    source = full if full.dim() == 0 else full.narrow(0, first, count)
    target.copy_(source.reshape(target.shape).to(device=target.device, dtype=target.dtype))


@torch.no_grad()
def _read_rows_(param: torch.Tensor, reader: CheckpointReader, key: str) -> None:
    """Read only this rank's rows of checkpoint tensor `key` into `param`."""
    first, count = local_rows(param)
    if count == 0:
        return
    target = local_tensor(param)
    rows = reader.rows(key, first, count) if param.dim() else reader.tensor(key)
    target.copy_(rows.reshape(target.shape).to(device=target.device, dtype=target.dtype))


@torch.no_grad()
def _fill_module_(
    name: str, module: nn.Module, reader: CheckpointReader, device: torch.device, compute_dtype: torch.dtype
) -> None:
    prefix = f"{name}." if name else ""
    if isinstance(module, (NF4Experts, *dense_experts_classes())):
        # Experts are stored one by one: read this rank's experts a few at a time, quantizing each group
        # (4-bit) or casting it (lora) straight into the rank's rows.
        container = prefix.rstrip(".")
        quantize = isinstance(module, NF4Experts)
        for weight in EXPERT_WEIGHT_NAMES:
            param = getattr(module, weight)
            first, count = local_rows(param)
            target = local_tensor(param)
            for start in range(0, count, EXPERTS_PER_READ):
                size = min(EXPERTS_PER_READ, count - start)
                dense = reader.experts(container, weight, first + start, size).to(device=device, dtype=compute_dtype)
                target[start : start + size] = quantize_expert_rows(dense) if quantize else dense.to(target.dtype)
                del dense
        return
    for param_name, param in module.named_parameters(recurse=False):
        key = prefix + param_name
        if isinstance(module, Linear4bit) and param_name == "weight":
            dense = reader.tensor(key).to(device=device, dtype=compute_dtype)
            packed, state = bnbf.quantize_4bit(
                dense, blocksize=NF4_BLOCKSIZE, compress_statistics=True, quant_type="nf4", quant_storage=torch.uint8
            )
            del dense
            # bitsandbytes reads the statistics from the module once FSDP has replaced the parameter
            module.quant_state = state
            _assign_rows_(param, packed)
        else:
            _read_rows_(param, reader, key)
    for buffer_name, buffer in module.named_buffers(recurse=False):
        if buffer_name in module._non_persistent_buffers_set:
            continue  # computed, not stored (rotary frequencies): see _reset_rotary_
        buffer.copy_(reader.tensor(prefix + buffer_name).to(buffer.dtype))


@torch.no_grad()
def _init_lora_(peft_model: nn.Module, seed: int) -> None:
    """LoRA A as peft draws it (kaiming uniform, a=sqrt(5)) from a per-name generator; LoRA B zero."""
    for name, param in peft_model.named_parameters():
        if ".lora_B." in name:
            local_tensor(param).zero_()
        elif ".lora_A." in name:
            generator = torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(name.encode()))
            full = torch.empty(param.shape, dtype=torch.float32)
            fan_in = full.shape[1]
            bound = math.sqrt(6.0 / ((1 + 5.0) * fan_in))  # kaiming_uniform_ with a=sqrt(5)
            full.uniform_(-bound, bound, generator=generator)
            _assign_rows_(param, full)


def _reset_rotary_(model: PreTrainedModel, device: torch.device) -> None:
    """Recompute the rotary embedding's frequencies on `device` (non-persistent buffers: to_empty left garbage)."""
    rotary = model.model.rotary_emb
    with torch.device(device):
        model.model.rotary_emb = type(rotary)(model.config)


def local_parameter_bytes(model: nn.Module) -> dict[str, Any]:
    """Bytes this rank holds: sharded parameters (local shards), plus buffers and bitsandbytes statistics
    (whole on every rank); a sum of tensor sizes, for comparison with what the process's RSS shows."""
    sharded = sum(local_tensor(p).numel() * local_tensor(p).element_size() for p in model.parameters())
    buffers = sum(b.numel() * b.element_size() for b in model.buffers())
    stats = 0
    for module in model.modules():
        state = getattr(module, "quant_state", None) if isinstance(module, Linear4bit) else None
        while state is not None:
            stats += sum(
                t.numel() * t.element_size()
                for t in (getattr(state, "absmax", None), getattr(state, "code", None))
                if isinstance(t, torch.Tensor)
            )
            state = getattr(state, "state2", None)
    return {"parameters": sharded, "buffers": buffers, "linear_statistics": stats}
