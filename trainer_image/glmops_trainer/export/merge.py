"""Streaming LoRA merge: base checkpoint + adapter -> merged checkpoint, one shard at a time.

peft's `merge_and_unload` needs the whole model in memory (about 700 GB for the GLM-4.7 flagship
in bf16). This merge reads the base checkpoint shard by shard and tensor by tensor, adds the
deltas that touch each tensor in float32, casts back to the tensor's own dtype and streams it into
the output shard, so peak memory is about one input shard (memory-mapped) plus one tensor plus the
adapter. Output shards are written under temporary names and renamed, and journaled, so an
interrupted merge redoes only the shards it had not finished.

The output always uses the original per-expert layout (`mlp.experts.{i}.gate_proj/up_proj/
down_proj.weight`) that the released GLM-4.7 checkpoints, vLLM and llama.cpp's converter use;
fused input (`mlp.experts.gate_up_proj` / `down_proj`, as transformers 5 holds them in memory) is
split per expert. Tensors of the MTP (next-token prediction) layers, which transformers does not
load and LoRA therefore never touches, are copied unchanged so speculative decoding keeps working;
`MergeResult.mtp_layers` says how many complete MTP layers the merged checkpoint holds, and
config.json's `num_nextn_predict_layers` is lowered to that number when the base declared more than
it had (a checkpoint re-saved by transformers 5 loses them), so no server looks for missing layers.
Tokenizer, chat template and generation config are copied; config.json gets the keys llama.cpp's
converter needs (see `fix_config_for_llama_cpp`).
"""

from __future__ import annotations

import json
import logging
import re
import shutil
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from glmops_trainer.export.adapter import AdapterDeltas, AdapterError, load_adapter_deltas
from glmops_trainer.export.publish import ArtifactStore, FileRecord
from glmops_trainer.export.safetensors_stream import DTYPES_BY_NAME, StreamingSafetensorsWriter, TensorSpec

log = logging.getLogger(__name__)

INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"
# Files of a model folder that are weights in another format or belong to the hub, not to the model.
_NOT_COPIED_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf", ".ckpt", ".h5", ".msgpack")
_NOT_COPIED_NAMES = {INDEX_NAME, "pytorch_model.bin.index.json", ".gitattributes"}

_PER_EXPERT = re.compile(
    r"^(?P<container>.+\.mlp\.experts)\.(?P<expert>\d+)\.(?P<proj>gate_proj|up_proj|down_proj)\.weight$"
)
_FUSED = re.compile(r"^(?P<container>.+\.mlp\.experts)\.(?P<param>gate_up_proj|down_proj)$")
_LAYER = re.compile(r"^model\.layers\.(\d+)\.")


class MergeError(ValueError):
    """The base checkpoint and the adapter cannot be merged; the message says which file and why."""


@dataclass(frozen=True)
class _Source:
    """How to produce one output tensor: which input tensor (or slice of it) and which delta."""

    spec: TensorSpec
    input_key: str
    expert: int | None = None
    """For fused input: the expert index sliced out of the 3-D tensor."""
    rows: tuple[int, int] | None = None
    """Row range of the (expert's) input tensor: gate_proj/up_proj halves of a fused gate_up_proj."""
    delta: Callable[[], torch.Tensor] | None = None


@dataclass
class MergeResult:
    """What the merge wrote and touched."""

    out_dir: Path
    files: list[FileRecord] = field(default_factory=list)
    merged_tensors: list[str] = field(default_factory=list)
    """Output tensors that received a LoRA delta."""
    mtp_tensors: list[str] = field(default_factory=list)
    """Tensors of MTP layers (index >= num_hidden_layers), copied unchanged."""
    mtp_layers: int = 0
    """MTP layers the merged checkpoint holds and its config.json declares (what vLLM's MTP drafts with)."""
    split_fused: int = 0
    """Fused expert tensors of the input that were split per expert."""


def read_base_config(base_dir: Path) -> dict[str, Any]:
    """The base model's config.json."""
    path = base_dir / "config.json"
    if not path.is_file():
        raise MergeError(f"{path}: missing; the base model folder must be a Hugging Face checkpoint")
    loaded: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return loaded


def list_shards(base_dir: Path) -> list[str]:
    """The safetensors shard file names of a checkpoint, in index order."""
    index = base_dir / INDEX_NAME
    if index.is_file():
        weight_map: dict[str, str] = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        shards = list(dict.fromkeys(weight_map.values()))
        missing = [name for name in shards if not (base_dir / name).is_file()]
        if missing:
            raise MergeError(f"{index}: names shard {missing[0]} which does not exist in {base_dir}")
        return shards
    if (base_dir / SINGLE_NAME).is_file():
        return [SINGLE_NAME]
    raise MergeError(
        f"{base_dir}: no {INDEX_NAME} and no {SINGLE_NAME}; only safetensors checkpoints can be merged"
    )


def fix_config_for_llama_cpp(config: dict[str, Any]) -> dict[str, Any]:
    """config.json with the keys llama.cpp's converter reads but transformers 5 no longer writes.

    GLM-4.7-Flash (glm4_moe_lite): transformers 5 saves `mlp_layer_types` instead of
    `first_k_dense_replace`, without which the converter treats layer 0 as MoE
    ("blk.0.ffn_gate_inp.weight not found"); and llama.cpp's deepseek2 code infers sigmoid expert
    gating only for the exact Flash shape, so `scoring_func` is written explicitly.
    """
    fixed = dict(config)
    if config.get("model_type") != "glm4_moe_lite":
        return fixed
    layer_types = config.get("mlp_layer_types")
    if "first_k_dense_replace" not in config and layer_types:
        leading = 0
        while leading < len(layer_types) and layer_types[leading] == "dense":
            leading += 1
        if any(kind != "sparse" for kind in layer_types[leading:]):
            raise MergeError(
                f"config.json: mlp_layer_types={layer_types} has a dense layer after a sparse one; llama.cpp "
                "supports only leading dense layers (first_k_dense_replace)"
            )
        fixed["first_k_dense_replace"] = leading
    fixed.setdefault("scoring_func", "sigmoid")
    return fixed


_MTP_PARTS = ("eh_proj.weight", "enorm.weight", "hnorm.weight")
"""Tensors only an MTP layer has (with its attention and MLP): a layer without them cannot draft."""


def count_mtp_layers(mtp_tensors: list[str], config: Mapping[str, Any]) -> int:
    """How many MTP layers vLLM can draft with: those the config declares that are present in full.

    MTP layer k is `model.layers.{num_hidden_layers + k}`; it counts when its projection of the
    embedding and hidden state (`eh_proj`) and both norms are there.
    """
    first = int(config["num_hidden_layers"])
    declared = int(config.get("num_nextn_predict_layers") or 0)
    present = set(mtp_tensors)
    count = 0
    for layer in range(first, first + declared):
        if not all(f"model.layers.{layer}.{part}" in present for part in _MTP_PARTS):
            break
        count += 1
    return count


def _layer_index(key: str) -> int | None:
    match = _LAYER.match(key)
    return int(match.group(1)) if match else None


class _Planner:
    """Turns input shard headers into output tensor sources and checks every delta finds its tensor."""

    def __init__(self, deltas: AdapterDeltas, base_config: Mapping[str, Any]) -> None:
        self.deltas = deltas
        self.inter = int(base_config.get("moe_intermediate_size") or 0)
        self.num_hidden_layers = int(base_config["num_hidden_layers"])
        self.used_linear: set[str] = set()
        self.used_experts: set[tuple[str, str]] = set()

    def _expert_delta(
        self, container: str, param: str, expert: int, rows: tuple[int, int] | None
    ) -> Callable[[], torch.Tensor] | None:
        lora = self.deltas.experts.get((container, param))
        if lora is None:
            return None
        self.used_experts.add((container, param))

        def delta() -> torch.Tensor:
            full = lora.expert_delta(expert)
            return full[rows[0] : rows[1]] if rows is not None else full

        return delta

    def plan(self, key: str, dtype: torch.dtype, shape: tuple[int, ...]) -> list[_Source]:
        """Output tensors produced from input tensor `key`."""
        per_expert = _PER_EXPERT.match(key)
        if per_expert:
            container, expert, proj = per_expert["container"], int(per_expert["expert"]), per_expert["proj"]
            if proj == "down_proj":
                delta = self._expert_delta(container, "down_proj", expert, None)
            else:
                half = (0, self.inter) if proj == "gate_proj" else (self.inter, 2 * self.inter)
                delta = self._expert_delta(container, "gate_up_proj", expert, half)
            return [_Source(TensorSpec(key, dtype, shape), key, delta=delta)]
        fused = _FUSED.match(key)
        if fused:
            container, param = fused["container"], fused["param"]
            if len(shape) != 3:
                raise MergeError(f"{key}: fused expert tensor of shape {shape}; expected 3 dimensions")
            num_experts, rows, cols = shape
            sources: list[_Source] = []
            for expert in range(num_experts):
                prefix = f"{container}.{expert}"
                if param == "down_proj":
                    sources.append(
                        _Source(
                            TensorSpec(f"{prefix}.down_proj.weight", dtype, (rows, cols)),
                            key,
                            expert=expert,
                            delta=self._expert_delta(container, param, expert, None),
                        )
                    )
                    continue
                if rows != 2 * self.inter:
                    raise MergeError(
                        f"{key}: has {rows} rows per expert, expected 2*moe_intermediate_size={2 * self.inter}"
                    )
                for proj, half in (("gate_proj", (0, self.inter)), ("up_proj", (self.inter, rows))):
                    sources.append(
                        _Source(
                            TensorSpec(f"{prefix}.{proj}.weight", dtype, (self.inter, cols)),
                            key,
                            expert=expert,
                            rows=half,
                            delta=self._expert_delta(container, param, expert, half),
                        )
                    )
            return sources
        lora = self.deltas.linear.get(key)
        if lora is not None:
            expected = (lora.lora_b.shape[0], lora.lora_a.shape[1])
            if shape != expected:
                raise MergeError(
                    f"{key}: base weight has shape {shape} but the adapter's delta is {expected}; is this adapter "
                    "for this base model?"
                )
            self.used_linear.add(key)
            return [_Source(TensorSpec(key, dtype, shape), key, delta=lora.delta)]
        return [_Source(TensorSpec(key, dtype, shape), key)]

    def unused(self) -> list[str]:
        """Adapter targets that matched no tensor of the base checkpoint."""
        missing = [key for key in self.deltas.linear if key not in self.used_linear]
        missing += [f"{c}.{p}" for c, p in self.deltas.experts if (c, p) not in self.used_experts]
        return sorted(missing)


def _header(path: Path) -> list[tuple[str, torch.dtype, tuple[int, ...]]]:
    entries: list[tuple[str, torch.dtype, tuple[int, ...]]] = []
    with safe_open(str(path), framework="pt") as handle:
        for key in handle.keys():  # noqa: SIM118 - safe_open is not iterable
            if ".quant_state.bitsandbytes__" in key:
                raise MergeError(
                    f"{path}: {key} shows a bitsandbytes 4-bit checkpoint; the merge needs the bf16 base "
                    "checkpoint (the one training loaded and quantized in memory)"
                )
            view = handle.get_slice(key)
            dtype_name = view.get_dtype()
            if dtype_name not in DTYPES_BY_NAME:
                raise MergeError(f"{path}: tensor {key} has dtype {dtype_name}, which the merge cannot write")
            entries.append((key, DTYPES_BY_NAME[dtype_name], tuple(view.get_shape())))
    return entries


def _materialise(handle: Any, source: _Source) -> torch.Tensor:
    if source.expert is None:
        base: torch.Tensor = handle.get_tensor(source.input_key)
    else:
        # Read one expert's slice only: a fused flagship tensor is several GB.
        base = handle.get_slice(source.input_key)[source.expert]
    if source.rows is not None:
        base = base[source.rows[0] : source.rows[1]]
    if source.delta is None:
        return base.to(source.spec.dtype).contiguous()
    # float32 for the sum: adding a small delta directly in bf16 would round most of it away.
    merged = base.float()
    merged += source.delta()
    return merged.to(source.spec.dtype)


def _write_shard(input_path: Path, sources: list[_Source]) -> Callable[[Path], str]:
    def write(tmp: Path) -> str:
        with (
            safe_open(str(input_path), framework="pt") as handle,
            StreamingSafetensorsWriter(tmp, [s.spec for s in sources], {"format": "pt"}) as writer,
        ):
            for source in sources:
                tensor = _materialise(handle, source)
                writer.write(source.spec.name, tensor)
                del tensor
            return writer.close()

    return write


def copy_model_side_files(
    base_dir: Path, out_dir: Path, store: ArtifactStore, config: dict[str, Any]
) -> list[FileRecord]:
    """Copy tokenizer, chat template, generation config and other metadata; write the fixed config.json."""
    records: list[FileRecord] = []
    for path in sorted(base_dir.iterdir()):
        if not path.is_file() or path.name in _NOT_COPIED_NAMES or path.name == "config.json":
            continue
        if path.name.endswith(_NOT_COPIED_SUFFIXES):
            continue
        records.append(store.copy_file(path, out_dir / path.name))
    data = (json.dumps(config, indent=2, sort_keys=True) + "\n").encode("utf-8")
    records.append(store.write_bytes(out_dir / "config.json", data))
    return records


def merge_lora_streaming(
    base_dir: Path, adapter_dir: Path, out_dir: Path, store: ArtifactStore | None = None
) -> MergeResult:
    """Merge the LoRA adapter in `adapter_dir` into the checkpoint in `base_dir`, writing `out_dir`.

    With `store`, files are published through it (atomic, journaled); otherwise `out_dir` gets a store of its own.
    """
    if store is None:
        store = ArtifactStore(out_dir, str(out_dir))
        store.begin()
    base_config = read_base_config(base_dir)
    try:
        deltas = load_adapter_deltas(adapter_dir, base_config)
    except AdapterError as exc:
        raise MergeError(str(exc)) from exc
    planner = _Planner(deltas, base_config)
    shards = list_shards(base_dir)

    # Plan every shard first (headers only) so a mismatched adapter fails before anything is written.
    plans: list[tuple[str, list[_Source]]] = []
    result = MergeResult(out_dir)
    for shard in shards:
        sources: list[_Source] = []
        for key, dtype, shape in _header(base_dir / shard):
            planned = planner.plan(key, dtype, shape)
            if len(planned) > 1 or planned[0].spec.name != key:
                result.split_fused += 1
            sources.extend(planned)
        plans.append((shard, sources))
    unused = planner.unused()
    if unused:
        raise MergeError(
            f"{adapter_dir}: the adapter adapts {len(unused)} targets that do not exist in {base_dir}, first "
            f"{unused[0]}; is this adapter for this base model?"
        )

    weight_map: dict[str, str] = {}
    total_size = 0
    for shard, sources in plans:
        log.info("merging %s (%d tensors)", shard, len(sources))
        result.files.append(store.produce(out_dir / shard, _write_shard(base_dir / shard, sources)))
        for source in sources:
            weight_map[source.spec.name] = shard
            total_size += source.spec.nbytes
            if source.delta is not None:
                result.merged_tensors.append(source.spec.name)
            layer = _layer_index(source.spec.name)
            if layer is not None and layer >= planner.num_hidden_layers:
                result.mtp_tensors.append(source.spec.name)

    result.mtp_layers = count_mtp_layers(result.mtp_tensors, base_config)
    config = fix_config_for_llama_cpp(base_config)
    declared = int(base_config.get("num_nextn_predict_layers") or 0)
    if result.mtp_layers < declared:
        log.warning(
            "%s declares %d MTP layer(s) but holds %d; the merged config.json says %d",
            base_dir / "config.json",
            declared,
            result.mtp_layers,
            result.mtp_layers,
        )
        config["num_nextn_predict_layers"] = result.mtp_layers

    if len(shards) > 1 or (base_dir / INDEX_NAME).is_file():
        index = {"metadata": {"total_size": total_size}, "weight_map": dict(sorted(weight_map.items()))}
        data = (json.dumps(index, indent=2) + "\n").encode("utf-8")
        result.files.append(store.write_bytes(out_dir / INDEX_NAME, data))
    result.files.extend(copy_model_side_files(base_dir, out_dir, store, config))
    log.info(
        "merged %d tensors (%d MTP layer(s) of %d tensors kept, %d fused expert tensors split) into %s",
        len(result.merged_tensors),
        result.mtp_layers,
        len(result.mtp_tensors),
        result.split_fused,
        out_dir,
    )
    return result


def iter_checkpoint_tensors(model_dir: Path) -> Iterator[tuple[str, torch.Tensor]]:
    """Every tensor of a safetensors checkpoint, shard by shard (for checks and tests)."""
    for shard in list_shards(model_dir):
        with safe_open(str(model_dir / shard), framework="pt") as handle:
            for key in handle.keys():  # noqa: SIM118 - safe_open is not iterable
                yield key, handle.get_tensor(key)


def remove_tree(path: Path) -> None:
    """Delete a folder the export no longer needs (work files)."""
    shutil.rmtree(path, ignore_errors=True)
