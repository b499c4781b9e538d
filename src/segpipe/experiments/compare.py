"""Compare two groups of training runs: is B better than A, beyond image and seed noise?

A group is one or more finished MLflow runs, named by a DVC experiment name, a run id, a
comma-separated list of either, or an MLflow search filter (`filter:params.model.cbam = 'true'`).
Each run's evaluate stage left a per-image CSV (`eval/per_image.csv`: id, iou_<class>...,
dice_<class>..., blank where undefined), and the comparison rests on it:

    score[run, image]   mean of the image's defined iou_<class> values (its mIoU)
    difference          mean over images of (mean over B runs - mean over A runs)
    95% CI              hierarchical paired bootstrap: runs resampled within each group,
                        validation images resampled once per iteration for both groups

Resampling the images says how much the difference depends on which images happened to land in
the validation split; resampling the runs says how much it depends on the seed. A single run per
group cannot show the second, which the report says in words.
"""

from __future__ import annotations

import json
import math
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from segpipe.experiments.bootstrap import BootstrapResult, paired_bootstrap, verdict
from segpipe.errors import SegpipeError
from segpipe.experiments.runs import display_name, experiment_id, no_progress_bar, resolve_runs
from segpipe.tracking import PER_IMAGE_ARTIFACT

if TYPE_CHECKING:
    from mlflow.entities import Run
    from mlflow.tracking import MlflowClient

METRICS = ("miou", "mpa", "mprecision", "mdice", "accuracy")


# --- per-image scores -------------------------------------------------------------------------


def per_image_scores(
    run: Run,
    tracking_uri: str | None = None,
    classes: Sequence[str] | None = None,
    artifact_path: str = PER_IMAGE_ARTIFACT,
) -> pd.Series:
    """Each validation image's mean IoU over its defined classes (index: image id).

    classes: restrict the mean to these classes (default: every iou_<class> column). Images with
    no defined IoU among them (the classes absent from both mask and prediction) are dropped.
    """
    table = _read_per_image(run, tracking_uri, artifact_path)
    columns = [c for c in table.columns if c.startswith("iou_")]
    if classes:
        missing = [c for c in classes if f"iou_{c}" not in columns]
        if missing:
            known = ", ".join(c[len("iou_") :] for c in columns)
            raise SegpipeError(
                f"{artifact_path} of run {_label(run)} has no IoU for class(es) {', '.join(missing)}; "
                f"its classes are: {known} (fix --classes)"
            )
        columns = [f"iou_{c}" for c in classes]
    if not columns:
        raise SegpipeError(
            f"{artifact_path} of run {_label(run)} has no iou_<class> columns: re-run the evaluate stage"
        )
    # mean skips blanks (NaN): a class absent from both mask and prediction has no IoU to average.
    scores = table[columns].apply(pd.to_numeric, errors="coerce").mean(axis=1, skipna=True)
    return scores.dropna().rename(run.info.run_id)


def _read_per_image(run: Run, tracking_uri: str | None, artifact_path: str) -> pd.DataFrame:
    import mlflow

    with tempfile.TemporaryDirectory() as folder, no_progress_bar():
        try:
            local = mlflow.artifacts.download_artifacts(
                run_id=run.info.run_id, artifact_path=artifact_path, dst_path=folder, tracking_uri=tracking_uri
            )
        except Exception:  # MlflowException or OSError, depending on the artifact store
            raise SegpipeError(
                f"run {_label(run)} has no artifact {artifact_path}: run the evaluate stage for it "
                "(it logs the per-image CSV to the training run)"
            ) from None
        table = pd.read_csv(local, dtype={"id": str})
    if "id" not in table.columns:
        raise SegpipeError(f"{artifact_path} of run {_label(run)} has no 'id' column: re-run the evaluate stage")
    duplicated = table["id"][table["id"].duplicated()].tolist()
    if duplicated:
        raise SegpipeError(f"{artifact_path} of run {_label(run)} repeats image ids {duplicated[:5]}: re-run evaluate")
    return table.set_index("id")


def _label(run: Run) -> str:
    name = display_name(run)
    return f"{name} ({run.info.run_id})" if name else run.info.run_id


def score_matrix(scores: Sequence[pd.Series], ids: Sequence[str]) -> np.ndarray:
    """(runs, images) scores of `ids`, in that order, one row per run."""
    return np.stack([series.loc[list(ids)].to_numpy(dtype=float) for series in scores])


# --- the report -------------------------------------------------------------------------------


@dataclass(frozen=True)
class GroupSummary:
    """One side of the comparison: its runs and the mean and std over them of each eval metric."""

    name: str
    spec: str
    runs: list[dict[str, str]]  # {"run_id", "name"}
    metrics: dict[str, dict[str, float | int | None]]  # metric -> {"mean", "std", "n"}


@dataclass(frozen=True)
class ComparisonReport:
    """Everything `compare` found; `scores_a`/`scores_b` are the per-image means over each group's runs."""

    a: GroupSummary
    b: GroupSummary
    result: BootstrapResult
    verdict: str
    n_images: int
    classes: list[str] | None
    n_boot: int
    seed: int
    notes: list[str] = field(default_factory=list)
    ids: list[str] = field(default_factory=list, repr=False)
    scores_a: np.ndarray = field(default_factory=lambda: np.empty(0), repr=False)
    scores_b: np.ndarray = field(default_factory=lambda: np.empty(0), repr=False)

    def to_dict(self) -> dict:
        return {
            "a": self.a.__dict__,
            "b": self.b.__dict__,
            "miou_difference": {
                "b_minus_a": self.result.diff,
                "ci95_low": self.result.low,
                "ci95_high": self.result.high,
            },
            "significant": self.result.significant,
            "verdict": self.verdict,
            "images": self.n_images,
            "classes": self.classes,
            "n_boot": self.n_boot,
            "seed": self.seed,
            "notes": self.notes,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, ensure_ascii=False) + "\n"

    def to_markdown(self) -> str:
        a, b = self.a, self.b
        classes = ", ".join(self.classes) if self.classes else "all classes"
        lines = [
            f"# {b.name} vs {a.name}",
            "",
            f"**{self.verdict}**",
            "",
            f"Per-image mIoU ({classes}) over {self.n_images} validation images; A: {len(a.runs)} run(s), "
            f"B: {len(b.runs)} run(s). 95% CI from a paired bootstrap over images and runs "
            f"({self.n_boot} resamples, seed {self.seed}).",
            "",
            f"| metric | A: {a.name} | B: {b.name} | B − A |",
            "|---|---|---|---|",
        ]
        for metric in METRICS:
            ma, mb = a.metrics[metric], b.metrics[metric]
            delta = _number(mb["mean"] - ma["mean"], signed=True) if None not in (ma["mean"], mb["mean"]) else "n/a"
            lines.append(f"| {metric} | {_mean_std(ma)} | {_mean_std(mb)} | {delta} |")
        lines += ["", "| group | spec | runs |", "|---|---|---|"]
        for side, group in (("A", a), ("B", b)):
            runs = ", ".join(f"{r['name']} (`{r['run_id'][:8]}`)" for r in group.runs)
            lines.append(f"| {side}: {group.name} | `{group.spec}` | {runs} |")
        if self.notes:
            lines += ["", *(f"- {note}" for note in self.notes)]
        return "\n".join(lines) + "\n"


def _number(value: float, signed: bool = False) -> str:
    if signed and round(value, 4) == 0:
        return "0.0000"  # not "-0.0000" for a difference that rounds away
    return f"{value:+.4f}" if signed else f"{value:.4f}"


def _mean_std(summary: dict) -> str:
    if summary["mean"] is None:
        return "n/a"
    spread = f" ± {_number(summary['std'])}" if summary["std"] is not None else ""
    return f"{_number(summary['mean'])}{spread} (n={summary['n']})"


def summarise_metrics(runs: Sequence[Run]) -> dict[str, dict[str, float | int | None]]:
    """Mean and sample std (over runs) of each eval metric; std is None for fewer than two runs."""
    summary = {}
    for metric in METRICS:
        values = [run.data.metrics[metric] for run in runs if _finite(run.data.metrics.get(metric))]
        summary[metric] = {
            "mean": float(np.mean(values)) if values else None,
            "std": float(np.std(values, ddof=1)) if len(values) > 1 else None,
            "n": len(values),
        }
    return summary


def _finite(value: float | None) -> bool:
    return value is not None and math.isfinite(value)


def common_ids(scores: Sequence[pd.Series], notes: list[str]) -> list[str]:
    """Image ids scored in every run (sorted); a note when runs disagree, an error when none are shared."""
    shared = set(scores[0].index)
    union = set(scores[0].index)
    for series in scores[1:]:
        shared &= set(series.index)
        union |= set(series.index)
    if not shared:
        raise SegpipeError(
            "the runs share no validation image with a defined score: were they evaluated on the same split? "
            "(compare runs with the same split params, or check --classes)"
        )
    if len(shared) < len(union):
        notes.append(
            f"{len(union) - len(shared)} of {len(union)} images are not scored in every run (different "
            "validation splits, or classes absent from an image); only the shared ones are compared."
        )
    return sorted(shared)


def _group(name: str, spec: str, runs: Sequence[Run]) -> GroupSummary:
    listed = [{"run_id": r.info.run_id, "name": display_name(r) or ""} for r in runs]
    return GroupSummary(name=name, spec=spec, runs=listed, metrics=summarise_metrics(runs))


def compare(
    spec_a: str,
    spec_b: str,
    client: MlflowClient,
    experiment: str,
    *,
    classes: Sequence[str] | None = None,
    n_boot: int = 10000,
    seed: int = 0,
    name_a: str | None = None,
    name_b: str | None = None,
    artifact_path: str = PER_IMAGE_ARTIFACT,
) -> ComparisonReport:
    """Resolve both group specs in `experiment`, bootstrap B - A in per-image mIoU and summarise.

    client: an MlflowClient on the tracking store (its URI is also used to download artifacts).
    classes: restrict the per-image score to these classes. name_a/name_b: labels (default: specs).
    """
    exp_id = experiment_id(client, experiment)
    runs_a, runs_b = resolve_runs(spec_a, client, exp_id), resolve_runs(spec_b, client, exp_id)
    uri = client.tracking_uri
    scores_a = [per_image_scores(run, uri, classes, artifact_path) for run in runs_a]
    scores_b = [per_image_scores(run, uri, classes, artifact_path) for run in runs_b]
    notes: list[str] = []
    ids = common_ids(scores_a + scores_b, notes)
    a, b = score_matrix(scores_a, ids), score_matrix(scores_b, ids)
    result = paired_bootstrap(a, b, n_boot=n_boot, seed=seed)
    name_a, name_b = name_a or spec_a, name_b or spec_b
    for side, runs in (("A", runs_a), ("B", runs_b)):
        if len(runs) == 1:
            notes.append(
                f"group {side} has a single run: differences between single runs include seed noise; "
                "run several seeds (e.g. `dvc exp run -S base.seed=N`) and compare the lists."
            )
    return ComparisonReport(
        a=_group(name_a, spec_a, runs_a),
        b=_group(name_b, spec_b, runs_b),
        result=result,
        verdict=verdict(result, name_a, name_b, n_images=len(ids)),
        n_images=len(ids),
        classes=list(classes) if classes else None,
        n_boot=n_boot,
        seed=seed,
        notes=notes,
        ids=ids,
        scores_a=a.mean(axis=0),
        scores_b=b.mean(axis=0),
    )


def plot_comparison(report: ComparisonReport, path: Path) -> Path:
    """Scatter of each image's score under A (x) and B (y), with the identity line; points above
    it favour B. Both axes span the data (see `plot_limits`), so scores near 1 do not sit in a corner."""
    from segpipe.figures import plt, save_figure

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    low, high = plot_limits(report.scores_a, report.scores_b)
    figure, axis = plt.subplots(figsize=(6, 6))
    axis.plot([low, high], [low, high], color="grey", linestyle="--", linewidth=1, label="A = B")
    axis.scatter(report.scores_a, report.scores_b, s=12, alpha=0.6)
    axis.set(
        xlim=(low, high),
        ylim=(low, high),
        aspect="equal",
        xlabel=f"A: {report.a.name} (per-image IoU)",
        ylabel=f"B: {report.b.name} (per-image IoU)",
    )
    axis.legend(loc="lower right", fontsize=8)
    axis.set_title(report.verdict, fontsize=9, wrap=True)
    axis.grid(alpha=0.3)
    return save_figure(figure, path)


def plot_limits(a: np.ndarray, b: np.ndarray, margin: float = 0.05) -> tuple[float, float]:
    """One range for both axes: the scores' span plus `margin` of it on each side (at least 0.01,
    so points at 0 or 1 are drawn whole); equal ranges keep the identity line at 45 degrees."""
    values = np.concatenate([np.ravel(a), np.ravel(b)])
    values = values[np.isfinite(values)]
    if values.size == 0:
        return 0.0, 1.0
    low, high = float(values.min()), float(values.max())
    pad = max(margin * (high - low), 0.01)
    return low - pad, high + pad
