"""`mudpt-bench data check --data-root DIR`: which CoOp datasets are usable, before a grid runs."""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Annotated, Any

import typer


def check_data_root(root: str | Path) -> list[dict[str, Any]]:
    """One row per CoOp dataset: status found / missing / invalid, class and image counts, message.

    "found" rows whose counts differ from the published splits say so in `message`; `warnings`
    holds the full warning strings the run would record.
    Loading lists every image folder once, so the first check of ImageNet takes a while; later
    checks reuse the cached listing.
    """
    from .base import DataError
    from .coop import COOP_DATASETS, DataCountWarning, load_coop

    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataError(f"data root {root} does not exist or is not a folder")
    rows = []
    for key, info in COOP_DATASETS.items():
        row: dict[str, Any] = {"dataset": key, "status": "missing", "classes": None, "train": None, "val": None,
                               "test": None, "message": "", "warnings": []}
        if not (root / info.dirname).is_dir():
            row["message"] = f"no folder {root / info.dirname}"
            rows.append(row)
            continue
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DataCountWarning)  # reported in the table instead
                splits = load_coop(key, root)
        except DataError as e:
            row.update(status="invalid", message=str(e))
        else:
            found = (splits.num_classes, len(splits.train), len(splits.val), len(splits.test))
            published = (info.num_classes, *info.counts)
            diffs = [f"{name} {f:,} (published {p:,})" for name, f, p in
                     zip(("classes", "train", "val", "test"), found, published) if p is not None and f != p]
            row.update(status="found", classes=found[0], train=found[1], val=found[2], test=found[3],
                       message=("differs from the published split: " + ", ".join(diffs)) if diffs else "",
                       warnings=list(splits.warnings))
        rows.append(row)
    return rows


def data_check(
    data_root: Annotated[Path, typer.Option("--data-root", help="The CoOp DATA folder (one sub-folder per dataset).")],
) -> None:
    """Check every CoOp dataset under DATA-ROOT: found / missing / invalid, with class and image counts."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    from .base import DataError

    console = Console()
    try:
        rows = check_data_root(data_root)
    except DataError as e:
        console.print(f"[red]error:[/red] {escape(str(e))}")
        raise typer.Exit(2) from None
    table = Table(title=f"CoOp datasets under {data_root}")
    for col in ("dataset", "status", "classes", "train", "val", "test", "message"):
        table.add_column(col, justify="right" if col in ("classes", "train", "val", "test") else "left",
                         overflow="fold")
    style = {"found": "green", "missing": "yellow", "invalid": "red"}
    for r in rows:
        table.add_row(r["dataset"], f"[{style[r['status']]}]{r['status']}[/]",
                      *("" if r[c] is None else f"{r[c]:,}" for c in ("classes", "train", "val", "test")),
                      escape(r["message"]))
    console.print(table)
    if any(r["status"] == "invalid" for r in rows):
        raise typer.Exit(1)
