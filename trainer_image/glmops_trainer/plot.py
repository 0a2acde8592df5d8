"""The loss curve: train (and eval) loss against the optimizer step, as a PNG."""

from __future__ import annotations

from pathlib import Path

from glmops_trainer.progress import LossHistory


def plot_loss_curve(history: LossHistory, out_file: Path, title: str = "") -> Path:
    """Draw `history` into `out_file` (PNG); raises ValueError when there is no train loss to draw."""
    if not history.train:
        raise ValueError("no train loss was recorded, so there is no loss curve to draw")
    import matplotlib

    # Pods and CI have no display; Agg renders to files only.
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
