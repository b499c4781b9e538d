"""Is B better than A? A paired, hierarchical bootstrap over validation images and runs.

Each iteration resamples the runs of each group (seeds) with replacement, and the validation
images with replacement, the same images for both groups (paired), then takes the mean over the
drawn images of (mean of B's drawn runs - mean of A's drawn runs). Resampling runs is what makes
seed-to-seed noise widen the interval, so a one-run-each comparison is not over-confident about
runs, only about images.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from segpipe.errors import SegpipeError

_CHUNK = 1000  # bootstrap iterations per block: (chunk, images) arrays stay a few MB


@dataclass(frozen=True)
class BootstrapResult:
    """B - A in per-image score (fractions, not points) and its 95% percentile interval."""

    diff: float
    low: float
    high: float

    @property
    def significant(self) -> bool:
        return self.low > 0 or self.high < 0


def paired_bootstrap(a: np.ndarray, b: np.ndarray, n_boot: int = 10000, seed: int = 0) -> BootstrapResult:
    """Hierarchical paired bootstrap of mean(B) - mean(A) over images.

    a: (runs_a, images) and b: (runs_b, images) scores, columns the same images in the same order.
    Each iteration draws runs with replacement within each group and one set of image indices
    (shared by A and B, so image difficulty cancels) and takes the mean over the drawn images of
    (mean of the drawn B runs - mean of the drawn A runs).
    """
    a, b = np.atleast_2d(np.asarray(a, float)), np.atleast_2d(np.asarray(b, float))
    if a.shape[1] != b.shape[1] or a.shape[1] == 0 or 0 in (a.shape[0], b.shape[0]):
        raise SegpipeError(f"paired bootstrap needs scores of the same images, got A {a.shape} and B {b.shape}")
    if n_boot < 1:
        raise SegpipeError(f"--n-boot must be at least 1, got {n_boot}")
    rng = np.random.default_rng(seed)
    diff = float(b.mean(axis=0).mean() - a.mean(axis=0).mean())
    draws = np.concatenate([_bootstrap_block(a, b, size, rng) for size in _blocks(n_boot)])
    low, high = np.percentile(draws, [2.5, 97.5])
    return BootstrapResult(diff=diff, low=float(low), high=float(high))


def _blocks(n_boot: int) -> list[int]:
    return [min(_CHUNK, n_boot - start) for start in range(0, n_boot, _CHUNK)]


def _bootstrap_block(a: np.ndarray, b: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """`size` bootstrap differences, without materialising (iterations, images) score arrays."""
    images = a.shape[1]
    # counts[k, i]: how often image i was drawn in iteration k; the resampled mean of any
    # per-image quantity x is then counts @ x / images.
    counts = _draw_counts(size, images, rng)  # (size, images)
    weights_a = _draw_counts(size, a.shape[0], rng) / a.shape[0]  # (size, runs_a), rows sum to 1
    weights_b = _draw_counts(size, b.shape[0], rng) / b.shape[0]
    mean_a = np.einsum("kr,kr->k", weights_a, counts @ a.T)  # (size,)
    mean_b = np.einsum("kr,kr->k", weights_b, counts @ b.T)
    return (mean_b - mean_a) / images


def _draw_counts(size: int, n: int, rng: np.random.Generator) -> np.ndarray:
    """(size, n) counts of n draws with replacement from range(n), one row per iteration."""
    if n == 1:
        return np.ones((size, 1))
    picks = rng.integers(0, n, size=(size, n)) + np.arange(size)[:, None] * n
    return np.bincount(picks.ravel(), minlength=size * n).reshape(size, n).astype(float)


# A percentile interval from fewer images than this is too coarse to claim anything (with one
# image it has zero width whatever the noise).
MIN_IMAGES = 5


def verdict(result: BootstrapResult, name_a: str, name_b: str, n_images: int = MIN_IMAGES) -> str:
    """The answer in words, in mIoU points (100 x the difference)."""
    diff, low, high = 100 * result.diff, 100 * result.low, 100 * result.high
    if n_images < MIN_IMAGES:
        return (
            f"too few validation images ({n_images}, need {MIN_IMAGES}) to tell "
            f"({name_b} − {name_a} = {signed_points(diff)} points); use more validation images or k-fold runs"
        )
    if result.low > 0:
        return f"{name_b} better by {points(diff)} mIoU points, 95% CI [{points(low)}, {points(high)}]"
    if result.high < 0:
        # Stated as A - B so that "better by X" and its interval read as positive numbers.
        return f"{name_a} better by {points(-diff)} mIoU points, 95% CI [{points(-high)}, {points(-low)}]"
    return (
        f"no detectable difference ({name_b} − {name_a} = {signed_points(diff)} points, "
        f"95% CI [{signed_points(low)}, {signed_points(high)}])"
    )


def points(value: float) -> str:
    """A positive number of points: one decimal, two significant digits below 0.1 (so a real but
    tiny gain never reads "0.0")."""
    return f"{value:.1f}" if abs(value) >= 0.095 else f"{value:.2g}"


def signed_points(value: float) -> str:
    """A difference in points with its sign ("+1.2", "-0.4"), and "0.0" for what rounds to zero
    (never "-0.0")."""
    rounded = round(value, 1)
    return "0.0" if rounded == 0 else f"{rounded:+.1f}"
