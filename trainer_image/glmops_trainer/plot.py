"""The loss curve: train (and eval) loss against the optimizer step, as a PNG.

Drawn by `glmops.losscurve`, which `kubectl glmops plot` uses too, so both draw the same picture.
"""

from __future__ import annotations

from glmops.losscurve import plot_loss_curve

__all__ = ["plot_loss_curve"]
