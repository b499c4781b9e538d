"""`python -m pipeline suggest MODEL FOLDER --out DIR --top K`: which images to label next."""

from pathlib import Path
from typing import Annotated

import typer

from pipeline.common import QuietOption, reports_errors


@reports_errors
def main(
    checkpoint: Annotated[Path, typer.Argument(metavar="MODEL", help="The trained model (best.pt).")],
    folder: Annotated[Path, typer.Argument(help="The folder of unlabelled images to rank.")],
    out: Annotated[Path, typer.Option("--out", help="Where ranking.csv and the pre-annotations go (not inside FOLDER).")],
    top: Annotated[int, typer.Option(help="Pre-annotate this many of the most uncertain images.")] = 10,
    tolerance: Annotated[float, typer.Option(help="How far, in pixels, a polygon may cut the mask's outline.")] = 1.0,
    batch_size: Annotated[int, typer.Option(min=1, help="Images per forward pass.")] = 8,
    device: Annotated[str, typer.Option(help="auto | cpu | cuda | cuda:N | mps")] = "auto",
    quiet: QuietOption = False,
) -> None:
    """Rank every image by the model's uncertainty (mean pixel entropy) into DIR/ranking.csv and write
    labelme pre-annotations (<stem>.json beside <stem>.png) of the top K into DIR."""
    # Imported here, not at the top, so `python -m pipeline --help` and light stages skip torch.
    from segpipe.inference.uncertainty import RANKING, suggest
    from segpipe.runtime import resolve_device

    ranking = suggest(
        checkpoint, folder, out, top, tolerance=tolerance, batch_size=batch_size,
        device=resolve_device(device, "--device"), progress=not quiet,
    )
    chosen = ranking[:top]
    typer.echo(f"suggest: {len(ranking)} images ranked -> {out / RANKING}; {len(chosen)} pre-annotated in {out}")
    for row in chosen:
        typer.echo(f"  {row.rank:>3}  {row.score:.4f}  {row.image.name}")
