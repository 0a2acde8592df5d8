"""The generator's progress page and result: what the generator writes is what the operator reads."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from glmops.contract.records import RESULT_LIMIT_BYTES
from glmops.contract.synthetic import (
    DropReason,
    GeneratorMetricsError,
    GeneratorProgress,
    GeneratorResult,
    parse_generator_metrics,
    parse_generator_result,
    render_generator_metrics,
)

_COUNT = st.integers(0, 10**7)


@settings(max_examples=200, deadline=None)
@given(total=_COUNT, done=_COUNT, kept=_COUNT, tokens=_COUNT, retries=_COUNT, finalizing=st.booleans(),
       dropped=st.dictionaries(st.sampled_from([r.value for r in DropReason]), st.integers(1, 10**6), max_size=5))  # fmt: skip
def test_the_metrics_page_round_trips(total: int, done: int, kept: int, tokens: int, retries: int, finalizing: bool, dropped: dict[str, int]) -> None:
    progress = GeneratorProgress(
        prompts_total=total, prompts_done=done, samples_total=2 * total, samples_done=done, samples_kept=kept,
        dropped=dropped, tokens_generated=tokens, retries=retries, time_unix=1_767_225_600.25, finalizing=finalizing,
    )  # fmt: skip
    assert parse_generator_metrics(render_generator_metrics(progress, "synth", "ml", "uid-1"), expected_uid="uid-1") == progress


def test_a_page_of_another_run_or_of_no_generator_is_refused() -> None:
    page = render_generator_metrics(GeneratorProgress(1, 0, 1, 0, 0), "synth", "ml", "uid-of-another-pod")
    with pytest.raises(GeneratorMetricsError, match="another pod"):
        parse_generator_metrics(page, expected_uid="uid-1")
    with pytest.raises(GeneratorMetricsError, match="not a glmops generator"):
        parse_generator_metrics("glmops_trainer_step 5\n", expected_uid="uid-1")
    assert parse_generator_metrics(render_generator_metrics(None, "s", "ml", "uid-1"), expected_uid="uid-1") is None


def test_the_result_round_trips_and_fits_a_termination_message() -> None:
    result = GeneratorResult("Succeeded", prompts_total=3, prompts_done=3, samples_kept=5, dropped={"empty": 1},
                             output_uri="pvc://d/o.jsonl", sha256="ab" * 32, size_bytes=10, runtime_seconds=1.26)  # fmt: skip
    read = parse_generator_result(result.to_message())
    assert read is not None and read.to_json() == {**result.to_json(), "runtimeSeconds": 1.3}
    long = GeneratorResult("Failed", "PromptsInvalid", "prompts.jsonl:1: bad\n" * 1000)
    message = long.to_message()
    assert len(message.encode()) <= RESULT_LIMIT_BYTES
    cut = parse_generator_result(message)
    assert cut is not None and cut.reason == "PromptsInvalid" and cut.message.endswith("prompts.jsonl:1: bad\n")


def test_a_trainer_result_or_garbage_is_not_a_generator_result() -> None:
    assert parse_generator_result(json.dumps({"v": 1, "status": "Succeeded", "step": 3})) is None  # the trainer's record
    assert parse_generator_result("Traceback (most recent call last): ...") is None
    assert parse_generator_result(json.dumps({"v": 1, "kind": "generator", "status": "Running"})) is None


def test_the_generator_imports_no_ml_library() -> None:
    # Its pod is a small CPU Job: importing torch or transformers would cost seconds and gigabytes.
    import subprocess
    import sys

    code = (
        "import sys, glmops_trainer.__main__ as m, glmops_trainer.generate.run, glmops_trainer.generate.progress; "
        "print(sorted(x for x in ('torch', 'transformers', 'peft', 'bitsandbytes') if x in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
