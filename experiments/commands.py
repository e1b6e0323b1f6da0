"""`mudpt-bench run | worker | search | train`: typer-annotated functions that cli.py registers.

Heavy imports (torch, mlflow, optuna) happen inside the functions so `mudpt-bench --help` stays fast.
"""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer

_BACKBONE = "open_clip architecture (e.g. ViT-B-16); default: the grid's, or the embedded mudpt-tiny."
_PRETRAINED = ("Weights: an open_clip tag (openai), a checkpoint file, local-dir:PATH, embedded or random. "
               "Default: the grid's when it names the same architecture, else openai.")
_DATA_ROOT = "CoOp data folder (PROTOCOLS §1.1). Selects the grid's `coop:` settings; without it: the embedded suite."
_TRACKING = "MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db in the working folder)."

GridOpt = Annotated[str, typer.Option("--grid", "-g", help="A named grid (see `mudpt-bench list`) or a grid file.")]
BackboneOpt = Annotated[Optional[str], typer.Option("--backbone", help=_BACKBONE)]
PretrainedOpt = Annotated[Optional[str], typer.Option("--pretrained", help=_PRETRAINED)]
DataRootOpt = Annotated[Optional[Path], typer.Option("--data-root", help=_DATA_ROOT)]
TrackingOpt = Annotated[Optional[str], typer.Option("--tracking-uri", help=_TRACKING)]


def _console():
    from rich.console import Console

    console = Console()
    # Piped into a file or a log, rich would wrap tables at 80 columns.
    return console if console.is_terminal else Console(width=200)


def _root(data_root: Path | None) -> str | None:
    # Absolute, so the same folder typed two ways gives the same cell keys.
    return str(data_root.expanduser().resolve()) if data_root is not None else None


def run(
    grid: GridOpt,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the cells, their keys and an estimated cost; run nothing.")] = False,
    force: Annotated[bool, typer.Option("--force", help="Rerun cells that already have a finished run.")] = False,
    workers: Annotated[int, typer.Option("--workers", "-w", min=0, help=(
        "Worker processes. More than 1 (or --storage) runs the cells through an Optuna work queue, one GPU per "
        "worker when GPUs exist; 0 with --storage only enqueues, for `mudpt-bench worker` on other machines."))] = 1,
    tracking_uri: TrackingOpt = None,
    backbone: BackboneOpt = None,
    pretrained: PretrainedOpt = None,
    data_root: DataRootOpt = None,
    storage: Annotated[Optional[str], typer.Option("--storage", help=(
        "Work-queue storage: journal:PATH (one machine or a shared filesystem) or a postgresql:// / mysql:// "
        "URL (many machines). Default with --workers > 1: a journal file under mudpt-results/queue/."))] = None,
    suite: Annotated[Optional[str], typer.Option("--suite", help="embedded or coop: which section of the grid to use (default: coop when --data-root is given).")] = None,
    slurm: Annotated[bool, typer.Option("--slurm", help="Start the workers as a Slurm job array (needs submitit).")] = False,
    slurm_partition: Annotated[Optional[str], typer.Option("--slurm-partition", help="Slurm partition for --slurm.")] = None,
    slurm_time_min: Annotated[int, typer.Option("--slurm-time-min", help="Time limit of each Slurm worker, minutes.")] = 24 * 60,
    backend: Annotated[Optional[str], typer.Option("--backend", hidden=True, help="module:attr of a test backend.")] = None,
) -> None:
    """Run a grid: every cell once, logged to MLflow; finished cells are skipped, failures do not stop the grid."""
    from .grid import load_grid
    from .queue import SlurmOptions, require_submitit
    from .runner import install_sigterm_handler, run_grid

    console = _console()
    if slurm:
        require_submitit()  # before any planning or enqueuing
    g = load_grid(grid, backbone=backbone, pretrained=pretrained, data_root=_root(data_root), suite=suite)
    slurm_opts = SlurmOptions(partition=slurm_partition, timeout_min=slurm_time_min) if slurm else None
    install_sigterm_handler()
    try:
        summary = run_grid(g, tracking_uri=tracking_uri, force=force, workers=workers, storage=storage,
                           backend_ref=backend, dry_run=dry_run, console=console, slurm=slurm_opts)
    except KeyboardInterrupt:
        console.print("[yellow]interrupted[/]: the current cell is marked KILLED; run the same command again "
                      "to finish the grid (finished cells are skipped).")
        raise typer.Exit(130)
    raise typer.Exit(summary.exit_code)


def worker(
    storage: Annotated[str, typer.Option("--storage", help="The work-queue storage URL printed by `run`.")],
    study: Annotated[Optional[str], typer.Option("--study", help="Drain only this queue study (default: all).")] = None,
    tracking_uri: Annotated[Optional[str], typer.Option("--tracking-uri", help=(
        "MLflow tracking URI reachable from this machine (default: the one the queue was created with)."))] = None,
) -> None:
    """Drain a work queue: claim cells one at a time (atomically), run them, log them; exit when it is empty."""
    from .queue import work
    from .runner import install_sigterm_handler

    console = _console()
    install_sigterm_handler()
    try:
        outcomes = work(storage, study_name=study, tracking_uri=tracking_uri,
                        log=lambda m: console.print(m, highlight=False, markup=False))
    except KeyboardInterrupt:
        raise typer.Exit(130)
    failed = sum(o.status == "failed" for o in outcomes)
    console.print(f"queue drained: {len(outcomes)} cell(s) handled here, {failed} failed", highlight=False)
    raise typer.Exit(1 if failed else 0)


def search(
    method: Annotated[str, typer.Option("--method", "-m", help="Method id (see `mudpt-bench list`).")],
    dataset: Annotated[str, typer.Option("--dataset", "-d", help="Dataset to tune on (its few-shot validation split).")],
    n_trials: Annotated[int, typer.Option("--n-trials", "-n", min=1, help="Trials to run in this invocation.")] = 20,
    storage: Annotated[Optional[str], typer.Option("--storage", help=(
        "Optuna storage (journal:PATH or an RDB URL); several `search` processes on one storage share the study. "
        "Default: mudpt-results/search/<study>.journal."))] = None,
    shots: Annotated[int, typer.Option("--shots", help="Shots per class (K); validation uses min(K, 4).")] = 16,
    seed: Annotated[int, typer.Option("--seed", help="Few-shot draw and training seed.")] = 1,
    write_best: Annotated[Optional[Path], typer.Option("--write-best", help="Write the best trial as a grid file that `run --grid` accepts.")] = None,
    study_name: Annotated[Optional[str], typer.Option("--study", help="Study name (default: method-dataset-Kshot-seedS-backbone).")] = None,
    timeout_min: Annotated[Optional[float], typer.Option("--timeout-min", help="Stop starting trials after this many minutes.")] = None,
    backbone: BackboneOpt = None,
    pretrained: PretrainedOpt = None,
    data_root: DataRootOpt = None,
    tracking_uri: TrackingOpt = None,
) -> None:
    """Optuna TPE search over the method's space, scored on few-shot validation accuracy (never test)."""
    from .search import run_search

    console = _console()
    out = run_search(method, dataset, n_trials=n_trials, shots=shots, seed=seed, storage=storage,
                     study_name=study_name, backbone=backbone, pretrained=pretrained, data_root=_root(data_root),
                     tracking_uri=tracking_uri, timeout_s=timeout_min * 60 if timeout_min else None,
                     write_best=write_best, console=console)
    console.print(f"study {out.study_name} ({out.storage}): {out.n_complete} complete, {out.n_pruned} pruned, "
                  f"{out.n_failed} failed; MLflow experiment search:{out.study_name}", highlight=False)
    if out.best_value is None:
        console.print("[red]no trial completed[/]")
        raise typer.Exit(1)
    console.print(f"best val acc {out.best_value:.2f} with {out.best_params}", highlight=False, markup=False)
    if out.best_file:
        console.print(f"wrote {out.best_file}: mudpt-bench run --grid {out.best_file}", highlight=False)


def _scalar(text: str) -> Any:
    """int, float, true/false, else the string itself (so `fusion=off` stays "off", unlike YAML 1.1)."""
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return {"true": True, "false": False}.get(text.lower(), text)


def _parse_sets(items: list[str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """`--set k=v`: recipe.K / opt.K choose explicitly; a bare recipe field goes to the recipe, else a switch."""
    from dataclasses import fields

    from mudpt.config import Recipe
    from mudpt.errors import UserError

    recipe_fields = {f.name for f in fields(Recipe)}
    options: dict[str, Any] = {}
    recipe: dict[str, Any] = {}
    for item in items:
        k, sep, v = item.partition("=")
        if not sep or not k.strip():
            raise UserError(f"--set {item!r}: expected KEY=VALUE (e.g. --set depth=3, --set recipe.lr=0.002)")
        k, value = k.strip(), _scalar(v.strip())
        if k.startswith("recipe."):
            recipe[k[len("recipe."):]] = value
        elif k.startswith(("opt.", "options.")):
            options[k.split(".", 1)[1]] = value
        elif k in recipe_fields:
            recipe[k] = value
        else:
            options[k] = value
    return options, recipe


def train(
    method: Annotated[str, typer.Option("--method", "-m", help="Method id (see `mudpt-bench list`).")],
    dataset: Annotated[str, typer.Option("--dataset", "-d", help="Dataset (see `mudpt-bench list`).")],
    shots: Annotated[int, typer.Option("--shots", help="Shots per class (K).")] = 16,
    seed: Annotated[int, typer.Option("--seed")] = 1,
    protocol: Annotated[str, typer.Option("--protocol", help="fewshot, base2new, cross-dataset, domain-generalization or zeroshot.")] = "fewshot",
    targets: Annotated[Optional[list[str]], typer.Option("--target", help="Evaluation-only dataset (repeat), for cross-dataset / domain-generalization.")] = None,
    fusion: Annotated[Optional[str], typer.Option("--fusion", help="MuDPT: bi, off, t2v or v2t.")] = None,
    fusion_net: Annotated[Optional[str], typer.Option("--fusion-net", help="MuDPT: linear or injection.")] = None,
    depth: Annotated[Optional[int], typer.Option("--depth", help="Prompted layers J (1..backbone layers).")] = None,
    n_ctx: Annotated[Optional[int], typer.Option("--n-ctx", help="Context tokens per prompt.")] = None,
    ctx_init: Annotated[Optional[str], typer.Option("--ctx-init", help="Words the text context starts from.")] = None,
    set_: Annotated[Optional[list[str]], typer.Option("--set", help="Any switch or recipe field, KEY=VALUE (repeat).")] = None,
    lr: Annotated[Optional[float], typer.Option("--lr", help="Learning rate (default: the method's recipe).")] = None,
    epochs: Annotated[Optional[int], typer.Option("--epochs", help="Epochs (default: the method's recipe).")] = None,
    batch_size: Annotated[Optional[int], typer.Option("--batch-size", help="Batch size (default: the method's recipe).")] = None,
    force: Annotated[bool, typer.Option("--force", help="Train again even if this exact cell has a finished run.")] = False,
    backbone: BackboneOpt = None,
    pretrained: PretrainedOpt = None,
    data_root: DataRootOpt = None,
    tracking_uri: TrackingOpt = None,
) -> None:
    """Train and evaluate one cell, print its metrics and where it was logged (MLflow experiment mudpt-bench)."""
    from rich.markup import escape
    from rich.table import Table

    from .grid import build_grid
    from .runner import MudptBackend, execute_cell, install_sigterm_handler, plan_cells
    from .tracking import DEFAULT_EXPERIMENT, Tracker, run_url

    console = _console()
    options, recipe = _parse_sets(set_ or [])
    for k, v in (("fusion", fusion), ("fusion_net", fusion_net), ("depth", depth), ("n_ctx", n_ctx),
                 ("ctx_init", ctx_init)):
        if v is not None:
            options[k] = v
    for k, v in (("lr", lr), ("epochs", epochs), ("batch_size", batch_size)):
        if v is not None:
            recipe[k] = v
    settings: dict[str, Any] = {"name": DEFAULT_EXPERIMENT, "method": method, "dataset": dataset, "shots": shots,
                                "seed": seed, "protocol": protocol, "options": options, "recipe": recipe}
    if targets:
        settings["targets"] = [t for item in targets for t in item.split(",") if t]
    g = build_grid(settings, Path("command line"), backbone=backbone, pretrained=pretrained,
                   data_root=_root(data_root))
    cell = g.cells[0]
    tracker = Tracker(tracking_uri, DEFAULT_EXPERIMENT)
    backend = MudptBackend()
    plan = plan_cells([cell], backend, console)[0]
    install_sigterm_handler()
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    epochs_total = plan.cost.epochs if plan.cost else 0
    with Progress(TextColumn(escape(f"{cell.label} {dataset}: epoch")), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), console=console, disable=epochs_total == 0) as bar:
        task = bar.add_task("train", total=max(epochs_total, 1))
        try:
            out = execute_cell(plan, tracker, DEFAULT_EXPERIMENT, None, backend, force=force,
                               on_epoch=lambda s: bar.update(task, completed=s.epoch + 1))
        except KeyboardInterrupt:
            raise typer.Exit(130)
    if out.status == "failed":
        console.print(f"[red]failed[/]: {escape(out.error)}\nrecorded in {run_url(tracker.uri, tracker.experiment_id, out.run_id)}",
                      highlight=False, soft_wrap=True)
        raise typer.Exit(1)
    run = tracker.client.get_run(out.run_id)
    t = Table(title=escape(f"{cell.label} on {dataset} ({protocol}, {shots} shots, seed {seed})"
                    + ("  (already finished: not retrained; --force to train again)" if out.status == "skipped" else "")))
    t.add_column("metric")
    t.add_column("value", justify="right")
    for k, v in sorted(run.data.metrics.items()):
        if k not in ("train_loss", "lr", "train_acc", "epoch_s", "val_acc"):  # per-epoch series
            t.add_row(k, f"{v:.4g}" if abs(v) < 1e5 else f"{v:,.0f}")
    console.print(t)
    console.print(f"key {plan.key}; logged to {run_url(tracker.uri, tracker.experiment_id, out.run_id)}",
                  highlight=False, soft_wrap=True)
