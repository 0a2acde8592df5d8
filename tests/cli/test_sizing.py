"""The README's GPU sizing table is what the memory plans compute, and the plans order it sensibly."""

from __future__ import annotations

from pathlib import Path

from glmops.cli.sizing import BEGIN, END, render, replace_block, serving_rows, training_rows
from glmops.plan.memory import plan_memory

README = Path(__file__).resolve().parents[2] / "README.md"


def test_the_readme_table_is_the_one_the_code_computes() -> None:
    text = README.read_text(encoding="utf-8")
    block = text[text.index(BEGIN) : text.index(END) + len(END)]
    assert block == render(), "the README's sizing table is stale: run `python -m glmops.cli.sizing --update README.md`"


def test_replacing_the_block_keeps_the_rest_of_the_readme() -> None:
    text = f"# title\n\n{BEGIN}\nold table\n{END}\n\n## next\n"
    assert replace_block(text, "NEW") == "# title\n\nNEW\n\n## next\n"


def test_training_rows_are_the_plan_of_each_variants_defaults() -> None:
    rows = {(r[0], r[1], r[2]): r for r in training_rows()}
    flash = plan_memory("flash", "qlora", 16, ["attention", "shared_experts", "experts"], 8192, 1, 1)
    assert rows[("GLM-4.7-Flash", "QLoRA", "8,192")][4] == f"{flash.per_gpu_gib:.1f}"
    assert rows[("GLM-4.7", "QLoRA", "8,192")][3] == "8"

    def gib(model: str, method: str, sequence: str) -> float:
        return float(rows[(model, method, sequence)][4])

    # 4-bit weights need less than bf16; a longer sequence needs more activations.
    assert gib("GLM-4.7-Flash", "QLoRA", "8,192") < gib("GLM-4.7-Flash", "LoRA (bf16)", "8,192")
    assert gib("GLM-4.7-Flash", "QLoRA", "8,192") < gib("GLM-4.7-Flash", "QLoRA", "32,768")
    assert rows[("GLM-4.7-Flash", "QLoRA", "8,192")][5] == "48 GB and larger"  # the promise of the flash defaults


def test_serving_rows_take_the_fewest_gpus_that_hold_the_replica() -> None:
    rows = {(r[0], r[1]): r for r in serving_rows()}
    q4, q8 = rows[("GLM-4.7-Flash", "GGUF Q4_K_M")], rows[("GLM-4.7-Flash", "GGUF Q8_0")]
    assert float(q4[3]) < float(q8[3])  # fewer bits, fewer bytes
    assert q4[5] == "1" and float(q4[6]) <= 80
    flagship = rows[("GLM-4.7", "merged (bf16)")]
    assert int(flagship[5]) == 8 and float(flagship[3]) > 600  # 355B parameters in bf16 need the whole node
    for row in rows.values():
        assert float(row[6]) <= 80 or row[5] == "8"
