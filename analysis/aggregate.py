"""The papers' aggregation rules (PROTOCOLS §3.6), applied to the tidy runs of `analysis.load`.

- A cell (method/label, dataset, shots, protocol, backbone) is the mean over its seeds; the spread is
  the population std (ddof=0, numpy's default, as CoOp's parse_test_res.py), or 1.96·std/√n.
- A cell with fewer seeds than the grid asked for is kept but marked (`complete=False`, `missing`
  names the seeds), and every average built from it inherits the mark.
- Dataset average: arithmetic mean over the datasets of the seed means. A method missing one of the
  table's datasets gets no average (NaN, `missing` says which), never an average over fewer datasets.
- Base-to-new: HM per dataset is the HM of the seed-mean Base and New; the average row is the HM of the
  dataset-averaged Base and New (not the mean of per-dataset HMs).
- Cross-dataset / domain generalisation: the average is over the targets, the source excluded.

Frames returned here are long: one row per (cell, metric), columns `mean std n seeds missing complete`.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Iterable, Sequence

import numpy as np
import pandas as pd

AVERAGE = "<average>"  # dataset/target key of average rows; never a registry name
CONTEXT = ["backbone", "pretrained"]
CELL = ["protocol", "backbone", "pretrained", "method", "label", "dataset", "shots", "targets"]
STAT_COLUMNS = ["mean", "std", "n", "seeds", "missing", "complete"]
TRANSFER_PROTOCOLS = ("cross-dataset", "domain-generalization")

# Registry name -> the name the papers print, in the papers' column order.
DATASET_DISPLAY = {
    "imagenet": "ImageNet",
    "caltech101": "Caltech101",
    "oxford_pets": "OxfordPets",
    "stanford_cars": "StanfordCars",
    "oxford_flowers": "Flowers102",
    "food101": "Food101",
    "fgvc_aircraft": "FGVCAircraft",
    "sun397": "SUN397",
    "dtd": "DTD",
    "eurosat": "EuroSAT",
    "ucf101": "UCF101",
    "imagenetv2": "ImageNetV2",
    "imagenet_sketch": "ImageNet-Sketch",
    "imagenet_a": "ImageNet-A",
    "imagenet_r": "ImageNet-R",
}
METHOD_ORDER = ("zsclip", "coop", "cocoop", "vpt-shallow", "vpt-deep", "ivlp", "maple", "mudpt")


def dataset_display(name: str) -> str:
    return "Average" if name == AVERAGE else DATASET_DISPLAY.get(name, name)


def dataset_sort_key(name: str) -> tuple:
    if name == AVERAGE:
        return (0, 0, "")
    order = list(DATASET_DISPLAY)
    return (1, order.index(name), "") if name in DATASET_DISPLAY else (2, 0, name)


def natural_key(value: str) -> tuple:
    try:
        return (0, float(value), "")
    except ValueError:
        return (1, 0.0, value)


def parse_label(label: str) -> tuple[str, dict[str, str]]:
    """`mudpt[depth=3,fusion=off]` -> ("mudpt", {"depth": "3", "fusion": "off"})."""
    m = re.fullmatch(r"([^\[\]]+)(?:\[(.*)\])?", label)
    if not m:
        return label, {}
    opts = dict(part.split("=", 1) for part in (m.group(2) or "").split(",") if "=" in part)
    return m.group(1), opts


def label_sort_key(label: str) -> tuple:
    method, opts = parse_label(label)
    rank = METHOD_ORDER.index(method) if method in METHOD_ORDER else len(METHOD_ORDER)
    return (rank, method, len(opts) > 0, tuple((k, natural_key(v)) for k, v in opts.items()))


def harmonic_mean(base: float, new: float) -> float:
    if not (math.isfinite(base) and math.isfinite(new)) or base + new == 0:
        return float("nan")
    return 2 * base * new / (base + new)


def spread(values: np.ndarray, kind: str = "std") -> float:
    """Population std (ddof=0) as the papers' parse_test_res.py, or the 95% CI half-width."""
    if len(values) == 0:
        return float("nan")
    std = float(np.std(values, ddof=0))
    if kind == "std":
        return std
    if kind == "ci95":
        return 1.96 * std / math.sqrt(len(values))
    raise ValueError(f"spread {kind!r}: expected 'std' or 'ci95'")


def _seeds_text(seeds: Iterable[int]) -> str:
    return ",".join(str(s) for s in sorted(seeds))


@dataclass
class Aggregates:
    """Everything the renderers need, per protocol present in the runs."""

    runs: pd.DataFrame
    frames: dict[str, pd.DataFrame]  # protocol -> long frame (fewshot holds zeroshot cells as shots=0)
    seedwise: dict[str, pd.DataFrame]  # protocol -> per-seed headline scores (for plot spreads)
    options: pd.DataFrame  # (method, label) -> resolved opt.* switches
    spread: str = "std"
    grid_seeds: tuple[int, ...] | None = None
    notes: list[str] = field(default_factory=list)


def expected_seeds(runs: pd.DataFrame, grid_seeds: Sequence[int] | None) -> pd.Series:
    """Seeds each run's cell should have: the grid's, or (no grid runs) all seeds seen beside it.

    Cells without trainable parameters (zero-shot CLIP) do not depend on the seed, so one seed is complete.
    """
    if grid_seeds:
        wanted = pd.Series([tuple(sorted(grid_seeds))] * len(runs), index=runs.index, dtype=object)
    else:
        part = ["protocol"] + CONTEXT
        seen = runs.groupby(part)["seed"].agg(lambda s: tuple(sorted(set(s))))
        wanted = pd.Series([seen[k] for k in zip(*(runs[c] for c in part))], index=runs.index, dtype=object)
    if "n_trainable" in runs:
        frozen = runs["n_trainable"].fillna(-1) == 0
        wanted = wanted.where(~frozen, pd.Series([None] * len(runs), index=runs.index, dtype=object))
    return wanted


def cell_stats(runs: pd.DataFrame, metrics: Sequence[str], grid_seeds: Sequence[int] | None = None,
               kind: str = "std") -> pd.DataFrame:
    """Mean and spread over seeds of every (cell, metric); marks cells missing seeds."""
    present = [m for m in metrics if m in runs.columns]
    runs = runs.assign(_expected=expected_seeds(runs, grid_seeds))
    rows = []
    for key, group in runs.groupby(CELL, sort=False, dropna=False):
        expected = group["_expected"].iloc[0]
        for metric in present:
            sub = group[group[metric].notna()]
            if sub.empty:
                continue
            values = sub[metric].to_numpy(dtype=float)
            seeds = set(sub["seed"])
            missing = sorted(set(expected) - seeds) if expected is not None else []
            rows.append({
                **dict(zip(CELL, key)), "metric": metric,
                "mean": float(values.mean()), "n": len(values),
                # One value has no spread; 0.00 would claim that seeds agree.
                "std": spread(values, kind) if len(values) > 1 else float("nan"),
                "seeds": _seeds_text(seeds),
                "missing": f"seeds {_seeds_text(missing)} of {_seeds_text(expected)}" if missing else "",
                "complete": not missing,
            })
    return pd.DataFrame(rows, columns=CELL + ["metric"] + STAT_COLUMNS)


def _average_rows(cells: pd.DataFrame, over: str, group_by: list[str], universe_by: list[str]) -> pd.DataFrame:
    """Mean over `over` (datasets or targets) of the cell means, per `group_by` + metric.

    The set averaged over is every value of `over` seen within `universe_by` (the table); a row that
    lacks any of them gets NaN and says which are missing.
    """
    rows = []
    universe = cells.groupby(universe_by + ["metric"], dropna=False)[over].agg(lambda s: set(s))
    for key, group in cells.groupby(group_by + ["metric"], sort=False, dropna=False):
        info = dict(zip(group_by + ["metric"], key))
        wanted = universe[tuple(info[c] for c in universe_by + ["metric"])]
        have = set(group[over])
        lacking = sorted(wanted - have, key=dataset_sort_key)
        incomplete = group.loc[~group["complete"], over].tolist()
        notes = []
        if lacking:
            notes.append(f"no result for {', '.join(map(dataset_display, lacking))}")
        if incomplete:
            notes.append(f"fewer seeds for {', '.join(map(dataset_display, sorted(incomplete, key=dataset_sort_key)))}")
        rows.append({
            **info, over: AVERAGE,
            "mean": float("nan") if lacking else float(group["mean"].mean()),
            "std": float("nan"), "n": len(have), "seeds": "",
            "missing": "; ".join(notes), "complete": not notes,
        })
    return pd.DataFrame(rows)


def fewshot_frame(runs: pd.DataFrame, grid_seeds, kind: str = "std") -> pd.DataFrame:
    """acc / macro_f1 per (label, dataset, shots) plus the dataset-average rows; zero-shot cells at shots=0."""
    runs = runs[runs["protocol"].isin(["fewshot", "zeroshot"])].copy()
    runs.loc[runs["protocol"] == "zeroshot", "shots"] = 0
    runs["protocol"] = "fewshot"
    cells = cell_stats(runs, ["acc", "macro_f1"], grid_seeds, kind)
    if cells.empty:
        return cells
    cells["targets"] = ""
    avg = _average_rows(cells, "dataset", ["protocol"] + CONTEXT + ["method", "label", "shots"],
                        ["protocol"] + CONTEXT + ["shots"])
    avg["targets"] = ""
    return _sorted(pd.concat([cells, avg], ignore_index=True), "dataset")


def base2new_frame(runs: pd.DataFrame, grid_seeds, kind: str = "std") -> pd.DataFrame:
    """Base / New / HM per dataset (HM of the seed means) and the average row (HM of the averages)."""
    runs = runs[runs["protocol"] == "base2new"].copy()
    if runs.empty:
        return cell_stats(runs, [], grid_seeds, kind)
    for needed in ("base_acc", "new_acc"):
        if needed not in runs or runs[needed].isna().any():
            bad = runs["run_id"][runs[needed].isna()].iloc[0] if needed in runs else runs["run_id"].iloc[0]
            raise ValueError(f"base2new run {bad} has no metric {needed!r}; the runner logs base_acc and new_acc")
    # Per-seed HM, only for the spread; the HM shown is always the HM of the means.
    runs["hm_seed"] = [harmonic_mean(b, n) for b, n in zip(runs.get("base_acc"), runs.get("new_acc"))]
    cells = cell_stats(runs, ["base_acc", "new_acc", "hm_seed", "base_macro_f1", "new_macro_f1"], grid_seeds, kind)
    keys = CELL
    hm_rows = []
    for key, group in cells.groupby(keys, sort=False, dropna=False):
        by = group.set_index("metric")
        if not {"base_acc", "new_acc"} <= set(by.index):
            continue
        hm_rows.append({
            **dict(zip(keys, key)), "metric": "hm",
            "mean": harmonic_mean(by.at["base_acc", "mean"], by.at["new_acc", "mean"]),
            "std": by.at["hm_seed", "std"] if "hm_seed" in by.index else float("nan"),
            "n": int(min(by.at["base_acc", "n"], by.at["new_acc", "n"])),
            "seeds": by.at["base_acc", "seeds"], "missing": by.at["base_acc", "missing"],
            "complete": bool(by.at["base_acc", "complete"] and by.at["new_acc", "complete"]),
        })
    cells = pd.concat([cells[cells["metric"] != "hm_seed"], pd.DataFrame(hm_rows)], ignore_index=True)
    group_by = ["protocol"] + CONTEXT + ["method", "label", "shots"]
    avg = _average_rows(cells[cells["metric"] != "hm"], "dataset", group_by, ["protocol"] + CONTEXT + ["shots"])
    avg_hm = []
    for key, group in avg.groupby(group_by, sort=False, dropna=False):
        by = group.set_index("metric")
        if not {"base_acc", "new_acc"} <= set(by.index):
            continue
        notes = "; ".join(dict.fromkeys(n for n in (by.at["base_acc", "missing"], by.at["new_acc", "missing"]) if n))
        avg_hm.append({
            **dict(zip(group_by, key)), "dataset": AVERAGE, "metric": "hm",
            "mean": harmonic_mean(by.at["base_acc", "mean"], by.at["new_acc", "mean"]),
            "std": float("nan"), "n": int(by.at["base_acc", "n"]), "seeds": "",
            "missing": notes, "complete": not notes,
        })
    avg = pd.concat([avg, pd.DataFrame(avg_hm)], ignore_index=True)
    avg["targets"] = ""
    return _sorted(pd.concat([cells, avg], ignore_index=True), "dataset")


def transfer_frame(runs: pd.DataFrame, protocol: str, grid_seeds, kind: str = "std") -> pd.DataFrame:
    """Cross-dataset or DG: source and per-target accuracy per cell, plus the mean over the targets.

    Long frame with an extra `target` column: the evaluation dataset (the source itself for the source
    accuracy, AVERAGE for the mean over the targets). The source never counts as a target.
    """
    runs = runs[runs["protocol"] == protocol].copy()
    metric_cols = [c for c in runs.columns if c in ("acc", "macro_f1") or re.fullmatch(r"(acc|macro_f1)\..+", c)]
    cells = cell_stats(runs, metric_cols, grid_seeds, kind)
    if cells.empty:
        return cells.assign(target=pd.Series(dtype=object))
    metric, suffix = cells["metric"].str.split(".", n=1).str[0], cells["metric"].str.split(".", n=1).str[1]
    cells["target"] = suffix.where(suffix.notna(), cells["dataset"])
    cells["metric"] = metric
    # `acc.<source>` would be the source test set again, not a transfer result; the plain `acc` is the source.
    cells = cells[~(suffix.notna() & (cells["target"] == cells["dataset"]))]
    targets = cells[cells["target"] != cells["dataset"]]
    group_by = ["protocol"] + CONTEXT + ["method", "label", "dataset", "shots", "targets"]
    avg = _average_rows(targets, "target", group_by, ["protocol"] + CONTEXT + ["dataset", "shots"])
    out = pd.concat([cells, avg], ignore_index=True)
    return _sorted(out, "target")


def _sorted(frame: pd.DataFrame, place: str) -> pd.DataFrame:
    if frame.empty:
        return frame
    order = frame.assign(
        _label=frame["label"].map(label_sort_key),
        _place=frame[place].map(dataset_sort_key),
    ).sort_values(["backbone", "pretrained", "shots", "_place", "_label"], kind="stable")
    return order.drop(columns=["_label", "_place"]).reset_index(drop=True)


def seedwise_scores(runs: pd.DataFrame, protocol: str) -> pd.DataFrame:
    """Per (context, label, shots, seed): the headline score averaged the table's way, for plot spreads.

    fewshot: mean acc over datasets; base2new: base/new means over datasets and their HM; transfer:
    source acc and the mean over targets. Only seeds that every dataset of the label has are used,
    so a spread never mixes seeds that saw different datasets.
    """
    if protocol == "fewshot":
        sub = runs[runs["protocol"].isin(["fewshot", "zeroshot"])].copy()
        sub.loc[sub["protocol"] == "zeroshot", "shots"] = 0
        cols = {"acc": "acc"}
    elif protocol == "base2new":
        sub = runs[runs["protocol"] == "base2new"].copy()
        cols = {"base_acc": "base_acc", "new_acc": "new_acc"}
    else:
        sub = runs[runs["protocol"] == protocol].copy()
        target_cols = [c for c in sub.columns if c.startswith("acc.")]
        if sub.empty:
            return pd.DataFrame()
        sub["target_mean"] = sub.apply(
            lambda r: np.nanmean([r[c] for c in target_cols if c != f"acc.{r['dataset']}" and pd.notna(r[c])])
            if any(pd.notna(r[c]) for c in target_cols) else np.nan, axis=1)
        cols = {"acc": "acc", "target_mean": "target_mean"}
    if sub.empty:
        return pd.DataFrame()
    keys = CONTEXT + ["method", "label", "shots"]
    rows = []
    for key, group in sub.groupby(keys, sort=False, dropna=False):
        datasets = set(group["dataset"])
        for seed, seed_runs in group.groupby("seed"):
            if set(seed_runs["dataset"]) != datasets:
                continue
            row = {**dict(zip(keys, key)), "seed": seed}
            for src, dst in cols.items():
                row[dst] = float(seed_runs[src].mean()) if src in seed_runs else float("nan")
            if protocol == "base2new":
                row["hm"] = harmonic_mean(row["base_acc"], row["new_acc"])
            rows.append(row)
    return pd.DataFrame(rows)


def partitions(frame: pd.DataFrame, extra: list[str]) -> list[tuple]:
    """The distinct (backbone, pretrained, *extra) values: one table per partition."""
    keys = CONTEXT + extra
    return sorted({tuple(r) for r in frame[keys].itertuples(index=False)}, key=lambda k: tuple(map(str, k)))


@dataclass
class Ablation:
    """One method's ablation over `row_switches` in one protocol partition, ready to tabulate or plot."""

    kind: str  # depth | fusion
    protocol: str
    key: tuple  # (backbone, pretrained, shots[, source])
    method: str
    row_switches: list[str]
    group_switches: list[str]
    columns: list[str]  # headline columns (e.g. datasets + Avg., or Base/New/HM)
    table: pd.DataFrame  # label, row, group, column, mean, std, complete
    n_datasets: int
    fixed: list[tuple[str, str]] = field(default_factory=list)  # switches equal in every row, for the caption


def headline(sub: pd.DataFrame, protocol: str) -> tuple[list[str], pd.DataFrame]:
    """The numbers an ablation shows per label: per-dataset acc and the average, B/N/HM, or source/target avg."""
    if protocol == "fewshot":
        acc = sub[sub["metric"] == "acc"]
        datasets = sorted(set(acc["dataset"]) - {AVERAGE}, key=dataset_sort_key)
        places = datasets + ([AVERAGE] if len(datasets) > 1 else [])
        out = acc[acc["dataset"].isin(places)].assign(column=lambda f: f["dataset"].map(
            lambda d: "Avg." if d == AVERAGE else dataset_display(d)))
        return [("Avg." if p == AVERAGE else dataset_display(p)) for p in places], out
    if protocol == "base2new":
        datasets = set(sub["dataset"]) - {AVERAGE}
        place = AVERAGE if len(datasets) > 1 else next(iter(datasets))
        names = {"base_acc": "Base", "new_acc": "New", "hm": "HM"}
        out = sub[(sub["dataset"] == place) & sub["metric"].isin(names)]
        return list(names.values()), out.assign(column=out["metric"].map(names))
    acc = sub[sub["metric"] == "acc"]
    out = acc[(acc["target"] == acc["dataset"]) | (acc["target"] == AVERAGE)]
    return ["Source", "Target avg."], out.assign(
        column=out["target"].map(lambda t: "Target avg." if t == AVERAGE else "Source"))


def find_ablations(agg: Aggregates, kind: str) -> list[Ablation]:
    """Depth ablations wherever a method's depth varies; fusion ablations where fusion/fusion_net vary
    and depth does not (with depth varying, the depth ablation already shows the fusion variants)."""
    found = []
    opts = agg.options.set_index("label")
    opt_cols = [c for c in opts.columns if c.startswith("opt.")]
    for protocol, frame in agg.frames.items():
        if frame.empty:
            continue
        extra = ["shots"] + (["dataset"] if protocol in ("cross-dataset", "domain-generalization") else [])
        for key in partitions(frame, extra):
            sub = frame
            for col, value in zip(CONTEXT + extra, key):
                sub = sub[sub[col] == value]
            for method in sorted(sub["method"].unique(), key=lambda m: label_sort_key(m)):
                part = sub[sub["method"] == method]
                labels = sorted(part["label"].unique(), key=label_sort_key)
                lab_opts = opts.loc[labels, opt_cols].astype("string")
                varying = [c for c in opt_cols if lab_opts[c].nunique(dropna=True) > 1]
                if kind == "depth":
                    rows = ["opt.depth"] if "opt.depth" in varying else []
                else:
                    fusion = [c for c in ("opt.fusion", "opt.fusion_net") if c in varying]
                    rows = [] if "opt.depth" in varying else fusion
                if not rows:
                    continue
                groups = [c for c in varying if c not in rows]
                columns, head = headline(part, protocol)
                head = head.assign(
                    row=head["label"].map(lambda lab: tuple(lab_opts.at[lab, c] for c in rows)),
                    group=head["label"].map(lambda lab: tuple(lab_opts.at[lab, c] for c in groups)),
                )
                n_ds = len(set(part["dataset"]) - {AVERAGE})
                fixed = [(c, str(lab_opts[c].dropna().iloc[0])) for c in opt_cols
                         if c not in varying and lab_opts[c].notna().any()]
                found.append(Ablation(kind, protocol, key, method, rows, groups, columns,
                                      head[["label", "row", "group", "column", "mean", "std", "complete"]]
                                      .reset_index(drop=True), n_ds, fixed))
    return found


def label_options(runs: pd.DataFrame) -> pd.DataFrame:
    """The resolved method switches (opt.* params) of each (method, label), switches as strings."""
    opt_cols = sorted(c for c in runs.columns if c.startswith("opt."))
    return runs[["method", "label"] + opt_cols].drop_duplicates(["method", "label"]).reset_index(drop=True)


def aggregate(runs: pd.DataFrame, grid_seeds: Sequence[int] | None = None, kind: str = "std") -> Aggregates:
    frames: dict[str, pd.DataFrame] = {}
    seedwise: dict[str, pd.DataFrame] = {}
    present = set(runs["protocol"])
    if present & {"fewshot", "zeroshot"}:
        frames["fewshot"] = fewshot_frame(runs, grid_seeds, kind)
        seedwise["fewshot"] = seedwise_scores(runs, "fewshot")
    if "base2new" in present:
        frames["base2new"] = base2new_frame(runs, grid_seeds, kind)
        seedwise["base2new"] = seedwise_scores(runs, "base2new")
    for protocol in TRANSFER_PROTOCOLS:
        if protocol in present:
            frames[protocol] = transfer_frame(runs, protocol, grid_seeds, kind)
            seedwise[protocol] = seedwise_scores(runs, protocol)
    unknown = present - {"fewshot", "zeroshot", "base2new", *TRANSFER_PROTOCOLS}
    notes = [f"runs of unknown protocol(s) {sorted(unknown)} were not reported"] if unknown else []
    return Aggregates(runs=runs, frames=frames, seedwise=seedwise, options=label_options(runs), spread=kind,
                      grid_seeds=tuple(grid_seeds) if grid_seeds else None, notes=notes)
