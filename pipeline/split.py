"""`python -m pipeline split PROCESSED_DIR SPLITS_DIR`: seeded train/val lists."""

from pathlib import Path
from typing import Annotated

import typer

from pipeline.common import ParamsOption, reports_errors


@reports_errors
def main(
    processed_dir: Annotated[Path, typer.Argument(help="The convert stage's output (reads manifest.csv).")],
    splits_dir: Annotated[Path, typer.Argument(help="Where train.txt and val.txt are written.")],
    params: ParamsOption = Path("params.yaml"),
) -> None:
    """Split the converted ids into train.txt and val.txt (hold-out by split.val_fraction, or k-fold)."""
    # Imported here, not at the top, so `python -m pipeline --help` and light stages skip torch.
    from segpipe.config import load_params
    from segpipe.prep.split import describe, write_split

    config = load_params(params)
    split = write_split(processed_dir, splits_dir, config.split, config.split.seed)
    typer.echo(f"split: {describe(split, config.split)} -> {splits_dir}")
