"""`python -m pipeline convert INPUT_DIR OUT_DIR`: labelme JSON or image/mask folders -> images + class-id masks."""

from pathlib import Path
from typing import Annotated

import typer

from pipeline.common import ParamsOption, QuietOption, reports_errors


@reports_errors
def main(
    input_dir: Annotated[Path, typer.Argument(help="labelme JSON files, or a folder with images/ and masks/.")],
    out_dir: Annotated[Path, typer.Argument(help="Where images/, masks/ and manifest.csv are written.")],
    metrics: Annotated[Path, typer.Option(help="The data summary (a DVC metric).")] = Path("metrics/data.json"),
    params: ParamsOption = Path("params.yaml"),
    quiet: QuietOption = False,
) -> None:
    """Convert annotations (data.format: labelme or masks) into one-byte class-id masks."""
    # Imported here, not at the top, so `python -m pipeline --help` and light stages skip torch.
    from segpipe.config import load_params
    from segpipe.prep.convert import convert_dataset

    config = load_params(params)
    summary = convert_dataset(
        input_dir, out_dir, metrics, classes=config.base.classes, data=config.data, progress=not quiet
    )
    typer.echo(f"convert: {summary} -> {out_dir}")
