"""Finding MLflow runs by what a researcher calls them: a DVC experiment name, a run id, a filter.

The train stage names each MLflow run after its DVC experiment and tags it `dvc.exp_name`, so
`baseline` finds the run of `dvc exp run -n baseline`. Only finished runs count.
"""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from segpipe.errors import SegpipeError

if TYPE_CHECKING:
    from mlflow.entities import Run
    from mlflow.tracking import MlflowClient

FILTER_PREFIX = "filter:"
EXP_NAME_TAG = "dvc.exp_name"
_RUN_ID = re.compile(r"[0-9a-f]{32}")
_FINISHED = "attributes.status = 'FINISHED'"
_MAX_RESULTS = 50000  # the SQL store's cap for one search page
_PROGRESS_ENV = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"


def display_name(run: Run) -> str | None:
    """What a researcher calls a run: its DVC experiment name, else its MLflow run name."""
    return run.data.tags.get(EXP_NAME_TAG) or run.info.run_name or None


@contextmanager
def no_progress_bar() -> Iterator[None]:
    """Silence MLflow's artifact progress bars for a moment: one bar per download would bury a report."""
    previous = os.environ.get(_PROGRESS_ENV)
    os.environ[_PROGRESS_ENV] = "false"
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(_PROGRESS_ENV, None)
        else:
            os.environ[_PROGRESS_ENV] = previous


def experiment_id(client: MlflowClient, name: str) -> str:
    """The id of the MLflow experiment `name`; an unknown name lists the ones that exist."""
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        names = sorted(e.name for e in client.search_experiments())
        raise SegpipeError(
            f"MLflow experiment {name!r} not found in the tracking store; available: {', '.join(names) or 'none'} "
            "(pass --experiment NAME, or set base.experiment in the params file)"
        )
    return experiment.experiment_id


def resolve_runs(spec: str, client: MlflowClient, experiment_id: str) -> list[Run]:
    """The finished runs a group spec names, in the spec's order, without duplicates.

    spec: `filter:<MLflow search filter>`, or a comma-separated list of DVC experiment names
    (tag `dvc.exp_name`, else the run name) and 32-hex-digit MLflow run ids.
    """
    spec = spec.strip()
    if spec.startswith(FILTER_PREFIX):
        runs = _search_filter(spec[len(FILTER_PREFIX) :].strip(), client, experiment_id)
    else:
        items = [item.strip() for item in spec.split(",") if item.strip()]
        if not items:
            raise SegpipeError(f"empty group spec {spec!r}: give a DVC experiment name, a run id or filter:<expr>")
        runs = [_resolve_item(item, client, experiment_id) for item in items]
    unique = {run.info.run_id: run for run in runs}  # dict keeps the first-seen order
    return list(unique.values())


def _search(client: MlflowClient, experiment_id: str, filter_string: str) -> list[Run]:
    try:
        return list(
            client.search_runs(
                [experiment_id], filter_string, max_results=_MAX_RESULTS, order_by=["attributes.start_time DESC"]
            )
        )
    except Exception as exc:  # MLflow reports a bad filter as MlflowException with its parser's message
        raise SegpipeError(
            f"MLflow could not search runs with filter {filter_string!r}: {exc} "
            "(syntax: params.model.cbam = 'true', tags.`dvc.exp_name` = 'name', metrics.miou > 0.5)"
        ) from None


def _search_filter(expression: str, client: MlflowClient, experiment_id: str) -> list[Run]:
    if not expression:
        raise SegpipeError("empty filter: write e.g. filter:params.model.cbam = 'true'")
    runs = _search(client, experiment_id, f"{expression} and {_FINISHED}")
    if not runs:
        raise SegpipeError(
            f"no finished run matches filter {expression!r}; params are logged as strings spelt as in "
            f"params.yaml (booleans 'true'/'false'). {_available(client, experiment_id)}"
        )
    return runs


def _resolve_item(item: str, client: MlflowClient, experiment_id: str) -> Run:
    if _RUN_ID.fullmatch(item):
        return _run_by_id(item, client, experiment_id)
    quoted = item.replace("'", "\\'")
    for key in (f"tags.`{EXP_NAME_TAG}`", "attributes.run_name"):
        runs = _search(client, experiment_id, f"{key} = '{quoted}'")
        finished = [run for run in runs if run.info.status == "FINISHED"]
        if finished:
            if len(finished) > 1:
                warnings.warn(
                    f"{len(finished)} finished runs are named {item!r}; using the latest, "
                    f"{finished[0].info.run_id} (name a run by its id to pick another)",
                    stacklevel=3,
                )
            return finished[0]
        if runs:
            raise SegpipeError(
                f"run {item!r} ({runs[0].info.run_id}) is {runs[0].info.status}, not FINISHED: "
                "only completed runs can be compared (let it finish, or re-run it)"
            )
    raise SegpipeError(f"no run named {item!r} in the experiment. {_available(client, experiment_id)}")


def _run_by_id(run_id: str, client: MlflowClient, experiment_id: str) -> Run:
    try:
        run = client.get_run(run_id)
    except Exception:  # MlflowException(RESOURCE_DOES_NOT_EXIST)
        raise SegpipeError(f"no MLflow run with id {run_id}. {_available(client, experiment_id)}") from None
    if run.info.experiment_id != experiment_id:
        raise SegpipeError(
            f"run {run_id} belongs to experiment id {run.info.experiment_id}, not {experiment_id}: "
            "pass --experiment with that run's experiment"
        )
    if run.info.status != "FINISHED":
        raise SegpipeError(f"run {run_id} is {run.info.status}, not FINISHED: only completed runs can be compared")
    return run


def _available(client: MlflowClient, experiment_id: str, limit: int = 30) -> str:
    """'Available runs: ...' for error messages: DVC experiment names, else run names."""
    names: list[str] = []
    for run in _search(client, experiment_id, _FINISHED):
        name = display_name(run) or run.info.run_id
        if name not in names:
            names.append(name)
    if not names:
        return "The experiment has no finished runs (train, then evaluate, first)."
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return f"Available runs (DVC experiment / run names): {', '.join(names[:limit])}{more}."
