"""Publishing trained models to MLflow's Model Registry, promoting them, and fetching them back.

After the train stage, `publish_model` logs `best.pt` to the stage's MLflow run as an MLflow Model
(`segpipe.inference.mlflow_model`; the checkpoint without optimizer state, and segpipe's source so
that `mlflow models serve --env-manager local` needs nothing installed) and registers it under the
experiment's name: one model version per training run, tagged with the DVC experiment name.
`promote` points a registry alias (`champion`) at a run's version; `checkpoint_from_uri` downloads
the checkpoint inside `models:/segpipe@champion` or `runs:/<id>/model`.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import io
import logging
import re
import shutil
import tempfile
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from segpipe import tracking
from segpipe.errors import SegpipeError
from segpipe.experiments.runs import EXP_NAME_TAG, experiment_id, no_progress_bar, resolve_runs
from segpipe.models.checkpoint import write_deployment_checkpoint

if TYPE_CHECKING:
    from mlflow.entities.model_registry import ModelVersion
    from mlflow.tracking import MlflowClient

log = logging.getLogger(__name__)

MODEL_NAME_IN_RUN = "model"  # so the run's model is runs:/<run id>/model
CHECKPOINT_FILE = "best.pt"
# What the logged model needs at run time (segpipe itself travels as code with it); exact
# versions from this environment, so MLflow does not spend seconds inferring them.
REQUIREMENTS = ("mlflow", "torch", "torchvision", "numpy", "pandas", "pillow", "pydantic", "PyYAML")
# MLflow's alias rules (mlflow/utils/validation.py), checked here so a bad alias is one message
# instead of a traceback; ASCII only (MLflow takes any Unicode letter) because the alias is typed
# into models:/NAME@ALIAS URIs in shells and URLs.
ALIAS_PATTERN = re.compile(r"[A-Za-z0-9_-]{1,255}")
RESERVED_ALIAS = re.compile(r"latest|v\d+", re.IGNORECASE)  # `latest` and version names like v1


def publish_model(models_dir: Path, model_name: str) -> str | None:
    """Log `models_dir/best.pt` as the MLflow Model of the run in `models_dir/mlflow_run_id.txt`
    and register it as a new version of `model_name`; returns the version.

    Never raises: the train stage has done its work by now, so any failure (no run, MLflow down)
    becomes one warning and None.
    """
    run_id_file = models_dir / tracking.RUN_ID_FILE
    checkpoint = models_dir / CHECKPOINT_FILE
    run_id = run_id_file.read_text().strip() if run_id_file.is_file() else ""
    if not run_id or not checkpoint.is_file():
        return None  # tracking was off (no or an empty run id file) or training wrote no model: nothing to publish
    uri = tracking.tracking_uri()
    if not tracking.server_answers(uri):  # MLflow would retry a dead server for minutes
        return None
    try:
        with tracking.store_lock(uri):
            return register_checkpoint(checkpoint, run_id, model_name, uri)
    except Exception as exc:  # MLflow failures must never fail the training stage
        warnings.warn(f"publishing the model to MLflow failed; the checkpoints are unaffected: {exc}", stacklevel=2)
        return None


def register_checkpoint(checkpoint: Path, run_id: str, model_name: str, uri: str | None = None) -> str:
    """Log `checkpoint` as the MLflow Model of run `run_id`, register it as a version of
    `model_name` tagged with the run's DVC experiment name, and return the version."""
    import mlflow

    from segpipe.inference.mlflow_model import CHECKPOINT_ARTIFACT, SegmentationModel, signature

    started = time.perf_counter()
    mlflow.set_tracking_uri(uri or tracking.tracking_uri())
    client = mlflow.MlflowClient()
    exp_name = client.get_run(run_id).data.tags.get(EXP_NAME_TAG)
    with tempfile.TemporaryDirectory(prefix="segpipe-publish-") as tmp:
        slim = Path(tmp) / CHECKPOINT_FILE
        write_deployment_checkpoint(checkpoint, slim)
        code = _copy_source(Path(tmp) / "code")
        with no_progress_bar(), without_pickle_warning(), mlflow.start_run(run_id=run_id):
            info = mlflow.pyfunc.log_model(
                name=MODEL_NAME_IN_RUN,
                python_model=SegmentationModel(),
                artifacts={CHECKPOINT_ARTIFACT: str(slim)},
                code_paths=[str(code)],
                signature=signature(),
                input_example=_input_example(),
                pip_requirements=_requirements(),
            )
    version = mlflow.register_model(info.model_uri, model_name, tags={EXP_NAME_TAG: exp_name} if exp_name else None)
    log.info("published %s version %s (run %s) in %.1f s", model_name, version.version, run_id, time.perf_counter() - started)
    return str(version.version)


class _DropPickleWarning(logging.Filter):
    """Drops MLflow's "Passing a Python object as `python_model` ... CloudPickle" warning."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Passing a Python object as `python_model`")


@contextlib.contextmanager
def without_pickle_warning() -> Iterator[None]:
    """Silence, while a model is logged, the one warning MLflow prints on every training run about
    pickling `python_model`: ours is segpipe's own SegmentationModel, holding no state but the
    checkpoint artifact, and its code travels with it (code_paths). Every other MLflow message stays."""
    logger, dropped = logging.getLogger("mlflow.pyfunc"), _DropPickleWarning()
    logger.addFilter(dropped)
    try:
        yield
    finally:
        logger.removeFilter(dropped)


def promote(spec: str, alias: str, client: MlflowClient, experiment: str, model_name: str) -> ModelVersion:
    """Point `alias` of registered model `model_name` at the version of the run `spec` names (a
    DVC experiment name or a run id in `experiment`); returns that version."""
    check_alias(alias)
    runs = resolve_runs(spec, client, experiment_id(client, experiment))
    if len(runs) != 1:
        raise SegpipeError(f"{spec!r} names {len(runs)} runs; promote one: a DVC experiment name or a run id")
    run = runs[0]
    versions = _search_versions(client, f"name = '{_quoted(model_name)}' and run_id = '{run.info.run_id}'", model_name)
    if not versions:
        raise SegpipeError(
            f"run {spec!r} ({run.info.run_id}) has no version of registered model {model_name!r}: it was trained "
            "before models were published, or publishing failed (see the train stage's warnings); re-run its training"
        )
    version = max(versions, key=lambda v: int(v.version))  # a resumed run may have published twice
    client.set_registered_model_alias(model_name, alias, version.version)
    return version


def check_alias(alias: str) -> None:
    """Refuse an alias MLflow would refuse (or reserves), naming it and the rule, before any MLflow call."""
    if RESERVED_ALIAS.fullmatch(alias):
        raise SegpipeError(
            f"alias {alias!r} is reserved by MLflow (`latest` and version names like `v1` already mean a "
            "version); choose another, e.g. champion"
        )
    if not ALIAS_PATTERN.fullmatch(alias):
        raise SegpipeError(
            f"alias {alias!r} is not allowed: an alias is 1 to 255 letters, digits, '_' or '-' "
            "(no spaces, dots or slashes), e.g. champion or staging-2"
        )


def _search_versions(client: MlflowClient, filter_string: str, model_name: str) -> list[ModelVersion]:
    try:
        return list(client.search_model_versions(filter_string))
    except Exception as exc:
        raise SegpipeError(f"MLflow could not search versions of registered model {model_name!r}: {exc}") from None


def checkpoint_from_uri(uri: str, target_dir: Path) -> Path:
    """Download the MLflow Model at `uri` (models:/name@alias, models:/name/3, runs:/id/model)
    into `target_dir` and return the path of the checkpoint inside it."""
    import mlflow.artifacts
    from mlflow.models import Model

    from segpipe.inference.mlflow_model import CHECKPOINT_ARTIFACT

    mlflow.set_tracking_uri(tracking.tracking_uri())
    try:
        with no_progress_bar():
            local = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(target_dir)))
    except Exception as exc:
        raise SegpipeError(
            f"cannot fetch MLflow model {uri!r} from {tracking.tracking_uri()}: {exc} "
            "(check the name and alias with `mlflow ui`, or set MLFLOW_TRACKING_URI)"
        ) from None
    try:
        artifacts = Model.load(str(local)).flavors["python_function"]["artifacts"]
        path = local / artifacts[CHECKPOINT_ARTIFACT]["path"]
    except Exception as exc:
        raise SegpipeError(f"{uri}: not a segpipe MLflow Model (no {CHECKPOINT_ARTIFACT!r} artifact: {exc})") from None
    if not path.is_file():
        raise SegpipeError(f"{uri}: the model's checkpoint {path.name} is missing from its artifacts")
    return path


def _copy_source(target: Path) -> Path:
    """A copy of the segpipe package without caches, to log with the model as its code."""
    import segpipe

    source = Path(segpipe.__file__).resolve().parent
    shutil.copytree(source, target / "segpipe", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return target / "segpipe"


def _requirements() -> list[str]:
    pins = []
    for name in REQUIREMENTS:
        try:
            pins.append(f"{name}=={importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            pins.append(name)
    return pins


def _input_example():
    """A one-row input: a small gray PNG."""
    import numpy as np
    import pandas as pd
    from PIL import Image

    from segpipe.inference.mlflow_model import INPUT_COLUMN

    buffer = io.BytesIO()
    Image.fromarray(np.full((32, 32, 3), 128, np.uint8)).save(buffer, format="PNG")
    return pd.DataFrame({INPUT_COLUMN: [buffer.getvalue()]})


def _quoted(text: str) -> str:
    return text.replace("'", "\\'")
