"""ONNX export: the file reproduces PyTorch, carries its metadata, and is never half-written."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from segpipe.errors import SegpipeError
from segpipe.inference import export as export_module
from segpipe.inference.export import export_onnx, onnx_class_maps, session
from segpipe.inference.predictor import Predictor
from segpipe.models.checkpoint import load_model
from segpipe.prep.synthetic import make_lesions
from segpipe.imageio import read_image
from tests.helpers import split_checkpoint, tiny_checkpoint

onnxruntime = pytest.importorskip("onnxruntime")


def test_onnxruntime_matches_pytorch_on_a_new_batch_size_and_shape(tmp_path):
    checkpoint = tiny_checkpoint(tmp_path / "best.pt")
    report = export_onnx(checkpoint, tmp_path / "model.onnx")
    assert report.max_abs_diff <= 1e-4
    # A shape the export itself did not check: batch 3, 64 x 112.
    batch = torch.randn(3, 3, 64, 112, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        expected = torch.softmax(load_model(checkpoint).model.eval()(batch), dim=1).numpy()
    got = session(tmp_path / "model.onnx").run(["probs"], {"image": batch.numpy()})[0]
    assert got.shape == (3, 2, 64, 112)
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_the_metadata_names_classes_normalisation_and_stride(tmp_path):
    checkpoint = tiny_checkpoint(tmp_path / "best.pt", classes=("background", "road", "water"))
    export_onnx(checkpoint, tmp_path / "model.onnx")
    runner = session(tmp_path / "model.onnx")
    meta = runner.get_modelmeta().custom_metadata_map
    assert json.loads(meta["classes"]) == ["background", "road", "water"]
    assert json.loads(meta["mean"]) == [0.485, 0.456, 0.406]
    assert json.loads(meta["std"]) == [0.229, 0.224, 0.225]
    assert meta["stride"] == "16" and meta["image_size"] == "32"
    assert json.loads(meta["input_spec"]) == {"mode": "letterbox", "size": 32}
    assert meta["source"].startswith("best.pt sha256:")
    dims = runner.get_inputs()[0].shape
    assert dims[1] == 3 and all(isinstance(d, str) for d in (dims[0], dims[2], dims[3]))


def test_onnx_masks_equal_predicts_masks_on_sample_images(tmp_path):
    make_lesions(tmp_path / "sample", count=6, size=120, seed=1)
    images = [read_image(p) for p in sorted((tmp_path / "sample").glob("*.jpg"))]
    checkpoint = split_checkpoint(tmp_path / "best.pt", images[0])
    export_onnx(checkpoint, tmp_path / "model.onnx")
    torch_masks = Predictor.from_checkpoint(checkpoint).class_maps(images)
    onnx_masks = onnx_class_maps(tmp_path / "model.onnx", images)
    assert any(0.05 < m.mean() < 0.95 for m in torch_masks)  # masks with something to disagree on
    differing = sum(int((a != b).sum()) for a, b in zip(torch_masks, onnx_masks))
    # Only pixels whose two probabilities tie to float32 rounding could flip.
    assert differing / sum(m.size for m in torch_masks) <= 1e-4


def test_a_model_the_exporter_cannot_handle_is_refused_with_a_message_and_no_file(tmp_path, monkeypatch):
    def unsupported(*args, **kwargs):
        raise RuntimeError("Exporting the operator 'aten::fancy' to ONNX opset version 17 is not supported")

    monkeypatch.setattr(torch.onnx, "export", unsupported)
    with pytest.raises(SegpipeError, match=r"best\.pt: this model cannot be exported to ONNX \(RuntimeError: Exporting the operator"):
        export_onnx(tiny_checkpoint(tmp_path / "best.pt"), tmp_path / "model.onnx")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.pt"]


def test_a_file_that_does_not_reproduce_pytorch_is_not_written(tmp_path, monkeypatch):
    monkeypatch.setattr(export_module, "compare_with_torch", lambda *args: 0.3)
    with pytest.raises(SegpipeError, match=r"differs from PyTorch by up to 3\.00e-01 in a probability \(allowed 1e-04\); not written"):
        export_onnx(tiny_checkpoint(tmp_path / "best.pt"), tmp_path / "model.onnx")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.pt"]


def test_an_unknown_format_is_refused_before_loading_anything(tmp_path):
    with pytest.raises(SegpipeError, match=r"--format 'tflite' is not supported; use one of onnx"):
        export_onnx(tmp_path / "missing.pt", tmp_path / "model.tflite", format="tflite")
