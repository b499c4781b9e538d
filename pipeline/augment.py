"""`python -m pipeline augment PROCESSED_DIR SPLITS_DIR OUT_DIR`: offline augmentation of train images."""

from pathlib import Path
from typing import Annotated

import typer

from pipeline.common import ParamsOption, QuietOption, reports_errors


@reports_errors
def main(
    processed_dir: Annotated[Path, typer.Argument(help="The convert stage's output.")],
    splits_dir: Annotated[Path, typer.Argument(help="The split stage's output (reads train.txt).")],
    out_dir: Annotated[Path, typer.Argument(help="Where augmented images, masks and provenance.csv go.")],
    params: ParamsOption = Path("params.yaml"),
    quiet: QuietOption = False,
) -> None:
    """Write augment.copies augmented copies of every training image (none when augment.enabled is false)."""
    # Imported here, not at the top, so `python -m pipeline --help` and light stages skip torch.
    from segpipe.prep.augment import augment_dataset
    from segpipe.config import load_params

    config = load_params(params)
    count = augment_dataset(
        processed_dir,
        splits_dir,
        out_dir,
        config.augment,
        seed=config.base.seed,
        workers=config.data.workers,
        progress=not quiet,
    )
    typer.echo(f"augment: wrote {count} samples -> {out_dir}")
