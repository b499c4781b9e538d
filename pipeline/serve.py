"""`python -m pipeline serve [MODEL]`: a web page (and HTTP API) that segments the images you give it."""

from pathlib import Path
from typing import Annotated

import typer

from pipeline.common import ParamsOption, reports_errors


@reports_errors
def main(
    model: Annotated[
        str, typer.Argument(help="A checkpoint file, or an MLflow model URI: models:/NAME@ALIAS, runs:/RUN_ID/model.")
    ] = "models/best.pt",
    host: Annotated[str | None, typer.Option(help="Address to bind (default serve.host: 127.0.0.1, this machine only).")] = None,
    port: Annotated[int | None, typer.Option(min=1, max=65535, help="Port (default serve.port).")] = None,
    params: ParamsOption = Path("params.yaml"),
) -> None:
    """Serve a page where you choose, drop or paste an image and get its mask, plus POST /predict."""
    # Imported here, not at the top, so `python -m pipeline --help` and light stages skip torch.
    from segpipe.config import load_params
    from segpipe.serving.app import serve

    overrides = {key: value for key, value in (("host", host), ("port", port)) if value is not None}
    settings = load_params(params).serve.model_copy(update=overrides)
    serve(model, settings, announce=typer.echo)
