"""`python -m pipeline sample OUT_DIR --kind lesions|aerial`: synthetic data to try the pipeline on."""

from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from pipeline.common import reports_errors
from segpipe.errors import SegpipeError


class Kind(str, Enum):
    lesions = "lesions"
    aerial = "aerial"


@reports_errors
def main(
    out_dir: Annotated[Path, typer.Argument(help="Folder to write the sample into.")],
    kind: Annotated[Kind, typer.Option(help="lesions: JPEG + labelme JSON; aerial: images/ + RGB masks/.")] = Kind.lesions,
    count: Annotated[int, typer.Option(min=1, help="Number of images.")] = 40,
    size: Annotated[int, typer.Option(min=32, help="Longer side in pixels.")] = 256,
    seed: Annotated[int, typer.Option(help="Same seed, same files.")] = 0,
    road_width: Annotated[
        int | None, typer.Option(min=1, help="aerial only: roads exactly this many pixels wide (default: 3-7% of the side).")
    ] = None,
) -> None:
    """Write a synthetic dataset: dermoscopy-like lesions (labelme) or aerial tiles (colour masks)."""
    # Imported here, not at the top, so `python -m pipeline --help` and light stages skip torch.
    from segpipe.prep.synthetic import make_aerial, make_lesions

    if kind is Kind.lesions:
        if road_width is not None:
            raise SegpipeError("sample: --road-width applies to --kind aerial only")
        paths = make_lesions(out_dir, count=count, size=size, seed=seed)
    else:
        paths = make_aerial(out_dir, count=count, size=size, seed=seed, road_width=road_width)
    typer.echo(f"sample: wrote {len(paths)} {kind.value} images -> {out_dir}")
