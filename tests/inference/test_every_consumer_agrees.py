"""One way to feed a model: a trained model gives the same mask bytes through `predict`, the
server's /predict, the MLflow Model and evaluate's scoring, for images larger and smaller than a
window. Before the input spec, the server and the MLflow Model enlarged a patch model's small
windows and rounded the window size where `predict` floored it (64 / 0.6: 107 vs 106 px).
"""

from __future__ import annotations

from pathlib import Path

import mlflow.pyfunc
import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from segpipe.evaluation.evaluate import scored_labels
from segpipe.imageio import write_mask
from segpipe.inference.mlflow_model import CHECKPOINT_ARTIFACT, SegmentationModel, signature
from segpipe.inference.prediction import PredictOptions, predict_paths
from segpipe.inference.predictor import Predictor
from segpipe.layout import Sample
from segpipe.models.checkpoint import load_checkpoint, save_checkpoint
from segpipe.palette import mask_png
from segpipe.serving.app import create_app
from segpipe.serving.client import post_image
from segpipe.serving.service import ModelService
from segpipe.training.loop import fit
from tests.helpers import png_bytes, running_server, tiny_params, tiny_samples

# Patches: 16 px input at scale 0.6 -> windows of floor(16 / 0.6) = 26 source pixels (27 when
# rounded). Letterbox: a 32 px canvas.
MODELS = {
    "patches-0.6": {"sampling": "patches", "patch_size": 16, "patch_scale": 0.6, "patches_per_image": 2},
    "letterbox": {"image_size": 32},
}
# Larger than a 26 px window (several windows, edges included), and smaller than one.
SIZES = {"large": (45, 61), "small": (19, 23)}


def smooth_image(h: int, w: int, seed: int) -> np.ndarray:
    """A blurred random image: a random-looking model predicts regions of both classes on it."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (h // 4 + 2, w // 4 + 2, 3)).astype(np.float32)
    return np.kron(coarse, np.ones((4, 4, 1)))[:h, :w].astype(np.uint8)


@pytest.fixture(scope="module", params=sorted(MODELS))
def trained(request, tmp_path_factory):
    """A model trained for two epochs on tiny images (seconds), and the test images as files."""
    root = tmp_path_factory.mktemp(request.param)
    samples = tiny_samples(root / "processed", count=2)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        fit(tiny_params({**MODELS[request.param], "lr": 0.05}), samples, samples, root / "models", progress=False)
    finally:
        torch.set_num_threads(threads)
    (root / "in").mkdir()
    (root / "masks").mkdir()
    images = []
    for index, (name, (h, w)) in enumerate(SIZES.items()):
        images.append(smooth_image(h, w, index))
        (root / "in" / f"{name}.png").write_bytes(png_bytes(images[-1]))
        write_mask(root / "masks" / f"{name}.png", np.zeros((h, w), np.uint8))
    return root, balanced(root / "models" / "best.pt", images)


def balanced(checkpoint: Path, images: list[np.ndarray]) -> Path:
    """Shift the head's class-1 bias to the median margin: two epochs on four images predict one
    class everywhere, and masks of one class would agree too easily."""
    probs = torch.cat([p.flatten(1) for p in Predictor.from_checkpoint(checkpoint).predict_batch(images)], dim=1)
    saved = load_checkpoint(checkpoint)
    saved["model"]["head.bias"][1] -= torch.log(probs[1] / probs[0]).median()
    save_checkpoint(checkpoint, saved)
    return checkpoint


def test_predict_the_server_the_mlflow_model_and_evaluate_give_the_same_mask_bytes(trained):
    root, checkpoint = trained
    assert predict_paths(checkpoint, [str(root / "in")], root / "out", PredictOptions(), progress=False).ok
    predicted = {name: (root / "out" / f"{name}.png").read_bytes() for name in SIZES}

    with running_server(create_app(ModelService(checkpoint), 10**6)) as url:
        served = {}
        for name in SIZES:
            status, _, body = post_image(url, (root / "in" / f"{name}.png").read_bytes(), f"{name}.png")
            assert status == 200
            served[name] = body

    mlflow.pyfunc.save_model(
        str(root / "pyfunc"), python_model=SegmentationModel(), artifacts={CHECKPOINT_ARTIFACT: str(checkpoint)},
        signature=signature(), pip_requirements=["torch"],
    )
    out = mlflow.pyfunc.load_model(str(root / "pyfunc")).predict(
        pd.DataFrame({"image": [(root / "in" / f"{name}.png").read_bytes() for name in SIZES]})
    )
    registered = dict(zip(SIZES, out["mask"]))

    samples = [Sample(name, root / "in" / f"{name}.png", root / "masks" / f"{name}.png") for name in SIZES]
    predictor = Predictor.from_checkpoint(checkpoint)
    scored = {s.id: mask_png(labels, predictor.num_classes) for s, _, labels in scored_labels(predictor, samples, 4)}

    for name in SIZES:
        labels = np.asarray(Image.open(root / "out" / f"{name}.png"))
        assert 0 < (labels > 0).mean() < 1, f"{name}: a one-class mask would test little"
        assert served[name] == predicted[name], f"{name}: the server's mask differs from predict's"
        assert registered[name] == predicted[name], f"{name}: the MLflow Model's mask differs from predict's"
        assert scored[name] == predicted[name], f"{name}: evaluate scored another mask than predict writes"


def test_the_page_is_told_what_auto_tiling_means(trained):
    _, checkpoint = trained
    described = ModelService(checkpoint).describe()
    patches = Predictor.from_checkpoint(checkpoint).tiling is not None
    assert described["tiles_by_default"] is patches
    assert described["tile"] == (26 if patches else 32)
