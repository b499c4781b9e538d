"""`python -m pipeline promote EXPERIMENT_OR_RUN --alias champion`: point a registry alias at a run's model."""

from pathlib import Path
from typing import Annotated

import typer

from pipeline.common import ParamsOption, reports_errors


@reports_errors
def main(
    run: Annotated[str, typer.Argument(help="A DVC experiment name or an MLflow run id of a finished training run.")],
    alias: Annotated[str, typer.Option(help="The registry alias to set, e.g. champion.")] = "champion",
    experiment: Annotated[
        str | None, typer.Option(help="MLflow experiment and registered model name (default: base.experiment).")
    ] = None,
    tracking_uri: Annotated[
        str | None, typer.Option(help="MLflow store (default: MLFLOW_TRACKING_URI, else the project's mlflow.db).")
    ] = None,
    params: ParamsOption = Path("params.yaml"),
) -> None:
    """Set ALIAS of the registered model to RUN's version, so models:/NAME@ALIAS serves it."""
    # Imported here, not at the top, so `python -m pipeline --help` and light stages skip MLflow.
    from mlflow.tracking import MlflowClient

    from segpipe.config import load_params
    from segpipe.experiments.registry import check_alias, promote
    from segpipe.tracking import tracking_uri as default_tracking_uri

    check_alias(alias)  # before the MLflow store is opened
    name = experiment or load_params(params).base.experiment
    version = promote(run, alias, MlflowClient(tracking_uri=tracking_uri or default_tracking_uri()), name, name)
    typer.echo(f"promote: {name} version {version.version} (run {version.run_id}) is now models:/{name}@{alias}")
