"""Helpers shared by the tests: tiny datasets, params and checkpoints made on the fly, and a
temporary DVC project. Test modules import from here, never from each other."""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn
import yaml
from PIL import Image

from segpipe.config import AugmentSection, ModelSection, Params, SplitSection, parse_params
from segpipe.data.spec import LetterboxInput, spec_from_train
from segpipe.layout import Sample, samples_in
from segpipe.imageio import write_mask
from segpipe.presets import apply_presets
from segpipe.models import build_model
from segpipe.models.checkpoint import checkpoint_contents, load_checkpoint, save_checkpoint
from segpipe.prep.augment import augment_dataset
from segpipe.prep.split import write_split
from segpipe.training.stage import TrainOutputs

REPO = Path(__file__).resolve().parent.parent
CLASSES = ("background", "lesion")


TINY = {
    "augment": {"copies": 1},
    "model": {"base_channels": 4},
    "train": {"image_size": 32, "epochs": 2, "batch_size": 4, "save_period": 1},
}

# The aerial preset at test size: only the sizes change; the classes, the colour masks and the
# patch sampling stay as shipped.
TINY_AERIAL = {
    "split": {"val_fraction": 0.3},
    "model": {"base_channels": 4},
    "train": {"patch_size": 32, "patches_per_image": 2, "epochs": 1, "batch_size": 4, "freeze_batch_size": 4,
              "device": "cpu"},
    "evaluate": {"gallery_size": 1, "device": "cpu"},
}


def make_processed(
    root: Path, count: int = 6, size: tuple[int, int] = (24, 32), seed: int = 0, visible: bool = False
) -> Path:
    """A converted dataset: images/<id>.png (random RGB), masks/<id>.png (a class-1 square), manifest.csv.

    With `visible`, the square is also painted white in the image, so a model that sees only a
    crop (no position) can still learn it."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    h, w = size
    rows = ["id,source,width,height"]
    for index in range(count):
        image_id = f"img{index:03d}"
        mask = np.zeros((h, w), np.uint8)
        mask[h // 4 : h // 2, w // 4 : w // 2 + index % 3] = 1
        image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        if visible:
            image[mask == 1] = 255
        Image.fromarray(image).save(root / "images" / f"{image_id}.png")
        write_mask(root / "masks" / f"{image_id}.png", mask)
        rows.append(f"{image_id},{image_id}.json,{w},{h}")
    (root / "manifest.csv").write_text("\n".join(rows) + "\n")
    return root


def tiny_params(train: dict[str, Any] | None = None, **sections: dict[str, Any]) -> Params:
    """Params for a plain U-Net of width 4 trained on 32 px CPU batches; `train` and other
    sections override the defaults key by key."""
    data = {
        "model": {"backbone": "plain", "base_channels": 4, **sections.pop("model", {})},
        "train": {
            "image_size": 32,
            "epochs": 2,
            "batch_size": 2,
            "freeze_batch_size": 2,
            "device": "cpu",
            "save_period": 0,
            **(train or {}),
        },
        **sections,
    }
    return parse_params(data)


def tiny_samples(root: Path, count: int = 2) -> list[Sample]:
    """`count` random 24x32 images with a class-1 rectangle each."""
    make_processed(root, count=count)
    return samples_in(root, [f"img{i:03d}" for i in range(count)])


def tiny_checkpoint(
    path: Path, classes=CLASSES, image_size: int = 32, seed: int = 0, train: dict[str, Any] | None = None
) -> Path:
    """A real (random-weight) plain U-Net checkpoint with the keys training writes; `train`
    settings (e.g. sampling: patches) are recorded as a run with them would record them."""
    torch.manual_seed(seed)
    model = build_model(len(classes), **ModelSection(backbone="plain", base_channels=4).model_dump())
    params = parse_params({"base": {"classes": list(classes)}, "data": {"mask_colors": {}}, "train": train or {}})
    # image_size as given, even below train.image_size's bound (a 4 px model for hand-worked cases).
    spec = spec_from_train(params.train) if params.train.sampling == "patches" else LetterboxInput(image_size)
    save_checkpoint(path, checkpoint_contents(model, spec, params.base.classes, params.model_dump(mode="json")))
    return path


def split_checkpoint(path: Path, image: np.ndarray, classes=CLASSES) -> Path:
    """A tiny random checkpoint whose head is shifted so that about half of `image` is lesion:
    masks with several regions and holes to outline, not all background."""
    from segpipe.inference.predictor import Predictor

    predictor = Predictor.from_checkpoint(tiny_checkpoint(path, classes, seed=1))
    probs = predictor.predict_probs(image)
    with torch.no_grad():
        predictor.model.head.bias[1] -= torch.log(probs[1] / probs[0]).median()
    save_checkpoint(path, {**load_checkpoint(path), "model": predictor.model.state_dict()})
    return path


class Interrupt:
    """An on_epoch_end callback that stops the run, as Ctrl-C would, after epoch `after`."""

    def __init__(self, after: int) -> None:
        self.after = after

    def __call__(self, state) -> None:
        if state.epoch == self.after:
            raise KeyboardInterrupt


def state_snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def use_tmp_mlflow(monkeypatch: pytest.MonkeyPatch, root: Path) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root}/mlflow.db")
    monkeypatch.setenv("DVC_ROOT", str(root))  # the project root, where artifacts (mlruns/) go
    monkeypatch.chdir(root)
    for name in ("DVC_EXP_NAME", "DVC_EXP_BASELINE_REV", "WORLD_SIZE", "RANK"):
        monkeypatch.delenv(name, raising=False)


def run_env() -> dict[str, str]:
    """The environment of a command run in a test project: this venv's commands first."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    env.pop("MLFLOW_TRACKING_URI", None)  # the project's own mlflow.db is part of what is checked
    return env


def run(cmd: list[str], cwd: Path) -> str:
    done = subprocess.run(cmd, cwd=cwd, env=run_env(), capture_output=True, text=True)
    assert done.returncode == 0, f"{' '.join(cmd)} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def merge(base: dict, overrides: dict) -> dict:
    out = dict(base)
    for key, value in overrides.items():
        out[key] = merge(base.get(key, {}), value) if isinstance(value, dict) else value
    return out


def make_project(root: Path, images: int = 12, overrides: dict = TINY, params_file: str = "params.yaml") -> Path:
    """A git + DVC project with the repo's code, dvc.yaml, tiny params and `images` sample files.

    Its params.yaml is the repo's, with the preset `params_file` (e.g. params-aerial.yaml) applied and
    `overrides` over it."""
    root.mkdir()
    for name in ("pipeline", "src"):
        shutil.copytree(REPO / name, root / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "dvc.yaml", root)
    shutil.copy(REPO / "params.yaml", root)
    if params_file != "params.yaml":  # a preset: its keys over the defaults, as `pipeline preset` writes them
        apply_presets(root / "params.yaml", [REPO / params_file])
    params = merge(yaml.safe_load((root / "params.yaml").read_text()), overrides)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    sample = root / "data" / "sample"
    sample.mkdir(parents=True)
    for json_path in sorted((REPO / "data" / "sample").glob("*.json"))[:images]:
        shutil.copy(json_path, sample)
        shutil.copy(json_path.with_suffix(".jpg"), sample)
    (root / ".gitignore").write_text("__pycache__/\nmlflow.db\nmlruns/\n")
    run(["git", "init", "-q"], root)
    run(["git", "config", "user.email", "test@example.com"], root)
    run(["git", "config", "user.name", "test"], root)
    run(["dvc", "init", "-q"], root)
    run(["dvc", "config", "core.analytics", "false"], root)
    shutil.copytree(REPO / ".dvc" / "plots", root / ".dvc" / "plots")  # dvc.yaml's plot templates
    run(["git", "add", "-A"], root)
    run(["git", "commit", "-qm", "tiny project"], root)
    return root


class PixelwiseModel(nn.Module):
    """A 1x1 convolution: each pixel's logits depend on that pixel alone, so any tiling must agree."""

    def __init__(self, classes: int = 3) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.conv = nn.Conv2d(3, classes, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


def random_image(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def dead_pid() -> int:
    """The id of a process that has exited (and been reaped), for temporaries of a killed run."""
    process = subprocess.Popen(["true"])
    process.wait()
    return process.pid


@contextlib.contextmanager
def running_server(app, timeout: float = 30, **deadlines: float) -> Iterator[str]:
    """Serve an ASGI app with uvicorn, configured as `serve` does (`deadlines`: header_timeout,
    body_timeout), on a free 127.0.0.1 port in a thread; yields its base URL."""
    import uvicorn

    from segpipe.serving.app import server_config

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(server_config(app, **deadlines))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the test server did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout)
        sock.close()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (for servers started as subprocesses)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def png_bytes(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def make_photo(root: Path, image_id: str, size: tuple[int, int], seed: int = 0, quality: int = 92) -> Sample:
    """A photo-like JPEG `images/<id>.jpg` (smooth skin tones, a dark elliptical lesion with a soft
    edge, mild noise) and its mask `masks/<id>.png` (1 inside the ellipse), in a dataset folder."""
    rng = np.random.default_rng(seed)
    h, w = size
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    cy, cx = h * rng.uniform(0.4, 0.6), w * rng.uniform(0.4, 0.6)
    radius = ((yy - cy) / (0.25 * h)) ** 2 + ((xx - cx) / (0.2 * w)) ** 2  # < 1 inside the lesion
    skin = np.stack([200 + 20 * np.sin(xx / w * 3), 160 + 15 * np.cos(yy / h * 4), 140 + 0 * xx], axis=-1)
    darkness = np.clip(1.2 - radius, 0, 1)[..., None]  # a soft edge around radius 1
    pixels = skin * (1 - 0.6 * darkness) + rng.normal(0, 4, (h, w, 3))
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(exist_ok=True)
    image_path, mask_path = root / "images" / f"{image_id}.jpg", root / "masks" / f"{image_id}.png"
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(image_path, quality=quality)
    write_mask(mask_path, (radius < 1).astype(np.uint8))
    return Sample(image_id, image_path, mask_path)


class CountingCalls:
    """Wraps a function and counts its calls (e.g. how often the cache decodes an image)."""

    def __init__(self, fn) -> None:
        self.fn, self.calls = fn, 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        return self.fn(*args, **kwargs)


def train_outputs_in(root: Path) -> TrainOutputs:
    """The train stage's outputs laid out under `root` as dvc.yaml lays them out in a project."""
    return TrainOutputs(
        models_dir=root / "models",
        metrics=root / "metrics" / "train.json",
        info=root / "metrics" / "train_info.json",
        history=root / "metrics" / "train_history.csv",
        plots_dir=root / "plots" / "train",
    )


# Headless Chromium through Playwright for Python, driving Debian's `chromium-headless-shell`
# (Playwright's own browser download is not used). Without it browser tests skip, saying how to
# install it; under CI (CI=true) a missing browser fails them.
BROWSER_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--no-first-run", "--disable-dev-shm-usage"]
INSTALL = "apt-get install chromium-headless-shell && pip install -r requirements.txt"


def chromium_path() -> str:
    """Debian's headless Chromium (or $SEGPIPE_CHROMIUM); skips, or fails under CI, when absent."""
    path = os.environ.get("SEGPIPE_CHROMIUM") or shutil.which("chromium-headless-shell") or shutil.which("chromium")
    problem = None
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        problem = "Playwright for Python is not installed"
    if problem is None and path is None:
        problem = "no chromium-headless-shell (or chromium) on PATH"
    if problem is not None:
        message = f"browser tests need a browser: {problem}; install it with `{INSTALL}`"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return path


def prepare_run(root: Path, epochs: int = 3, save_period: int = 2, seed: int = 42) -> dict[str, str]:
    """Processed data, a 4/1 split, no augmentation and tiny params (base.seed `seed`) in `root`,
    for `python -m pipeline train` run there; returns its environment (its own MLflow database)."""
    processed = make_processed(root / "processed", count=5)
    # 4 train images and 1 val image: rank 1 validates nothing, and the confusion sums still work.
    split = write_split(processed, root / "splits", SplitSection(val_fraction=0.2), seed=0)
    assert (len(split.train), len(split.val)) == (4, 1)
    augment_dataset(processed, root / "splits", root / "augmented", AugmentSection(enabled=False), seed=0, progress=False)
    params = {
        "base": {"seed": seed},
        "model": {"backbone": "plain", "base_channels": 4},
        "train": {
            "image_size": 32, "epochs": epochs, "freeze_epochs": 1, "batch_size": 2, "device": "cpu",
            "save_period": save_period,
        },
    }
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    return {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "MLFLOW_TRACKING_URI": f"sqlite:///{root}/mlflow.db",
        "DVC_ROOT": str(root),
        "OMP_NUM_THREADS": "1",
    }
