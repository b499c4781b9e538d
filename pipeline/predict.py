"""`python -m pipeline predict CHECKPOINT INPUT... --out DIR`: masks for new images."""

from pathlib import Path
from typing import Annotated

import typer

from pipeline.common import QuietOption, reports_errors


@reports_errors
def main(
    checkpoint: Annotated[Path, typer.Argument(help="The trained model (best.pt).")],
    inputs: Annotated[list[str], typer.Argument(help="Image files, folders of images, or glob patterns.")],
    out: Annotated[Path, typer.Option("--out", help="Output folder (not a folder of the inputs).")],
    overlay: Annotated[bool, typer.Option(help="Also write <stem>_overlay.jpg (the mask blended over the image).")] = False,
    probs: Annotated[bool, typer.Option(help="Also write <stem>_probs.npy, (C, H, W) float16.")] = False,
    tile: Annotated[
        int | None,
        typer.Option(help="Predict in overlapping SIZE x SIZE windows (large images); default: the model's own "
                     "windows if it was trained on patches, else whole images."),
    ] = None,
    overlap: Annotated[
        float | None, typer.Option(help="Fraction of a tile shared with its neighbour; default: the library's (0.25).")
    ] = None,
    tta: Annotated[bool, typer.Option(help="Average over the 8 rotations and flips.")] = False,
    largest_component: Annotated[
        bool, typer.Option(help="Keep only each class's largest region (one object per image, e.g. a lesion).")
    ] = False,
    fill_holes: Annotated[bool, typer.Option(help="Give background enclosed by one class that class.")] = False,
    batch_size: Annotated[int, typer.Option(help="Images, or tiles of one image, per forward pass.")] = 8,
    device: Annotated[str, typer.Option(help="auto | cpu | cuda | cuda:N | mps")] = "auto",
    labelme: Annotated[
        bool, typer.Option(help="Also write <stem>.json, the mask as labelme polygons to correct (never over an existing one).")
    ] = False,
    tolerance: Annotated[float, typer.Option(help="--labelme: how far, in pixels, a polygon may cut the mask's outline.")] = 1.0,
    quiet: QuietOption = False,
) -> None:
    """Write a mask per input image at its exact size: 0/255 for 2 classes, a palette PNG of class ids for more."""
    # Imported here, not at the top, so `python -m pipeline --help` and light stages skip torch.
    from segpipe.inference.postprocess import PostProcess
    from segpipe.inference.prediction import PredictOptions, predict_paths
    from segpipe.runtime import resolve_device

    if labelme:  # refuse before predicting anything: an existing labelme file may be a human's work
        from segpipe.inference.annotate import check_annotatable
        from segpipe.inference.prediction import resolve_inputs

        images = resolve_inputs(inputs)
        check_annotatable(out, [path.stem for path in images], tolerance)
    chosen = {"overlap": overlap} if overlap is not None else {}  # else the one default, PredictOptions'
    post = PostProcess(largest_component=largest_component, fill_holes=fill_holes)
    options = PredictOptions(overlay=overlay, probs=probs, tile=tile, tta=tta, batch_size=batch_size, post=post, **chosen)
    report = predict_paths(checkpoint, inputs, out, options, device=resolve_device(device, "--device"), progress=not quiet)
    for message in report.failed:
        typer.secho(f"skipped: {message}", err=True, fg=typer.colors.YELLOW)
    if labelme:
        from segpipe.inference.annotate import annotate_masks

        annotate_masks(checkpoint, report.written, images, out, tolerance)
    typer.echo(
        f"predict: {len(report.written)} masks{' and labelme files' * labelme} -> {out}"
        + (f", {len(report.failed)} failed" if report.failed else "")
    )
    if not report.ok:
        raise typer.Exit(1)
