"""The run's report beside the output: counts, drop reasons with examples, sample lengths, a histogram.

`NAME.report.json` is for people and pipelines (what was kept, what was dropped and why, how long
the samples are in the teacher's tokens); `NAME.lengths.png` draws the lengths. Both are written
to a temporary name and renamed, after the output itself.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path
from typing import Any

from glmops_trainer.generate.traces import Sample

EXAMPLES_PER_REASON = 3


def length_stats(lengths: list[int]) -> dict[str, Any]:
    """Count, min, mean, percentiles (50, 90, 99) and max of sample lengths; empty when there are none."""
    if not lengths:
        return {}
    ordered = sorted(lengths)

    def percentile(p: float) -> int:
        return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]

    return {
        "count": len(ordered),
        "min": ordered[0],
        "mean": round(sum(ordered) / len(ordered), 1),
        "p50": percentile(50),
        "p90": percentile(90),
        "p99": percentile(99),
        "max": ordered[-1],
    }


def build_report(samples: list[Sample], kept: list[Sample], dropped: dict[str, int], extra: dict[str, Any]) -> dict[str, Any]:
    """The report's JSON: totals, drops by reason with a few examples, lengths of the kept samples."""
    examples: dict[str, list[str]] = {}
    for sample in samples:
        if sample.drop and sample.detail and len(examples.setdefault(sample.drop, [])) < EXAMPLES_PER_REASON:
            examples[sample.drop].append(f"prompt {sample.prompt_index} sample {sample.sample_index}: {sample.detail}")
    lengths = [s.length_tokens for s in kept if s.length_tokens is not None]
    turns = Counter(s.turns for s in kept)
    return {
        **extra,
        "samples": len(samples),
        "kept": len(kept),
        "dropped": dict(sorted(dropped.items())),
        "dropExamples": examples,
        "completionTokens": sum(s.completion_tokens for s in samples),
        "lengthTokens": length_stats(lengths),
        "lengthsKnown": len(lengths),
        "assistantTurns": {str(k): v for k, v in sorted(turns.items())},
    }


def write_json(path: Path, payload: dict[str, Any]) -> None:
    """Write JSON to `path` atomically."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def write_histogram(path: Path, lengths: list[int], title: str) -> bool:
    """A histogram of `lengths` (tokens) as PNG; False when there is nothing to draw."""
    if not lengths:
        return False
    import matplotlib  # only here: the rest of the generator starts without it

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 4), dpi=100)
    try:
        axes.hist(lengths, bins=min(50, max(5, len(set(lengths)))), color="#3b6ea8", edgecolor="white")
        axes.set_xlabel("sample length (teacher tokens: prompt + completion of the last turn)")
        axes.set_ylabel("samples")
        axes.set_title(title)
        figure.tight_layout()
        tmp = path.with_name(path.name + ".tmp.png")
        figure.savefig(tmp, format="png")
        os.replace(tmp, path)
    finally:
        plt.close(figure)
    return True
