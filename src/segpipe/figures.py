"""Figures for people: the one place that sets matplotlib's backend and saves a figure, and the
training curves (the first paper's figure 4). Import `plt` from here, never pyplot directly, so
the file-only Agg backend is chosen before pyplot loads."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display is needed or wanted in a pipeline stage
import matplotlib.pyplot as plt  # noqa: E402


def plot_curves(history: Sequence[dict[str, float | None]], out_dir: Path) -> list[Path]:
    """Write loss.png (train and val loss) and miou.png (val mIoU) per epoch; return their paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    epochs = [row["epoch"] for row in history]
    paths = []
    figure, axis = plt.subplots(figsize=(6, 4))
    axis.plot(epochs, [row["train_loss"] for row in history], label="train loss")
    validated = [row for row in history if row["val_loss"] is not None]
    axis.plot([r["epoch"] for r in validated], [r["val_loss"] for r in validated], "o-", label="val loss")
    axis.set(xlabel="epoch", ylabel="loss", title="Loss")
    axis.grid(alpha=0.3)
    axis.legend()
    paths.append(save_figure(figure, out_dir / "loss.png"))
    figure, axis = plt.subplots(figsize=(6, 4))
    axis.plot([r["epoch"] for r in validated], [r["val_miou"] for r in validated], "o-", color="tab:green")
    axis.set(xlabel="epoch", ylabel="mIoU", title="Validation mIoU", ylim=(0, 1))
    axis.grid(alpha=0.3)
    paths.append(save_figure(figure, out_dir / "miou.png"))
    return paths


def save_figure(figure: plt.Figure, path: Path) -> Path:
    """Lay out, write as a 100 dpi PNG and close `figure`; returns `path`."""
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path
