"""Running a grid: plan every cell (stable key, finished lookup, cost), then run each unfinished cell
once through `mudpt.api.run_experiment`, logging it to MLflow as it goes.

A cell that fails (NaN loss, out of memory, bad data) is recorded as a FAILED run with its error and
the grid continues; the summary lists the failures and the command exits non-zero. With more than one
worker, or a storage URL, the cells go through the Optuna work queue instead (experiments/queue.py).
"""
from __future__ import annotations

import importlib
import math
import signal
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Protocol

from mudpt.errors import UserError

from .grid import Cell, Grid
from .tracking import DEFAULT_EXPERIMENT, Tracker, primary_metric, sqlite_path, resolve_uri, system_metrics

if TYPE_CHECKING:  # pragma: no cover
    from rich.console import Console

    from mudpt.api import RunResult
    from mudpt.config import RunConfig
    from mudpt.engine import EpochStats

# Images per second (train fwd+bwd, eval fwd) of a text+vision method, used by --dry-run until the
# tracking store holds finished runs of the backbone (their measured rates then take over).
DEFAULT_THROUGHPUT: dict[str, tuple[float, float]] = {
    # medians over the 16 cells of `mudpt-bench run --grid ablation-depth` (embedded recipe, batch 32),
    # 2 CPU cores shared with one other job, 2026-12-04
    "mudpt-tiny": (455.0, 1245.0),
}
CELL_OVERHEAD_S = 2.0  # per-cell setup once the backbone is loaded (data, method, text encoding)


class PlanningError(UserError):
    """No cell of a grid can be prepared (its data, backbone or checkpoint is missing)."""


@dataclass(frozen=True)
class CellCost:
    epochs: int  # 0 when the cell does not train
    train_images: int  # per epoch
    eval_images: int  # test images evaluated, targets and new classes included (estimated)


@dataclass
class Planned:
    index: int
    cell: Cell
    key: str | None = None
    cost: CellCost | None = None
    error: str | None = None  # planning failed: the cell will be recorded as failed
    finished_run: str | None = None


@dataclass
class Outcome:
    label: str
    dataset: str
    shots: int
    seed: int
    protocol: str
    key: str
    status: str  # done | skipped | failed
    error: str = ""
    run_id: str = ""
    wall_s: float = 0.0
    value: float | None = None  # HM for base-to-new, else top-1 accuracy

    @staticmethod
    def of(p: Planned, status: str, **kw: Any) -> "Outcome":
        c = p.cell.config
        return Outcome(p.cell.label, c.dataset, c.shots, c.seed, c.protocol, p.key or "", status, **kw)


@dataclass
class Summary:
    outcomes: list[Outcome] = field(default_factory=list)

    def count(self, status: str) -> int:
        return sum(o.status == status for o in self.outcomes)

    @property
    def exit_code(self) -> int:
        return 1 if self.count("failed") else 0


class Backend(Protocol):
    """What the runner needs from the harness; tests inject a fake one."""

    def plan(self, cfg: "RunConfig") -> tuple[str, CellCost]: ...

    def run(self, cfg: "RunConfig", on_epoch: Callable[["EpochStats"], None],
            eval_split: str = "test", eval_every_epoch: bool = False) -> "RunResult": ...


class MudptBackend:
    """The real harness. `plan_device` pins the backbone cache of a process that only plans (the queue
    parent) to that device, so it holds no GPU memory its workers need."""

    def __init__(self, plan_device: str | None = None):
        self.plan_device = plan_device
        self._backbone_errors: dict[tuple[str, str], Exception] = {}

    def plan(self, cfg: "RunConfig") -> tuple[str, CellCost]:
        import torch

        from mudpt.api import cell_key, get_backbone, resolve
        from mudpt.data.protocol import prepare_data

        bb = (cfg.backbone.name, cfg.backbone.pretrained)
        if bb in self._backbone_errors:  # one failed load (a download, a missing file) is enough
            raise self._backbone_errors[bb]
        try:
            get_backbone(cfg.backbone, torch.device(self.plan_device) if self.plan_device else None)
        except Exception as e:
            self._backbone_errors[bb] = e
            raise
        key = cell_key(cfg)
        clip, _ = get_backbone(cfg.backbone)
        cls, _, recipe = resolve(cfg, clip)
        b2n = cfg.protocol == "base2new"
        data = prepare_data(cfg.dataset, shots=cfg.shots, seed=cfg.seed, subsample="base" if b2n else "all",
                            data_root=cfg.data_root)
        trains = cls.trains and cfg.protocol != "zeroshot"
        n_test = len(data.splits.test)
        # Targets are not loaded here (that can mean rendering or listing them); count them as the source.
        evals = n_test * (2 if b2n else 1 + len(cfg.targets))
        return key, CellCost(recipe.epochs if trains else 0, len(data.splits.train) if trains else 0, evals)

    def run(self, cfg: "RunConfig", on_epoch: Callable[["EpochStats"], None], eval_split: str = "test",
            eval_every_epoch: bool = False) -> "RunResult":
        from mudpt.api import run_experiment

        return run_experiment(cfg, on_epoch=on_epoch, eval_split=eval_split, eval_every_epoch=eval_every_epoch)


def load_backend(ref: str | None) -> Backend:
    """None -> the real harness; "module:attr" -> an object, class or factory with plan() and run()."""
    if not ref:
        return MudptBackend()
    module, _, attr = ref.partition(":")
    obj = getattr(importlib.import_module(module), attr or "BACKEND")
    if isinstance(obj, type) or (callable(obj) and not hasattr(obj, "run")):
        return obj()
    return obj


# ------------------------------------------------------------------------------------ planning
def plan_cells(cells: list[Cell], backend: Backend, console: "Console | None" = None) -> list[Planned]:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    plans = [Planned(i, c) for i, c in enumerate(cells)]
    with Progress(TextColumn("planning cells"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console, transient=True, disable=console is None) as bar:
        task = bar.add_task("plan", total=len(plans))
        for p in plans:
            try:
                p.key, p.cost = backend.plan(p.cell.config)
            except Exception as e:  # bad data, unloadable backbone: recorded as a failed cell
                p.error = f"{type(e).__name__}: {e}"
            bar.advance(task)
    return plans


def mark_finished(plans: list[Planned], finished: dict[str, str]) -> None:
    for p in plans:
        p.finished_run = finished.get(p.key) if p.key else None


def estimate_seconds(p: Planned, rates: dict[tuple[str, str], tuple[float, float]]) -> float | None:
    """From previous runs of the same (backbone, method) in this experiment, else the built-in rate."""
    if p.cost is None:
        return None
    c = p.cell.config
    train_ips, eval_ips = rates.get((c.backbone.name, c.method), (0.0, 0.0))
    fallback = DEFAULT_THROUGHPUT.get(c.backbone.name, (0.0, 0.0))
    train_ips, eval_ips = train_ips or fallback[0], eval_ips or fallback[1]
    if (p.cost.epochs and not train_ips) or not eval_ips:
        return None
    train_s = p.cost.epochs * p.cost.train_images / train_ips if p.cost.epochs else 0.0
    return CELL_OVERHEAD_S + train_s + p.cost.eval_images / eval_ips


# ------------------------------------------------------------------------------------ one cell
def execute_cell(p: Planned, tracker: Tracker, grid_name: str, parent_id: str | None, backend: Backend | None, *,
                 force: bool = False, on_epoch: Callable[["EpochStats"], None] | None = None,
                 extra_tags: dict[str, str] | None = None) -> Outcome:
    """Run one cell and log it; never raises for a cell failure (Ctrl-C / SIGTERM do propagate)."""
    cfg = p.cell.config
    if p.error is not None:
        run = tracker.start_cell(cfg, p.key or cfg.key(), p.cell.label, grid_name, parent_id, extra_tags)
        run.fail(f"planning failed: {p.error}")
        return Outcome.of(p, "failed", error=p.error, run_id=run.run_id)
    assert p.key is not None and backend is not None
    if not force:  # another invocation or worker may have finished it since planning
        done = tracker.finished_run(p.key)
        if done:
            return Outcome.of(p, "skipped", run_id=done)
    run = tracker.start_cell(cfg, p.key, p.cell.label, grid_name, parent_id, extra_tags)
    sysm = system_metrics()
    t0 = time.perf_counter()

    def epoch_cb(stats: "EpochStats") -> None:
        run.log_epoch(stats)
        if on_epoch is not None:
            on_epoch(stats)

    error = None
    try:
        result = backend.run(cfg, epoch_cb)
        run.finish(result, extra_metrics=sysm())
    except KeyboardInterrupt:
        run.kill()
        raise
    except Exception as e:  # NaN loss, out of memory, bad data, ...: recorded, and the grid goes on
        error = f"{type(e).__name__}: {e}"
        try:
            run.fail(e)
        except Exception as log_error:  # the store itself failed: still report the cell
            error += f" (and recording the failure failed: {log_error})"
    if error is not None:
        _free_memory()  # out here, the exception's traceback no longer pins the failed run's tensors
        return Outcome.of(p, "failed", error=error, run_id=run.run_id, wall_s=time.perf_counter() - t0)
    if force:
        tracker.supersede(p.key, run.run_id)
    return Outcome.of(p, "done", run_id=run.run_id, wall_s=time.perf_counter() - t0,
                      value=primary_metric(result.metrics))


def _free_memory() -> None:
    import gc
    import sys

    gc.collect()
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()


class Terminated(KeyboardInterrupt):
    """SIGTERM, handled like Ctrl-C: the current run is marked KILLED and the process stops."""


def install_sigterm_handler() -> None:
    def handler(signum: int, frame: Any) -> None:
        raise Terminated(f"signal {signum}")

    try:
        signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread
        pass


# ------------------------------------------------------------------------------------ a grid
def run_sequential(plans: list[Planned], tracker: Tracker, grid_name: str, parent_id: str | None,
                   backend: Backend, *, force: bool, console: "Console | None") -> list[Outcome]:
    from rich.markup import escape
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                               TimeRemainingColumn)

    outcomes: list[Outcome] = []
    if not plans:
        return outcomes
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TextColumn("ETA"), TimeRemainingColumn())
    with Progress(*columns, console=console, disable=console is None) as bar:
        cells_task = bar.add_task("cells", total=len(plans))
        epoch_task = bar.add_task("", total=1, visible=False)
        for p in plans:
            c = p.cell.config
            epochs = p.cost.epochs if p.cost else 0
            bar.reset(epoch_task, total=max(epochs, 1), visible=epochs > 0,
                      description=escape(f"  {p.cell.label} {c.dataset} {c.shots}-shot seed {c.seed}: epoch"))
            out = execute_cell(p, tracker, grid_name, parent_id, backend, force=force,
                               on_epoch=lambda s: bar.update(epoch_task, completed=s.epoch + 1))
            outcomes.append(out)
            bar.advance(cells_task)
            if console is not None and out.status == "failed":
                console.print(f"[red]failed[/] {escape(out.label)} {out.dataset} seed {out.seed}: "
                              f"{escape(out.error)}", highlight=False)
    return outcomes


def run_grid(grid: Grid, *, tracking_uri: str | None = None, force: bool = False, workers: int = 1,
             storage: str | None = None, backend: Backend | None = None, backend_ref: str | None = None,
             dry_run: bool = False, console: "Console | None" = None,
             slurm: "Any | None" = None) -> Summary:
    """Plan, skip finished keys, run the rest (in this process, or through the work queue), summarise.

    Local queue workers are forked from a multiprocessing fork server; as with any multiprocessing code, a
    script that calls this with workers > 1 must guard its entry point with `if __name__ == "__main__":`."""
    backend = backend or load_backend(backend_ref)
    queued = workers != 1 or storage is not None or slurm is not None
    if dry_run and _store_absent(tracking_uri):
        tracker = None  # nothing can be finished yet; do not create the store just to look
    else:
        tracker = Tracker(tracking_uri, grid.name)  # unreachable store: fails here, before any training
    if queued and isinstance(backend, MudptBackend):
        backend.plan_device = "cpu"
    plans = plan_cells(list(grid.cells), backend, console)
    if all(p.error for p in plans):  # e.g. a missing data folder or checkpoint: one error, not N failed runs
        raise PlanningError(f"{grid.path}: no cell of grid {grid.name!r} could be prepared; the first error: "
                            f"{plans[0].error}")
    mark_finished(plans, tracker.finished_cells() if tracker else {})
    if dry_run:
        print_plan(grid, plans, tracker.throughput() if tracker else {}, console, force, max(workers, 1))
        return Summary([Outcome.of(p, "failed", error=p.error) for p in plans if p.error])
    assert tracker is not None
    todo = [p for p in plans if force or not p.finished_run]
    summary = Summary([Outcome.of(p, "skipped", run_id=p.finished_run or "") for p in plans
                       if not force and p.finished_run])
    parent = tracker.start_parent(grid.name, grid.seeds, str(grid.path.resolve()),
                                  {"grid_suite": grid.suite, "backbone": grid.backbone.name,
                                   "pretrained": grid.backbone.pretrained, "n_cells": len(plans)})
    status = "KILLED"
    try:
        if not todo:
            pass  # everything is finished: the summary says so
        elif queued:
            from .queue import run_queue

            summary.outcomes += run_queue(todo, tracker, grid.name, parent, workers=workers, storage=storage,
                                          force=force, backend_ref=backend_ref, console=console, slurm=slurm)
        else:
            summary.outcomes += run_sequential(todo, tracker, grid.name, parent, backend, force=force,
                                               console=console)
        status = "FINISHED"
    finally:
        tracker.end_parent(parent, status, {s: summary.count(s) for s in ("done", "skipped", "failed")})
    if console is not None:
        print_summary(summary, console, tracker.uri, grid.name)
    return summary


def _store_absent(uri: str | None) -> bool:
    path = sqlite_path(resolve_uri(uri))
    return path is not None and not path.exists()


# ------------------------------------------------------------------------------------ output
def _fmt_s(s: float | None) -> str:
    if s is None or not math.isfinite(s):
        return "?"
    if s < 90:
        return f"{s:.0f} s"
    return f"{s / 60:.1f} min" if s < 5400 else f"{s / 3600:.1f} h"


def print_plan(grid: Grid, plans: list[Planned], rates: dict, console: "Console | None", force: bool,
               workers: int) -> None:
    from rich.markup import escape
    from rich.table import Table

    if console is None:
        return
    t = Table(title=f"{grid.name}: {len(plans)} cells ({grid.suite} suite, backbone {grid.backbone.name}/"
                    f"{grid.backbone.pretrained}, {grid.n_layers} layers)", box=None, pad_edge=False)
    for col in ("#", "cell", "dataset", "K", "seed", "protocol", "key", "status", "epochs x imgs", "est."):
        t.add_column(col, no_wrap=col in ("key", "cell", "est."))
    total, unknown, to_run = 0.0, 0, 0
    for p in plans:
        c = p.cell.config
        if p.error:
            status = f"[red]error: {escape(p.error)}[/]"
        elif p.finished_run and not force:
            status = "finished"
        else:
            status = "rerun" if p.finished_run else "new"
        est = estimate_seconds(p, rates) if not p.error else None
        if status in ("new", "rerun"):
            to_run += 1
            if est is None:
                unknown += 1
            else:
                total += est
        cost = f"{p.cost.epochs} x {p.cost.train_images}" if p.cost and p.cost.epochs else ("eval only" if p.cost else "")
        protocol = c.protocol + (f" -> {len(c.targets)} targets" if c.targets else "")
        t.add_row(str(p.index), escape(p.cell.label), c.dataset, str(c.shots), str(c.seed), protocol,
                  p.key or "", status, cost, _fmt_s(est) if est is not None else "?")
    console.print(t)
    images = sum(p.cost.epochs * p.cost.train_images for p in plans if p.cost and (force or not p.finished_run))
    msg = f"to run: {to_run} of {len(plans)} cells, {images:,} training images (epochs x images)"
    if to_run > unknown:
        msg += f", estimated {_fmt_s(total)} sequentially"
        if workers > 1:
            msg += f", about {_fmt_s(total / workers)} with {workers} workers"
        msg += " (rates of this experiment's finished runs, else a built-in rate per backbone)"
    if unknown:
        msg += (f"; no estimate for {unknown} cell(s): no finished run of their backbone and method in this "
                f"experiment yet, and no built-in rate for the backbone")
    console.print(msg, highlight=False)


def print_summary(summary: Summary, console: "Console", uri: str, experiment: str) -> None:
    from rich.markup import escape
    from rich.table import Table

    counts = {s: summary.count(s) for s in ("done", "skipped", "failed")}
    console.print(f"[bold]{experiment}[/]: done {counts['done']}, skipped (already finished) "
                  f"{counts['skipped']}, failed {counts['failed']}; logged to {uri}", highlight=False)
    failed = [o for o in summary.outcomes if o.status == "failed"]
    if failed:
        t = Table(title="failed cells", title_style="bold red")
        for col in ("label", "dataset", "shots", "seed", "protocol", "error", "run"):
            t.add_column(col)
        for o in failed:
            t.add_row(escape(o.label), o.dataset, str(o.shots), str(o.seed), o.protocol, escape(o.error), o.run_id)
        console.print(t)
    console.print(f"see the runs: [cyan]mlflow ui --backend-store-uri {uri}[/]\n"
                  f"tables and plots: [cyan]mudpt-bench report --grid {experiment}"
                  + ("" if uri == resolve_uri(None) else f" --tracking-uri {uri}") + "[/]", highlight=False)


__all__ = ["Backend", "CellCost", "DEFAULT_EXPERIMENT", "MudptBackend", "Outcome", "Planned", "Summary",
           "execute_cell", "install_sigterm_handler", "load_backend", "plan_cells", "run_grid"]
