"""The report against MLflow stores with known runs: every aggregate number, bolding, seed marking,
clear errors for empty/partial stores, LaTeX structure (compiled when pdflatex exists) and plots.

One sqlite store per module (creating it costs ~2 s); experiments inside it play the grids.
"""
from __future__ import annotations

import hashlib
import math
import os
import re
import shutil
import statistics
import subprocess
import tempfile
from pathlib import Path

import pytest

mlflow = pytest.importorskip("mlflow")
pytest.importorskip("pandas")

from analysis.aggregate import AVERAGE, aggregate  # noqa: E402
from analysis.latex import all_tables, render_latex  # noqa: E402
from analysis.load import ReportError, load_runs  # noqa: E402
from analysis.report import build_report  # noqa: E402

SEEDS = (1, 2, 3)
DELTA = {1: -1.0, 2: 0.0, 3: 1.5}  # per-seed offsets: the mean over 3 seeds is base + 1/6

# Few-shot accuracy around which the seeds scatter: (label, dataset, shots) -> base value.
FEWSHOT = {
    ("coop", "dtd", 1): 50.0, ("coop", "dtd", 16): 62.0,
    ("coop", "eurosat", 1): 60.0, ("coop", "eurosat", 16): 80.0,
    ("mudpt", "dtd", 1): 52.0, ("mudpt", "dtd", 16): 66.0,
    ("mudpt", "eurosat", 1): 58.0, ("mudpt", "eurosat", 16): 84.0,
    ("coop", "ucf101", 1): 70.0,  # mudpt has no UCF101 result at all: its 1-shot average cannot be formed
}
MISSING = ("mudpt", "eurosat", 16, 3)  # this seed failed: the cell has 2 of 3 seeds
ZEROSHOT = {"dtd": 44.0, "eurosat": 48.0}

# Base-to-new per seed (seeds 1, 2): chosen so that HM of the means and mean of the HMs differ a lot.
B2N = {
    ("coop", "dtd"): ([89.0, 91.0], [29.0, 31.0]),
    ("coop", "eurosat"): ([49.0, 51.0], [89.0, 91.0]),
    ("mudpt", "dtd"): ([84.0, 86.0], [49.0, 51.0]),
    ("mudpt", "eurosat"): ([59.0, 61.0], [84.0, 86.0]),
}
XD_TARGETS = ("caltech101", "dtd", "eurosat")
DG_TARGETS = ("imagenetv2", "imagenet_sketch", "imagenet_a", "imagenet_r")
DEPTHS = (1, 2, 3)


def _key(*parts) -> str:
    return hashlib.sha256("|".join(map(str, parts)).encode()).hexdigest()[:20]


class Store:
    def __init__(self, path: Path):
        from mlflow import MlflowClient

        self.uri = f"sqlite:///{path}"
        self.client = MlflowClient(tracking_uri=self.uri)
        self.clock = 1_700_000_000_000

    def tick(self) -> int:
        self.clock += 1000
        return self.clock

    def grid(self, name: str, seeds=SEEDS) -> tuple[str, str]:
        exp = self.client.get_experiment_by_name(name)
        exp_id = exp.experiment_id if exp else self.client.create_experiment(name)
        parent = self.client.create_run(exp_id, start_time=self.tick(),
                                        tags={"mudpt.role": "grid", "mudpt.grid": name})
        self.client.log_batch(parent.info.run_id, params=[
            mlflow.entities.Param("grid_seeds", ",".join(map(str, seeds))),
            mlflow.entities.Param("grid_file", f"experiments/grids/{name}.yaml")])
        self.client.set_terminated(parent.info.run_id, "FINISHED")
        return exp_id, parent.info.run_id

    def cell(self, exp_id, parent, grid, label, dataset, protocol, shots, seed, metrics, *, opts=None,
             n_trainable=1000, backbone="mudpt-tiny", pretrained="embedded", targets=(), status="finished",
             error=None, start=None) -> str:
        from mlflow.entities import Metric, Param, RunTag

        method = label.split("[")[0]
        key = _key(label, dataset, protocol, shots, seed, backbone)
        tags = {"mudpt.role": "cell", "mudpt.key": key, "mudpt.grid": grid, "mudpt.label": label,
                "mudpt.method": method, "mudpt.dataset": dataset, "mudpt.protocol": protocol,
                "mlflow.parentRunId": parent}
        run = self.client.create_run(exp_id, start_time=start or self.tick(), tags=tags)
        opts = {"depth": 9, "fusion": "bi", "fusion_net": "linear", "n_ctx": 4} | (opts or {})
        params = {"method": method, "dataset": dataset, "protocol": protocol, "shots": shots, "seed": seed,
                  "backbone": backbone, "pretrained": pretrained, "targets": ",".join(targets),
                  "manifest_hash": "abc", "n_trainable": n_trainable, "precision": "fp32",
                  "recipe.lr": 0.0025, "recipe.epochs": 2, "env.torch": "2.13.0", "env.device": "cpu"}
        params |= {f"opt.{k}": v for k, v in opts.items()}
        now = self.clock
        final = dict(metrics) | {"wall_s": 1.0, "train_images_per_s": 100.0, "n_trainable": n_trainable}
        ms = [Metric(k, float(v), now, 0) for k, v in final.items()]
        ms += [Metric("train_loss", 2.0 - e, now, e) for e in range(2)]
        run_tags = [RunTag("mudpt.status", status)] + ([RunTag("mudpt.error", error)] if error else [])
        self.client.log_batch(run.info.run_id, metrics=ms if status == "finished" else [],
                              params=[Param(k, str(v)) for k, v in params.items()], tags=run_tags)
        self.client.set_terminated(run.info.run_id, "FINISHED" if status == "finished" else "FAILED")
        return run.info.run_id


def _fewshot(store: Store) -> None:
    exp, parent = store.grid("few-shot")
    # An older run of the same cell and seed, superseded by the later one: it must not count.
    store.cell(exp, parent, "few-shot", "coop", "dtd", "fewshot", 1, 1, {"acc": 5.0, "macro_f1": 5.0},
               start=store.clock - 10_000_000)
    for (label, ds, k), base in FEWSHOT.items():
        for seed in SEEDS:
            if (label, ds, k, seed) == MISSING:
                store.cell(exp, parent, "few-shot", label, ds, "fewshot", k, seed, {}, status="failed",
                           error="loss became NaN at epoch 3")
                continue
            acc = base + DELTA[seed]
            store.cell(exp, parent, "few-shot", label, ds, "fewshot", k, seed, {"acc": acc, "macro_f1": acc - 5})
    for ds, acc in ZEROSHOT.items():  # zero-shot CLIP does not depend on the seed: one run is complete
        store.cell(exp, parent, "few-shot", "zsclip", ds, "zeroshot", 0, 1, {"acc": acc, "macro_f1": acc - 5},
                   n_trainable=0)


def _base2new(store: Store) -> None:
    exp, parent = store.grid("base2new", seeds=(1, 2))
    for (label, ds), (bases, news) in B2N.items():
        for i, seed in enumerate((1, 2)):
            b, n = bases[i], news[i]
            store.cell(exp, parent, "base2new", label, ds, "base2new", 16, seed,
                       {"base_acc": b, "new_acc": n, "hm": 2 * b * n / (b + n), "base_macro_f1": b,
                        "new_macro_f1": n}, backbone="ViT-B-16", pretrained="openai")


def _transfer(store: Store, protocol: str, targets: tuple[str, ...]) -> None:
    exp, parent = store.grid(protocol)
    for m, (label, offset) in enumerate((("coop", 0.0), ("maple", 2.0))):
        for seed in SEEDS:
            metrics = {"acc": 70.0 + offset + DELTA[seed], "macro_f1": 60.0}
            for i, t in enumerate(targets):
                metrics[f"acc.{t}"] = 40.0 + 10 * i + offset * (-1) ** i + DELTA[seed]
                metrics[f"macro_f1.{t}"] = 30.0
            metrics["target_avg_acc"] = statistics.mean(metrics[f"acc.{t}"] for t in targets)
            store.cell(exp, parent, protocol, label, "imagenet", protocol, 16, seed, metrics,
                       backbone="ViT-B-16", pretrained="openai", targets=targets)


def _depth(store: Store) -> None:
    exp, parent = store.grid("ablation-depth", seeds=(1, 2))
    for fusion in ("bi", "off"):
        for depth in DEPTHS:
            for seed in (1, 2):
                acc = 60.0 + 3 * depth + (5 if fusion == "bi" else 0) + (seed - 1.5) * 2
                store.cell(exp, parent, "ablation-depth", f"mudpt[depth={depth},fusion={fusion}]", "shapes",
                           "fewshot", 16, seed, {"acc": acc, "macro_f1": acc}, opts={"depth": depth, "fusion": fusion})


def _fusion(store: Store) -> None:
    exp, parent = store.grid("ablation-fusion", seeds=(1, 2))
    for i, fusion in enumerate(("bi", "off", "t2v", "v2t")):
        for seed in (1, 2):
            b, n = 80.0 + i + seed, 60.0 - i + seed
            store.cell(exp, parent, "ablation-fusion", f"mudpt[fusion={fusion},fusion_net=injection]", "colors",
                       "base2new", 16, seed, {"base_acc": b, "new_acc": n, "hm": 2 * b * n / (b + n)},
                       opts={"fusion": fusion, "fusion_net": "injection"})


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    # Every MLflow write is an sqlite commit with an fsync; in RAM the store builds 2-3x faster.
    shm = Path("/dev/shm")
    with tempfile.TemporaryDirectory(dir=shm if shm.is_dir() and os.access(shm, os.W_OK) else None) as tmp:
        yield _build_store(Path(tmp) / "mlflow.db")


def _build_store(path: Path) -> Store:
    s = Store(path)
    _fewshot(s)
    _base2new(s)
    _transfer(s, "cross-dataset", XD_TARGETS)
    _transfer(s, "domain-generalization", DG_TARGETS)
    _depth(s)
    _fusion(s)
    s.client.create_experiment("empty")
    exp, parent = s.grid("broken")
    s.cell(exp, parent, "broken", "coop", "dtd", "fewshot", 1, 1, {}, status="failed", error="CUDA out of memory")
    return s


def _row(frame, **where):
    sub = frame
    for k, v in where.items():
        sub = sub[sub[k] == v]
    assert len(sub) == 1, (where, sub)
    return sub.iloc[0]


# --------------------------------------------------------------------------------------------- aggregation

def test_fewshot_means_std_and_missing_seed_marking(store):
    loaded = load_runs(store.uri, grid="few-shot")
    assert loaded.grid_seeds == SEEDS
    assert any("superseded" in w for w in loaded.warnings)
    frame = aggregate(loaded.runs, loaded.grid_seeds).frames["fewshot"]
    acc = frame[frame["metric"] == "acc"]
    for (label, ds, k), base in FEWSHOT.items():
        seeds = [s for s in SEEDS if (label, ds, k, s) != MISSING]
        values = [base + DELTA[s] for s in seeds]
        r = _row(acc, label=label, dataset=ds, shots=k)
        assert r["mean"] == pytest.approx(statistics.mean(values))
        assert r["std"] == pytest.approx(statistics.pstdev(values))  # population std, ddof=0
        assert r["n"] == len(seeds)
        assert bool(r["complete"]) == (len(seeds) == 3)
    missing = _row(acc, label="mudpt", dataset="eurosat", shots=16)
    assert missing["missing"] == "seeds 3 of 1,2,3"
    # Dataset average = mean over datasets of the seed means, marked when a part is incomplete.
    for label in ("coop", "mudpt"):
        for k in (1, 16):
            datasets = [ds for ds in ("dtd", "eurosat", "ucf101") if (label, ds, k) in FEWSHOT]
            avg = _row(acc, label=label, dataset=AVERAGE, shots=k)
            if (label, k) == ("mudpt", 1):
                assert math.isnan(avg["mean"]) and avg["missing"] == "no result for UCF101"
                continue
            parts = [_row(acc, label=label, dataset=ds, shots=k)["mean"] for ds in datasets]
            assert avg["mean"] == pytest.approx(statistics.mean(parts))
            assert bool(avg["complete"]) == ((label, k) != ("mudpt", 16))
    zs = _row(acc, label="zsclip", dataset="dtd", shots=0)
    assert zs["mean"] == ZEROSHOT["dtd"] and bool(zs["complete"]) and math.isnan(zs["std"])  # one value: no spread
    ci = aggregate(loaded.runs, loaded.grid_seeds, kind="ci95").frames["fewshot"]
    values = [FEWSHOT[("coop", "dtd", 16)] + DELTA[s] for s in SEEDS]
    assert _row(ci[ci["metric"] == "acc"], label="coop", dataset="dtd", shots=16)["std"] == pytest.approx(
        1.96 * statistics.pstdev(values) / math.sqrt(3))


def test_base2new_hm_of_means_not_mean_of_hms(store):
    loaded = load_runs(store.uri, grid="base2new")
    frame = aggregate(loaded.runs, loaded.grid_seeds).frames["base2new"]
    hm = lambda b, n: 2 * b * n / (b + n)  # noqa: E731
    for label in ("coop", "mudpt"):
        bases, news, dataset_hms = [], [], []
        for ds in ("dtd", "eurosat"):
            b_seeds, n_seeds = B2N[(label, ds)]
            b, n = statistics.mean(b_seeds), statistics.mean(n_seeds)
            bases.append(b)
            news.append(n)
            dataset_hms.append(hm(b, n))
            assert _row(frame, label=label, dataset=ds, metric="base_acc")["mean"] == pytest.approx(b)
            assert _row(frame, label=label, dataset=ds, metric="new_acc")["std"] == pytest.approx(
                statistics.pstdev(n_seeds))
            r = _row(frame, label=label, dataset=ds, metric="hm")
            assert r["mean"] == pytest.approx(hm(b, n))  # HM of the seed means
            assert r["std"] == pytest.approx(statistics.pstdev([hm(x, y) for x, y in zip(b_seeds, n_seeds)]))
        avg_b, avg_n = statistics.mean(bases), statistics.mean(news)
        assert _row(frame, label=label, dataset=AVERAGE, metric="base_acc")["mean"] == pytest.approx(avg_b)
        assert _row(frame, label=label, dataset=AVERAGE, metric="new_acc")["mean"] == pytest.approx(avg_n)
        avg_hm = _row(frame, label=label, dataset=AVERAGE, metric="hm")["mean"]
        assert avg_hm == pytest.approx(hm(avg_b, avg_n))
        assert abs(avg_hm - statistics.mean(dataset_hms)) > 1.0  # the data make the two rules disagree


@pytest.mark.parametrize("protocol,targets", [("cross-dataset", XD_TARGETS), ("domain-generalization", DG_TARGETS)])
def test_transfer_average_over_targets_excludes_source(store, protocol, targets):
    loaded = load_runs(store.uri, experiment=protocol)
    frame = aggregate(loaded.runs, loaded.grid_seeds).frames[protocol]
    acc = frame[frame["metric"] == "acc"]
    for label, offset in (("coop", 0.0), ("maple", 2.0)):
        src = _row(acc, label=label, target="imagenet")
        assert src["mean"] == pytest.approx(70.0 + offset + statistics.mean(DELTA.values()))
        means = []
        for i, t in enumerate(targets):
            values = [40.0 + 10 * i + offset * (-1) ** i + DELTA[s] for s in SEEDS]
            r = _row(acc, label=label, target=t)
            assert r["mean"] == pytest.approx(statistics.mean(values))
            assert r["std"] == pytest.approx(statistics.pstdev(values))
            means.append(statistics.mean(values))
        assert _row(acc, label=label, target=AVERAGE)["mean"] == pytest.approx(statistics.mean(means))


# --------------------------------------------------------------------------------------------- tables

def _tables(store, grid, with_published=False):
    loaded = load_runs(store.uri, grid=grid)
    return {t.name: t for t in all_tables(aggregate(loaded.runs, loaded.grid_seeds), with_published)}


def _latex_rows(tex: str) -> list[str]:
    body = tex.split(r"\midrule", 1)[1].split(r"\bottomrule")[0]
    return [line for line in body.splitlines() if line.endswith(r"\\")]


def _check_structure(tex: str, n_columns: int) -> None:
    assert tex.count(r"\toprule") == 1 and tex.count(r"\bottomrule") == 1
    assert r"\hline" not in tex and "|" not in tex.split(r"\begin{tabular}{", 1)[1].split("}", 1)[0]
    for line in tex.splitlines():
        if line.endswith(r"\\") and not line.lstrip().startswith(r"\multicolumn") and "multicolumn" not in line:
            assert line.count("&") == n_columns - 1, line
    depth = 0
    for ch in tex.replace(r"\{", "").replace(r"\}", ""):
        depth += {"{": 1, "}": -1}.get(ch, 0)
        assert depth >= 0
    assert depth == 0
    assert re.search(r"(?<!\\)_", tex.replace(r"\_", "")) is None  # every underscore escaped


def test_fewshot_table_bolding_marks_and_caption(store):
    spec = _tables(store, "few-shot")["fewshot"]
    assert spec.columns == ["0 (ZS)", "1", "16"]
    assert [b.title for b in spec.blocks] == ["Average", "DTD", "EuroSAT", "UCF101"]
    tex = render_latex(spec)
    _check_structure(tex, 2 + 3)
    assert r"\cmidrule(lr){3-5}" in tex and r"\multicolumn{3}{c}{Shots per class (K)}" in tex
    assert "backbone mudpt-tiny (embedded weights)" in tex and "seeds 1, 2, 3" in tex
    assert "fewer seeds than the grid asked for" in spec.caption
    zs_line, coop_line, mudpt_line = _latex_rows(tex)[:3]  # the Average block, in method order
    assert zs_line.startswith("Average & zsclip & 46.00 & -- & --")
    coop16 = statistics.mean(FEWSHOT[("coop", ds, 16)] + 1 / 6 for ds in ("dtd", "eurosat"))
    mudpt16 = statistics.mean([FEWSHOT[("mudpt", "dtd", 16)] + 1 / 6, FEWSHOT[("mudpt", "eurosat", 16)] - 0.5])
    assert mudpt16 > coop16
    # Best, built from a 2-seed cell; no 1-shot average without UCF101.
    assert mudpt_line == rf" & mudpt & -- & -- & \textbf{{{mudpt16:.2f}}}$^{{\dagger}}$ \\"
    assert coop_line.endswith(f"& {coop16:.2f} \\\\")
    assert r"\dagger" not in zs_line  # zero-shot CLIP does not depend on the seed
    # Bold is exactly the per-column maximum within each block at printed precision, never a lone value.
    for block in spec.blocks:
        for j in range(len(spec.columns)):
            values = [(r.cells[j].mean, r.cells[j].bold) for r in block.rows if math.isfinite(r.cells[j].mean)]
            best = max((round(v, 2) for v, _ in values), default=None)
            assert all(b == (len(values) > 1 and round(v, 2) == best) for v, b in values), (block.title, j)


def test_base2new_table_and_published_rows(store):
    tables = _tables(store, "base2new", with_published=True)
    spec = tables["base2new"]
    assert [b.title for b in spec.blocks] == ["Average", "DTD", "EuroSAT"]
    avg = {r.name: r for r in spec.blocks[0].rows}
    assert set(avg) == {"coop", "mudpt"}  # the papers' averages are over 11 datasets: not shown beside 2
    dtd = {r.name: r for r in spec.blocks[1].rows}
    assert dtd["MaPLe"].reference and dtd["MaPLe"].cells[2].mean == pytest.approx(68.16)
    assert not any(c.bold for c in dtd["MaPLe"].cells)  # reference rows never compete for bold
    assert dtd["coop"].cells[0].bold and dtd["mudpt"].cells[2].bold  # coop best on Base, mudpt on HM
    tex = render_latex(spec)
    _check_structure(tex, 5)
    assert r"\textit{MaPLe}$^{\ddagger}$" in tex and "reported in the papers, not run here" in tex
    assert "backbone ViT-B-16 (openai weights)" in tex and "not the mean of the per-dataset HMs" in tex


def test_transfer_tables_published_only_where_comparable(store):
    xd = _tables(store, "cross-dataset", with_published=True)["cross-dataset"]
    assert xd.groups[0] == ("Source", ["ImageNet"])
    assert xd.groups[1][1] == ["Caltech101", "DTD", "EuroSAT", "Avg."]
    rows = {r.name: r for r in xd.all_rows}
    assert rows["MaPLe"].cells[1].mean == pytest.approx(93.53)  # MaPLe Caltech101
    assert math.isnan(rows["MaPLe"].cells[-1].mean)  # its Avg. is over 10 targets, ours over 3
    dg = _tables(store, "domain-generalization", with_published=True)["domain-generalization"]
    rows = {r.name: r for r in dg.all_rows}
    assert rows["CoOp"].cells[-1].mean == pytest.approx(59.28)  # same 4 targets: the printed average applies
    tex = render_latex(xd)
    _check_structure(tex, 1 + 5)
    assert r"\cmidrule(lr){2-2}" in tex and r"\cmidrule(lr){3-6}" in tex
    # Not ViT-B/16 OpenAI: no published rows at all.
    assert not any(r.reference for t in _tables(store, "few-shot", True).values() for r in t.all_rows)


def test_depth_and_fusion_ablation_tables(store):
    depth = _tables(store, "ablation-depth")["ablation-depth-mudpt"]
    assert [r.name for r in depth.all_rows] == ["1", "2", "3"]
    assert [g for g, _ in depth.groups] == ["fusion=bidirectional", "fusion=off (independent)"]
    # acc = 60 + 3·depth (+5 with fusion) and seeds ±1: depth 3 is best in both groups.
    best = depth.all_rows[-1].cells
    assert best[0].mean == pytest.approx(74.0) and best[0].std == pytest.approx(1.0) and best[0].bold
    assert best[1].mean == pytest.approx(69.0) and best[1].bold
    tex = render_latex(depth)
    _check_structure(tex, 3)
    assert tex.count(r"\cmidrule") == 2 and "Depth J" in tex
    fusion = _tables(store, "ablation-fusion")["ablation-fusion-mudpt"]
    assert fusion.columns == ["Base", "New", "HM"]
    names = [r.name for r in fusion.all_rows]
    assert names == ["bidirectional", "off (independent)", "text→vision", "vision→text"]
    tex = render_latex(fusion)
    assert r"text$\rightarrow$vision" in tex and r"fusion net=injection" in tex


@pytest.mark.skipif(shutil.which("pdflatex") is None, reason="pdflatex not installed")
def test_report_compiles_with_pdflatex(store, tmp_path):
    build_report(store.uri, grid="base2new", out_dir=tmp_path, with_published=True, plots=False)
    done = subprocess.run(["pdflatex", "-interaction=nonstopmode", "-halt-on-error", "report.tex"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout[-2000:]


# --------------------------------------------------------------------------------------------- files and errors

def test_build_report_writes_everything(store, tmp_path):
    paths = build_report(store.uri, grid="ablation-depth", out_dir=tmp_path)
    names = {p.name for p in paths}
    assert {"fewshot.tex", "ablation-depth-mudpt.tex", "report.tex", "fewshot.csv", "runs.csv", "summary.md",
            "ablation-depth-mudpt.pdf", "ablation-depth-mudpt.png"} <= names
    assert "fewshot.pdf" not in names  # one shot count: a curve would be a single point
    assert all(p.exists() and p.stat().st_size > 0 for p in paths)
    pdf = (tmp_path / "ablation-depth-mudpt.pdf").read_bytes()
    # pdf.fonttype 42: TrueType glyphs (matplotlib embeds them as CID-keyed Type0/CIDFontType2), no Type 3.
    assert (b"/CIDFontType2" in pdf or b"/TrueType" in pdf) and b"/Type3" not in pdf
    summary = (tmp_path / "summary.md").read_text()
    assert "| 3 | **74.00** ± 1.00 | **69.00** ± 1.00 |" in summary


def test_partial_store_lists_failed_cells(store, tmp_path):
    paths = build_report(store.uri, grid="few-shot", out_dir=tmp_path, plots=False)
    summary = (tmp_path / "summary.md").read_text()
    assert "Runs that did not finish" in summary and "loss became NaN at epoch 3" in summary
    assert "| fewshot | mudpt | EuroSAT | 16 | 1,2 | seeds 3 of 1,2,3 |" in summary
    assert "| fewshot | mudpt | Average | 1 |  | no result for UCF101 |" in summary
    assert (tmp_path / "unfinished.csv") in paths


@pytest.mark.parametrize("kwargs,message", [
    (dict(experiment="nope"), "no experiment 'nope'"),
    (dict(experiment="empty"), "no mudpt-bench cell runs in experiment 'empty'"),
    (dict(grid="broken"), "none of the 1 cell runs"),
    (dict(), "choose one with --grid NAME or --experiment NAME"),
])
def test_clear_errors(store, kwargs, message):
    with pytest.raises(ReportError, match=re.escape(message)):
        load_runs(store.uri, **kwargs)
    if kwargs.get("grid") == "broken":
        with pytest.raises(ReportError, match="CUDA out of memory"):
            load_runs(store.uri, **kwargs)


def test_missing_store_and_cli(store, tmp_path, monkeypatch):
    import typer
    from typer.testing import CliRunner

    from analysis.commands import report

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    with pytest.raises(ReportError, match="no MLflow store at mlflow.db"):
        load_runs(None, grid="few-shot")
    assert not (tmp_path / "mlflow.db").exists()  # reading never creates an empty store

    app = typer.Typer()
    app.command()(report)
    runner = CliRunner()
    bad = runner.invoke(app, ["--grid", "few-shot"])
    assert bad.exit_code == 1 and "no MLflow store" in bad.output
    ok = runner.invoke(app, ["--grid", "domain-generalization", "--tracking-uri", store.uri, "--out", "rep",
                             "--with-published"])
    assert ok.exit_code == 0, ok.output
    assert (tmp_path / "rep" / "domain-generalization.tex").exists() and "summary.md" in ok.output
