"""Read the finished cell runs of one experiment/grid from MLflow into a tidy DataFrame.

One row per finished cell run (one seed of one cell). A run counts as a result only when MLflow says
FINISHED *and* the runner set `mudpt.status=finished`, which it does last; anything else is listed as
not finished so the report can say which cells are missing and why.
"""
from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import pandas as pd

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"

# Tags that identify a cell; the runner writes them on every cell run.
CELL_TAGS = ("key", "grid", "label", "method", "dataset", "protocol")
# Params the report needs to place a run in a table.
REQUIRED_PARAMS = ("shots", "seed", "backbone", "pretrained")
# Per-epoch metrics: search_runs only returns their last value, which is not a result.
EPOCH_METRICS = ("train_loss", "lr", "train_acc")
# Columns that, with the seed, identify one result; two finished runs agreeing on all of them are the
# same seed of the same cell, and only the newest one is kept.
IDENTITY = ("protocol", "backbone", "pretrained", "method", "label", "dataset", "shots", "targets")


class ReportError(RuntimeError):
    """Something about the store or its runs that the user has to fix; the message says what and how."""


@dataclass
class LoadedRuns:
    runs: pd.DataFrame  # finished cell runs, one per (cell, seed)
    tracking_uri: str
    experiment: str
    grid: str | None
    grid_seeds: tuple[int, ...] | None  # union of the seeds the grid invocations asked for; None: no grid runs
    unfinished: pd.DataFrame  # cell runs that are not results: label, dataset, shots, seed, state, error
    warnings: list[str] = field(default_factory=list)

    @property
    def option_columns(self) -> list[str]:
        return sorted(c for c in self.runs.columns if c.startswith("opt."))


def resolve_tracking_uri(tracking_uri: str | None) -> str:
    return tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI


def _local_store_path(uri: str) -> Path | None:
    """The file or folder behind a local URI (sqlite or file store), None for servers."""
    if uri.startswith("sqlite:///"):
        path = uri[len("sqlite:///"):]
        return None if path in ("", ":memory:") else Path(path)
    if uri.startswith("file://"):
        return Path(uri[len("file://"):])
    if "://" not in uri:
        return Path(uri)
    return None


@contextmanager
def _tracking(uri: str) -> Iterator[None]:
    """mlflow.search_runs reads the global tracking URI; set it only for the duration of the read."""
    import mlflow

    # set_tracking_uri also exports MLFLOW_TRACKING_URI; None restores "not set" and removes it again.
    previous = mlflow.get_tracking_uri() if mlflow.is_tracking_uri_set() else None
    mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(previous)


def _pick_experiment(client, uri: str, experiment: str | None, grid: str | None):
    names = sorted(e.name for e in client.search_experiments())
    name = experiment or grid
    if name is None:
        candidates = [n for n in names if n != "Default"]
        if len(candidates) != 1:
            listing = ", ".join(candidates) or "none"
            raise ReportError(f"{uri} holds experiments [{listing}]; choose one with --grid NAME or --experiment NAME")
        name = candidates[0]
    exp = client.get_experiment_by_name(name)
    if exp is None:
        listing = ", ".join(n for n in names if n != "Default") or "none"
        raise ReportError(
            f"no experiment {name!r} in {uri} (experiments there: {listing}); a grid's experiment is the grid's "
            "name, single `train` runs go to `mudpt-bench`"
        )
    return exp


def _tidy(frame: pd.DataFrame) -> pd.DataFrame:
    """search_runs columns (`tags.x`, `params.x`, `metrics.x`) -> plain names with typed values."""
    out = pd.DataFrame({"run_id": frame["run_id"], "status": frame["status"], "start_time": frame["start_time"]})
    out["parent_run_id"] = frame.get("tags.mlflow.parentRunId")
    for tag in CELL_TAGS:
        out[tag] = frame.get(f"tags.mudpt.{tag}")
    out["state"] = frame.get("tags.mudpt.status")
    out["error"] = frame.get("tags.mudpt.error")
    for col in frame.columns:
        if col.startswith("params."):
            name = col[len("params."):]
            out[name] = out[name].fillna(frame[col]) if name in CELL_TAGS else frame[col]
    # After the params, so that a value logged both ways (n_trainable) is the numeric metric.
    for col in frame.columns:
        if col.startswith("metrics.") and col[len("metrics."):] not in EPOCH_METRICS:
            out[col[len("metrics."):]] = frame[col]
    if "targets" not in out:
        out["targets"] = ""
    out["targets"] = out["targets"].fillna("").astype(str)
    lead = ["run_id", "status", "state", "error", "start_time", "parent_run_id", *CELL_TAGS, "shots", "seed",
            "backbone", "pretrained", "targets"]
    lead = [c for c in lead if c in out.columns]
    return out[lead + sorted(c for c in out.columns if c not in lead)]


def _as_int(runs: pd.DataFrame, column: str) -> pd.Series:
    values = pd.to_numeric(runs[column], errors="coerce")
    bad = runs.loc[values.isna() | (values != values.round()), ["run_id", column]]
    if len(bad):
        first = bad.iloc[0]
        raise ReportError(f"run {first.run_id}: param {column}={first[column]!r} is not an integer")
    return values.astype(int)


def _check_complete(runs: pd.DataFrame) -> None:
    for name in CELL_TAGS[2:] + REQUIRED_PARAMS:
        if name not in runs.columns:
            missing = runs["run_id"]
        else:
            missing = runs.loc[runs[name].isna(), "run_id"]
        if len(missing):
            ids = ", ".join(missing.head(3))
            raise ReportError(
                f"{len(missing)} finished cell run(s) lack {name!r} (e.g. {ids}); they were not written by "
                "the mudpt-bench runner or by an incompatible version"
            )


def _grid_seeds(uri: str, experiment_id: str, grid: str | None) -> tuple[int, ...] | None:
    import mlflow

    flt = "tags.`mudpt.role` = 'grid'" + (f" and tags.`mudpt.grid` = '{grid}'" if grid else "")
    with _tracking(uri):
        parents = mlflow.search_runs(experiment_ids=[experiment_id], filter_string=flt)
    if parents.empty or "params.grid_seeds" not in parents:
        return None
    seeds: set[int] = set()
    for text in parents["params.grid_seeds"].dropna():
        for part in str(text).split(","):
            if part.strip():
                try:
                    seeds.add(int(part))
                except ValueError:
                    raise ReportError(f"grid run param grid_seeds={text!r} is not a comma list of integers") from None
    return tuple(sorted(seeds)) or None


def _drop_superseded(runs: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """Keep the newest finished run per (cell, seed): a cell rerun with --force must not count twice."""
    keys = list(IDENTITY) + ["seed"]
    runs = runs.sort_values("start_time")
    dup = runs.duplicated(keys, keep="last")
    warnings = []
    if dup.any():
        distinct_keys = runs[runs.duplicated(keys, keep=False)].groupby(keys, dropna=False)["key"].nunique()
        warnings.append(
            f"{int(dup.sum())} older finished run(s) of the same cell and seed were superseded by a newer run"
            + (
                f"; {int((distinct_keys > 1).sum())} of these cells differ in their key (a recipe or data change "
                "that the label does not show), the newest one is reported"
                if (distinct_keys > 1).any() else ""
            )
        )
    return runs[~dup].reset_index(drop=True), warnings


def load_runs(tracking_uri: str | None = None, experiment: str | None = None, grid: str | None = None) -> LoadedRuns:
    """Finished cell runs of `experiment` (default: the grid's name), restricted to `grid` when given."""
    uri = resolve_tracking_uri(tracking_uri)
    for what, value in (("grid", grid), ("experiment", experiment)):
        if value is not None and (not value.strip() or "'" in value):
            raise ReportError(f"--{what} {value!r}: expected a grid or experiment name (no quotes, not empty)")
    local = _local_store_path(uri)
    if local is not None and not local.exists():
        raise ReportError(
            f"no MLflow store at {local} (tracking URI {uri}); run a grid first "
            "(`mudpt-bench run --grid ablation-depth`) or point --tracking-uri / MLFLOW_TRACKING_URI at your store"
        )
    import mlflow
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException
    from sqlalchemy.exc import SQLAlchemyError

    try:
        client = MlflowClient(tracking_uri=uri)
        exp = _pick_experiment(client, uri, experiment, grid)
        flt = "tags.`mudpt.role` = 'cell'" + (f" and tags.`mudpt.grid` = '{grid}'" if grid else "")
        with _tracking(uri):
            frame = mlflow.search_runs(experiment_ids=[exp.experiment_id], filter_string=flt)
        grid_seeds = _grid_seeds(uri, exp.experiment_id, grid)
    except (MlflowException, SQLAlchemyError, OSError) as err:  # unreachable server, foreign or old database
        message = getattr(err, "message", None) or str(err).splitlines()[0]
        raise ReportError(f"cannot read the MLflow store {uri}: {message}") from None
    where = f"experiment {exp.name!r}" + (f", grid {grid!r}" if grid else "") + f" of {uri}"
    if frame.empty:
        raise ReportError(f"no mudpt-bench cell runs in {where}; run the grid first (`mudpt-bench run --grid ...`)")

    runs = _tidy(frame)
    done = (runs["status"] == "FINISHED") & (runs["state"] == "finished")
    unfinished = runs.loc[~done].copy()
    # An MLflow run still RUNNING is either in progress or was killed; nothing in the store tells which.
    unfinished["state"] = unfinished["state"].fillna("interrupted").where(
        unfinished["status"] != "RUNNING", "running or killed"
    )
    runs = runs.loc[done].drop(columns=["state", "error"]).reset_index(drop=True)
    if runs.empty:
        failed = unfinished[unfinished["state"] == "failed"]
        errors = failed["error"].dropna()
        detail = f"; first error: {errors.iloc[0]}" if len(errors) else ""
        raise ReportError(
            f"none of the {len(unfinished)} cell runs in {where} finished "
            f"({(unfinished['state'] == 'failed').sum()} failed, {(unfinished['state'] != 'failed').sum()} "
            f"interrupted or running){detail}"
        )
    _check_complete(runs)
    runs["shots"] = _as_int(runs, "shots")
    runs["seed"] = _as_int(runs, "seed")
    if "n_trainable" in runs:
        runs["n_trainable"] = pd.to_numeric(runs["n_trainable"], errors="coerce").astype("Int64")
    runs, warnings = _drop_superseded(runs)
    # A cell that failed and later finished is a result; only the still-missing ones are worth listing.
    if len(unfinished):
        unfinished["shots"] = pd.to_numeric(unfinished.get("shots"), errors="coerce")
        unfinished["seed"] = pd.to_numeric(unfinished.get("seed"), errors="coerce")
        finished_keys = set(runs["key"])
        unfinished = unfinished[~unfinished["key"].isin(finished_keys)].drop_duplicates("key", keep="last")
    cols = ["label", "dataset", "protocol", "shots", "seed", "state", "error", "run_id"]
    unfinished = unfinished.reindex(columns=cols).reset_index(drop=True)
    return LoadedRuns(
        runs=runs,
        tracking_uri=uri,
        experiment=exp.name,
        grid=grid,
        grid_seeds=grid_seeds,
        unfinished=unfinished,
        warnings=warnings,
    )
