"""MLflow tracking that never stops a training run.

The store is `MLFLOW_TRACKING_URI` when set, else `mlflow.db` (SQLite) at the project root, found
from DVC_ROOT or git so that `dvc exp run --temp` and queued experiments, which run in copies of
the repo under `.dvc/tmp/exps/`, log to the same database as the workspace. Artifacts go to
`mlruns/` beside it. Any MLflow failure turns into one warning and tracking is switched off.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import subprocess
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

RUN_ID_FILE = "mlflow_run_id.txt"


def project_root(start: Path | None = None) -> Path:
    """The project's root: DVC_ROOT (outside DVC's temporary experiment copies), else git's, else cwd."""
    start = Path(start or Path.cwd()).resolve()
    root = Path(os.environ["DVC_ROOT"]).resolve() if os.environ.get("DVC_ROOT") else None
    if root is None:
        try:
            out = subprocess.run(
                ["git", "rev-parse", "--show-toplevel"], cwd=start, capture_output=True, text=True, check=True
            )
            root = Path(out.stdout.strip())
        except (OSError, subprocess.CalledProcessError):
            root = start
    # A temp or queued experiment runs in <project>/.dvc/tmp/exps/<run>/...: log to <project>.
    parts = root.parts
    for i in range(len(parts) - 2):
        if parts[i : i + 3] == (".dvc", "tmp", "exps"):
            return Path(*parts[:i])
    return root


def tracking_uri(root: Path | None = None) -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{(root or project_root()) / 'mlflow.db'}"


def flatten(mapping: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """{"train": {"lr": 0.1}} -> {"train.lr": "0.1"}: the keys `dvc exp run -S` uses."""
    flat: dict[str, str] = {}
    for key, value in mapping.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = json.dumps(value) if isinstance(value, (list, tuple)) else str(value)
    return flat


def content_hash(payload: Any) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


def files_hash(paths: list[Path]) -> str:
    """A hash of the files' names and bytes: which data a run saw."""
    digest = hashlib.sha256()
    for path in sorted(paths):
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def git_commit(root: Path) -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True)
        return out.stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


class Tracker:
    """One MLflow run; every call is a no-op after the first failure (or when disabled)."""

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self.run_id: str | None = None
        self._mlflow = None

    def _guard(self, what: str, call) -> Any:
        if not self.enabled:
            return None
        try:
            return call()
        except Exception as exc:  # MLflow failures must never stop training
            warnings.warn(f"MLflow {what} failed, training goes on without tracking: {exc}", stacklevel=3)
            self.enabled = False
            return None

    def start(
        self,
        experiment: str,
        run_name: str | None,
        params: Mapping[str, Any],
        tags: Mapping[str, str],
        run_id: str | None = None,
    ) -> None:
        """Open a run (or reopen `run_id`, when resuming) and log the flattened params."""

        def start() -> None:
            import mlflow

            root = project_root()
            mlflow.set_tracking_uri(tracking_uri(root))
            if mlflow.get_experiment_by_name(experiment) is None:
                mlflow.create_experiment(experiment, artifact_location=(root / "mlruns").as_uri())
            mlflow.set_experiment(experiment)
            if run_id is not None:
                run = mlflow.start_run(run_id=run_id)
            else:
                run = mlflow.start_run(run_name=run_name, tags=dict(tags))
                for chunk in _chunks(list(flatten(params).items()), 100):  # MLflow caps params per call
                    mlflow.log_params(dict(chunk))
            self._mlflow = mlflow
            self.run_id = run.info.run_id

        self._guard("start", start)

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        clean = {k: float(v) for k, v in metrics.items() if v is not None and v == v}  # drop None/NaN
        self._guard("log_metrics", lambda: self._mlflow.log_metrics(clean, step=step))

    def log_artifact(self, path: Path, folder: str | None = None) -> None:
        self._guard("log_artifact", lambda: self._mlflow.log_artifact(str(path), artifact_path=folder))

    def end(self, status: str = "FINISHED") -> None:
        self._guard("end", lambda: self._mlflow.end_run(status=status))


def _chunks(items: list, size: int) -> Iterator[list]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def run_name() -> str | None:
    """The DVC experiment's name, so MLflow and `dvc exp show` call a run the same."""
    return os.environ.get("DVC_EXP_NAME") or None


def dvc_tags(root: Path, params_hash: str, data_hash: str) -> dict[str, str]:
    """Tags that tie an MLflow run to its code, DVC experiment, params and data."""
    tags = {"segpipe.params_hash": params_hash, "segpipe.data_hash": data_hash}
    commit = git_commit(root)
    if commit:
        tags["mlflow.source.git.commit"] = commit
    for env, tag in (("DVC_EXP_NAME", "dvc.exp_name"), ("DVC_EXP_BASELINE_REV", "dvc.baseline_rev")):
        if os.environ.get(env):
            tags[tag] = os.environ[env]
    return tags
