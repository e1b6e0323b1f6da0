"""`mudpt-bench report`: a plain function with typer annotations; the lead registers it on the CLI app.

Heavy imports (pandas, mlflow, matplotlib) happen inside the function so `mudpt-bench --help` stays fast.
"""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer


def report(
    grid: Annotated[Optional[str], typer.Option(
        "--grid", help="Grid name (its runs live in the experiment of the same name).")] = None,
    experiment: Annotated[Optional[str], typer.Option(
        "--experiment", help="MLflow experiment; `mudpt-bench` holds single `train` runs.")] = None,
    out: Annotated[Path, typer.Option("--out", help="Folder for tables, CSV, plots and summary.md.")] = Path(
        "mudpt-results/report"),
    tracking_uri: Annotated[Optional[str], typer.Option(
        "--tracking-uri",
        help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db in this folder).")] = None,
    with_published: Annotated[bool, typer.Option(
        "--with-published", help="Add the papers' reported numbers (ViT-B/16 OpenAI only), marked as such.")] = False,
    ci95: Annotated[bool, typer.Option(
        "--ci95", help="Show 1.96·std/√n instead of the population std over seeds.")] = False,
) -> None:
    """Turn finished runs into LaTeX tables, CSV, a Markdown summary and plots, aggregated as the papers do."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    from analysis.load import ReportError
    from analysis.report import SUMMARY, build_report

    console = Console()
    try:
        paths = build_report(
            tracking_uri, experiment, out, with_published, grid=grid, spread="ci95" if ci95 else "std",
            echo=lambda msg: console.print(f"[yellow]note:[/] {escape(msg)}"),
        )
    except ReportError as err:
        console.print(f"[red]error:[/] {escape(str(err))}")
        raise typer.Exit(1) from None

    kinds = {".tex": "LaTeX", ".csv": "CSV", ".pdf": "plot (PDF)", ".png": "plot (PNG)", ".md": "summary"}
    table = Table(title=f"Report written to {escape(str(out))}", show_lines=False)
    table.add_column("kind")
    table.add_column("files")
    for suffix, kind in kinds.items():
        names = [p.name for p in paths if p.suffix == suffix]
        if names:
            table.add_row(kind, escape(", ".join(names)))
    console.print(table)
    console.print(f"Start with [bold]{escape(str(Path(out) / SUMMARY))}[/]; `pdflatex report.tex` in that folder "
                  "previews every table.")
