"""Scale-out: an Optuna storage used as a work queue of grid cells.

The parent enqueues one trial per unfinished cell (`study.enqueue_trial`, the cell config in the trial's
user attrs); workers claim trials with `study.ask()`, whose WAITING -> RUNNING transition is atomic in
both journal and RDB storages, run the cell, and `tell` the result. Every cell is therefore run once
however many workers drain the queue (measured on this project: a GridSampler over shared storage
duplicated N-1 cells with N workers; enqueue_trial gave none).

Storage URLs: `journal:PATH` (or a path) = JournalFileStorage, for workers on one machine or a shared
filesystem; `postgresql://...`, `mysql://...` = RDB storage for many machines. Each grid invocation gets
its own study, so a restart after a kill enqueues only the cells that are still unfinished.

`python -m experiments.queue --storage URL` is the worker process that `--workers N` spawns.
"""
from __future__ import annotations

import argparse
import os
import socket
import sys
import threading
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mudpt.errors import UserError

from .grid import Cell
from .runner import Backend, CellCost, Outcome, Planned, execute_cell, install_sigterm_handler, load_backend
from .tracking import Tracker

if TYPE_CHECKING:  # pragma: no cover
    from rich.console import Console

QUEUE_ATTR = "mudpt_queue"
CLOSED_ATTR = "mudpt_queue_closed"  # set on a grid's older queue studies when a new invocation enqueues
HEARTBEAT_S = 30.0
STALE_AFTER_S = 300.0  # a RUNNING cell whose worker has not written a heartbeat for this long is dead
RDB_PREFIXES = ("sqlite:", "postgresql", "mysql", "oracle", "mssql")


class QueueError(UserError):
    """A storage URL that cannot be used, or no queue to drain."""


@dataclass(frozen=True)
class SlurmOptions:
    partition: str | None = None
    timeout_min: int = 24 * 60
    gpus_per_worker: int = 1
    cpus_per_worker: int = 8
    mem_gb: float = 32.0
    folder: str = "mudpt-results/slurm/%j"


def _optuna():
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    return optuna


def open_storage(url: str) -> Any:
    optuna = _optuna()
    if url.startswith(RDB_PREFIXES):
        try:
            return optuna.storages.RDBStorage(url)
        except Exception as e:
            raise QueueError(f"storage {url!r} cannot be opened ({type(e).__name__}: {e}); expected a reachable "
                             f"postgresql://, mysql:// or sqlite:/// URL, or journal:PATH") from e
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    path = Path(url[len("journal:"):] if url.startswith("journal:") else url).expanduser()
    if "://" in url:
        raise QueueError(f"storage {url!r}: unknown scheme; expected journal:PATH, a file path, "
                         f"postgresql://..., mysql://... or sqlite:///...")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(str(path)))
    except OSError as e:
        raise QueueError(f"storage {url!r}: cannot open journal file {path}: {e}") from e


def queue_log_dir(storage_url: str, study_name: str) -> Path:
    """Next to a journal file, else under mudpt-results/queue/."""
    if not storage_url.startswith(RDB_PREFIXES):
        journal = Path(storage_url[len("journal:"):] if storage_url.startswith("journal:") else storage_url)
        return journal.expanduser().resolve().parent / study_name
    return (Path("mudpt-results") / "queue" / study_name).resolve()


def default_storage(grid_name: str) -> str:
    return "journal:" + str((Path("mudpt-results") / "queue" / f"{grid_name}.journal").resolve())


# ------------------------------------------------------------------------------------ enqueue
def enqueue(storage_url: str, plans: list[Planned], meta: dict[str, Any]) -> str:
    """A new study holding one WAITING trial per cell; returns its name."""
    optuna = _optuna()
    storage = open_storage(storage_url)
    name = f"{meta['grid']}-{meta['parent_run_id'][:12]}"
    same = (meta["grid"], meta["experiment"], meta["tracking_uri"])
    for old in storage.get_all_studies():  # a restart replaces the queue of an interrupted invocation
        m = old.user_attrs.get(QUEUE_ATTR)
        if m and (m["grid"], m["experiment"], m["tracking_uri"]) == same and CLOSED_ATTR not in old.user_attrs:
            optuna.load_study(study_name=old.study_name, storage=storage).set_user_attr(CLOSED_ATTR, name)
    study = optuna.create_study(storage=storage, study_name=name, direction="maximize")
    study.set_user_attr(QUEUE_ATTR, meta)
    for p in plans:
        cost = p.cost or CellCost(0, 0, 0)
        study.enqueue_trial({}, user_attrs={"config": p.cell.config.to_dict(), "label": p.cell.label,
                                            "key": p.key, "index": p.index, "epochs": cost.epochs})
    return name


# ------------------------------------------------------------------------------------ workers
class _Heartbeat:
    """Writes the time into the claimed trial every HEARTBEAT_S so the parent can tell a dead worker."""

    def __init__(self, trial: Any):
        self.trial, self.stop = trial, threading.Event()
        self.thread = threading.Thread(target=self._beat, daemon=True)

    def _beat(self) -> None:
        while not self.stop.wait(HEARTBEAT_S):
            _set(self.trial, "heartbeat", time.time())

    def __enter__(self) -> "_Heartbeat":
        self.trial.set_user_attr("heartbeat", time.time())
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop.set()
        self.thread.join(timeout=5)


def _set(trial: Any, key: str, value: Any) -> None:
    """A user attr on a claimed trial; a no-op once the parent has given up on it (stale heartbeat)."""
    try:
        trial.set_user_attr(key, value)
    except Exception:
        pass


def _queue_studies(storage: Any, study_name: str | None) -> list[str]:
    """Open queue studies; a closed one (replaced by a newer invocation of its grid) is not drained."""
    studies = [s for s in storage.get_all_studies() if QUEUE_ATTR in s.user_attrs]
    open_names = [s.study_name for s in studies if CLOSED_ATTR not in s.user_attrs]
    if study_name is not None:
        closed = {s.study_name: s.user_attrs[CLOSED_ATTR] for s in studies if CLOSED_ATTR in s.user_attrs}
        if study_name in closed:
            if not open_names:  # nothing left to do: a late worker just exits
                return []
            raise QueueError(f"queue study {study_name!r} was replaced by {closed[study_name]!r} (the grid was "
                             f"started again); drain that one, or omit --study")
        if study_name not in open_names:
            raise QueueError(f"no queue study {study_name!r} in this storage; open queue studies: "
                             f"{', '.join(open_names) or '(none)'}")
        return [study_name]
    return open_names


def work(storage_url: str, *, study_name: str | None = None, tracking_uri: str | None = None,
         backend: Backend | None = None, log: Any = None) -> list[Outcome]:
    """Claim and run cells until no study of the storage has WAITING trials."""
    optuna = _optuna()
    from optuna.trial import TrialState

    from mudpt.config import RunConfig

    storage = open_storage(storage_url)
    backend = backend or load_backend(None)
    trackers: dict[tuple[str, str], Tracker] = {}
    studies: dict[str, Any] = {}
    outcomes: list[Outcome] = []
    me = f"{socket.gethostname()}:{os.getpid()}"
    while True:
        study = None
        for name in _queue_studies(storage, study_name):
            s = studies.setdefault(name, optuna.load_study(study_name=name, storage=storage))
            if s.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
                study = s
                break
        if study is None:
            return outcomes
        trial = study.ask()
        attrs = trial.user_attrs
        if "config" not in attrs:  # another worker took the last cell between the check and ask()
            trial.set_user_attr("probe", True)
            study.tell(trial, state=TrialState.FAIL)
            continue
        meta = study.user_attrs[QUEUE_ATTR]
        uri = tracking_uri or meta["tracking_uri"]
        tracker = trackers.get((uri, meta["experiment"]))
        if tracker is None:
            tracker = trackers[(uri, meta["experiment"])] = Tracker(uri, meta["experiment"])
        plan = Planned(attrs["index"], Cell(RunConfig.from_dict(attrs["config"]), attrs["label"]), key=attrs["key"])
        trial.set_user_attr("worker", me)
        if log:
            log(f"[{me}] cell {plan.index}: {plan.cell.label} {plan.cell.config.dataset} seed {plan.cell.config.seed}")
        try:
            with _Heartbeat(trial):
                out = execute_cell(plan, tracker, meta["grid"], meta["parent_run_id"], backend,
                                   force=bool(meta.get("force")),
                                   on_epoch=lambda s: _set(trial, "epoch", s.epoch + 1),
                                   extra_tags={"mudpt.worker": me})
        except KeyboardInterrupt:
            _set(trial, "status", "failed")
            _set(trial, "error", "interrupted (the worker was stopped)")
            study.tell(trial, state=TrialState.FAIL, skip_if_finished=True)
            raise
        for k in ("status", "error", "run_id", "wall_s"):
            _set(trial, k, getattr(out, k))
        if out.status == "failed":
            study.tell(trial, state=TrialState.FAIL, skip_if_finished=True)
        else:
            study.tell(trial, out.value if out.value is not None else 0.0, skip_if_finished=True)
        if log:
            log(f"[{me}] cell {plan.index}: {out.status} {out.error}")
        outcomes.append(out)


def visible_gpus() -> list[str]:
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [x.strip() for x in env.split(",") if x.strip() and x.strip() != "-1"]
    try:
        import torch

        return [str(i) for i in range(torch.cuda.device_count())]
    except Exception:
        return []


def worker_command(storage_url: str, study_name: str | None, tracking_uri: str | None,
                   backend_ref: str | None = None) -> list[str]:
    cmd = [sys.executable, "-m", "experiments.queue", "--storage", storage_url]
    if study_name:
        cmd += ["--study", study_name]
    if tracking_uri:
        cmd += ["--tracking-uri", tracking_uri]
    if backend_ref:
        cmd += ["--backend", backend_ref]
    return cmd


# Imported once by the fork server, so N local workers start in well under a second instead of each
# paying for torch, open_clip, mlflow and optuna. Importing does not initialise CUDA, so each worker can
# still choose its GPU with CUDA_VISIBLE_DEVICES.
_PRELOAD = ["experiments.queue", "experiments.tracking", "mlflow.tracking", "optuna", "mudpt.api"]


def spawn_workers(n: int, storage_url: str, study_name: str, tracking_uri: str, backend_ref: str | None,
                  log_dir: Path) -> list[Any]:
    """N local worker processes (multiprocessing Process objects): one GPU each (round robin) when GPUs
    exist, else an equal share of the CPU threads. Each logs to log_dir/worker-<i>.log."""
    import multiprocessing

    log_dir.mkdir(parents=True, exist_ok=True)
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(_PRELOAD + ([backend_ref.partition(":")[0]] if backend_ref else []))
    gpus = visible_gpus()
    threads = None if gpus else max(1, (os.cpu_count() or 1) // n)
    procs = []
    for i in range(n):
        p = ctx.Process(target=_local_worker, name=f"mudpt-worker-{i}",
                        args=(storage_url, study_name, tracking_uri, backend_ref, gpus[i % len(gpus)] if gpus else None,
                              threads, str(log_dir / f"worker-{i}.log"), os.getpid()))
        p.start()
        procs.append(p)
    return procs


def _watch_parent(parent_pid: int, every_s: float = 2.0) -> None:
    """Stop this worker (as Ctrl-C would) when the `run` process that started it is gone, so a killed
    invocation leaves no worker behind to race the workers of its restart."""
    import _thread

    def watch() -> None:
        while True:
            time.sleep(every_s)
            try:
                os.kill(parent_pid, 0)
            except ProcessLookupError:
                _thread.interrupt_main()
                return
            except PermissionError:  # pid reused by another user's process: the parent is gone
                _thread.interrupt_main()
                return

    threading.Thread(target=watch, daemon=True).start()


def _local_worker(storage_url: str, study_name: str, tracking_uri: str, backend_ref: str | None,
                  gpu: str | None, threads: int | None, log_path: str, parent_pid: int) -> None:
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    if gpu is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = gpu
    if threads is not None and "OMP_NUM_THREADS" not in os.environ:
        # N workers with all-core thread pools each would oversubscribe the CPU.
        os.environ["OMP_NUM_THREADS"] = str(threads)
        if "torch" in sys.modules:
            sys.modules["torch"].set_num_threads(threads)
    install_sigterm_handler()
    _watch_parent(parent_pid)
    try:
        outs = work(storage_url, study_name=study_name, tracking_uri=tracking_uri, backend=load_backend(backend_ref),
                    log=lambda m: print(m, flush=True))
    except KeyboardInterrupt:
        print("worker stopped", flush=True)
        return
    print(f"worker done: {len(outs)} cell(s)", flush=True)


def require_submitit() -> Any:
    try:
        import submitit
    except ImportError as e:
        raise QueueError("the Slurm launcher needs submitit: pip install submitit (the `slurm` extra of "
                         "mudpt-bench)") from e
    return submitit


def launch_slurm(n: int, storage_url: str, study_name: str, tracking_uri: str, opts: SlurmOptions) -> list[Any]:
    """A Slurm job array of N workers (submitit). Storage and tracking store must be reachable from the nodes."""
    submitit = require_submitit()
    if storage_url.startswith("journal:") or not storage_url.startswith(RDB_PREFIXES):
        warnings.warn(f"Slurm workers share the journal file {storage_url}: it must be on a filesystem that "
                      f"every node mounts (a postgresql:// storage avoids the requirement)")
    executor = submitit.AutoExecutor(folder=opts.folder)
    params: dict[str, Any] = dict(name="mudpt-worker", timeout_min=opts.timeout_min, gpus_per_node=opts.gpus_per_worker,
                                  cpus_per_task=opts.cpus_per_worker, mem_gb=opts.mem_gb, slurm_array_parallelism=n)
    if opts.partition:
        params["slurm_partition"] = opts.partition
    executor.update_parameters(**params)
    return executor.map_array(_slurm_worker, [storage_url] * n, [study_name] * n, [tracking_uri] * n)


def _slurm_worker(storage_url: str, study_name: str, tracking_uri: str) -> int:
    return len(work(storage_url, study_name=study_name, tracking_uri=tracking_uri, log=print))


# ------------------------------------------------------------------------------------ parent
def run_queue(todo: list[Planned], tracker: Tracker, grid_name: str, parent_id: str, *, workers: int,
              storage: str | None, force: bool, backend_ref: str | None, console: "Console | None",
              slurm: SlurmOptions | None = None) -> list[Outcome]:
    """Enqueue the cells, start the workers (local processes, Slurm, or none: remote `worker` commands),
    and follow the queue until every cell is done or failed."""
    # Cells whose planning failed are recorded as failed here; they need no worker.
    outcomes = [execute_cell(p, tracker, grid_name, parent_id, None) for p in todo if p.error]
    good = [p for p in todo if not p.error]
    if not good:
        return outcomes
    url = storage or default_storage(grid_name)
    meta = {"grid": grid_name, "experiment": tracker.experiment, "tracking_uri": tracker.uri,
            "parent_run_id": parent_id, "force": force}
    study_name = enqueue(url, good, meta)
    procs: list[Any] | None = None
    log_dir = queue_log_dir(url, study_name)
    where = "no local workers: start `mudpt-bench worker` processes"
    if slurm is not None:
        jobs = launch_slurm(max(workers, 1), url, study_name, tracker.uri, slurm)
        where = f"Slurm job array {jobs[0].job_id.split('_')[0] if jobs else '?'}"
    elif workers >= 1:
        procs = spawn_workers(workers, url, study_name, tracker.uri, backend_ref, log_dir)
        where = f"{workers} local worker(s), logs in {log_dir}/"
    if console is not None:
        console.print(f"queue: {len(good)} cells in study {study_name!r} at {url}; {where}\n"
                      f"more workers, any machine: mudpt-bench worker --storage {url} --study {study_name}",
                      highlight=False, soft_wrap=True)
    try:
        outcomes += follow(url, study_name, procs, console)
    except KeyboardInterrupt:
        stop_workers(procs or [])
        raise
    return outcomes


def stop_workers(procs: list[Any], grace_s: float = 15.0) -> None:
    for p in procs:
        if p.is_alive():
            p.terminate()  # SIGTERM: the worker marks its current run KILLED
    deadline = time.time() + grace_s
    for p in procs:
        p.join(timeout=max(0.1, deadline - time.time()))
        if p.is_alive():
            p.kill()


def follow(storage_url: str, study_name: str, procs: list[Any] | None,
           console: "Console | None", poll_s: float = 1.0) -> list[Outcome]:
    """Progress until the queue is drained; cells whose worker died are failed so the parent can end."""
    optuna = _optuna()
    from optuna.trial import TrialState
    from rich.markup import escape
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    study = optuna.load_study(study_name=study_name, storage=open_storage(storage_url))
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TextColumn("ETA"), TimeRemainingColumn())
    with Progress(*columns, console=console, disable=console is None) as bar:
        task = bar.add_task("cells", total=None)
        running_line = bar.add_task("", total=None, visible=False)
        while True:
            cells = [t for t in study.get_trials(deepcopy=False) if "config" in t.user_attrs]
            waiting = [t for t in cells if t.state == TrialState.WAITING]
            running = [t for t in cells if t.state == TrialState.RUNNING]
            bar.update(task, total=len(cells), completed=len(cells) - len(waiting) - len(running))
            desc = "; ".join(f"{t.user_attrs['label']} {t.user_attrs['config']['dataset']} "
                             f"s{t.user_attrs['config']['seed']} epoch {t.user_attrs.get('epoch', 0)}/"
                             f"{t.user_attrs.get('epochs', '?')}" for t in running[:4])
            bar.update(running_line, description=escape(f"  running: {desc}" + (" ..." if len(running) > 4 else "")),
                       visible=bool(running))
            alive = procs is None or any(p.is_alive() for p in procs)
            stale = [t for t in running if not alive
                     or time.time() - float(t.user_attrs.get("heartbeat", time.time())) > STALE_AFTER_S]
            for t in stale:
                try:
                    study.tell(t.number, state=TrialState.FAIL)
                except Exception:  # its worker finished it in the meantime
                    pass
            if not running and (not waiting or not alive):
                break
            time.sleep(poll_s)
    return outcomes_of(study)


def outcomes_of(study: Any) -> list[Outcome]:
    from optuna.trial import TrialState

    out = []
    for t in study.get_trials(deepcopy=False):
        a = t.user_attrs
        if "config" not in a:
            continue
        c = a["config"]
        if a.get("status"):
            status, error = a["status"], a.get("error", "")
        elif t.state == TrialState.FAIL:
            status, error = "failed", "the worker running this cell stopped before recording a result"
        else:
            status, error = "failed", "no worker claimed this cell (all workers exited)"
        out.append(Outcome(a["label"], c["dataset"], c["shots"], c["seed"], c["protocol"], a.get("key") or "",
                           status, error, a.get("run_id", ""),
                           float(a.get("wall_s", 0.0)), t.value if t.state == TrialState.COMPLETE else None))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m experiments.queue", description="Drain a mudpt-bench work queue.")
    ap.add_argument("--storage", required=True)
    ap.add_argument("--study", default=None)
    ap.add_argument("--tracking-uri", default=None)
    ap.add_argument("--backend", default=None, help="module:attr of a backend (tests); default: the real harness")
    args = ap.parse_args(argv)
    install_sigterm_handler()
    outs = work(args.storage, study_name=args.study, tracking_uri=args.tracking_uri,
                backend=load_backend(args.backend), log=lambda m: print(m, flush=True))
    print(f"worker done: {len(outs)} cell(s)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
