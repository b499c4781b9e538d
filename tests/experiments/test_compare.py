"""`compare`: the hierarchical paired bootstrap on synthetic scores, and end to end on a temp MLflow store."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import typer
from mlflow.tracking import MlflowClient
from typer.testing import CliRunner

from pipeline.compare import main
from segpipe.experiments.compare import (
    BootstrapResult,
    ComparisonReport,
    GroupSummary,
    plot_comparison,
    plot_limits,
    common_ids,
    compare,
    experiment_id,
    paired_bootstrap,
    per_image_scores,
    resolve_runs,
    verdict,
)
from segpipe.errors import SegpipeError

IMAGES = 200


def synthetic(runs: int, shift: float, seed: int, run_sd: float = 0.0, images: int = IMAGES) -> np.ndarray:
    """(runs, images) scores: a fixed per-image difficulty + `shift` + a per-run offset + small noise."""
    difficulty = np.random.default_rng(1234).uniform(0.3, 0.9, images)  # the same images for every group
    rng = np.random.default_rng(seed)
    offsets = rng.normal(0, run_sd, (runs, 1))
    return difficulty + shift + offsets + rng.normal(0, 0.02, (runs, images))


# --- the bootstrap ----------------------------------------------------------------------------


def test_a_real_difference_is_detected_and_its_interval_contains_it():
    a, b = synthetic(1, 0.0, seed=1), synthetic(1, 0.05, seed=2)
    result = paired_bootstrap(a, b, n_boot=2000, seed=0)
    assert 0 < result.low < 0.05 < result.high
    assert result.diff == pytest.approx(0.05, abs=0.01)
    text = verdict(result, "plain", "cbam+aug")
    assert text.startswith("cbam+aug better by 5.")
    assert "95% CI [" in text


@pytest.mark.parametrize("seed", [3, 4, 5, 6])
def test_no_difference_gives_an_interval_around_zero(seed: int):
    a, b = synthetic(1, 0.0, seed=seed), synthetic(1, 0.0, seed=seed + 100)
    result = paired_bootstrap(a, b, n_boot=2000, seed=seed)
    assert result.low < 0 < result.high
    assert verdict(result, "A", "B").startswith("no detectable difference (B − A = ")


def test_seed_noise_widens_the_interval_when_runs_differ():
    a = synthetic(3, 0.0, seed=7, run_sd=0.03)
    b = synthetic(3, 0.02, seed=8, run_sd=0.03)
    single = paired_bootstrap(a[:1], b[:1], n_boot=2000, seed=0)
    several = paired_bootstrap(a, b, n_boot=2000, seed=0)
    assert several.high - several.low > 2 * (single.high - single.low)


def test_runs_that_agree_do_not_widen_the_interval():
    # Identical runs: resampling them changes nothing, so the interval is that of one run.
    a, b = synthetic(1, 0.0, seed=9), synthetic(1, 0.03, seed=10)
    one = paired_bootstrap(a, b, n_boot=1000, seed=0)
    three = paired_bootstrap(np.repeat(a, 3, axis=0), np.repeat(b, 3, axis=0), n_boot=1000, seed=0)
    assert three.high - three.low == pytest.approx(one.high - one.low, rel=0.15)


def test_the_same_seed_gives_the_same_interval_and_another_seed_a_different_one():
    a, b = synthetic(2, 0.0, seed=11, run_sd=0.01), synthetic(3, 0.01, seed=12, run_sd=0.01)
    first, again = paired_bootstrap(a, b, 3000, seed=5), paired_bootstrap(a, b, 3000, seed=5)
    assert first == again
    assert paired_bootstrap(a, b, 3000, seed=6) != first


def test_the_point_estimate_is_the_mean_paired_difference_by_hand():
    a = np.array([[0.2, 0.4], [0.4, 0.6]])  # per-image means 0.3, 0.5
    b = np.array([[0.5, 0.9]])
    assert paired_bootstrap(a, b, n_boot=10, seed=0).diff == pytest.approx(((0.5 - 0.3) + (0.9 - 0.5)) / 2)


def test_a_better_is_stated_with_positive_points():
    text = verdict(BootstrapResult(diff=-0.031, low=-0.052, high=-0.011), "plain", "cbam")
    assert text == "plain better by 3.1 mIoU points, 95% CI [1.1, 5.2]"


def test_too_few_images_give_no_verdict_even_with_a_zero_width_interval():
    # One image: every resample is the same image, so the interval has zero width.
    result = paired_bootstrap(np.array([[0.4]]), np.array([[0.1]]), n_boot=100, seed=0)
    assert result.low == result.high
    text = verdict(result, "baseline", "enhanced", n_images=1)
    assert text.startswith("too few validation images (1, need 5) to tell")


def test_images_scored_in_only_some_runs_are_left_out_with_a_note_and_disjoint_runs_are_an_error():
    notes: list[str] = []
    ids = common_ids([pd.Series([0.1, 0.2], ["x", "y"]), pd.Series([0.3, 0.4], ["y", "z"])], notes)
    assert ids == ["y"]
    assert "2 of 3 images" in notes[0]
    with pytest.raises(SegpipeError, match="share no validation image"):
        common_ids([pd.Series([0.1], ["x"]), pd.Series([0.2], ["z"])], [])


# --- a real MLflow store ----------------------------------------------------------------------

EXPERIMENT = "cmp-test"
IDS = [f"img{i:03d}" for i in range(40)]


def per_image_csv(path: Path, lesion: np.ndarray, background: np.ndarray) -> Path:
    """The evaluate stage's per-image CSV; image 0 has no lesion in mask or prediction (blank IoU)."""
    rows = ["id,iou_background,iou_lesion,dice_background,dice_lesion,miou"]
    for index, image_id in enumerate(IDS):
        les = "" if index == 0 else f"{lesion[index]:.6f}"
        rows.append(f"{image_id},{background[index]:.6f},{les},{background[index]:.6f},{les},")
    path.write_text("\n".join(rows) + "\n")
    return path


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Three plain and three CBAM runs (seeds 1-3; CBAM +0.1 lesion IoU), one run never evaluated."""
    root = tmp_path_factory.mktemp("mlflow")
    client = MlflowClient(tracking_uri=f"sqlite:///{root}/mlflow.db")
    exp_id = client.create_experiment(EXPERIMENT, artifact_location=(root / "artifacts").as_uri())
    rng = np.random.default_rng(0)
    lesion = rng.uniform(0.4, 0.8, len(IDS))
    background = rng.uniform(0.9, 0.99, len(IDS))
    ids = {}
    for cbam in (False, True):
        for seed in (1, 2, 3):
            name = f"{'cbam' if cbam else 'plain'}-s{seed}"
            run = client.create_run(exp_id, run_name=name, tags={"dvc.exp_name": name, "group": str(cbam).lower()})
            client.log_param(run.info.run_id, "model.cbam", str(cbam).lower())
            client.log_param(run.info.run_id, "base.seed", str(seed))
            scores = lesion + 0.1 * cbam + rng.normal(0, 0.01, len(IDS))
            for metric in ("miou", "mpa", "mprecision", "mdice", "accuracy"):
                client.log_metric(run.info.run_id, metric, 0.6 + 0.05 * cbam + 0.01 * seed)
            folder = root / name
            folder.mkdir()
            csv_path = per_image_csv(folder / "per_image.csv", scores, background)
            client.log_artifact(run.info.run_id, str(csv_path), "eval")
            client.set_terminated(run.info.run_id)
            ids[name] = run.info.run_id
    unevaluated = client.create_run(exp_id, run_name="trained-only", tags={"dvc.exp_name": "trained-only"})
    client.set_terminated(unevaluated.info.run_id)
    client.create_run(exp_id, run_name="still-running", tags={"dvc.exp_name": "still-running"})
    return {"client": client, "exp_id": exp_id, "ids": ids, "lesion": lesion, "background": background, "root": root}


def names(runs) -> list[str]:
    return [run.info.run_name for run in runs]


def test_groups_resolve_by_dvc_name_list_run_id_and_filter(store: dict):
    client, exp_id = store["client"], store["exp_id"]
    assert names(resolve_runs("plain-s1", client, exp_id)) == ["plain-s1"]
    assert names(resolve_runs("plain-s1, plain-s3,plain-s1", client, exp_id)) == ["plain-s1", "plain-s3"]
    assert names(resolve_runs(store["ids"]["cbam-s2"], client, exp_id)) == ["cbam-s2"]
    assert sorted(names(resolve_runs("filter:params.model.cbam = 'true'", client, exp_id))) == [
        "cbam-s1", "cbam-s2", "cbam-s3",
    ]  # fmt: skip
    assert len(resolve_runs("filter:tags.group = 'false'", client, exp_id)) == 3


def test_a_spec_matching_nothing_lists_the_available_runs(store: dict):
    with pytest.raises(SegpipeError, match="no run named 'plian-s1'.*Available runs") as error:
        resolve_runs("plian-s1", store["client"], store["exp_id"])
    assert all(name in str(error.value) for name in ("plain-s1", "cbam-s3", "trained-only"))
    with pytest.raises(SegpipeError, match="no finished run matches filter.*'true'/'false'.*Available"):
        resolve_runs("filter:params.model.cbam = 'True'", store["client"], store["exp_id"])
    with pytest.raises(SegpipeError, match="still-running.*RUNNING, not FINISHED"):
        resolve_runs("still-running", store["client"], store["exp_id"])
    with pytest.raises(SegpipeError, match="experiment 'nope' not found.*cmp-test"):
        experiment_id(store["client"], "nope")


def test_per_image_score_is_the_mean_of_the_defined_class_ious(store: dict):
    client = store["client"]
    run = client.get_run(store["ids"]["plain-s1"])
    everything = per_image_scores(run, client.tracking_uri)
    lesion_only = per_image_scores(run, client.tracking_uri, classes=["lesion"])
    # Image 0 has a blank lesion IoU: its mIoU is the background IoU alone, and it has no lesion score.
    assert everything["img000"] == pytest.approx(store["background"][0], abs=1e-6)
    assert "img000" not in lesion_only.index and len(lesion_only) == len(IDS) - 1
    expected = (everything["img005"] * 2 - store["background"][5])  # (bg + lesion) / 2 -> lesion
    assert lesion_only["img005"] == pytest.approx(expected, abs=1e-5)
    with pytest.raises(SegpipeError, match="no IoU for class.*tumour.*background, lesion"):
        per_image_scores(run, client.tracking_uri, classes=["tumour"])


def test_a_run_without_the_per_image_csv_is_an_error_that_says_to_run_evaluate(store: dict):
    run = store["client"].get_run(resolve_runs("trained-only", store["client"], store["exp_id"])[0].info.run_id)
    with pytest.raises(SegpipeError, match="trained-only.*eval/per_image.csv.*evaluate stage"):
        per_image_scores(run, store["client"].tracking_uri)


def test_compare_finds_the_cbam_gain_over_seeds_and_summarises_the_metrics(store: dict):
    report = compare(
        "plain-s1,plain-s2,plain-s3", "filter:params.model.cbam = 'true'", store["client"], EXPERIMENT,
        classes=["lesion"], n_boot=2000, name_a="plain", name_b="cbam",
    )  # fmt: skip
    assert report.result.low < 0.1 < report.result.high
    assert report.verdict.startswith("cbam better by ")
    assert report.n_images == len(IDS) - 1
    assert report.a.metrics["miou"] == {"mean": pytest.approx(0.62), "std": pytest.approx(0.01), "n": 3}
    assert not any("single run" in note for note in report.notes)
    data = json.loads(report.to_json())
    assert data["significant"] is True and len(data["b"]["runs"]) == 3


def test_cli_prints_the_verdict_and_writes_markdown_json_and_plot(store: dict, tmp_path: Path):
    app = typer.Typer()
    app.command()(main)
    out = tmp_path / "report"
    args = [
        "plain-s1", store["ids"]["cbam-s1"], "--experiment", EXPERIMENT, "--tracking-uri", store["client"].tracking_uri,
        "--n-boot", "500", "--name-a", "plain", "--name-b", "cbam",
        "--out-md", out / "compare.md", "--out-json", out / "compare.json", "--plot", out / "compare.png",
    ]  # fmt: skip
    result = CliRunner().invoke(app, [str(arg) for arg in args])
    assert result.exit_code == 0, result.output
    assert "cbam better by" in result.output
    assert "single run" in result.output and f"over {len(IDS)} validation images" in result.output
    assert (out / "compare.md").read_text().startswith("# cbam vs plain")
    assert json.loads((out / "compare.json").read_text())["images"] == len(IDS)
    assert (out / "compare.png").read_bytes()[:4] == b"\x89PNG"


def test_cli_takes_the_experiment_from_params_and_reports_a_missing_evaluation_as_a_clean_error(
    store: dict, tmp_path: Path
):
    app = typer.Typer()
    app.command()(main)
    params = tmp_path / "params.yaml"
    params.write_text(f"base:\n  experiment: {EXPERIMENT}\n")
    args = ["plain-s1", "trained-only", "--params", str(params), "--tracking-uri", store["client"].tracking_uri]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 1
    assert "evaluate stage" in result.output


def test_bootstrap_rejects_scores_of_different_images_and_no_resamples():
    with pytest.raises(SegpipeError, match="same images"):
        paired_bootstrap(np.zeros((2, 5)), np.zeros((2, 4)))
    with pytest.raises(SegpipeError, match="--n-boot must be at least 1"):
        paired_bootstrap(np.zeros((1, 5)), np.zeros((1, 5)), n_boot=0)


# --- the plot and the wording -----------------------------------------------------------------


def test_a_difference_that_rounds_to_zero_reads_0_0_and_the_interval_carries_signs():
    text = verdict(BootstrapResult(diff=-0.0004, low=-0.0104, high=0.0091), "A", "B")
    assert text == "no detectable difference (B − A = 0.0 points, 95% CI [-1.0, +0.9])"


def test_a_tiny_but_real_gain_is_not_printed_as_0_0():
    text = verdict(BootstrapResult(diff=0.0004, low=0.0001, high=0.0007), "A", "B")
    assert text == "B better by 0.04 mIoU points, 95% CI [0.01, 0.07]"


def test_plot_limits_span_the_scores_with_a_margin():
    # Scores 0.95..0.99: span 0.04, margin 5% of it = 0.002, but at least 0.01.
    assert plot_limits(np.array([0.95, 0.97]), np.array([0.96, 0.99])) == pytest.approx((0.94, 1.0))
    # Span 0.4: margin 0.02 each side.
    assert plot_limits(np.array([0.3, 0.5]), np.array([0.7, np.nan])) == pytest.approx((0.28, 0.72))


def test_the_scatter_is_fitted_to_the_data_with_the_identity_line(monkeypatch, tmp_path: Path):
    import segpipe.figures

    drawn = {}
    monkeypatch.setattr(segpipe.figures, "save_figure", lambda figure, path: drawn.setdefault("axis", figure.axes[0]))
    group = GroupSummary(name="x", spec="x", runs=[], metrics={})
    report = ComparisonReport(
        a=group, b=group, result=BootstrapResult(diff=0.01, low=0.0, high=0.02), verdict="v", n_images=3,
        classes=None, n_boot=10, seed=0, scores_a=np.array([0.3, 0.4, 0.5]), scores_b=np.array([0.35, 0.45, 0.7]),
    )  # fmt: skip
    plot_comparison(report, tmp_path / "p.png")
    axis = drawn["axis"]
    assert axis.get_xlim() == pytest.approx((0.28, 0.72)) and axis.get_ylim() == pytest.approx((0.28, 0.72))
    identity = axis.get_lines()[0]
    assert list(identity.get_xdata()) == list(identity.get_ydata()) == pytest.approx([0.28, 0.72])
