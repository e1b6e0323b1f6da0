"""`build_report`: finished runs in MLflow -> LaTeX tables, CSV, summary.md and plots in one folder."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import pandas as pd

from analysis.aggregate import AVERAGE, Aggregates, aggregate, dataset_display
from analysis.latex import TableSpec, all_tables, render_document, render_latex, render_markdown
from analysis.load import LoadedRuns, ReportError, load_runs

SUMMARY = "summary.md"
DOCUMENT = "report.tex"


def _write(path: Path, text: str, written: list[Path]) -> None:
    path.write_text(text, encoding="utf-8")
    written.append(path)


def _csv(frame: pd.DataFrame, path: Path, written: list[Path]) -> None:
    frame.to_csv(path, index=False, float_format="%.4f")
    written.append(path)


def _md_table(frame: pd.DataFrame) -> str:
    def clean(v) -> str:
        text = "" if v is None or (isinstance(v, float) and pd.isna(v)) else str(v)
        return text.replace("|", r"\|").replace("\n", " ")[:160]

    head = "| " + " | ".join(frame.columns) + " |\n|" + "---|" * len(frame.columns) + "\n"
    return head + "".join("| " + " | ".join(clean(v) for v in row) + " |\n" for row in frame.itertuples(index=False))


def _incomplete_cells(agg: Aggregates) -> pd.DataFrame:
    """Cells missing seeds, and averages left empty because a dataset/target has no result at all."""
    parts = []
    for protocol, frame in agg.frames.items():
        if frame.empty:
            continue
        place = frame["target"] if "target" in frame else frame["dataset"]
        cell_short = (place != AVERAGE) & ~frame["complete"]
        no_average = (place == AVERAGE) & frame["mean"].isna()
        bad = frame[(cell_short | no_average) & frame["missing"].astype(bool)]
        bad = bad.assign(dataset=place[bad.index])
        if len(bad):
            parts.append(bad.assign(protocol=protocol)[["protocol", "label", "dataset", "shots", "seeds", "missing"]])
    if not parts:
        return pd.DataFrame()
    out = pd.concat(parts).drop_duplicates(["protocol", "label", "dataset", "shots"])
    out["dataset"] = out["dataset"].map(dataset_display)
    return out.rename(columns={"seeds": "seeds present", "missing": "missing"}).reset_index(drop=True)


def _summary(loaded: LoadedRuns, agg: Aggregates, specs: list[TableSpec], out_dir: Path, files: list[Path]) -> str:
    runs = loaded.runs
    lines = [
        f"# mudpt-bench report: {loaded.experiment}" + (f" (grid {loaded.grid})" if loaded.grid else ""),
        "",
        f"- MLflow store: `{loaded.tracking_uri}`, experiment `{loaded.experiment}`",
        f"- Finished cell runs: {len(runs)} ({runs.groupby(['label', 'dataset', 'shots', 'protocol']).ngroups} cells "
        f"over seeds {', '.join(str(s) for s in sorted(runs['seed'].unique()))})",
        "- Seeds the grid asked for: " + (", ".join(map(str, loaded.grid_seeds)) if loaded.grid_seeds
                                          else "unknown (no grid run); cells are compared with the seeds seen"),
        f"- Runs not finished (failed, interrupted or running): {len(loaded.unfinished)}",
        f"- Spread: {'population std over seeds (ddof=0)' if agg.spread == 'std' else '95% CI half-width'}",
        "",
    ]
    for note in loaded.warnings + agg.notes:
        lines.append(f"> Note: {note}\n")
    for spec in specs:
        lines += [f"## {spec.name}", "", render_markdown(spec)]
    incomplete = _incomplete_cells(agg)
    if len(incomplete):
        lines += ["## Incomplete cells: fewer seeds than the grid asked for (marked † in the tables), "
                  "or averages not computed (–)", "",
                  _md_table(incomplete)]
    if len(loaded.unfinished):
        lines += ["## Runs that did not finish (not in any table)", "", _md_table(loaded.unfinished)]
    lines += ["## Files", ""] + [f"- `{p.relative_to(out_dir)}`" for p in files] + [""]
    return "\n".join(lines)


def build_report(
    tracking_uri: str | None,
    experiment: str | None = None,
    out_dir: Path = Path("mudpt-results/report"),
    with_published: bool = False,
    *,
    grid: str | None = None,
    spread: str = "std",
    plots: bool = True,
    echo: Callable[[str], None] | None = None,
) -> list[Path]:
    """Write the report of one experiment (or grid) and return the paths written.

    Per protocol present: `<table>.tex` (booktabs, one per table), `<protocol>.csv` (aggregates, long form),
    plots as PDF and PNG; plus `runs.csv` (every finished run), `report.tex` (a standalone document
    inputting every table) and `summary.md` (all tables in Markdown, incomplete and failed cells).
    Raises ReportError with a message for the user when there is nothing to report.
    """
    loaded = load_runs(tracking_uri, experiment, grid)
    for warning in loaded.warnings:
        if echo:
            echo(warning)
    agg = aggregate(loaded.runs, loaded.grid_seeds, spread)
    specs = all_tables(agg, with_published)
    if not specs:
        raise ReportError(
            f"{len(loaded.runs)} finished run(s) in experiment {loaded.experiment!r}, but none of a protocol the "
            f"report knows (found: {sorted(set(loaded.runs['protocol']))})"
        )
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for spec in specs:
        _write(out_dir / f"{spec.name}.tex", render_latex(spec), written)
    _write(out_dir / DOCUMENT, render_document(specs, f"mudpt-bench report: {loaded.experiment}"), written)
    for protocol, frame in agg.frames.items():
        _csv(frame, out_dir / f"{protocol}.csv", written)
    _csv(loaded.runs.drop(columns=["status"], errors="ignore"), out_dir / "runs.csv", written)
    if len(loaded.unfinished):
        _csv(loaded.unfinished, out_dir / "unfinished.csv", written)
    if plots:
        from analysis.plots import all_plots

        written += all_plots(agg, out_dir)
    summary = out_dir / SUMMARY
    _write(summary, _summary(loaded, agg, specs, out_dir, written + [summary]), written)
    for note in agg.notes:
        if echo:
            echo(note)
    return written
