"""MLflow tracking that never stops a training run.

The store is `MLFLOW_TRACKING_URI` when set, else `mlflow.db` (SQLite) at the project root, found
from DVC_ROOT or git so that `dvc exp run --temp` and queued experiments, which run in copies of
the repo under `.dvc/tmp/exps/`, log to the same database as the workspace. Artifacts go to
`mlruns/` beside it. Any MLflow failure turns into one warning and tracking is switched off.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import json
import logging
import os
import shlex
import shutil
import subprocess
import tempfile
import urllib.error
import urllib.parse
import urllib.request
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from segpipe.config import Params
from segpipe.project import dvc_copy_owner, project_root  # project_root re-exported: tracking.project_root

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; use a tracking server for parallel runs
    fcntl = None

log = logging.getLogger(__name__)

RUN_ID_FILE = "mlflow_run_id.txt"
UI_ADDRESS = "http://127.0.0.1:5000"  # where `mlflow ui` serves by default
# Where the evaluate stage puts its per-image scores in the training run (read by `compare`).
PER_IMAGE_ARTIFACT = "eval/per_image.csv"


def tracking_uri(root: Path | None = None) -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{(root or project_root()) / 'mlflow.db'}"


def ui_command(uri: str, cwd: Path | None = None) -> str | None:
    """The command that serves the MLflow UI for the store `uri` (relative to `cwd` when the
    database lies below it); None for a tracking server, which serves its own UI."""
    if uri.startswith(("http://", "https://")):
        return None
    here = Path(cwd or Path.cwd()).resolve()
    database = Path(uri[len("sqlite:///") :]) if uri.startswith("sqlite:///") else None
    if database is not None and database.is_absolute() and database.is_relative_to(here):
        uri = f"sqlite:///{database.relative_to(here)}"
    return f"mlflow ui --backend-store-uri {shlex.quote(uri)}"


def training_view_url(uri: str, experiment_id: str) -> str:
    """The address of an experiment in the MLflow UI's model-training view: MLflow 3 opens
    experiments in its GenAI view unless the URL asks for `workflowType=machine_learning`."""
    address = uri.rstrip("/") if uri.startswith(("http://", "https://")) else UI_ADDRESS
    return f"{address}/#/experiments/{experiment_id}?workflowType=machine_learning"


def logged_params(params: Params) -> dict[str, str]:
    """Every setting under its flat key, spelt as the params file spells it (`augment.rotate_limit`
    "30", not the typed 30.0), so a filter copied from params.yaml matches; keys the file leaves
    out get their default in JSON spelling."""
    spelt = params.spelling
    return {key: spelt.get(key, value) for key, value in flatten(params.model_dump(mode="json")).items()}


def flatten(mapping: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """{"train": {"lr": 0.1}} -> {"train.lr": "0.1"}: the keys `dvc exp run -S` uses."""
    flat: dict[str, str] = {}
    for key, value in mapping.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{name}."))
        else:
            # JSON spelling (true, [0.3, 1.5]) so filters match what params.yaml and `-S` say.
            flat[name] = value if isinstance(value, str) else json.dumps(value)
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


@contextlib.contextmanager
def store_lock(uri: str) -> Iterator[None]:
    """Serialise writers of one SQLite store across processes.

    Queued `dvc exp` runs with several workers write to the same mlflow.db at once; SQLite allows
    one writer, and MLflow's first-use schema creation races outright ("table runs already
    exists"). An exclusive lock on `mlflow.db.lock` around each call makes that safe. A tracking
    server (MLFLOW_TRACKING_URI=http://...) needs no lock.
    """
    if not uri.startswith("sqlite:///") or fcntl is None:
        yield
        return
    database = Path(uri[len("sqlite:///") :].split("?")[0])
    database.parent.mkdir(parents=True, exist_ok=True)
    with open(database.with_name(database.name + ".lock"), "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


class Tracker:
    """One MLflow run; every call is a no-op after the first failure (or when disabled)."""

    def __init__(self, enabled: bool = True) -> None:
        self.run_id: str | None = None
        self.experiment_id: str | None = None
        self.uri = tracking_uri()
        self._mlflow = None
        # MLflow retries a dead server for minutes before it fails; a short check fails over in seconds.
        self.enabled = enabled and server_answers(self.uri)

    def _guard(self, what: str, call) -> Any:
        if not self.enabled:
            return None
        try:
            with store_lock(self.uri):
                return call()
        except Exception as exc:  # MLflow failures must never stop the stage
            warnings.warn(f"MLflow {what} failed; going on without tracking: {exc}", stacklevel=3)
            self.enabled = False
            return None

    def _connect(self):
        import mlflow

        mlflow.set_tracking_uri(self.uri)
        self._mlflow = mlflow
        return mlflow

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
            mlflow = self._connect()
            create_experiment(mlflow, experiment, self.uri)
            mlflow.set_experiment(experiment)
            if run_id is not None:
                run = mlflow.start_run(run_id=run_id)
            else:
                run = mlflow.start_run(run_name=run_name, tags=dict(tags))
                for chunk in _chunks(list(flatten(params).items()), 100):  # MLflow caps params per call
                    mlflow.log_params(dict(chunk))
            self.run_id, self.experiment_id = run.info.run_id, run.info.experiment_id

        self._guard("start", start)

    def reopen(self, run_id: str) -> None:
        """Reopen a finished run to add to it (the evaluate stage adds its metrics to training's run)."""

        def reopen() -> None:
            self._connect().start_run(run_id=run_id)
            self.run_id = run_id

        self._guard("reopen", reopen)

    def log_metrics(self, metrics: Mapping[str, Any], step: int | None = None, undefined_as_nan: bool = False) -> None:
        """Log the numeric values; non-numbers (lists of names) are left out.

        Undefined values (None, NaN) are left out too, unless `undefined_as_nan`: then they are
        logged as NaN so that every run has the same metric names (MLflow's compare view lines
        runs up by name) while no undefined score pretends to be 0 or 1.
        """
        clean = {}
        for key, value in metrics.items():
            if value is None or (isinstance(value, float) and value != value):
                if undefined_as_nan:
                    clean[key] = float("nan")
            elif isinstance(value, (int, float)) and not isinstance(value, bool):
                clean[key] = float(value)
        self._guard("log_metrics", lambda: self._mlflow.log_metrics(clean, step=step))

    def set_tags(self, tags: Mapping[str, str]) -> None:
        """Tag the run: facts about it that are not results (counts, durations), kept off the metric charts."""
        self._guard("set_tags", lambda: self._mlflow.set_tags(dict(tags)))

    def log_artifact(self, path: Path, folder: str | None = None, name: str | None = None) -> None:
        """Log a file under `folder`, as `name` when given (a fixed name other tools can find)."""

        def log() -> None:
            if name is None or name == Path(path).name:
                self._mlflow.log_artifact(str(path), artifact_path=folder)
                return
            with tempfile.TemporaryDirectory() as tmp:
                renamed = Path(tmp) / name
                shutil.copyfile(path, renamed)
                self._mlflow.log_artifact(str(renamed), artifact_path=folder)

        self._guard("log_artifact", log)

    def end(self, status: str = "FINISHED") -> None:
        self._guard("end", lambda: self._mlflow.end_run(status=status))

    def mark_killed(self, run_id: str) -> bool:
        """End `run_id` as KILLED if it is still RUNNING; returns whether it was.

        Call it when the next run of the same stage starts: a run still RUNNING then is one whose
        process was killed (SIGKILL, power loss) before it could end the run. A run id this store
        does not know is left alone.
        """

        def mark() -> bool:
            from mlflow.exceptions import MlflowException
            from mlflow.tracking import MlflowClient

            client = MlflowClient(self.uri)
            try:
                status = client.get_run(run_id).info.status
            except MlflowException:  # not a run of this store (another tracking URI, a deleted run)
                return False
            if status != "RUNNING":
                return False
            client.set_terminated(run_id, status="KILLED")
            log.info("MLflow run %s was left RUNNING by a killed process; marked KILLED", run_id)
            return True

        return bool(self._guard("mark_killed", mark))


def create_experiment(mlflow, name: str, uri: str) -> None:
    """Create the experiment `name` unless it exists, its artifacts beside a SQLite store
    (`artifact_root`). Parallel runs on a tracking server (which takes no store lock) race to
    create it: the losers find it made and use it. An existing experiment whose artifacts lie in
    a DVC experiment copy, deleted after its run, is named in a warning."""
    from mlflow.exceptions import MlflowException

    existing = mlflow.get_experiment_by_name(name)
    if existing is not None:
        if _in_dvc_copy(existing.artifact_location):
            warnings.warn(
                f"MLflow experiment {name!r} keeps its artifacts in {existing.artifact_location}, a "
                "temporary copy that DVC deletes after a queued run: its runs' per-image scores, plots "
                "and models are lost. Rename it in the MLflow UI (or set base.experiment to a new name) "
                "so that a new experiment is created with its artifacts beside the store",
                stacklevel=2,
            )
        return
    try:
        mlflow.create_experiment(name, artifact_location=artifact_root(uri))
    except MlflowException:
        if mlflow.get_experiment_by_name(name) is None:
            raise


def artifact_root(uri: str) -> str | None:
    """Where a new experiment of the store `uri` keeps its artifacts: `mlruns/` beside a SQLite
    database; None (the server's own choice) for any other store. MLflow's default, `mlruns/` in
    the working directory, is right only when a stage runs at the project root: queued and
    `--temp` experiments run in copies under .dvc/tmp/exps/, deleted when they end."""
    if not uri.startswith("sqlite:///"):
        return None
    return (Path(uri[len("sqlite:///") :]).resolve().parent / "mlruns").as_uri()


def _in_dvc_copy(location: str) -> bool:
    path = urllib.parse.urlparse(location).path if location.startswith("file:") else location
    return dvc_copy_owner(Path(path)) is not None


# Seconds a tracking server gets to answer before a stage goes on without tracking.
CONNECT_TIMEOUT = 3.0


def reachable(uri: str, timeout: float = CONNECT_TIMEOUT) -> bool:
    """Whether the tracking server at an http(s) URI answers within `timeout` seconds.

    Any HTTP answer counts (MLflow serves /health; an error status still means a live server).
    Other stores (SQLite, files, Databricks) have no server to check here: True.
    """
    parsed = urllib.parse.urlparse(uri)
    if parsed.scheme not in ("http", "https"):
        return True
    try:
        with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout):
            return True
    except urllib.error.HTTPError:
        return True
    except (OSError, ValueError, http.client.HTTPException):  # refused, timed out, unresolvable, not HTTP
        return False


def server_answers(uri: str, timeout: float = CONNECT_TIMEOUT) -> bool:
    """`reachable`, with one warning when it is not: the stage then runs without tracking."""
    if reachable(uri, timeout):
        return True
    warnings.warn(
        f"the MLflow tracking server {uri} did not answer within {timeout:g} s; going on without tracking "
        "(start the server, or unset MLFLOW_TRACKING_URI to use the project's mlflow.db)",
        stacklevel=3,
    )
    return False


def _chunks(items: list, size: int) -> Iterator[list]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def run_name(root: Path | None = None) -> str:
    """The DVC experiment's name, so MLflow and `dvc exp show` call a run the same; outside an
    experiment (`dvc repro`), `workspace@<short commit>` (`workspace` outside git)."""
    if os.environ.get("DVC_EXP_NAME"):
        return os.environ["DVC_EXP_NAME"]
    commit = git_commit(root or project_root())
    return f"workspace@{commit[:7]}" if commit else "workspace"


# The columns worth adding in the MLflow runs table, under the names the runs carry (params.yaml's
# keys; `miou` is evaluate's full-resolution validation mIoU). The run description lists them too.
KEY_PARAMS = ("model.backbone", "model.cbam", "augment.enabled", "train.sampling", "train.image_size", "train.epochs", "train.lr")
HEADLINE_METRIC = "miou"


def run_description(params: Params, root: Path, stage: str = "train") -> str:
    """The run's description (MLflow's note, shown on the run's page): which params differ from the
    baseline commit's params.yaml (the DVC experiment's baseline, else HEAD), the key params and
    where the headline metric comes from."""
    current = flatten(params.model_dump(mode="json"))
    rev = os.environ.get("DVC_EXP_BASELINE_REV") or git_commit(root)
    baseline = baseline_params(root, rev) if rev else None
    if baseline is None:
        changes = "No baseline params to compare with (no git commit with a readable params.yaml)."
    else:
        changed = [
            f"`{key}`: {baseline.get(key, '(absent)')} → {value}" for key, value in current.items() if baseline.get(key) != value
        ]
        changes = (f"Changed against {rev[:7]}: " + "; ".join(changed)) if changed else f"Same params as {rev[:7]}."
    spelt = logged_params(params)
    key_params = ", ".join(f"`{key}`={spelt[key]}" for key in KEY_PARAMS if key in spelt)
    # What changed comes first: the runs table's Description column shows only the start.
    return (
        f"{changes}\n\nKey params: {key_params}. Headline metric: `{HEADLINE_METRIC}` (evaluate's mIoU on "
        f"the validation images at full resolution). Logged by the `{stage}` stage of the segpipe pipeline."
    )


def baseline_params(root: Path, rev: str, path: str = "params.yaml") -> dict[str, str] | None:
    """params.yaml at commit `rev`, validated and flattened as runs log it; None when git has no
    such file or it no longer validates (a key renamed since)."""
    import yaml

    from segpipe.config import parse_params
    from segpipe.errors import SegpipeError

    try:
        shown = subprocess.run(["git", "show", f"{rev}:{path}"], cwd=root, capture_output=True, text=True, check=True)
        return flatten(parse_params(yaml.safe_load(shown.stdout), f"{rev[:7]}:{path}").model_dump(mode="json"))
    except (OSError, subprocess.CalledProcessError, yaml.YAMLError, SegpipeError):
        return None


def stage_tags(params: Params, root: Path, stage: str) -> dict[str, str]:
    """Tags that make a run readable in the MLflow UI: its description, and the stage as its source
    (instead of `__main__.py`, which every `python -m pipeline` run shares)."""
    return {
        "mlflow.note.content": run_description(params, root, stage),
        # The stage name first: the runs table's Source column shows a dozen characters.
        "mlflow.source.name": f"{stage} stage (python -m pipeline {stage})",
        "mlflow.source.type": "JOB",
    }


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
