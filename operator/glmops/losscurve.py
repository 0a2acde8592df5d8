"""The loss curve of a run: read from `progress.jsonl`, drawn as a PNG.

One implementation for the two places that draw it: the trainer (`loss_curve.png` beside the
adapter, at the end of training) and `kubectl glmops plot` (any time, from the same file). It needs
matplotlib only to draw, and never torch.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class LossHistory:
    """Train and eval loss per step, as recorded in `progress.jsonl`."""

    train: list[tuple[int, float]]
    eval: list[tuple[int, float]]


def parse_loss_history(lines: Iterable[str]) -> LossHistory:
    """Loss points of `progress.jsonl` lines; a step recorded twice (redone after a resume) keeps its last value."""
    train: dict[int, float] = {}
    evals: dict[int, float] = {}
    for line in lines:
        try:
            event = json.loads(line)
        except ValueError:
            continue  # a line cut short by a kill
        if not isinstance(event, dict) or not isinstance(event.get("step"), int):
            continue
        if event.get("kind") == "train" and isinstance(event.get("loss"), (int, float)):
            train[event["step"]] = float(event["loss"])
        elif event.get("kind") == "eval" and isinstance(event.get("evalLoss"), (int, float)):
            evals[event["step"]] = float(event["evalLoss"])
    return LossHistory(sorted(train.items()), sorted(evals.items()))


def read_loss_history(history_file: Path) -> LossHistory:
    """Loss points of a `progress.jsonl` file (none when it does not exist)."""
    if not history_file.is_file():
        return LossHistory([], [])
    return parse_loss_history(history_file.read_text(encoding="utf-8").splitlines())


def plot_loss_curve(history: LossHistory, out_file: Path, title: str = "") -> Path:
    """Draw `history` into `out_file` (PNG); raises ValueError when there is no train loss to draw."""
    if not history.train:
        raise ValueError("no train loss was recorded, so there is no loss curve to draw")
    import matplotlib

    # Pods, CI and ssh sessions have no display; Agg renders to files only.
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=100)
    try:
        steps, losses = zip(*history.train, strict=True)
        ax.plot(steps, losses, label="train loss", color="tab:blue", linewidth=1.2)
        if history.eval:
            eval_steps, eval_losses = zip(*history.eval, strict=True)
            ax.plot(eval_steps, eval_losses, label="eval loss", color="tab:orange", marker="o", linewidth=1.2)
        ax.set_xlabel("step")
        ax.set_ylabel("loss")
        if title:
            ax.set_title(title)
        ax.grid(True, alpha=0.3)
        ax.legend()
        fig.tight_layout()
        out_file.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(out_file, format="png")
    finally:
        plt.close(fig)
    return out_file
