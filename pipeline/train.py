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
    metrics: Annotated[Path, typer.Option(help="Summary metrics JSON (DVC metric).")] = Path("metrics/train.json"),
    history: Annotated[Path, typer.Option(help="Per-epoch history CSV (DVC plots).")] = Path("metrics/train_history.csv"),
    plots_dir: Annotated[Path, typer.Option(help="Where loss.png and miou.png go.")] = Path("plots/train"),
    params: ParamsOption = Path("params.yaml"),
    quiet: QuietOption = False,
) -> None:
    """Train the model in model.* with the settings in train.*, tracked in MLflow."""
    # Imported here, not at the top, so `python -m pipeline --help` and light stages skip torch.
    from segpipe.config import load_params
    from segpipe.layout import training_samples, validation_samples
    from segpipe.models.registry import required_multiple
    from segpipe.training.stage import TrainOutputs, train_stage

    # With the model's stride, a patch size it cannot take fails here, before any data is read.
    config = load_params(params, required_multiple=required_multiple)
    outputs = TrainOutputs(models_dir=models_dir, metrics=metrics, history=history, plots_dir=plots_dir)
    result = train_stage(
        config,
        training_samples(processed_dir, splits_dir, augmented_dir),
        validation_samples(processed_dir, splits_dir),
        outputs,
        progress=not quiet,
    )
    if result:
        typer.echo(f"train: best val mIoU {result['best_val_miou']:.4f} at epoch {result['best_epoch']} -> {models_dir}")
