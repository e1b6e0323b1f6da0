"""Hyper-parameter search with Optuna (TPE), scored on few-shot *validation* accuracy.

Each method declares its search space (`search_space(trial, n_layers)`). A trial trains one cell and is
scored on the min(K, 4)-shot validation split (`run_experiment(..., eval_split="val")`); the test split
is never evaluated. Pruning (MedianPruner) uses the validation accuracy measured after every epoch
(`eval_every_epoch=True`). Every trial is an MLflow run (experiment `search:<study>`, tag
mudpt.role=trial), logged directly. The best trial can be written as a grid file that `run --grid` takes.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mudpt.errors import UserError

from .grid import Grid, GridError, build_grid

if TYPE_CHECKING:  # pragma: no cover
    from rich.console import Console

    from .runner import Backend


class SearchError(UserError):
    """A search that cannot start (e.g. a dataset whose validation split is its test split)."""


@dataclass
class SearchOutcome:
    study_name: str
    storage: str
    n_complete: int
    n_pruned: int
    n_failed: int
    best_value: float | None
    best_params: dict[str, Any]
    best_file: Path | None


def default_study_name(method: str, dataset: str, shots: int, seed: int, backbone: str) -> str:
    return f"{method}-{dataset}-{shots}shot-seed{seed}-{backbone}"


def _base_settings(method: str, dataset: str, shots: int, seed: int) -> dict[str, Any]:
    return {"method": method, "dataset": dataset, "shots": shots, "seed": seed, "protocol": "fewshot"}


def _cell_grid(settings: dict[str, Any], backbone: str | None, pretrained: str | None,
               data_root: str | None, origin: str) -> Grid:
    return build_grid(settings, Path(origin), backbone=backbone, pretrained=pretrained, data_root=data_root)


def run_search(method: str, dataset: str, *, n_trials: int, shots: int = 16, seed: int = 1,
               storage: str | None = None, study_name: str | None = None, backbone: str | None = None,
               pretrained: str | None = None, data_root: str | None = None, tracking_uri: str | None = None,
               timeout_s: float | None = None, write_best: Path | None = None, sampler_seed: int | None = None,
               backend: "Backend | None" = None, console: "Console | None" = None) -> SearchOutcome:
    import optuna
    from optuna.trial import TrialState

    from mudpt.data.fewshot import TRAIN_ONLY_FEWSHOT
    from mudpt.method import get_method

    from .queue import open_storage
    from .runner import MudptBackend
    from .tracking import Tracker

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if n_trials < 1:
        raise SearchError(f"--n-trials {n_trials}: expected at least 1")
    base = _cell_grid(_base_settings(method, dataset, shots, seed), backbone, pretrained, data_root,
                      "search settings")
    if dataset in TRAIN_ONLY_FEWSHOT:
        raise SearchError(f"dataset {dataset!r} has no validation split apart from its test split (its val list "
                          f"is the test set, PROTOCOLS §1.1), so a search would tune on test; search on "
                          f"another dataset")
    bb, n_layers = base.backbone, base.n_layers
    cls = get_method(method)
    if not cls.trains:
        raise SearchError(f"method {method!r} does not train; there is nothing to search")
    study_name = study_name or default_study_name(method, dataset, shots, seed, bb.name)
    storage = storage or "journal:" + str((Path("mudpt-results") / "search" / f"{study_name}.journal").resolve())
    tracker = Tracker(tracking_uri, f"search:{study_name}")  # unreachable store: fails before any training
    backend = backend or MudptBackend()
    study = optuna.create_study(
        study_name=study_name, storage=open_storage(storage), direction="maximize", load_if_exists=True,
        sampler=optuna.samplers.TPESampler(seed=sampler_seed),
        # The first epochs of a warm-up schedule say little; prune only once a few trials have finished.
        pruner=optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=1))

    def objective(trial: "optuna.Trial") -> float:
        space = cls.search_space(trial, n_layers)
        options, recipe = dict(space.get("options", {})), dict(space.get("recipe", {}))
        trial.set_user_attr("options", options)
        trial.set_user_attr("recipe", recipe)
        try:
            cell = _cell_grid({**_base_settings(method, dataset, shots, seed), "options": options, "recipe": recipe},
                              bb.name, bb.pretrained, data_root, f"{method}.search_space").cells[0]
        except GridError as e:  # the method's space proposed an invalid cell: a bug in the space
            raise RuntimeError(f"search space of {method!r} proposed an invalid cell: {e}") from e
        cfg = cell.config
        run = tracker.start_cell(cfg, cfg.key({"eval_split": "val"}), cell.label, f"search:{study_name}", None,
                                 {"mudpt.study": study_name, "mudpt.trial": str(trial.number)}, role="trial")

        def on_epoch(stats: Any) -> None:
            run.log_epoch(stats)
            if stats.val_acc is not None:
                trial.report(stats.val_acc, stats.epoch)
                if trial.should_prune():
                    raise optuna.TrialPruned(f"val acc {stats.val_acc:.2f} at epoch {stats.epoch}")

        try:
            result = backend.run(cfg, on_epoch, eval_split="val", eval_every_epoch=True)
            value = result.metrics.get("val_acc")
            if value is None or not math.isfinite(value):
                raise RuntimeError(f"the run reported no finite val_acc (metrics: {sorted(result.metrics)})")
            run.finish(result, extra_params={f"search.{k}": v for k, v in trial.params.items()})
        except optuna.TrialPruned:
            run.client.set_tag(run.run_id, "mudpt.status", "pruned")
            run.client.set_terminated(run.run_id, "KILLED")
            raise
        except KeyboardInterrupt:
            run.kill()
            raise
        except Exception as e:
            run.fail(e)
            raise
        trial.set_user_attr("run_id", run.run_id)
        return float(value)

    def report(study: "optuna.Study", t: "optuna.trial.FrozenTrial") -> None:
        if console is not None:
            v = f"val acc {t.value:.2f}" if t.value is not None else t.state.name.lower()
            console.print(f"trial {t.number}: {v}  {t.params}", highlight=False, markup=False)

    study.optimize(objective, n_trials=n_trials, timeout=timeout_s, catch=(Exception,), callbacks=[report])
    trials = study.get_trials(deepcopy=False)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    best = max(complete, key=lambda t: t.value) if complete else None
    best_file = None
    if best is not None and write_best is not None:
        best_file = write_best_grid(Path(write_best), study_name, storage, best, method, dataset, shots, base)
    return SearchOutcome(study_name, storage, len(complete), sum(t.state == TrialState.PRUNED for t in trials),
                         sum(t.state == TrialState.FAIL for t in trials), best.value if best else None,
                         dict(best.params) if best else {}, best_file)


def write_best_grid(path: Path, study_name: str, storage: str, best: Any, method: str, dataset: str,
                    shots: int, base: Grid, seeds: tuple[int, ...] = (1, 2, 3)) -> Path:
    """A grid file running the best trial's settings on the test split with seeds 1-3."""
    import yaml

    grid = {
        "name": f"best-{study_name}",
        "description": f"best of Optuna study {study_name} (trial {best.number}, few-shot val acc "
                       f"{best.value:.2f}); test with seeds {', '.join(map(str, seeds))}",
        "protocol": "fewshot",
        "method": method,
        "options": dict(best.user_attrs.get("options", {})),
        "recipe": dict(best.user_attrs.get("recipe", {})),
        "dataset": dataset,
        "shots": shots,
        "seeds": list(seeds),
        "backbone": {"name": base.backbone.name, "pretrained": base.backbone.pretrained},
    }
    data_root = base.cells[0].config.data_root
    header = (f"# Written by `mudpt-bench search`: study {study_name!r} in {storage}, trial {best.number}.\n"
              f"# Objective: min(K,4)-shot validation accuracy {best.value:.2f}% (the test split was not used).\n"
              f"# Test these settings:  mudpt-bench run --grid {path}"
              + (f" --data-root {data_root}" if data_root else "") + "\n")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(header + yaml.safe_dump(grid, sort_keys=False))
    return path
