"""The model as an ONNX file, to predict without PyTorch (onnxruntime, TensorRT, a browser).

The graph takes `image`, a float32 (B, 3, H, W) batch of RGB images normalised as training fed
them ((x / 255 - mean) / std, ImageNet's mean and std), and returns `probs`, the (B, C, H, W)
softmax probabilities; batch, height and width are dynamic, H and W multiples of the model's
stride. Its metadata_props carry all a consumer needs: class names, mean, std, stride, the input
size and its input spec (whole letterboxed images, or patches at a scale: `data.spec`), and which
checkpoint it came from.

The file is exported with PyTorch's TorchScript exporter (`dynamo=False`: no onnxscript needed,
and a U-Net of convolutions, upsampling and concatenation is what it handles well), then checked
with onnxruntime against PyTorch on real-sized batches before it is published: a file that does
not reproduce the model is never written.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from segpipe.data.letterbox import IMAGENET_MEAN, IMAGENET_STD, predict_letterboxed
from segpipe.errors import SegpipeError
from segpipe.imageio import atomic_write
from segpipe.inference.annotate import model_identity
from segpipe.inference.predictor import class_map
from segpipe.models.checkpoint import load_model

OPSET = 17
# The largest |onnxruntime - PyTorch| allowed in any probability. Both compute in float32; the
# differences measured on the sample's model are ~1e-7, so 1e-4 is generous and still far below
# anything that changes a mask except at exact ties.
TOLERANCE = 1e-4
FORMATS = ("onnx",)


@dataclass(frozen=True)
class ExportReport:
    """What `export_onnx` wrote and how closely onnxruntime reproduced PyTorch."""

    path: Path
    max_abs_diff: float
    checked_shapes: tuple[tuple[int, ...], ...]
    metadata: dict[str, str]


class _Probabilities(nn.Module):
    """The network with its softmax, so the file returns what `predict` works from."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.model(image), dim=1)


def export_onnx(checkpoint: Path, out: Path, format: str = "onnx", tolerance: float = TOLERANCE) -> ExportReport:
    """Export the model in `checkpoint` to `out` and check it with onnxruntime; `out` is written only
    when every checked batch agrees within `tolerance`.

    Raises SegpipeError for an unknown format, a model the exporter cannot handle, or a mismatch.
    """
    if format not in FORMATS:
        raise SegpipeError(f"--format {format!r} is not supported; use one of {', '.join(FORMATS)}")
    out = Path(out)
    if out.is_dir():
        raise SegpipeError(f"--out {out} is a folder; name the .onnx file to write")
    loaded = load_model(checkpoint)
    wrapped = _Probabilities(loaded.model).eval()
    stride = int(loaded.model.required_multiple)
    metadata = {
        "classes": json.dumps(list(loaded.classes)),
        "mean": json.dumps(list(IMAGENET_MEAN)),
        "std": json.dumps(list(IMAGENET_STD)),
        "input": "image: float32 (B, 3, H, W) RGB, (x / 255 - mean) / std; H, W multiples of stride",
        "output": "probs: float32 (B, C, H, W) softmax probabilities, C = len(classes)",
        "stride": str(stride),
        "image_size": str(loaded.spec.size),
        "input_spec": json.dumps(loaded.spec.to_dict()),
        "source": model_identity(checkpoint),
    }
    shapes = check_shapes(loaded.spec.size, stride)
    result: dict[str, float] = {}

    def write(tmp: Path) -> None:
        _export(wrapped, tmp, loaded.spec.size, checkpoint)
        _add_metadata(tmp, metadata)
        result["diff"] = compare_with_torch(tmp, wrapped, shapes)
        if not result["diff"] <= tolerance:
            raise SegpipeError(
                f"{checkpoint}: the exported model differs from PyTorch by up to {result['diff']:.2e} in a "
                f"probability (allowed {tolerance:.0e}); not written. Report it with the checkpoint's model section"
            )

    atomic_write(out, write)
    return ExportReport(out, result["diff"], tuple(shapes), metadata)


def check_shapes(image_size: int, stride: int) -> list[tuple[int, int, int, int]]:
    """The batches the export is checked on: two of the model's own input size, and one
    non-square one that is not, so dynamic batch, height and width are all exercised."""
    return [(2, 3, image_size, image_size), (1, 3, image_size + stride, image_size + 3 * stride)]


def _export(model: nn.Module, path: Path, size: int, checkpoint: Path) -> None:
    dynamic = {0: "batch", 2: "height", 3: "width"}
    try:
        with warnings.catch_warnings():
            # The model's own input-size check is Python on shapes: the tracer warns that it is
            # dropped from the graph; the metadata states the stride instead.
            warnings.simplefilter("ignore")
            torch.onnx.export(
                model, (torch.zeros(1, 3, size, size),), str(path), input_names=["image"], output_names=["probs"],
                dynamic_axes={"image": dynamic, "probs": dynamic}, opset_version=OPSET, dynamo=False,
            )
    except Exception as exc:  # the exporter raises many types for an operator it cannot express
        raise SegpipeError(
            f"{checkpoint}: this model cannot be exported to ONNX ({type(exc).__name__}: {str(exc)[:300]}); "
            "predict with PyTorch instead, or change the model section (backbone, cbam) to one that exports"
        ) from None


def _add_metadata(path: Path, metadata: dict[str, str]) -> None:
    import onnx

    proto = onnx.load(str(path))
    for key, value in metadata.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.checker.check_model(proto)
    onnx.save(proto, str(path))


def session(path: Path):
    """An onnxruntime CPU session for an exported file."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3  # no warnings about unused initialisers on stderr
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


@torch.no_grad()
def compare_with_torch(path: Path, model: nn.Module, shapes: Sequence[tuple[int, ...]], seed: int = 0) -> float:
    """The largest |onnxruntime - PyTorch| probability over seeded normal batches of `shapes`."""
    runner = session(path)
    generator = torch.Generator().manual_seed(seed)
    worst = 0.0
    for shape in shapes:
        batch = torch.randn(*shape, generator=generator)
        onnx_probs = runner.run(["probs"], {"image": batch.numpy()})[0]
        worst = max(worst, float(np.abs(onnx_probs - model(batch).numpy()).max()))
    return worst


def onnx_class_maps(path: Path, images: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Class maps (H, W) of whole images predicted by an exported letterbox model through
    onnxruntime, fed exactly as `Predictor` feeds PyTorch (same letterbox, same normalisation)."""
    runner = session(path)
    size = int(runner.get_modelmeta().custom_metadata_map["image_size"])

    def forward(batch: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(runner.run(["probs"], {"image": batch.numpy()})[0])

    return [class_map(probs) for probs in predict_letterboxed(forward, images, size)]
