"""Figures for people: the one place that sets matplotlib's backend and saves a figure, and the
training curves (the first paper's figure 4). Import `plt` from here, never pyplot directly, so
the file-only Agg backend is chosen before pyplot loads."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display is needed or wanted in a pipeline stage
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402


def plot_curves(history: Sequence[dict[str, float | None]], out_dir: Path) -> list[Path]:
    """Write loss.png (train and val loss) and miou.png (val mIoU, best epoch marked) per epoch;
    return their paths. Epochs are whole numbers on the x axis; the mIoU axis spans the data, so
    0.97 and 0.98 look different."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    validated = [row for row in history if row["val_loss"] is not None]
    epochs, val_epochs = [row["epoch"] for row in history], [row["epoch"] for row in validated]
    figure, axis = plt.subplots(figsize=(6, 3.5))
    axis.plot(epochs, [row["train_loss"] for row in history], label="train loss")
    axis.plot(val_epochs, [row["val_loss"] for row in validated], "o-", label="val loss")
    _epoch_axis(axis, "loss", "Loss")
    axis.legend()
    paths = [save_figure(figure, out_dir / "loss.png")]
    figure, axis = plt.subplots(figsize=(6, 3.5))
    mious = [row["val_miou"] for row in validated]
    axis.plot(val_epochs, mious, "o-", color="tab:green")
    if mious:
        best = max(range(len(mious)), key=mious.__getitem__)
        axis.scatter([val_epochs[best]], [mious[best]], s=150, facecolors="none", edgecolors="tab:red", zorder=3)
        axis.annotate(f"best {mious[best]:.4f}", (val_epochs[best], mious[best]), textcoords="offset points",
                      xytext=(0, -14), ha="center", fontsize=9)
        axis.set_ylim(*data_range(mious))
    _epoch_axis(axis, "validation mIoU", "Validation mIoU")
    paths.append(save_figure(figure, out_dir / "miou.png"))
    return paths


def data_range(values: Sequence[float], margin: float = 0.1) -> tuple[float, float]:
    """Axis limits around `values` with `margin` of their spread on each side, inside [0, 1] for
    scores; a flat series gets +-0.01."""
    low, high = min(values), max(values)
    pad = (high - low) * margin or 0.01
    return max(0.0, low - pad), min(1.0, high + pad)


def _epoch_axis(axis: plt.Axes, ylabel: str, title: str) -> None:
    axis.xaxis.set_major_locator(MaxNLocator(integer=True))
    axis.set(xlabel="epoch", ylabel=ylabel, title=title)
    axis.grid(alpha=0.3)


def save_figure(figure: plt.Figure, path: Path) -> Path:
    """Lay out (unless a layout engine already does), write as a 100 dpi PNG and close `figure`; returns `path`."""
    if figure.get_layout_engine() is None:
        figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path
