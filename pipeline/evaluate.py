"""`python -m pipeline evaluate CHECKPOINT PROCESSED_DIR SPLITS_DIR`: score a model on the validation images."""

from pathlib import Path
from typing import Annotated

import typer

from pipeline.common import ParamsOption, QuietOption, reports_errors


@reports_errors
def main(
    checkpoint: Annotated[Path, typer.Argument(help="The train stage's checkpoint (best.pt).")],
    processed_dir: Annotated[Path, typer.Argument(help="The convert stage's output.")],
    splits_dir: Annotated[Path, typer.Argument(help="The split stage's output (the ids in val.txt are scored).")],
    metrics: Annotated[Path, typer.Option(help="The scores JSON (a DVC metric).")] = Path("metrics/eval.json"),
    info: Annotated[Path, typer.Option(help="What was scored: image count, absent classes.")] = Path("metrics/eval_info.json"),
    per_class: Annotated[Path, typer.Option(help="Per-class scores CSV.")] = Path("metrics/eval_per_class.csv"),
    per_image: Annotated[Path, typer.Option(help="Per-image IoU and Dice CSV.")] = Path("metrics/eval_per_image.csv"),
    iou_plot: Annotated[Path, typer.Option(help="Per-class IoU CSV (DVC bar plot).")] = Path("metrics/eval_class_iou.csv"),
    plots_dir: Annotated[Path, typer.Option(help="Where the score, confusion and gallery PNGs go.")] = Path("plots/eval"),
    params: ParamsOption = Path("params.yaml"),
    quiet: QuietOption = False,
) -> None:
    """Score the checkpoint at each validation image's own resolution, with the settings in evaluate.*."""
    # Imported here, not at the top, so `python -m pipeline --help` and light stages skip torch.
    from segpipe.config import load_params
    from segpipe.imageio import check_apart
    from segpipe.layout import validation_samples
    from segpipe.evaluation.evaluate import EvalOutputs, absent_report, evaluate

    config = load_params(params)
    outputs = EvalOutputs(
        metrics=metrics, info=info, per_class=per_class, per_image=per_image, iou_plot=iou_plot, plots_dir=plots_dir
    )
    check_apart(
        {"--metrics": metrics, "--info": info, "--per-class": per_class, "--per-image": per_image,
         "--iou-plot": iou_plot, "--plots-dir": plots_dir},
        {"CHECKPOINT": checkpoint, "PROCESSED_DIR": processed_dir, "SPLITS_DIR": splits_dir},
    )
    samples = validation_samples(processed_dir, splits_dir)
    report = evaluate(checkpoint, samples, outputs, config.evaluate, classes=config.base.classes, progress=not quiet)
    miou = "n/a" if report.metrics["miou"] is None else f"{report.metrics['miou']:.4f}"
    typer.echo(f"evaluate: mIoU {miou} over {report.info['images']} images -> {metrics}")
    typer.echo(f"evaluate: {absent_report(report.info)}")
