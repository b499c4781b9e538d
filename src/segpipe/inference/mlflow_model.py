"""A segpipe checkpoint as an MLflow Model (pyfunc flavour), so MLflow's own tools can load and serve it.

Input: a DataFrame with one column `image` of encoded image bytes (JPEG, PNG, ...; base64 strings
in JSON requests to `mlflow models serve`). Output: a DataFrame with one column `mask` of PNG bytes,
the very file `predict` writes for that image (base64 in JSON responses). Params, as `predict`'s
options: `tta` (bool) and `tile` (0: as `predict` without --tile; N: N x N windows) with `overlap`.

    bytes --read_image--> (H, W, 3) --Predictor.predict_image--> (H, W) uint8 --mask_png--> PNG bytes
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import mlflow.pyfunc
import pandas as pd

from segpipe.errors import SegpipeError
from segpipe.imageio import read_image
from segpipe.inference.predictor import Predictor
from segpipe.data.tiling import DEFAULT_OVERLAP
from segpipe.palette import mask_png

INPUT_COLUMN = "image"
OUTPUT_COLUMN = "mask"
CHECKPOINT_ARTIFACT = "checkpoint"  # the key of the checkpoint file among the model's artifacts
DEFAULT_PARAMS: dict[str, Any] = {"tta": False, "tile": 0, "overlap": DEFAULT_OVERLAP}


class SegmentationModel(mlflow.pyfunc.PythonModel):
    """Predicts masks with the checkpoint stored among the model's artifacts under `checkpoint`."""

    def load_context(self, context: mlflow.pyfunc.PythonModelContext) -> None:
        self.predictor = Predictor.from_checkpoint(Path(context.artifacts[CHECKPOINT_ARTIFACT]))

    def predict(self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
        """One mask PNG per row of `model_input[INPUT_COLUMN]`."""
        options = {**DEFAULT_PARAMS, **(params or {})}
        tiling = self.predictor.windows(int(options["tile"]) or None, float(options["overlap"]))
        images = _image_column(model_input)
        masks = []
        for index, data in enumerate(images):
            image = read_image(bytes(data), f"row {index} of column {INPUT_COLUMN!r}")
            labels, _ = self.predictor.predict_image(image, tiling, tta=bool(options["tta"]))
            masks.append(mask_png(labels, self.predictor.num_classes))
        return pd.DataFrame({OUTPUT_COLUMN: masks})


def _image_column(model_input: Any) -> list[bytes]:
    if isinstance(model_input, pd.DataFrame) and INPUT_COLUMN in model_input.columns:
        values = list(model_input[INPUT_COLUMN])
    elif isinstance(model_input, pd.DataFrame) and len(model_input.columns) == 1:
        values = list(model_input.iloc[:, 0])
    else:
        raise SegpipeError(f"expected a DataFrame with a column {INPUT_COLUMN!r} of image bytes, got {type(model_input).__name__}")
    for index, value in enumerate(values):
        if not isinstance(value, (bytes, bytearray)):
            raise SegpipeError(
                f"row {index} of column {INPUT_COLUMN!r} is {type(value).__name__}, not bytes; "
                "pass the encoded file's bytes (base64 strings in a JSON request)"
            )
    return values


def signature() -> mlflow.models.ModelSignature:
    """Image bytes in, mask PNG bytes out, `predict`'s options as params."""
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema

    return ModelSignature(
        inputs=Schema([ColSpec("binary", INPUT_COLUMN)]),
        outputs=Schema([ColSpec("binary", OUTPUT_COLUMN)]),
        params=ParamSchema(
            [
                ParamSpec("tta", "boolean", DEFAULT_PARAMS["tta"]),
                ParamSpec("tile", "long", DEFAULT_PARAMS["tile"]),
                ParamSpec("overlap", "double", DEFAULT_PARAMS["overlap"]),
            ]
        ),
    )
