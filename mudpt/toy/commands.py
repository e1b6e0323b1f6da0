"""`mudpt-bench toy ...`: pretrain the embedded tiny CLIP, and check the synthetic suite's headroom."""
from __future__ import annotations

from pathlib import Path

import typer

app = typer.Typer(name="toy", help="The embedded default: tiny CLIP pretraining and headroom check.",
                  no_args_is_help=True)

_DEFAULT_OUT = Path(__file__).with_name("assets")


@app.command()
def pretrain(
    steps: int = typer.Option(2000, help="Optimiser steps (the schedule is step-based, so results do not depend on speed)."),
    seed: int = typer.Option(0, help="Seed of the data pool, the caption draws and the initialisation."),
    batch_size: int = typer.Option(256, "--batch-size", help="Image-caption pairs per step."),
    out: Path = typer.Option(_DEFAULT_OUT, help="Folder for mudpt-tiny.safetensors and mudpt-tiny.meta.json."),
    pool_size: int = typer.Option(120_000, "--pool-size", help="Pre-rendered images sampled with replacement."),
):
    """Pretrain mudpt-tiny contrastively on the procedural world (about 30 min on 2 CPU cores)."""
    from .pretrain import PretrainConfig, pretrain as run

    cfg = PretrainConfig(steps=steps, seed=seed, batch_size=batch_size, pool_size=pool_size)
    command = (f"mudpt-bench toy pretrain --steps {steps} --seed {seed} --batch-size {batch_size} "
               f"--pool-size {pool_size} --out {out}")
    meta = run(cfg, out, command)
    typer.echo(f"done: {out}/mudpt-tiny.safetensors sha256 {meta['sha256']}, final loss {meta['final_loss']}")


@app.command()
def headroom(
    reduced: bool = typer.Option(False, help="Few test images per class (CI)."),
    weights: Path = typer.Option(None, help="Checkpoint to evaluate (default: the shipped one)."),
    tuned: bool = typer.Option(False, "--tuned", help="Also train 16-shot MuDPT on the base classes of each dataset "
                               "and require a mean gain of 5 points over zero-shot (about 2 minutes)."),
    seed: int = typer.Option(1, help="Seed of the few-shot draw and training, with --tuned."),
):
    """Zero-shot top-1 of the tiny CLIP on every embedded dataset, against the band [1.5x chance, 85%]."""
    from .headroom import headroom_table

    rows = headroom_table(reduced=reduced, weights=weights)
    bad = [r.dataset for r in rows if not r.in_band]
    if tuned:
        from .tuning_gain import REQUIRED_MEAN_GAIN, gain_table, markdown, mean_gain

        gains = gain_table(seed=seed)
        typer.echo(markdown(gains))
        if mean_gain(gains) < REQUIRED_MEAN_GAIN:
            bad.append(f"mean MuDPT gain {mean_gain(gains):+.1f} < {REQUIRED_MEAN_GAIN}")
    if bad:
        typer.echo(f"out of band: {', '.join(bad)}", err=True)
        raise typer.Exit(1)


if __name__ == "__main__":
    app()
