"""Every backbone, with and without CBAM, on tiny tensors; freezing; loading weights offline."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
import torchvision

from segpipe.config import ModelSection
from segpipe.errors import SegpipeError
from segpipe.models import BACKBONES, LoadReport, build_model
from segpipe.models.cbam import CBAM
from segpipe.models.registry import required_multiple

SMALL = {"plain": dict(base_channels=4), "vgg16": {}, "resnet50": {}}


def small_model(backbone: str, **kwargs):
    return build_model(2, **ModelSection(backbone=backbone, **SMALL[backbone], **kwargs).model_dump())


def encoder_state(model) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.encoder.state_dict().items()}


@pytest.mark.parametrize("cbam", [False, True], ids=["no-cbam", "cbam"])
@pytest.mark.parametrize("backbone", BACKBONES)
def test_forward_backward_gives_logits_at_input_size(backbone, cbam):
    torch.manual_seed(0)
    model = small_model(backbone, cbam=cbam)
    x = torch.randn(2, 3, 64, 64)
    logits = model(x)
    assert logits.shape == (2, 2, 64, 64)
    logits.mean().backward()
    first_conv = next(p for p in model.encoder.parameters() if p.ndim == 4)
    for param in (first_conv, model.head.weight):
        assert param.grad is not None and torch.isfinite(param.grad).all()
        assert param.grad.abs().sum() > 0


def test_cbam_is_on_every_skip_and_the_bottleneck_only_when_enabled():
    with_cbam = small_model("plain", cbam=True)
    without = small_model("plain", cbam=False)
    assert all(isinstance(a, CBAM) for a in with_cbam.attentions)
    assert len(with_cbam.attentions) == len(with_cbam.encoder.out_channels)
    assert all(isinstance(a, torch.nn.Identity) for a in without.attentions)
    non_attention = {k for k in with_cbam.state_dict() if not k.startswith("attentions.")}
    assert non_attention == set(without.state_dict())


def test_cbam_adds_parameters_and_changes_output():
    torch.manual_seed(0)
    without = small_model("plain", cbam=False).eval()
    with_cbam = small_model("plain", cbam=True).eval()
    missing, unexpected = with_cbam.load_state_dict(without.state_dict(), strict=False)
    assert unexpected == [] and all(k.startswith("attentions.") for k in missing)

    # per CBAM: shared MLP c -> max(c // 16, 1) -> c (no bias) plus a 2 -> 1 7x7 conv
    expected_extra = sum(2 * c * max(c // 16, 1) + 2 * 7 * 7 for c in (4, 8, 16, 32, 64))
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(with_cbam) - count(without) == expected_extra

    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert not torch.allclose(with_cbam(x), without(x), atol=1e-4)


@pytest.mark.parametrize(("backbone", "size", "multiple", "suggested"), [
    ("plain", (60, 64), 16, "64x64"),
    ("resnet50", (64, 100), 32, "64x128"),
])
def test_wrong_input_size_says_size_multiple_and_fix(backbone, size, multiple, suggested):
    model = small_model(backbone)
    assert model.required_multiple == multiple
    with pytest.raises(SegpipeError) as error:
        model(torch.randn(1, 3, *size))
    message = str(error.value)
    assert f"{size[0]}x{size[1]}" in message and f"multiple of {multiple}" in message
    assert "letterbox" in message and suggested in message


def test_unknown_backbone_lists_valid_names():
    with pytest.raises(SegpipeError) as error:
        build_model(2, **ModelSection(backbone="resnet18").model_dump())
    for name in BACKBONES:
        assert name in str(error.value)


def test_even_cbam_kernel_is_rejected():
    with pytest.raises(SegpipeError, match="odd"):
        build_model(2, **ModelSection(backbone="plain", cbam=True, cbam_kernel=4, base_channels=4).model_dump())


@pytest.mark.parametrize("backbone", ["plain", "resnet50"])
def test_frozen_encoder_keeps_weights_and_batchnorm_stats(backbone):
    torch.manual_seed(0)
    model = small_model(backbone, cbam=True)
    model.freeze_encoder(True)
    model.train()
    assert not model.encoder.training and model.decoder.training
    assert not any(p.requires_grad for p in model.encoder.parameters())

    encoder_before = encoder_state(model)
    decoder_before = {k: v.clone() for k, v in model.decoder.state_dict().items()}
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    for _ in range(3):
        optimizer.zero_grad()
        model(torch.randn(2, 3, 64, 64)).square().mean().backward()
        optimizer.step()

    for key, value in model.encoder.state_dict().items():
        assert torch.equal(value, encoder_before[key]), key
    decoder_after = model.decoder.state_dict()
    changed = [k for k in decoder_before if not torch.equal(decoder_before[k], decoder_after[k])]
    assert any(k.endswith("weight") for k in changed)
    assert any(k.endswith("running_mean") for k in changed)

    model.freeze_encoder(False)
    assert model.encoder.training and all(p.requires_grad for p in model.encoder.parameters())


def _assert_encoder_equals(model, expected: dict[str, torch.Tensor]) -> None:
    state = model.encoder.state_dict()
    for key, value in expected.items():
        assert torch.equal(state[key], value), key


def test_pretrained_from_torchvision_vgg16_file(tmp_path):
    torch.manual_seed(1)
    source = torchvision.models.vgg16(weights=None).state_dict()
    path = tmp_path / "vgg16.pth"
    torch.save(source, path)

    model = build_model(2, **ModelSection(backbone="vgg16", pretrained=str(path)).model_dump())
    report = model.load_report
    # 13 convs (weight + bias) in features; the 3 classifier linears are skipped
    assert report.loaded == 26 and report.missing == []
    assert sorted(report.skipped) == sorted(k for k in source if k.startswith("classifier."))
    # features.28 is the last conv: stage 4 starts at features.23
    assert torch.equal(model.encoder.stages[4][5].weight, source["features.28.weight"])
    _assert_encoder_equals(model, {model.encoder.torchvision_key(k): v
                                   for k, v in source.items() if k.startswith("features.")})
    assert model.model_args()["pretrained"] == "none"


def test_pretrained_from_torchvision_resnet50_file(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="segpipe.models.registry")
    torch.manual_seed(2)
    net = torchvision.models.resnet50(weights=None)
    net.bn1.running_mean.uniform_()  # so buffers are checked too
    source = net.state_dict()
    path = tmp_path / "resnet50.pt"
    torch.save(source, path)

    model = build_model(2, **ModelSection(backbone="resnet50", pretrained=str(path)).model_dump())
    assert model.load_report == LoadReport(
        loaded=len(source) - 2, skipped=["fc.weight", "fc.bias"], missing=[],
        loaded_encoder=len(source) - 2,
    )
    assert torch.equal(model.encoder.stages[0][1].running_mean, source["bn1.running_mean"])
    assert torch.equal(model.encoder.stages[4][2].conv3.weight, source["layer4.2.conv3.weight"])
    assert len(model.encoder.state_dict()) == model.load_report.loaded
    assert f"loaded {len(source) - 2} tensors, skipped 2: fc.weight, fc.bias" in caplog.text


def test_pretrained_from_encoder_only_and_checkpoint_files(tmp_path):
    torch.manual_seed(3)
    trained = small_model("plain", cbam=True)
    encoder_path, checkpoint_path = tmp_path / "encoder.pt", tmp_path / "checkpoint.pt"
    torch.save(trained.encoder.state_dict(), encoder_path)
    torch.save({"model": trained.state_dict(), "model_args": trained.model_args()}, checkpoint_path)

    from_encoder = small_model("plain", cbam=True, pretrained=str(encoder_path))
    _assert_encoder_equals(from_encoder, trained.encoder.state_dict())
    assert from_encoder.load_report.loaded == len(trained.encoder.state_dict())

    from_checkpoint = small_model("plain", cbam=True, pretrained=str(checkpoint_path))
    assert from_checkpoint.load_report.loaded == len(trained.state_dict())
    assert from_checkpoint.load_report.missing == []
    for key, value in trained.state_dict().items():
        assert torch.equal(from_checkpoint.state_dict()[key], value), key


def test_pretrained_file_of_another_backbone_is_rejected(tmp_path):
    path = tmp_path / "plain.pt"
    torch.save(small_model("plain").state_dict(), path)
    with pytest.raises(SegpipeError, match="no encoder tensor"):
        build_model(2, **ModelSection(backbone="vgg16", pretrained=str(path)).model_dump())


def test_missing_pretrained_path_is_named(tmp_path):
    path = tmp_path / "nope.pth"
    with pytest.raises(SegpipeError, match="nope.pth"):
        build_model(2, **ModelSection(backbone="vgg16", pretrained=str(path)).model_dump())


def test_plain_has_no_imagenet_weights():
    with pytest.raises(SegpipeError, match="no ImageNet weights"):
        build_model(2, **ModelSection(backbone="plain", pretrained="imagenet").model_dump())


@pytest.fixture
def empty_torch_home(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    hub = Path(torch.hub.get_dir())
    assert hub.is_relative_to(tmp_path), "torch.hub.set_dir was called elsewhere; cannot redirect"

    def no_network(*args, **kwargs):
        raise AssertionError("tried to download")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    return hub


def test_imagenet_not_cached_fails_fast_with_path_and_fix(empty_torch_home):
    # Fails before any download is tried: the fixture makes a download attempt an AssertionError.
    with pytest.raises(SegpipeError) as error:
        build_model(2, **ModelSection(backbone="resnet50", pretrained="imagenet").model_dump())
    message = str(error.value)
    expected_path = empty_torch_home / "checkpoints" / "resnet50-11ad3fa6.pth"
    assert str(expected_path) in message
    assert "not cached" in message and "offline" in message
    assert torchvision.models.ResNet50_Weights.IMAGENET1K_V2.url in message


def test_imagenet_loads_the_cached_file(empty_torch_home):
    torch.manual_seed(4)
    source = torchvision.models.resnet50(weights=None).state_dict()
    cached = empty_torch_home / "checkpoints" / "resnet50-11ad3fa6.pth"
    cached.parent.mkdir(parents=True)
    torch.save(source, cached)

    model = build_model(2, **ModelSection(backbone="resnet50", pretrained="imagenet").model_dump())
    assert model.load_report.loaded == len(source) - 2
    assert torch.equal(model.encoder.stages[2][0].conv1.weight, source["layer2.0.conv1.weight"])


@pytest.mark.parametrize("backbone", BACKBONES)
def test_model_args_rebuild_the_same_architecture(backbone):
    model = build_model(3, **ModelSection(backbone=backbone, cbam=True, cbam_reduction=8, cbam_kernel=3, base_channels=4).model_dump())
    args = model.model_args()
    rebuilt = build_model(**args)
    assert rebuilt.model_args() == model.model_args()
    shapes = lambda m: {k: tuple(v.shape) for k, v in m.state_dict().items()}  # noqa: E731
    assert shapes(rebuilt) == shapes(model)


@pytest.mark.parametrize("backbone", BACKBONES)
def test_required_multiple_is_known_without_building_and_matches_the_built_model(backbone):
    assert required_multiple(backbone) == small_model(backbone).required_multiple


def test_required_multiple_of_an_unknown_backbone_lists_valid_names():
    with pytest.raises(SegpipeError, match=r"unknown model\.backbone 'vit'; valid backbones: plain, resnet50, vgg16"):
        required_multiple("vit")
