"""The serving memory estimate against published GLM-4.7 sizing, and the arithmetic behind it."""

from __future__ import annotations

import pytest

from glmops.plan.memory import FLAGSHIP, FLASH, GIB
from glmops.plan.serving_memory import (
    GGUF_BITS_PER_WEIGHT,
    bf16_weight_bytes,
    choose_gpu_count,
    estimate_serving_memory,
    gguf_weight_bytes,
    kv_bytes_per_token,
    load_seconds,
    mtp_layer_parameters,
    valid_gpu_counts,
)

GB = 1e9  # published sizes are decimal gigabytes


def _llamacpp(variant: str, quantization: str, context: int, gpus: int, slots: int = 1) -> float:
    dims = FLAGSHIP if variant == "flagship" else FLASH
    memory = estimate_serving_memory(variant, "llamacpp", gguf_weight_bytes(dims, quantization), context, slots, gpus)
    return memory.total_gib * GIB / GB


@pytest.mark.parametrize(("quantization", "published_gb"), [("Q4_K_M", 220), ("Q3_K_M", 165)])
def test_flagship_gguf_sizes_match_published_files(quantization: str, published_gb: float) -> None:
    size_gb = gguf_weight_bytes(FLAGSHIP, quantization) / GB
    assert size_gb == pytest.approx(published_gb, rel=0.05)


def test_flagship_q4_k_m_is_served_on_four_80gb_gpus() -> None:
    def need(gpus: int):
        return estimate_serving_memory("flagship", "llamacpp", gguf_weight_bytes(FLAGSHIP, "Q4_K_M"), 32768, 1, gpus)

    assert choose_gpu_count("flagship", "llamacpp", need, gpu_memory_gib=79.6, vllm_gpu_memory_utilization=0.9) == 4
    # ... and never fits two of them, or one H200
    assert need(2).per_gpu_gib > 79.6 and need(1).per_gpu_gib > 140


def test_flagship_q3_k_m_fits_two_h200() -> None:
    def need(gpus: int):
        return estimate_serving_memory("flagship", "llamacpp", gguf_weight_bytes(FLAGSHIP, "Q3_K_M"), 32768, 1, gpus)

    assert choose_gpu_count("flagship", "llamacpp", need, gpu_memory_gib=140.4, vllm_gpu_memory_utilization=0.9) == 2


@pytest.mark.parametrize("quantization", ["Q4_K_M", "Q5_K_M", "Q6_K", "Q8_0"])
def test_flash_at_128k_needs_30_to_50_gb_by_quantization(quantization: str) -> None:
    assert 30 <= _llamacpp("flash", quantization, 131072, 1) <= 50


def test_flash_q3_spans_22_to_38_gb_over_long_contexts() -> None:
    low, high = _llamacpp("flash", "Q3_K_M", 65536, 1), _llamacpp("flash", "Q3_K_M", 202752, 1)
    assert 22 <= low < high <= 38


@pytest.mark.parametrize("quantization", list(GGUF_BITS_PER_WEIGHT))
def test_flash_serves_on_one_48_to_80_gb_gpu(quantization: str) -> None:
    memory = estimate_serving_memory("flash", "llamacpp", gguf_weight_bytes(FLASH, quantization), 131072, 1, 1)
    assert memory.per_gpu_gib <= 79.6


def test_bigger_quantizations_cost_more() -> None:
    sizes = [gguf_weight_bytes(FLASH, q) for q in ("Q3_K_M", "Q4_0", "Q4_K_M", "Q5_K_M", "Q6_K", "Q8_0")]
    assert sizes == sorted(sizes) and len(set(sizes)) == len(sizes)


def test_gqa_kv_cache_is_k_and_v_of_eight_heads_per_layer() -> None:
    # flagship: 2 (K, V) x 8 KV heads x 128 dims x 92 layers x 2 bytes
    assert kv_bytes_per_token(FLAGSHIP, "llamacpp") == 2 * 8 * 128 * 92 * 2
    assert kv_bytes_per_token(FLAGSHIP, "vllm") == kv_bytes_per_token(FLAGSHIP, "llamacpp")


def test_mla_kv_cache_is_the_compressed_latent() -> None:
    # Flash: kv_lora_rank 512 + rope 64 per layer in vLLM; llama.cpp keeps a 512-wide V beside it
    assert kv_bytes_per_token(FLASH, "vllm") == (512 + 64) * 47 * 2
    assert kv_bytes_per_token(FLASH, "llamacpp") == (512 + 64 + 512) * 47 * 2
    # an order of magnitude below what 20 full heads of K and V would take
    assert kv_bytes_per_token(FLASH, "vllm") * 10 < 2 * 20 * 256 * 47 * 2


def test_kv_cache_grows_with_context_and_slots() -> None:
    one = estimate_serving_memory("flash", "llamacpp", 1e9, 8192, 1, 1)
    four_slots = estimate_serving_memory("flash", "llamacpp", 1e9, 8192, 4, 1)
    double_context = estimate_serving_memory("flash", "llamacpp", 1e9, 16384, 1, 1)
    assert four_slots.kv_cache_gib == pytest.approx(4 * one.kv_cache_gib)
    assert double_context.kv_cache_gib == pytest.approx(2 * one.kv_cache_gib)


def test_vllm_replicates_the_mla_latent_on_every_tensor_parallel_rank() -> None:
    weights = bf16_weight_bytes(FLASH, with_mtp=False)
    one = estimate_serving_memory("flash", "vllm", weights, 32768, 8, 1)
    two = estimate_serving_memory("flash", "vllm", weights, 32768, 8, 2)
    kv_gib = one.kv_cache_gib
    assert two.per_gpu_gib == pytest.approx(one.per_gpu_gib - one.weights_gib / 2)  # only weights halve
    assert two.total_gib == pytest.approx(one.total_gib + kv_gib + one.overhead_gib_per_gpu)


def test_gqa_kv_heads_split_over_tensor_parallel_ranks() -> None:
    weights = bf16_weight_bytes(FLAGSHIP, with_mtp=False)
    four = estimate_serving_memory("flagship", "vllm", weights, 32768, 8, 4)
    eight = estimate_serving_memory("flagship", "vllm", weights, 32768, 8, 8)
    moved = (four.weights_gib + four.kv_cache_gib) / 4 - (eight.weights_gib + eight.kv_cache_gib) / 8
    assert four.per_gpu_gib - eight.per_gpu_gib == pytest.approx(moved)


def test_merged_flagship_bf16_needs_eight_h200() -> None:
    weights = bf16_weight_bytes(FLAGSHIP, with_mtp=True)
    assert weights / GB == pytest.approx(2 * 356.8, rel=0.01)

    def need(gpus: int):
        return estimate_serving_memory("flagship", "vllm", weights, 32768, 8, gpus)

    assert choose_gpu_count("flagship", "vllm", need, 140.4, 0.9) == 8
    assert need(8).per_gpu_gib > 79.6 * 0.9  # not on 80 GB cards


def test_mtp_layer_is_about_one_percent_of_the_flagship() -> None:
    share = mtp_layer_parameters(FLAGSHIP) / FLAGSHIP.total_parameters()
    assert 0.008 < share < 0.015
    assert bf16_weight_bytes(FLASH, with_mtp=True) > bf16_weight_bytes(FLASH, with_mtp=False)


def test_vllm_tensor_parallel_sizes_divide_the_attention_heads() -> None:
    assert valid_gpu_counts("flagship", "vllm") == (1, 2, 4, 8)  # 96 heads
    assert valid_gpu_counts("flash", "vllm") == (1, 2, 4)  # 20 heads: 8 does not divide them
    assert valid_gpu_counts("flash", "llamacpp") == (1, 2, 4, 8)  # layer split: any count


def test_vllm_keeps_to_its_share_of_the_gpu() -> None:
    # 60 GiB needed: fits an 80 GB card for llama.cpp, not for vLLM at 0.7 utilisation
    def need(gpus: int):
        return estimate_serving_memory("flash", "vllm", 56.5 * GIB, 1024, 1, gpus)

    assert choose_gpu_count("flash", "vllm", need, 79.6, 0.95) == 1
    assert choose_gpu_count("flash", "vllm", need, 79.6, 0.7) == 2


def test_cpu_replica_holds_everything_in_host_memory() -> None:
    memory = estimate_serving_memory("flash", "llamacpp", gguf_weight_bytes(FLASH, "Q4_K_M"), 32768, 2, 0)
    assert memory.per_gpu_gib == 0
    assert memory.total_gib == pytest.approx(memory.weights_gib + memory.kv_cache_gib + memory.overhead_gib_per_gpu)


def test_load_time_follows_the_weights() -> None:
    assert load_seconds(0, 200, 60) == 60
    assert load_seconds(200 * 1024 * 1024 * 100, 200, 60) == 160
