"""Draw labelme pre-annotations over their images: the README's docs/annotate.png.

    python docs/annotate_figure.py suggested/lesion_003.json --out docs/annotate.png

Left: each given labelme file's polygons over its image (imagePath, relative to the JSON), in
drawing order. Right: how a hole is written, on a hand-made mask: a ring of one class, its hole
as a later background polygon (dashed), an island of a second class inside the hole.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.patches import Polygon  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))
from segpipe.imageio import read_image  # noqa: E402
from segpipe.inference.annotate import mask_to_shapes  # noqa: E402

COLOURS = {"background": "white", "lesion": "red", "ring": "tab:orange", "island": "tab:blue"}


def draw_shapes(ax, shapes: list[dict], image: np.ndarray, title: str) -> None:
    ax.imshow(image)
    for order, shape in enumerate(shapes, start=1):
        colour = COLOURS.get(shape["label"], "yellow")
        hole = shape["label"] == "background"
        points = np.asarray(shape["points"])
        ax.add_patch(Polygon(points, closed=True, facecolor=colour, alpha=0.35 if not hole else 0.8, edgecolor="none"))
        ax.add_patch(Polygon(points, closed=True, fill=False, edgecolor="black" if hole else colour, linewidth=1.5,
                             linestyle="--" if hole else "-"))
        ax.plot(points[:, 0], points[:, 1], "o", color=colour, markersize=2.5, markeredgecolor="black", markeredgewidth=0.3)
        # At the top-left corner of the polygon's box: nested polygons share a centre.
        x, y = points.min(axis=0)
        ax.text(x + 1, y + 1, f"{order}: {shape['label']}", fontsize=7, ha="left", va="top",
                bbox={"facecolor": "white", "alpha": 0.7, "pad": 1, "edgecolor": "none"})
    ax.set_title(title, fontsize=9)
    ax.set_axis_off()


def hole_example() -> tuple[list[dict], np.ndarray]:
    mask = np.zeros((60, 80), np.uint8)
    mask[8:52, 8:56] = 1
    mask[18:42, 18:46] = 0
    mask[24:34, 26:38] = 2
    mask[44:56, 62:76] = 2
    canvas = np.full((*mask.shape, 3), 235, np.uint8)
    return mask_to_shapes(mask, ("background", "ring", "island"), tolerance=1.0), canvas


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("json", type=Path, nargs="+", help="labelme files written by predict --labelme or suggest")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "annotate.png")
    args = parser.parse_args()
    fig, axes = plt.subplots(1, len(args.json) + 1, figsize=(4 * (len(args.json) + 1), 3.6))
    for ax, path in zip(axes, args.json):
        document = json.loads(path.read_text())
        image = read_image(path.parent / document["imagePath"])
        points = sum(len(s["points"]) for s in document["shapes"])
        draw_shapes(ax, document["shapes"], image, f"{path.name}: {len(document['shapes'])} polygon(s), {points} points")
    shapes, canvas = hole_example()
    draw_shapes(axes[-1], shapes, canvas, "a hole: a later background polygon")
    fig.tight_layout()
    fig.savefig(args.out, dpi=110)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
