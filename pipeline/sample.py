"""`python -m pipeline sample OUT_DIR --kind lesions|aerial`: synthetic data to try the pipeline on."""

from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from pipeline.common import reports_errors


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
) -> None:
    """Write a synthetic dataset: dermoscopy-like lesions (labelme) or aerial tiles (colour masks)."""
    # Imported here, not at the top, so `python -m pipeline --help` and light stages skip torch.
    from segpipe.prep.synthetic import make_aerial, make_lesions

    make = make_lesions if kind is Kind.lesions else make_aerial
    paths = make(out_dir, count=count, size=size, seed=seed)
    typer.echo(f"sample: wrote {len(paths)} {kind.value} images -> {out_dir}")
