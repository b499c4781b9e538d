"""`python -m pipeline export MODEL --format onnx --out FILE`: the model for runtimes without PyTorch."""

from pathlib import Path
from typing import Annotated

import typer

from pipeline.common import reports_errors


@reports_errors
def main(
    checkpoint: Annotated[Path, typer.Argument(metavar="MODEL", help="The trained model (best.pt).")],
    out: Annotated[Path, typer.Option("--out", help="The file to write (model.onnx).")],
    format: Annotated[str, typer.Option("--format", help="onnx")] = "onnx",
) -> None:
    """Export the model with dynamic batch/height/width and its classes, normalisation and stride in
    the file's metadata, then check it against PyTorch with onnxruntime before writing it."""
    # Imported here, not at the top, so `python -m pipeline --help` and light stages skip torch.
    from segpipe.inference.export import export_onnx

    report = export_onnx(checkpoint, out, format)
    shapes = ", ".join("x".join(map(str, shape)) for shape in report.checked_shapes)
    typer.echo(
        f"export: {out} (classes {report.metadata['classes']}, stride {report.metadata['stride']}); "
        f"onnxruntime matches PyTorch within {report.max_abs_diff:.1e} on {shapes}"
    )
