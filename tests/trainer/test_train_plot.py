"""The loss curve is a real PNG drawn from the recorded history."""

from __future__ import annotations

from pathlib import Path

import pytest

from glmops_trainer.plot import plot_loss_curve
from glmops_trainer.progress import LossHistory

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def test_loss_curve_is_a_png_of_the_expected_size(tmp_path: Path) -> None:
    history = LossHistory(train=[(s, 3.0 / s) for s in range(1, 31)], eval=[(10, 0.5), (20, 0.3), (30, 0.2)])

    out = plot_loss_curve(history, tmp_path / "loss_curve.png", title="payments-coder")

    data = out.read_bytes()
    assert data.startswith(PNG_SIGNATURE)
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    assert (width, height) == (800, 450)


def test_curves_with_and_without_eval_differ(tmp_path: Path) -> None:
    train = [(s, 3.0 / s) for s in range(1, 11)]

    without = plot_loss_curve(LossHistory(train, []), tmp_path / "a.png").read_bytes()
    with_eval = plot_loss_curve(LossHistory(train, [(5, 2.0)]), tmp_path / "b.png").read_bytes()

    assert without != with_eval


def test_no_train_loss_means_no_curve(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no train loss"):
        plot_loss_curve(LossHistory([], []), tmp_path / "x.png")
