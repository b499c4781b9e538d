"""Loss terms checked against hand-computed values on a 2-class, 2x2 image."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from segpipe.training import losses
from segpipe.errors import SegpipeError
from segpipe.training.losses import (
    IGNORE_INDEX,
    SegmentationLoss,
    cross_entropy_term,
    dice_term,
    focal_term,
)


def sigmoid(z: float) -> float:
    return 1.0 / (1.0 + math.exp(-z))


# Pixels a, b, c, d (row-major) with logits (class 0, class 1) and targets:
#   a: (2.0, 0.0)  -> 0     p_t = p0 = sigmoid(2 - 0)
#   b: (0.0, 1.0)  -> 1     p_t = p1 = sigmoid(1 - 0)
#   c: (1.0, 1.0)  -> 1     p_t = 0.5
#   d: (0.5, -0.5) -> 1     p_t = p1 = sigmoid(-0.5 - 0.5) = sigmoid(-1)
P_T = [sigmoid(2.0), sigmoid(1.0), 0.5, sigmoid(-1.0)]
P1 = [sigmoid(-2.0), sigmoid(1.0), 0.5, sigmoid(-1.0)]  # probability of class 1 per pixel
TARGET_CLASS = [0, 1, 1, 1]


@pytest.fixture
def logits() -> torch.Tensor:
    class0 = torch.tensor([[2.0, 0.0], [1.0, 0.5]])
    class1 = torch.tensor([[0.0, 1.0], [1.0, -0.5]])
    return torch.stack([class0, class1]).unsqueeze(0).requires_grad_(True)  # (1, 2, 2, 2)


@pytest.fixture
def target() -> torch.Tensor:
    return torch.tensor([[[0, 1], [1, 1]]])  # (1, 2, 2)


def hand_dice(class_weights=(1.0, 1.0), smooth=1e-5) -> float:
    p0 = [1 - p for p in P1]
    # class 0: only pixel a is class 0, so sum(p0 * g0) = p0(a); sum g0 = 1
    dice0 = (2 * p0[0] + smooth) / (sum(p0) + 1 + smooth)
    # class 1: pixels b, c, d; sum(p1 * g1) = p1(b) + p1(c) + p1(d); sum g1 = 3
    dice1 = (2 * (P1[1] + P1[2] + P1[3]) + smooth) / (sum(P1) + 3 + smooth)
    w0, w1 = class_weights
    return 1 - (w0 * dice0 + w1 * dice1) / (w0 + w1)


def test_cross_entropy_matches_hand_computation(logits, target):
    # -(log sigmoid(2) + log sigmoid(1) + log 0.5 + log sigmoid(-1)) / 4
    expected = -sum(math.log(p) for p in P_T) / 4
    assert cross_entropy_term(logits, target).item() == pytest.approx(expected, abs=1e-6)


def test_class_weights_weight_pixels_by_their_class(logits, target):
    # weights (1, 3): pixel a counts once, b, c, d three times; divide by 1 + 3 * 3 = 10
    nll = [-math.log(p) for p in P_T]
    expected_ce = (1 * nll[0] + 3 * (nll[1] + nll[2] + nll[3])) / 10
    got = cross_entropy_term(logits, target, class_weights=[1.0, 3.0])
    assert got.item() == pytest.approx(expected_ce, abs=1e-6)
    got_dice = dice_term(logits, target, class_weights=[1.0, 3.0])
    assert got_dice.item() == pytest.approx(hand_dice((1.0, 3.0)), abs=1e-6)
    assert got_dice.item() != pytest.approx(hand_dice(), abs=1e-4)


def test_focal_matches_hand_computation(logits, target):
    # alpha_t = 1 - 0.25 for the class-0 pixel a, 0.25 for b, c, d;
    # each pixel: alpha_t * (1 - p_t)^2 * (-log p_t), then the mean of the 4
    alpha_t = [0.75, 0.25, 0.25, 0.25]
    expected = sum(a * (1 - p) ** 2 * -math.log(p) for a, p in zip(alpha_t, P_T)) / 4
    got = focal_term(logits, target, alpha=0.25, gamma=2.0)
    assert got.item() == pytest.approx(expected, abs=1e-6)


def test_focal_with_gamma_0_and_no_alpha_is_cross_entropy(logits, target):
    ce = cross_entropy_term(logits, target)
    assert focal_term(logits, target, alpha=None, gamma=0.0).item() == pytest.approx(ce.item(), abs=1e-7)


def test_dice_matches_hand_computation(logits, target):
    assert dice_term(logits, target).item() == pytest.approx(hand_dice(), abs=1e-6)


def test_cross_entropy_agrees_with_torch_on_random_batch():
    torch.manual_seed(0)
    logits = torch.randn(2, 4, 8, 8)
    target = torch.randint(0, 4, (2, 8, 8))
    target[0, :3] = IGNORE_INDEX
    weights = torch.tensor([0.5, 1.0, 2.0, 3.0])
    expected = F.cross_entropy(logits, target, weight=weights, ignore_index=IGNORE_INDEX)
    got = cross_entropy_term(logits, target, weights, IGNORE_INDEX)
    assert got.item() == pytest.approx(expected.item(), abs=1e-6)


def test_combined_loss_is_weighted_sum(logits, target):
    loss = SegmentationLoss(ce=1.0, focal=2.0, dice=0.5, focal_alpha=0.25, focal_gamma=2.0)
    expected = (
        1.0 * cross_entropy_term(logits, target)
        + 2.0 * focal_term(logits, target, 0.25, 2.0)
        + 0.5 * dice_term(logits, target)
    )
    assert loss(logits, target).item() == pytest.approx(expected.item(), abs=1e-6)


def test_zero_weight_term_is_not_computed(logits, target, monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("dice computed although its weight is 0")

    monkeypatch.setattr(losses, "dice_term", fail)
    loss = SegmentationLoss(ce=1.0, dice=0.0)
    assert loss(logits, target).item() == pytest.approx(cross_entropy_term(logits, target).item())
    assert set(loss.terms(logits, target)) == {"ce"}


@pytest.mark.parametrize("config", [dict(ce=1.0), dict(focal=1.0, dice=0.0), dict(dice=1.0)])
def test_ignored_pixels_do_not_change_the_loss(logits, target, config):
    loss = SegmentationLoss(**config)
    ignored = target.clone()
    ignored[0, 1, 1] = IGNORE_INDEX  # pixel d
    before = loss(logits, ignored)
    changed = logits.detach().clone()
    changed[0, :, 1, 1] = torch.tensor([-7.0, 9.0])
    assert loss(changed, ignored).item() == pytest.approx(before.item(), abs=1e-7)
    # and ignoring d really removes it: the result differs from counting it
    assert before.item() != pytest.approx(loss(logits, target).item(), abs=1e-4)


def test_all_ignored_batch_gives_zero_with_gradient(logits):
    target = torch.full((1, 2, 2), IGNORE_INDEX)
    loss = SegmentationLoss(ce=1.0, focal=1.0, dice=1.0, class_weights=[1.0, 2.0])(logits, target)
    assert loss.item() == 0.0
    loss.backward()
    assert torch.equal(logits.grad, torch.zeros_like(logits))


def test_perfect_prediction_gives_dice_near_zero(target):
    onehot = F.one_hot(target, 2).permute(0, 3, 1, 2).float()
    logits = (onehot * 2 - 1) * 20.0  # +20 for the true class, -20 for the other
    assert dice_term(logits, target).item() == pytest.approx(0.0, abs=1e-6)


def test_gradient_flows_to_logits(logits, target):
    SegmentationLoss(ce=1.0, focal=1.0, dice=1.0)(logits, target).backward()
    assert logits.grad is not None
    assert torch.isfinite(logits.grad).all()
    assert logits.grad.abs().sum() > 0


@pytest.mark.parametrize(
    ("config", "message"),
    [
        (dict(ce=0.0, focal=0.0, dice=0.0), r"^train\.loss\.ce, train\.loss\.focal and train\.loss\.dice are all 0"),
        (dict(ce=-1.0), r"^train\.loss\.ce must be a finite number >= 0, got -1\.0"),
        (dict(focal=1.0, focal_gamma=-0.5), r"^train\.focal_gamma must be >= 0, got -0\.5"),
        (dict(focal=1.0, focal_alpha=1.5), r"^train\.focal_alpha must be in \[0, 1\] or null, got 1\.5"),
        (dict(class_weights=[1.0, -2.0]), r"^train\.class_weights must be non-negative"),
        (dict(dice=float("nan")), r"^train\.loss\.dice must be a finite number >= 0, got nan"),
    ],
)
def test_invalid_config_names_the_params_key(config, message):
    # Each message names a key that exists in params.yaml (train.*), not a made-up `loss.*`.
    with pytest.raises(SegpipeError, match=message):
        SegmentationLoss(**config)


def test_class_weight_count_must_match_classes(logits, target):
    with pytest.raises(SegpipeError, match=r"^train\.class_weights has 3 values but the model predicts 2 classes"):
        SegmentationLoss(ce=1.0, class_weights=[1.0, 1.0, 1.0])(logits, target)


def test_label_outside_classes_is_reported(logits):
    target = torch.tensor([[[0, 1], [7, 1]]])
    with pytest.raises(SegpipeError, match=r"\[7\] outside 0..1"):
        SegmentationLoss(ce=1.0)(logits, target)
