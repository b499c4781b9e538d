"""The pyfunc model: image bytes in, the mask `predict` writes out, through mlflow.pyfunc.load_model."""

from __future__ import annotations

import mlflow.pyfunc
import pandas as pd
import pytest

from segpipe.errors import SegpipeError
from segpipe.inference.mlflow_model import CHECKPOINT_ARTIFACT, SegmentationModel, signature
from segpipe.inference.prediction import PredictOptions, predict_paths
from tests.helpers import png_bytes, random_image, tiny_checkpoint


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A tiny checkpoint saved as an MLflow Model folder, and two PNG images."""
    tmp_path = tmp_path_factory.mktemp("pyfunc")
    checkpoint = tiny_checkpoint(tmp_path / "best.pt")
    images = {"a": png_bytes(random_image(40, 52, seed=1)), "b": png_bytes(random_image(33, 20, seed=2))}
    mlflow.pyfunc.save_model(
        str(tmp_path / "model"),
        python_model=SegmentationModel(),
        artifacts={CHECKPOINT_ARTIFACT: str(checkpoint)},
        signature=signature(),
        input_example=pd.DataFrame({"image": [images["a"]]}),
        pip_requirements=["torch"],
    )
    (tmp_path / "in").mkdir()
    for name, data in images.items():
        (tmp_path / "in" / f"{name}.png").write_bytes(data)
    return tmp_path, checkpoint, images


def predicted_files(root, checkpoint, options: PredictOptions) -> dict[str, bytes]:
    out = root / f"out-{options.tile}-{options.tta}"
    assert predict_paths(checkpoint, [str(root / "in")], out, options, progress=False).ok
    return {path.stem: path.read_bytes() for path in out.glob("*.png")}


def test_loaded_model_returns_the_masks_predict_writes(saved):
    root, checkpoint, images = saved
    model = mlflow.pyfunc.load_model(str(root / "model"))
    out = model.predict(pd.DataFrame({"image": list(images.values())}))
    assert list(out.columns) == ["mask"]
    expected = predicted_files(root, checkpoint, PredictOptions())
    assert list(out["mask"]) == [expected["a"], expected["b"]]


def test_params_tile_and_tta_match_predicts_options(saved):
    root, checkpoint, images = saved
    model = mlflow.pyfunc.load_model(str(root / "model"))
    out = model.predict(pd.DataFrame({"image": [images["a"]]}), params={"tile": 16, "overlap": 0.5, "tta": True})
    expected = predicted_files(root, checkpoint, PredictOptions(tile=16, overlap=0.5, tta=True))
    assert out["mask"][0] == expected["a"]


def test_a_row_that_is_not_an_image_is_named(saved):
    root, _, _ = saved
    model = mlflow.pyfunc.load_model(str(root / "model"))
    with pytest.raises(SegpipeError, match=r"row 0 of column 'image': not an image"):
        model.predict(pd.DataFrame({"image": [b"plain text"]}))


def test_signature_says_bytes_in_and_bytes_out():
    spec = signature().to_dict()
    assert '"type": "binary", "name": "image"' in spec["inputs"]
    assert '"type": "binary", "name": "mask"' in spec["outputs"]
