"""Figures for the report: seaborn styling, matplotlib Agg, each saved as PDF (TrueType fonts) and PNG.

Sizes are chosen for a two-column paper: single-panel figures are one column wide (3.4 in) with 8 pt
text, multi-panel ones the full text width (7 in). Shaded bands and error bars are the spread over
seeds (population std, or the 95% CI half-width with --ci95), never over datasets.
"""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # reports are written on headless machines; never open a window

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

from analysis.aggregate import (  # noqa: E402
    AVERAGE,
    CONTEXT,
    Ablation,
    Aggregates,
    dataset_display,
    dataset_sort_key,
    find_ablations,
    label_sort_key,
    spread,
)
from analysis.latex import group_title, order_key, switch_value  # noqa: E402

COLUMN_WIDTH = 3.4  # inches, one column of a two-column paper
TEXT_WIDTH = 7.0
RC = {
    "pdf.fonttype": 42,  # TrueType, not Type 3: editable text and accepted by paper submission checks
    "ps.fonttype": 42,
    "font.size": 8,
    "axes.titlesize": 8,
    "axes.labelsize": 8,
    "xtick.labelsize": 7,
    "ytick.labelsize": 7,
    "legend.fontsize": 7,
    "lines.linewidth": 1.2,
    "lines.markersize": 4,
    "savefig.dpi": 300,
}


def _style() -> None:
    sns.set_theme(context="paper", style="whitegrid", palette="colorblind", rc=RC)
    plt.rcParams.update(RC)


def _save(fig, out_dir: Path, stem: str) -> list[Path]:
    paths = []
    for ext in ("pdf", "png"):
        path = out_dir / f"{stem}.{ext}"
        fig.savefig(path, bbox_inches="tight")
        paths.append(path)
    plt.close(fig)
    return paths


def _palette(labels: list[str]) -> dict[str, tuple]:
    return dict(zip(labels, sns.color_palette("colorblind", n_colors=max(len(labels), 1))))


def _seed_spread(agg: Aggregates, protocol: str, metric: str) -> pd.DataFrame:
    """Spread over seeds of a dataset-averaged score, per (context, label, shots)."""
    seedwise = agg.seedwise.get(protocol)
    if seedwise is None or seedwise.empty or metric not in seedwise:
        return pd.DataFrame(columns=CONTEXT + ["label", "shots", "spread"])
    rows = [
        {**dict(zip(CONTEXT + ["label", "shots"], key)), "spread": spread(g[metric].dropna().to_numpy(), agg.spread)}
        for key, g in seedwise.groupby(CONTEXT + ["label", "shots"], dropna=False)
    ]
    return pd.DataFrame(rows)


def _curve(ax, x, mean, err, color, label, marker="o") -> None:
    x, mean, err = np.asarray(x, float), np.asarray(mean, float), np.nan_to_num(np.asarray(err, float))
    ax.plot(x, mean, marker=marker, color=color, label=label)
    ax.fill_between(x, mean - err, mean + err, color=color, alpha=0.2, linewidth=0)


def _shots_axis(ax, shots: list[int]) -> None:
    ax.set_xscale("log", base=2)
    ax.set_xticks(shots)
    ax.set_xticklabels([str(k) for k in shots])
    ax.minorticks_off()


def fewshot_plots(agg: Aggregates, out_dir: Path, suffix: str = "") -> list[Path]:
    """Accuracy vs shots: one panel per dataset (text width) and the dataset average (column width).
    Zero-shot methods (shots 0) are dashed horizontal lines."""
    frame = agg.frames.get("fewshot")
    if frame is None or frame.empty:
        return []
    _style()
    paths = []
    avg_spread = _seed_spread(agg, "fewshot", "acc")
    for (backbone, pretrained), sub in frame[frame["metric"] == "acc"].groupby(CONTEXT):
        tag = suffix or ("" if frame[CONTEXT].drop_duplicates().shape[0] == 1 else f"_{backbone}-{pretrained}")
        labels = sorted(sub["label"].unique(), key=label_sort_key)
        colors = _palette(labels)
        datasets = sorted(set(sub["dataset"]) - {AVERAGE}, key=dataset_sort_key)
        trained = sorted(k for k in sub["shots"].unique() if k > 0)
        if len(trained) < 2:
            continue  # a curve needs two shot counts; a single K is a table, not a plot

        def draw(ax, place: str) -> None:
            cells = sub[sub["dataset"] == place]
            for label in labels:
                c = cells[cells["label"] == label].sort_values("shots")
                if c.empty:
                    continue
                err = c["std"].to_numpy()
                if place == AVERAGE:
                    s = avg_spread[(avg_spread["label"] == label) & (avg_spread["backbone"] == backbone)
                                   & (avg_spread["pretrained"] == pretrained)].set_index("shots")["spread"]
                    err = c["shots"].map(s).to_numpy(dtype=float)
                zs, fs = c[c["shots"] == 0], c[c["shots"] > 0]
                if len(fs):
                    _curve(ax, fs["shots"], fs["mean"], err[len(zs):], colors[label], label)
                if len(zs) and trained:
                    ax.axhline(float(zs["mean"].iloc[0]), color=colors[label], linestyle="--", label=label)
            if trained:
                _shots_axis(ax, trained)
            ax.set_title(dataset_display(place))
            ax.set_xlabel("shots per class")
            ax.set_ylabel("top-1 accuracy (%)")

        places = datasets if len(datasets) == 1 else [AVERAGE]
        fig, ax = plt.subplots(figsize=(COLUMN_WIDTH, 2.6))
        draw(ax, places[0])
        ax.legend(frameon=False, fontsize=6, loc="best")
        paths += _save(fig, out_dir, f"fewshot-average{tag}" if len(datasets) > 1 else f"fewshot{tag}")
        if len(datasets) > 1:
            ncol = min(4, len(datasets))
            nrow = -(-len(datasets) // ncol)
            fig, axes = plt.subplots(nrow, ncol, figsize=(TEXT_WIDTH, 1.9 * nrow), squeeze=False)
            for ax, place in zip(axes.flat, datasets):
                draw(ax, place)
            for ax in list(axes.flat)[len(datasets):]:
                ax.set_visible(False)
            # Datasets differ in range, so y axes are independent and keep their ticks; the titles show once.
            for i, ax in enumerate(axes.flat[:len(datasets)]):
                if i % ncol:
                    ax.set_ylabel("")
                if i < len(datasets) - ncol:
                    ax.set_xlabel("")
            handles, names = axes.flat[0].get_legend_handles_labels()
            fig.legend(handles, names, loc="lower center", ncol=min(4, len(names)), frameon=False,
                       bbox_to_anchor=(0.5, 1.0))
            fig.tight_layout()
            paths += _save(fig, out_dir, f"fewshot-per-dataset{tag}")
    return paths


def _ablation_score(ab: Ablation) -> str:
    """The one number an ablation line plot shows: average accuracy, HM, or target average."""
    return {"fewshot": "Avg." if "Avg." in ab.columns else ab.columns[0], "base2new": "HM"}.get(ab.protocol,
                                                                                                "Target avg.")


def _ablation_spread(agg: Aggregates, ab: Ablation, score: str) -> dict[str, float]:
    """Per label: the seed spread of the plotted score; for an average, the spread of the per-seed average."""
    averaged = ((ab.protocol == "fewshot" and score == "Avg.") or (ab.protocol == "base2new" and ab.n_datasets > 1)
                or score == "Target avg.")
    if not averaged:
        t = ab.table[ab.table["column"] == score]
        return dict(zip(t["label"], t["std"]))
    metric = {"fewshot": "acc", "base2new": "hm"}.get(ab.protocol, "target_mean")
    s = _seed_spread(agg, ab.protocol, metric)
    s = s[(s["backbone"] == ab.key[0]) & (s["pretrained"] == ab.key[1]) & (s["shots"] == ab.key[2])]
    return dict(zip(s["label"], s["spread"]))


def depth_plots(agg: Aggregates, out_dir: Path) -> list[Path]:
    """Score vs prompt depth J, one line per fusion variant (or other switch), seed spread shaded."""
    _style()
    paths = []
    ablations = find_ablations(agg, "depth")
    for i, ab in enumerate(ablations):
        score = _ablation_score(ab)
        spreads = _ablation_spread(agg, ab, score)
        t = ab.table[ab.table["column"] == score].copy()
        t["depth"] = [float(r[0]) for r in t["row"]]
        groups = sorted(set(t["group"]), key=order_key)
        names = {g: (group_title(ab.group_switches, g) or ab.method) for g in groups}
        colors = _palette([names[g] for g in groups])
        fig, ax = plt.subplots(figsize=(COLUMN_WIDTH, 2.4))
        for g in groups:
            line = t[t["group"] == g].sort_values("depth")
            _curve(ax, line["depth"], line["mean"], line["label"].map(spreads).to_numpy(dtype=float),
                   colors[names[g]], names[g])
        depths = sorted(set(t["depth"]))
        ax.set_xticks(depths)
        ax.set_xticklabels([f"{d:g}" for d in depths])
        ax.set_xlabel("prompt depth J")
        ax.set_ylabel({"Avg.": "average top-1 accuracy (%)", "HM": "HM of base and new (%)",
                       "Target avg.": "target average accuracy (%)"}.get(score, f"top-1 accuracy (%), {score}"))
        if len(groups) > 1:
            ax.legend(frameon=False, fontsize=6, loc="best")
        ax.set_title(f"{ab.method}, {ab.key[2]} shots")
        stem = f"ablation-depth-{ab.method}" + (f"-{i}" if len(ablations) > 1 else "")
        paths += _save(fig, out_dir, stem)
    return paths


def fusion_plots(agg: Aggregates, out_dir: Path) -> list[Path]:
    """Bars per fusion variant (error bars: seed spread); hue = headline column (datasets or B/N/HM)."""
    _style()
    paths = []
    ablations = find_ablations(agg, "fusion")
    for i, ab in enumerate(ablations):
        t = ab.table.copy()
        t["variant"] = [", ".join(switch_value(s, v) for s, v in zip(ab.row_switches, r)) for r in t["row"]]
        if ab.group_switches:
            t["variant"] += t["group"].map(lambda g: f" ({group_title(ab.group_switches, g)})")
        order = [v for _, v in sorted({(order_key(r) + order_key(g), v) for r, g, v in
                                       zip(t["row"], t["group"], t["variant"])})]
        fig, ax = plt.subplots(figsize=(COLUMN_WIDTH, 2.4))
        sns.barplot(data=t, x="variant", y="mean", hue="column", order=order, hue_order=ab.columns,
                    errorbar=None, ax=ax)
        _bar_errors(ax, t, "variant", order, ab.columns)
        _finish_bars(ax, t, len(ab.columns))
        ax.set_ylabel(f"top-1 accuracy (%), {ab.method}, {ab.key[2]} shots")
        ax.tick_params(axis="x", rotation=20)
        stem = f"ablation-fusion-{ab.method}" + (f"-{i}" if len(ablations) > 1 else "")
        paths += _save(fig, out_dir, stem)
    return paths


def _bar_errors(ax, data: pd.DataFrame, x: str, order: list[str], hues: list[str]) -> None:
    """Error bars from the precomputed spread, placed on seaborn's dodged bars (containers follow hue order)."""
    for container, hue in zip(ax.containers, hues):
        rows = data[data["column"] == hue].set_index(x)
        for bar, xv in zip(container, order):
            if xv in rows.index and np.isfinite(rows.at[xv, "std"]):
                ax.errorbar(bar.get_x() + bar.get_width() / 2, bar.get_height(), yerr=rows.at[xv, "std"],
                            color="black", capsize=1.5, linewidth=0.7)


def _finish_bars(ax, data: pd.DataFrame, n_hues: int) -> None:
    """Legend above the plot; the y axis starts near the data (not at 0) so that differences of a point
    are visible; the tick labels show where it starts."""
    err = data["std"].fillna(0)
    low, high = float((data["mean"] - err).min()), float((data["mean"] + err).max())
    ax.set_ylim(max(0.0, 5 * np.floor((low - 0.15 * (high - low) - 1) / 5)), high + 0.05 * (high - low) + 0.5)
    ax.set_xlabel("")
    ax.legend(frameon=False, fontsize=6, ncol=min(3, n_hues), loc="lower center", bbox_to_anchor=(0.5, 1.0))


def base2new_plots(agg: Aggregates, out_dir: Path) -> list[Path]:
    """Base / New / HM bars per method for the dataset average (or the single dataset)."""
    frame = agg.frames.get("base2new")
    if frame is None or frame.empty:
        return []
    _style()
    paths = []
    names = {"base_acc": "Base", "new_acc": "New", "hm": "HM"}
    contexts = frame[CONTEXT + ["shots"]].drop_duplicates()
    seedwise = agg.seedwise.get("base2new", pd.DataFrame())
    for i, (key, sub) in enumerate(frame.groupby(CONTEXT + ["shots"])):
        datasets = set(sub["dataset"]) - {AVERAGE}
        place = AVERAGE if len(datasets) > 1 else next(iter(datasets))
        t = sub[(sub["dataset"] == place) & sub["metric"].isin(names)].copy()
        t["column"] = t["metric"].map(names)
        if place == AVERAGE and not seedwise.empty:
            # Averages carry no std of their own; use the spread over seeds of the per-seed averages.
            sw = seedwise[(seedwise["backbone"] == key[0]) & (seedwise["pretrained"] == key[1])
                          & (seedwise["shots"] == key[2])]
            for metric in names:
                s = sw.groupby("label")[metric].agg(lambda v: spread(v.dropna().to_numpy(), agg.spread))
                mask = t["metric"] == metric
                t.loc[mask, "std"] = t.loc[mask, "label"].map(s)
        order = sorted(t["label"].unique(), key=label_sort_key)
        width = COLUMN_WIDTH if len(order) <= 5 else TEXT_WIDTH
        fig, ax = plt.subplots(figsize=(width, 2.4))
        sns.barplot(data=t, x="label", y="mean", hue="column", order=order, hue_order=list(names.values()),
                    errorbar=None, ax=ax)
        _bar_errors(ax, t, "label", order, list(names.values()))
        _finish_bars(ax, t, 3)
        ax.set_ylabel(f"top-1 accuracy (%), {dataset_display(place)}, {key[2]} shots")
        if len(order) > 3:
            ax.tick_params(axis="x", rotation=30)
            for tick in ax.get_xticklabels():
                tick.set_horizontalalignment("right")
        paths += _save(fig, out_dir, "base2new-bars" + (f"-{i}" if len(contexts) > 1 else ""))
    return paths


def all_plots(agg: Aggregates, out_dir: Path) -> list[Path]:
    return (fewshot_plots(agg, out_dir) + base2new_plots(agg, out_dir) + depth_plots(agg, out_dir)
            + fusion_plots(agg, out_dir))
