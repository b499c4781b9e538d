"""`python -m pipeline compare A B`: is group B better than group A, beyond image and seed noise?"""

from pathlib import Path
from typing import Annotated

import typer

from pipeline.common import ParamsOption, reports_errors

SPEC_HELP = (
    "Runs: a DVC experiment name, an MLflow run id, a comma-separated list of those (e.g. one per seed), "
    "or filter:<MLflow search filter>, e.g. \"filter:params.model.cbam = 'true'\"."
)


@reports_errors
def main(
    group_a: Annotated[str, typer.Argument(help=f"Group A (the baseline). {SPEC_HELP}")],
    group_b: Annotated[str, typer.Argument(help="Group B (the candidate), same forms as A.")],
    experiment: Annotated[
        str | None, typer.Option(help="MLflow experiment (default: base.experiment in the params file).")
    ] = None,
    tracking_uri: Annotated[
        str | None, typer.Option(help="MLflow store (default: MLFLOW_TRACKING_URI, else the project's mlflow.db).")
    ] = None,
    classes: Annotated[
        list[str] | None,
        typer.Option("--classes", help="Score images on these classes only (repeatable or comma-separated)."),
    ] = None,
    n_boot: Annotated[int, typer.Option(help="Bootstrap resamples.")] = 10000,
    seed: Annotated[int, typer.Option(help="Bootstrap seed (same seed, same interval).")] = 0,
    name_a: Annotated[str | None, typer.Option(help="Label for A in the report (default: its spec).")] = None,
    name_b: Annotated[str | None, typer.Option(help="Label for B in the report (default: its spec).")] = None,
    out_md: Annotated[Path | None, typer.Option(help="Also write the markdown report here.")] = None,
    out_json: Annotated[Path | None, typer.Option(help="Write the report as JSON here.")] = None,
    plot: Annotated[Path | None, typer.Option(help="Write a per-image A-vs-B IoU scatter (PNG) here.")] = None,
    params: ParamsOption = Path("params.yaml"),
) -> None:
    """Compare two groups of finished runs: eval metrics (mean ± std over runs) and B − A in per-image
    mIoU with a 95% CI from a bootstrap over validation images and runs."""
    # Imported here, not at the top, so `python -m pipeline --help` and light stages skip MLflow.
    from mlflow.tracking import MlflowClient

    from segpipe.experiments.compare import compare, plot_comparison
    from segpipe.config import load_params
    from segpipe.errors import SegpipeError
    from segpipe.tracking import reachable, tracking_uri as default_tracking_uri

    experiment = experiment or load_params(params).base.experiment
    uri = tracking_uri or default_tracking_uri()
    if not reachable(uri):  # else MLflow retries for minutes before it gives up
        raise SegpipeError(f"the MLflow tracking server {uri} does not answer; start it, or pass another --tracking-uri")
    client = MlflowClient(tracking_uri=uri)
    # --classes lesion --classes other and --classes lesion,other mean the same.
    chosen = [name.strip() for value in classes or [] for name in value.split(",") if name.strip()]
    report = compare(
        group_a, group_b, client, experiment, classes=chosen, n_boot=n_boot, seed=seed, name_a=name_a, name_b=name_b
    )
    markdown = report.to_markdown()
    typer.echo(markdown)
    for path, text in ((out_md, markdown), (out_json, report.to_json())):
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
    if plot is not None:
        plot_comparison(report, plot)
