"""`python -m pipeline train PROCESSED_DIR SPLITS_DIR AUGMENTED_DIR MODELS_DIR`: train a U-Net."""

from pathlib import Path
from typing import Annotated

import typer

from pipeline.common import ParamsOption, QuietOption, reports_errors


@reports_errors
def main(
    processed_dir: Annotated[Path, typer.Argument(help="The convert stage's output.")],
    splits_dir: Annotated[Path, typer.Argument(help="The split stage's output (train.txt, val.txt).")],
    augmented_dir: Annotated[Path, typer.Argument(help="The augment stage's output (may be empty).")],
    models_dir: Annotated[Path, typer.Argument(help="Where best.pt, last.pt and epoch checkpoints go.")],
    metrics: Annotated[Path, typer.Option(help="Results JSON (a DVC metric).")] = Path("metrics/train.json"),
    info: Annotated[Path, typer.Option(help="Counts and durations JSON (not a metric).")] = Path("metrics/train_info.json"),
    history: Annotated[Path, typer.Option(help="Per-epoch history CSV (DVC plots).")] = Path("metrics/train_history.csv"),
    plots_dir: Annotated[Path, typer.Option(help="Where loss.png and miou.png go.")] = Path("plots/train"),
    params: ParamsOption = Path("params.yaml"),
    quiet: QuietOption = False,
) -> None:
    """Train the model in model.* with the settings in train.*, tracked in MLflow."""
    # Imported here, not at the top, so `python -m pipeline --help` and light stages skip torch.
    from segpipe.config import load_params
    from segpipe.experiments.registry import publish_model
    from segpipe import tracking
    from segpipe.imageio import check_apart
    from segpipe.layout import training_samples, validation_samples
    from segpipe.training.stage import TrainOutputs, check_model_input, train_stage

    config = load_params(params)
    check_model_input(config)  # an input size off the model's stride fails here, before any data is read
    check_apart(
        {"MODELS_DIR": models_dir, "--metrics": metrics, "--info": info, "--history": history, "--plots-dir": plots_dir},
        {"PROCESSED_DIR": processed_dir, "SPLITS_DIR": splits_dir, "AUGMENTED_DIR": augmented_dir},
    )
    outputs = TrainOutputs(models_dir=models_dir, metrics=metrics, info=info, history=history, plots_dir=plots_dir)
    report = train_stage(
        config,
        training_samples(processed_dir, splits_dir, augmented_dir),
        validation_samples(processed_dir, splits_dir),
        outputs,
        progress=not quiet,
    )
    if report is None:  # not rank 0 of a multi-process run
        return
    best_miou, best_epoch = report.metrics["best_val_miou"], report.info["best_epoch"]
    typer.echo(f"train: best val mIoU {best_miou:.4f} at epoch {best_epoch} -> {report.best_checkpoint}")
    version = publish_model(models_dir, config.base.experiment)
    if version:
        typer.echo(f"train: registered as MLflow model {config.base.experiment!r} version {version}")
    if report.run_id is None:
        return
    typer.echo(f"train: MLflow run {report.run_id} in experiment {config.base.experiment!r}")
    url = tracking.training_view_url(report.tracking_uri, report.experiment_id)
    command = tracking.ui_command(report.tracking_uri)
    if command is None:
        typer.echo(f"train: browse it at {url}")
    else:
        typer.echo(f"train: browse it: run `{command}`, then open\n       {url}")
