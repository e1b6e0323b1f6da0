"""MLflow logging of grids, cells and search trials, in the schema the report reads.

- Experiment = grid name (`mudpt-bench` for single `train` runs). One parent run per grid invocation
  (tags mudpt.role=grid, mudpt.grid; params grid_seeds, grid_file), one nested run per cell (tags
  mudpt.role=cell, mudpt.key, mudpt.grid, mudpt.label, mudpt.method, mudpt.dataset, mudpt.protocol).
- A cell run's `mudpt.status=finished` tag is written last, after every param, metric and artifact,
  and the run is then terminated FINISHED. "Finished" means both; a run killed at any moment is
  therefore never mistaken for a complete one, and the runner reruns its cell.
"""
from __future__ import annotations

import json
import logging
import math
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping

from mudpt.errors import UserError

if TYPE_CHECKING:  # pragma: no cover
    from mudpt.api import RunResult
    from mudpt.config import RunConfig
    from mudpt.engine import EpochStats

DEFAULT_URI = "sqlite:///mlflow.db"
DEFAULT_EXPERIMENT = "mudpt-bench"
MAX_PARAM_CHARS = 6000  # MLflow's limit on a param value
MAX_TAG_CHARS = 5000
_FINISHED_FILTER = ("tags.`mudpt.role` = 'cell' and tags.`mudpt.status` = 'finished' "
                    "and attributes.status = 'FINISHED'")


class TrackingError(UserError):
    """The tracking store cannot be reached or written."""


def resolve_uri(uri: str | None = None) -> str:
    """--tracking-uri, else MLFLOW_TRACKING_URI, else sqlite:///mlflow.db in the working folder.

    Relative sqlite paths are made absolute so worker processes started elsewhere share the file."""
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_URI
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri.startswith(prefix + "/"):
        uri = prefix + str(Path(uri[len(prefix):]).expanduser().resolve())
    return uri


def sqlite_path(uri: str) -> Path | None:
    return Path(uri[len("sqlite:///"):]) if uri.startswith("sqlite:///") else None


def _quiet() -> None:
    # MLflow and alembic announce every schema migration on first use of a store.
    for name in ("mlflow", "alembic", "alembic.runtime.migration"):
        logging.getLogger(name).setLevel(logging.WARNING)


class _Retrying:
    """MlflowClient whose calls retry while a shared sqlite file is locked by another worker."""

    def __init__(self, client: Any, attempts: int = 12):
        self._client, self._attempts = client, attempts

    def __getattr__(self, name: str) -> Any:
        fn = getattr(self._client, name)
        if not callable(fn):
            return fn

        def call(*args: Any, **kwargs: Any) -> Any:
            delay = 0.05
            for attempt in range(self._attempts):
                try:
                    return fn(*args, **kwargs)
                except Exception as e:  # MlflowException wraps sqlalchemy's OperationalError
                    if "database is locked" not in str(e) or attempt == self._attempts - 1:
                        raise
                    time.sleep(delay)
                    delay = min(delay * 2, 2.0)

        return call


def connect(uri: str | None = None) -> tuple[Any, str]:
    """(client, resolved uri); raises TrackingError naming the URI when the store cannot be used."""
    uri = resolve_uri(uri)
    _quiet()
    path = sqlite_path(uri)
    if path is not None:
        if not path.parent.is_dir():
            raise TrackingError(f"tracking URI {uri!r}: folder {path.parent} does not exist; create it or pass "
                                f"another --tracking-uri")
        if not os.access(path.parent, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
            raise TrackingError(f"tracking URI {uri!r}: {path} is not writable; pass another --tracking-uri")
    if uri.startswith(("http://", "https://")):
        # Fail in seconds, not after minutes of retries, when the server is down.
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
    from mlflow.tracking import MlflowClient

    _quiet()  # after the import: mlflow sets its own logger levels when imported
    try:
        client = _Retrying(MlflowClient(tracking_uri=uri))
        client.search_experiments(max_results=1)
    except Exception as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise TrackingError(f"tracking URI {uri!r} is not reachable ({type(e).__name__}: {first[:300]}). "
                            f"Pass a reachable --tracking-uri or set MLFLOW_TRACKING_URI (default: "
                            f"{DEFAULT_URI} in the working folder)") from e
    return client, uri


def _stringify(value: Any) -> str:
    s = value if isinstance(value, str) else json.dumps(value, default=str) if isinstance(value, (list, dict, tuple)) else str(value)
    return s if len(s) <= MAX_PARAM_CHARS else s[:MAX_PARAM_CHARS - 12] + "…[truncated]"


def _chunks(items: list, n: int) -> Iterable[list]:
    for i in range(0, len(items), n):
        yield items[i:i + n]


def primary_metric(metrics: Mapping[str, float]) -> float | None:
    """The one number a cell is summarised by: HM for base-to-new, else top-1 accuracy."""
    for k in ("hm", "acc"):
        v = metrics.get(k)
        if v is not None and math.isfinite(v):
            return float(v)
    return None


@dataclass
class CellRun:
    """One cell's MLflow run, from creation to FINISHED / FAILED / KILLED."""

    client: Any
    run_id: str
    key: str

    def log_epoch(self, stats: "EpochStats") -> None:
        from mlflow.entities import Metric

        ts = int(time.time() * 1000)
        vals = {"train_loss": stats.loss, "lr": stats.lr, "train_acc": stats.train_acc, "epoch_s": stats.seconds}
        if getattr(stats, "val_acc", None) is not None:
            vals["val_acc"] = stats.val_acc
        self.client.log_batch(self.run_id, metrics=[Metric(k, float(v), ts, stats.epoch) for k, v in vals.items()])

    def finish(self, result: "RunResult", extra_metrics: Mapping[str, float] | None = None,
               extra_params: Mapping[str, Any] | None = None) -> None:
        """Params, metrics and artifacts, then the finished tag, then FINISHED: in that order."""
        from mlflow.entities import Metric, Param, RunTag

        params = {**result.params, **(extra_params or {})}
        for chunk in _chunks([Param(k, _stringify(v)) for k, v in params.items()], 100):
            self.client.log_batch(self.run_id, params=chunk)
        ts = int(time.time() * 1000)
        metrics = {**result.metrics, **(extra_metrics or {})}
        for chunk in _chunks([Metric(k, float(v), ts, 0) for k, v in metrics.items()], 1000):
            self.client.log_batch(self.run_id, metrics=chunk)
        with tempfile.TemporaryDirectory(prefix="mudpt-artifacts-") as tmp:
            write_artifacts(Path(tmp), result, self.key)
            self.client.log_artifacts(self.run_id, tmp)
        tags = []
        if result.warnings:
            tags.append(RunTag("mudpt.warnings", " | ".join(result.warnings)[:MAX_TAG_CHARS]))
        if result.key != self.key:  # the key computed before the run must be the one the run reports
            tags.append(RunTag("mudpt.result_key", result.key))
        if tags:
            self.client.log_batch(self.run_id, tags=tags)
        self.client.set_tag(self.run_id, "mudpt.status", "finished")
        self.client.set_terminated(self.run_id, "FINISHED")

    def fail(self, error: BaseException | str) -> None:
        msg = error if isinstance(error, str) else f"{type(error).__name__}: {error}"
        self.client.set_tag(self.run_id, "mudpt.status", "failed")
        self.client.set_tag(self.run_id, "mudpt.error", msg[:MAX_TAG_CHARS] or "(no message)")
        self.client.set_terminated(self.run_id, "FAILED")

    def kill(self) -> None:
        """Best effort on Ctrl-C / SIGTERM; a SIGKILL leaves the run RUNNING, which reads the same."""
        try:
            self.client.set_tag(self.run_id, "mudpt.status", "interrupted")
            self.client.set_terminated(self.run_id, "KILLED")
        except Exception:
            pass


def write_artifacts(folder: Path, result: "RunResult", key: str) -> None:
    """config.json (the cell config plus everything resolved) and prompts.safetensors."""
    from safetensors.torch import save_file

    config = {"key": key, "config": result.config.to_dict(), "params": result.params}
    (folder / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True, default=str))
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in result.prompt_state.items()}
    save_file(tensors, str(folder / "prompts.safetensors"),
              metadata={k: str(v) for k, v in result.checkpoint_metadata.items()})


class Tracker:
    """One experiment of one tracking store."""

    def __init__(self, uri: str | None, experiment: str):
        self.client, self.uri = connect(uri)
        self.experiment = experiment
        self.experiment_id = self._experiment_id(experiment)

    def _experiment_id(self, name: str) -> str:
        exp = self.client.get_experiment_by_name(name)
        if exp is not None:
            if exp.lifecycle_stage == "deleted":
                raise TrackingError(f"MLflow experiment {name!r} is deleted in {self.uri}; restore it "
                                    f"(`mlflow experiments restore`) or delete it for good (`mlflow gc`)")
            return exp.experiment_id
        try:
            return self.client.create_experiment(name, artifact_location=self._artifact_location(name))
        except Exception:  # another worker created it first
            exp = self.client.get_experiment_by_name(name)
            if exp is None:
                raise
            return exp.experiment_id

    def _artifact_location(self, name: str) -> str | None:
        """Beside a sqlite store (MLflow's default is ./mlruns of whichever process creates the experiment,
        so artifacts would scatter with the working folder); the server's default for other stores."""
        path = sqlite_path(self.uri)
        if path is None:
            return None
        safe = "".join(ch if ch.isalnum() or ch in "._-" else "_" for ch in name)
        return (path.parent / "mlruns" / safe).as_uri()

    # ----------------------------------------------------------------------------- queries
    def _search(self, filter_string: str) -> list[Any]:
        runs, token = [], None
        while True:
            page = self.client.search_runs([self.experiment_id], filter_string, max_results=1000, page_token=token)
            runs.extend(page)
            token = page.token
            if not token:
                return runs

    def finished_cells(self) -> dict[str, str]:
        """key -> run id of every finished cell run of this experiment (under any parent)."""
        return {r.data.tags["mudpt.key"]: r.info.run_id for r in self._search(_FINISHED_FILTER)}

    def finished_run(self, key: str) -> str | None:
        runs = self._search(f"{_FINISHED_FILTER} and tags.`mudpt.key` = '{key}'")
        return runs[0].info.run_id if runs else None

    def throughput(self) -> dict[tuple[str, str], tuple[float, float]]:
        """(backbone, method) -> median (train images/s, eval images/s) of finished cells."""
        import statistics

        acc: dict[tuple[str, str], tuple[list[float], list[float]]] = {}
        for r in self._search(_FINISHED_FILTER):
            k = (r.data.params.get("backbone", ""), r.data.tags.get("mudpt.method", ""))
            tr, ev = acc.setdefault(k, ([], []))
            if r.data.metrics.get("train_images_per_s", 0) > 0:
                tr.append(r.data.metrics["train_images_per_s"])
            if r.data.metrics.get("eval_images_per_s", 0) > 0:
                ev.append(r.data.metrics["eval_images_per_s"])
        return {k: (statistics.median(tr) if tr else 0.0, statistics.median(ev) if ev else 0.0)
                for k, (tr, ev) in acc.items()}

    # ----------------------------------------------------------------------------- writes
    def start_parent(self, grid: str, seeds: Iterable[int], grid_file: str, params: Mapping[str, Any] | None = None) -> str:
        run = self.client.create_run(self.experiment_id, run_name=f"{grid} {time.strftime('%Y-%m-%d %H:%M:%S')}",
                                     tags={"mudpt.role": "grid", "mudpt.grid": grid})
        from mlflow.entities import Param

        all_params = {"grid_seeds": ",".join(str(s) for s in sorted(set(seeds))), "grid_file": grid_file,
                      **(params or {})}
        self.client.log_batch(run.info.run_id, params=[Param(k, _stringify(v)) for k, v in all_params.items()])
        return run.info.run_id

    def end_parent(self, run_id: str, status: str, counts: Mapping[str, int]) -> None:
        for k, v in counts.items():
            self.client.set_tag(run_id, f"mudpt.{k}", str(v))
        self.client.set_terminated(run_id, status)

    def start_cell(self, config: "RunConfig", key: str, label: str, grid: str, parent_id: str | None,
                   extra_tags: Mapping[str, str] | None = None, role: str = "cell") -> CellRun:
        tags = {"mudpt.role": role, "mudpt.key": key, "mudpt.grid": grid, "mudpt.label": label,
                "mudpt.method": config.method, "mudpt.dataset": config.dataset, "mudpt.protocol": config.protocol,
                "mudpt.status": "running", **(extra_tags or {})}
        if parent_id:
            tags["mlflow.parentRunId"] = parent_id
        name = f"{label} {config.dataset} {config.shots}shot s{config.seed}"
        run = self.client.create_run(self.experiment_id, run_name=name, tags=tags)
        return CellRun(self.client, run.info.run_id, key)

    def supersede(self, key: str, keep_run_id: str) -> None:
        """After a forced rerun, retire older finished runs of the key so exactly one looks finished."""
        for r in self._search(f"{_FINISHED_FILTER} and tags.`mudpt.key` = '{key}'"):
            if r.info.run_id != keep_run_id:
                self.client.set_tag(r.info.run_id, "mudpt.status", "superseded")
                self.client.set_tag(r.info.run_id, "mudpt.superseded_by", keep_run_id)


def run_url(uri: str, experiment_id: str, run_id: str) -> str:
    """Where to look at a run: the server page for http stores, else the `mlflow ui` command."""
    if uri.startswith(("http://", "https://")):
        return f"{uri.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}"
    return f"`mlflow ui --backend-store-uri {uri}` -> experiment {experiment_id}, run {run_id}"


def system_metrics() -> Callable[[], dict[str, float]]:
    """Start measuring a cell; the returned function reads the process's peak and current RSS and the
    cell's peak GPU memory (MiB)."""
    import resource
    import sys

    torch = sys.modules.get("torch")  # no GPU to measure in a process that never imported torch
    cuda = torch.cuda if torch is not None and torch.cuda.is_available() else None
    if cuda is not None:
        cuda.reset_peak_memory_stats()

    def read() -> dict[str, float]:
        out = {"sys.process_peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0}
        try:
            import psutil

            out["sys.rss_mib"] = psutil.Process().memory_info().rss / 2**20
        except ImportError:
            pass
        if cuda is not None:
            out["sys.gpu_peak_mib"] = cuda.max_memory_allocated() / 2**20
        return out

    return read
