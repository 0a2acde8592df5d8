"""True QLoRA for fused MoE experts: routed experts stored in 4-bit NF4, LoRA on top through peft.

Why this exists: in transformers 5 the routed experts of GLM-4.7 (`Glm4MoeExperts`) and
GLM-4.7-Flash (`Glm4MoeLiteExperts`) are two fused 3D parameters, `gate_up_proj` (E, 2I, H) and
`down_proj` (E, H, I). bitsandbytes' `load_in_4bit` only replaces `nn.Linear`, so it leaves these
— about 92% of the flagship's weights — in bf16. That is not QLoRA.

Design, in three parts:

1. Storage. `NF4Experts` replaces the experts module. Each 3D weight is quantized with
   bitsandbytes' blockwise NF4 (blocks of 64 values within one expert) and double-quantized
   statistics: the fp32 absmax of every block is stored as 8 bits (blocks of 256, an fp32 scale
   per 256 and an fp32 offset per expert), which is what bitsandbytes' `compress_statistics` does.
   Everything one expert needs is packed into one row of bytes, and per weight `W` the module holds
   a single frozen uint8 parameter `W` of shape (E, row bytes) - the name is kept on purpose, so
   that peft's `target_parameters` (which matches registered parameters by name) finds it. A row is
   `codes | absmax (uint8) | absmax scales (fp32) | absmax offset (fp32)` (`ExpertRowLayout`).
   One parameter with the experts along dim 0 is what FSDP2's `fully_shard` shards (it splits
   each parameter along dim 0 and leaves buffers whole), so under FSDP every rank stores only its
   experts' codes *and* statistics. That is about 0.516 bytes per parameter. The bf16 tensors are
   dropped.

2. Compute. `forward` follows transformers' eager experts loop but only visits experts that got
   tokens and dequantizes one expert at a time inside an autograd Function that saves no
   dequantized weight (backward dequantizes again, as bitsandbytes' `MatMul4Bit` does). Peak
   memory therefore holds one expert's bf16 matrix, not the layer's stack.

3. LoRA. peft's `target_parameters` wraps the experts module in nested `ParamWrapper`s (one per
   parameter) whose LoRA weights have per-expert rank blocks. Stock `ParamWrapper.forward` applies
   them by registering a torch parametrization `W + scaling * B @ A` on the parameter, which would
   add to packed uint8 and materialise the whole (E, O, I) stack twice per call.
   `ExpertsLoraWrapper` - a `ParamWrapper` subclass that peft builds for our module through
   `LoraConfig._register_custom_module` - keeps everything peft owns (weight shapes, init, names,
   state dict, saving, loading, adapter config) and changes only how the update is applied: it
   passes peft's own low-rank factors (`get_delta_factors`) to the experts module, which adds
   `scaling * B_e (A_e x)` next to the 4-bit product of expert e. The adapter therefore has the
   layout of one trained on bf16 experts (a test compares them), and merging for export uses stock
   peft on a bf16 base.

peft's `ParamWrapper` refuses LoRA dropout (dropout on x cannot be factored out of a fused weight),
so `ExpertsLoraWrapper` runs the routed experts without dropout while every other target keeps the
configured dropout; it is registered for transformers' bf16 experts classes as well for that reason.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
from collections.abc import Iterator
from typing import Any

import bitsandbytes.functional as bnbf
import torch
from peft.tuners.lora.layer import ParamWrapper
from torch import nn

NF4_BLOCKSIZE = 64
"""Values per NF4 block (bitsandbytes' default for QLoRA)."""
ABSMAX_BLOCKSIZE = 256
"""Block absmax values per 8-bit block of the double quantization (bitsandbytes' default)."""

EXPERT_WEIGHT_NAMES: tuple[str, ...] = ("gate_up_proj", "down_proj")
"""The fused 3D parameters of a transformers 5 experts module, in registration order."""

LoraFactors = tuple[torch.Tensor, torch.Tensor, float]
"""(lhs (E, out, r), rhs (E, r, in), scaling) such that the delta of expert e is scaling * lhs[e] @ rhs[e]."""


def dense_experts_classes() -> tuple[type[nn.Module], ...]:
    """transformers' fused routed-experts classes of GLM-4.7 and GLM-4.7-Flash."""
    from transformers.models.glm4_moe.modeling_glm4_moe import Glm4MoeExperts
    from transformers.models.glm4_moe_lite.modeling_glm4_moe_lite import Glm4MoeLiteExperts

    return (Glm4MoeExperts, Glm4MoeLiteExperts)


@dataclasses.dataclass(frozen=True)
class ExpertRowLayout:
    """Byte layout of one expert's row: NF4 codes, 8-bit block absmax, fp32 absmax scales, fp32 offset.

    Every section starts at a multiple of 4 bytes, so the fp32 parts are read as views of the row.
    """

    rows: int
    cols: int

    @property
    def values(self) -> int:
        """Weight values of one expert (rows * cols)."""
        return self.rows * self.cols

    @property
    def blocks(self) -> int:
        """NF4 blocks of one expert."""
        return self.values // NF4_BLOCKSIZE

    @property
    def padded_blocks(self) -> int:
        """Blocks rounded up to whole absmax blocks, so absmax blocks never straddle two experts."""
        return -(-self.blocks // ABSMAX_BLOCKSIZE) * ABSMAX_BLOCKSIZE

    @property
    def absmax_at(self) -> int:
        return self.values // 2

    @property
    def scale_at(self) -> int:
        return self.absmax_at + self.padded_blocks

    @property
    def offset_at(self) -> int:
        return self.scale_at + 4 * (self.padded_blocks // ABSMAX_BLOCKSIZE)

    @property
    def row_bytes(self) -> int:
        """Bytes of one expert's row."""
        return self.offset_at + 4

    def check(self) -> None:
        """Raise ValueError unless the weight can be stored in NF4 blocks."""
        if self.values % NF4_BLOCKSIZE:
            raise ValueError(
                f"expert weight of {self.rows}x{self.cols} values per expert is not a multiple of the NF4 "
                f"block size {NF4_BLOCKSIZE}; this architecture cannot use 4-bit experts (use method lora)"
            )


def quantize_expert_rows(dense: torch.Tensor) -> torch.Tensor:
    """NF4-quantize an (E, O, I) stack into (E, row bytes) uint8 rows; experts are quantized independently.

    Blocks never straddle two experts, so the rows of any subset of experts are the same bytes as
    those experts' rows of the whole stack (the sharded loader quantizes only its own experts).
    """
    experts, rows, cols = dense.shape
    layout = ExpertRowLayout(rows, cols)
    layout.check()
    flat = dense.detach().contiguous().reshape(-1)
    packed, state = bnbf.quantize_4bit(
        flat, blocksize=NF4_BLOCKSIZE, compress_statistics=False, quant_type="nf4"
    )
    absmax = state.absmax.reshape(experts, layout.blocks).float()
    offset = absmax.mean(dim=1)
    centered = absmax - offset[:, None]
    if layout.padded_blocks != layout.blocks:
        centered = torch.nn.functional.pad(centered, (0, layout.padded_blocks - layout.blocks))
    qabsmax, state2 = bnbf.quantize_blockwise(centered.reshape(-1).contiguous(), blocksize=ABSMAX_BLOCKSIZE)
    scales = state2.absmax.reshape(experts, layout.padded_blocks // ABSMAX_BLOCKSIZE).float()
    return torch.cat(
        [
            packed.reshape(experts, layout.absmax_at),
            qabsmax.reshape(experts, layout.padded_blocks),
            scales.contiguous().view(torch.uint8),
            offset.reshape(experts, 1).contiguous().view(torch.uint8),
        ],
        dim=1,
    )


class _DequantLinear(torch.autograd.Function):
    """x @ W_e^T with W_e dequantized on the fly; backward dequantizes again instead of saving W_e."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, experts: NF4Experts, name: str, expert: int) -> torch.Tensor:
        weight = experts.dequantize_expert(name, expert, x.dtype)
        ctx.experts, ctx.name, ctx.expert = experts, name, expert
        return torch.nn.functional.linear(x, weight)

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[torch.Tensor | None, None, None, None]:
        if not ctx.needs_input_grad[0]:
            return None, None, None, None
        weight = ctx.experts.dequantize_expert(ctx.name, ctx.expert, grad_out.dtype)
        return grad_out @ weight, None, None, None


class NF4Experts(nn.Module):
    """Routed experts held in 4-bit NF4 with the forward of transformers' eager experts loop."""

    is_transposed = False  # weights are (E, out, in), read by peft to orient LoRA factors

    def __init__(
        self,
        num_experts: int,
        hidden_dim: int,
        intermediate_dim: int,
        act_fn: nn.Module,
        compute_dtype: torch.dtype,
    ) -> None:
        super().__init__()
        self.num_experts = num_experts
        self.hidden_dim = hidden_dim
        self.intermediate_dim = intermediate_dim
        self.act_fn = act_fn
        self.compute_dtype = compute_dtype
        self.shapes: dict[str, tuple[int, int, int]] = {
            "gate_up_proj": (num_experts, 2 * intermediate_dim, hidden_dim),
            "down_proj": (num_experts, hidden_dim, intermediate_dim),
        }
        self.layouts = {name: ExpertRowLayout(*shape[1:]) for name, shape in self.shapes.items()}
        self._lora: dict[str, list[LoraFactors]] = {name: [] for name in EXPERT_WEIGHT_NAMES}
        # Until `load_dense_` fills them, the weights are meta placeholders of the dense shape, so that
        # transformers' loader sees the checkpoint keys it expects while it streams the tensors in.
        for name in EXPERT_WEIGHT_NAMES:
            placeholder = torch.empty(self.shapes[name], dtype=compute_dtype, device="meta")
            self.register_parameter(name, nn.Parameter(placeholder, requires_grad=False))

    def packed_shape(self, name: str) -> tuple[int, int]:
        """Shape of the 4-bit storage of weight `name`: (experts, row bytes)."""
        return (self.num_experts, self.layouts[name].row_bytes)

    def use_packed_placeholders_(self) -> None:
        """Replace the dense-shaped placeholders by meta tensors of the packed shape.

        The sharded loader builds the model on the meta device and lets FSDP shard the packed rows
        before any byte exists; `fill_rows_` then writes each rank's experts.
        """
        for name in EXPERT_WEIGHT_NAMES:
            placeholder = torch.empty(self.packed_shape(name), dtype=torch.uint8, device="meta")
            self.register_parameter(name, nn.Parameter(placeholder, requires_grad=False))

    @classmethod
    def from_dense(cls, dense: nn.Module, compute_dtype: torch.dtype | None = None) -> NF4Experts:
        """Quantize a transformers experts module (fused `gate_up_proj`/`down_proj`) into a new NF4Experts."""
        gate_up, down, act_fn = dense.gate_up_proj, dense.down_proj, dense.act_fn
        if not isinstance(gate_up, torch.Tensor) or not isinstance(down, torch.Tensor):
            raise TypeError(f"{type(dense).__name__}: expected fused gate_up_proj/down_proj tensors")
        if not isinstance(act_fn, nn.Module):
            raise TypeError(f"{type(dense).__name__}: expected an activation module in act_fn")
        if getattr(dense, "is_transposed", False) or getattr(dense, "has_bias", False):
            raise ValueError(f"{type(dense).__name__}: transposed or biased experts are not GLM-4.7 experts")
        experts, two_inter, hidden = gate_up.shape
        module = cls(
            num_experts=experts,
            hidden_dim=hidden,
            intermediate_dim=two_inter // 2,
            act_fn=act_fn,
            compute_dtype=compute_dtype or gate_up.dtype,
        )
        module.load_dense_("gate_up_proj", gate_up)
        module.load_dense_("down_proj", down)
        return module

    @torch.no_grad()
    def load_dense_(self, name: str, dense: torch.Tensor) -> None:
        """Quantize the dense (E, O, I) weight `name` into this module's 4-bit storage."""
        if name not in self.shapes:
            raise KeyError(f"{name}: NF4Experts holds only {EXPERT_WEIGHT_NAMES}")
        if tuple(dense.shape) != self.shapes[name]:
            raise ValueError(f"{name}: expected shape {self.shapes[name]}, got {tuple(dense.shape)}")
        rows = quantize_expert_rows(dense)
        # Replacing the parameter (not copying into it) frees the placeholder; the caller drops the dense tensor.
        self.register_parameter(name, nn.Parameter(rows, requires_grad=False))

    def is_loaded(self) -> bool:
        """True once both weights hold 4-bit rows on a real device (not the meta placeholders)."""
        return all(
            getattr(self, name).dtype == torch.uint8 and getattr(self, name).device.type != "meta"
            for name in EXPERT_WEIGHT_NAMES
        )

    def dequantize_expert(self, name: str, expert: int, dtype: torch.dtype | None = None) -> torch.Tensor:
        """The dense (O, I) weight of one expert, dequantized from NF4."""
        layout = self.layouts[name]
        row = getattr(self, name)[expert]
        absmax = (
            bnbf.dequantize_blockwise(
                row[layout.absmax_at : layout.scale_at],
                absmax=row[layout.scale_at : layout.offset_at].view(torch.float32),
                blocksize=ABSMAX_BLOCKSIZE,
            )[: layout.blocks]
            + row[layout.offset_at : layout.row_bytes].view(torch.float32)
        )
        state = bnbf.QuantState(  # type: ignore[no-untyped-call]
            absmax=absmax.float().contiguous(),
            shape=torch.Size((layout.rows, layout.cols)),
            blocksize=NF4_BLOCKSIZE,
            quant_type="nf4",
            dtype=dtype or self.compute_dtype,
        )
        return bnbf.dequantize_4bit(row[: layout.absmax_at], state)

    def dequantize(self, name: str, dtype: torch.dtype | None = None) -> torch.Tensor:
        """The whole dense (E, O, I) stack of `name` (for export and tests; training never builds it)."""
        return torch.stack([self.dequantize_expert(name, e, dtype) for e in range(self.num_experts)])

    def placeholder(self, name: str) -> torch.Tensor:
        """A storage-free tensor with the dense weight's shape, dtype and device (what peft asks about)."""
        device = getattr(self, name).device
        return torch.empty((), dtype=self.compute_dtype, device=device).expand(self.shapes[name])

    @contextlib.contextmanager
    def lora_factors(self, name: str, factors: list[LoraFactors]) -> Iterator[None]:
        """Apply these LoRA factors to weight `name` for the duration of the block."""
        self._lora[name].extend(factors)
        try:
            yield
        finally:
            if factors:
                del self._lora[name][-len(factors) :]

    def _project(self, name: str, x: torch.Tensor, expert: int) -> torch.Tensor:
        # Compute in the compute dtype whatever the residual stream's dtype (peft upcasts embeddings and
        # norms to fp32 for QLoRA), as bitsandbytes' Linear4bit does; the caller casts the sum back.
        x = x.to(self.compute_dtype)
        out: torch.Tensor = _DequantLinear.apply(x, self, name, expert)  # type: ignore[no-untyped-call]
        for lhs, rhs, scaling in self._lora[name]:
            low_rank = torch.nn.functional.linear(x, rhs[expert].to(x.dtype))
            out = out + scaling * torch.nn.functional.linear(low_rank, lhs[expert].to(x.dtype))
        return out

    def forward(
        self, hidden_states: torch.Tensor, top_k_index: torch.Tensor, top_k_weights: torch.Tensor
    ) -> torch.Tensor:
        """Same contract as transformers' experts: (tokens, H), (tokens, k), (tokens, k) -> (tokens, H)."""
        final = torch.zeros_like(hidden_states)
        with torch.no_grad():
            expert_mask = torch.nn.functional.one_hot(top_k_index, num_classes=self.num_experts + 1)
            expert_mask = expert_mask.permute(2, 1, 0)
            hit = torch.greater(expert_mask.sum(dim=(-1, -2)), 0).nonzero().flatten().tolist()
        for expert in hit:
            if expert >= self.num_experts:  # expert-parallel sentinel: not ours
                continue
            top_k_pos, token_idx = torch.where(expert_mask[expert])
            x = hidden_states[token_idx]
            gate, up = self._project("gate_up_proj", x, expert).chunk(2, dim=-1)
            out = self._project("down_proj", self.act_fn(gate) * up, expert)
            out = out * top_k_weights[token_idx, top_k_pos, None]
            final.index_add_(0, token_idx, out.to(final.dtype))
        return final

    def extra_repr(self) -> str:
        return f"num_experts={self.num_experts}, hidden_dim={self.hidden_dim}, intermediate_dim={self.intermediate_dim}, nf4"


class ExpertsLoraWrapper(ParamWrapper):
    """peft's ParamWrapper for routed experts: no dropout; on NF4Experts, LoRA applied per expert."""

    def __init__(
        self, base_layer: nn.Module, adapter_name: str, parameter_name: str, config: Any, **kwargs: Any
    ):
        config = _without_dropout(config)
        super().__init__(base_layer, adapter_name, parameter_name=parameter_name, config=config, **kwargs)

    def _nf4_base(self) -> NF4Experts | None:
        base = self.get_base_layer()
        return base if isinstance(base, NF4Experts) else None

    def get_param(self) -> torch.Tensor:
        base = self._nf4_base()
        if base is None:
            param: torch.Tensor = super().get_param()  # type: ignore[no-untyped-call]
            return param
        return base.placeholder(self.parameter_name)

    def update_layer(self, adapter_name: str, r: int, lora_alpha: int, config: Any, **kwargs: Any) -> None:
        config = _without_dropout(config)
        super().update_layer(adapter_name, r, lora_alpha=lora_alpha, config=config, **kwargs)

    def merge(self, safe_merge: bool = False, adapter_names: list[str] | None = None) -> None:
        if self._nf4_base() is not None:
            raise NotImplementedError(
                "merging LoRA into 4-bit routed experts is not supported: load the base model in bf16 "
                "(method lora) and merge there, as the export step does"
            )
        super().merge(safe_merge=safe_merge, adapter_names=adapter_names)

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        base = self._nf4_base()
        if base is None:
            result: torch.Tensor = super().forward(x, *args, **kwargs)
            return result
        self._check_forward_args(x, *args, **kwargs)  # type: ignore[no-untyped-call]
        kwargs.pop("adapter_names", None)
        if self.disable_adapters:
            return self.base_layer(x, *args, **kwargs)  # type: ignore[no-any-return]
        factors: list[LoraFactors] = [
            self.get_delta_factors(name)  # type: ignore[no-untyped-call]
            for name in self.active_adapters
            if name in self.lora_A
        ]
        with base.lora_factors(self.parameter_name, factors):
            return self.base_layer(x, *args, **kwargs)  # type: ignore[no-any-return]


# peft 0.21 recognises an existing wrapper (to nest the second expert weight around the first) by
# its class name, not by isinstance; keep that name so gate_up_proj and down_proj nest as with stock peft.
ExpertsLoraWrapper.__name__ = ParamWrapper.__name__


def _without_dropout(config: Any) -> Any:
    if not config.lora_dropout:
        return config
    copied = copy.copy(config)
    copied.lora_dropout = 0.0
    return copied


def quantize_experts_(model: nn.Module, compute_dtype: torch.dtype | None = None) -> int:
    """Replace every fused routed-experts module of `model` by NF4Experts, freeing the bf16 weights; returns the count."""
    dense_classes = dense_experts_classes()
    targets = [(name, module) for name, module in model.named_modules() if isinstance(module, dense_classes)]
    for name, module in targets:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, NF4Experts.from_dense(module, compute_dtype))
        # Drop the dense tensors now rather than when the last reference to the old module goes.
        for weight in EXPERT_WEIGHT_NAMES:
            setattr(module, weight, None)
    return len(targets)


def routed_expert_parameter_count(model: nn.Module) -> int:
    """Logical (dense) parameters of all routed experts, whatever their storage."""
    total = 0
    for module in model.modules():
        if isinstance(module, NF4Experts):
            total += sum(e * o * i for e, o, i in module.shapes.values())
        elif isinstance(module, dense_experts_classes()):
            total += sum(getattr(module, name).numel() for name in EXPERT_WEIGHT_NAMES)
    return total


def resident_weight_bytes(model: nn.Module) -> dict[str, int]:
    """Bytes held by the model's tensors, by storage kind: nf4_experts, nf4_linear, lora, bf16, fp32, other.

    nf4_experts counts packed codes plus all quantization statistics of NF4Experts; nf4_linear counts
    bitsandbytes Linear4bit weights with their quant states; each storage is counted once.
    """
    from bitsandbytes.nn.modules import Params4bit

    seen: set[tuple[int, int]] = set()
    totals = {"nf4_experts": 0, "nf4_linear": 0, "lora": 0, "bf16": 0, "fp32": 0, "other": 0}

    def add(kind: str, tensor: torch.Tensor | None) -> None:
        if tensor is None or tensor.device.type == "meta":
            return
        key = (tensor.untyped_storage().data_ptr(), tensor.data_ptr()) if tensor.numel() else (id(tensor), 0)
        if key in seen:
            return
        seen.add(key)
        totals[kind] += tensor.numel() * tensor.element_size()

    def add_quant_state(state: Any) -> None:
        if state is None:
            return
        for attr in ("absmax", "code", "offset"):
            value = getattr(state, attr, None)
            if isinstance(value, torch.Tensor):
                add("nf4_linear", value)
        add_quant_state(getattr(state, "state2", None))

    for module_name, module in model.named_modules():
        for tensor_name, tensor in list(module.named_parameters(recurse=False)) + list(
            module.named_buffers(recurse=False)
        ):
            full_name = f"{module_name}.{tensor_name}"
            if isinstance(module, NF4Experts):
                add("nf4_experts", tensor)
            elif isinstance(tensor, Params4bit):
                add("nf4_linear", tensor)
                add_quant_state(tensor.quant_state)
            elif ".lora_" in full_name or full_name.startswith("lora_"):
                add("lora", tensor)
            elif tensor.dtype in (torch.bfloat16, torch.float16):
                add("bf16", tensor)
            elif tensor.dtype == torch.float32:
                add("fp32", tensor)
            else:
                add("other", tensor)
    return totals
