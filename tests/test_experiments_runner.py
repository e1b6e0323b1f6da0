"""The grid runner with a fake backend: MLflow schema, failure recording, exit codes, resume after a kill,
--force, --dry-run and the reachability check."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from experiments.grid import load_grid
from experiments.runner import run_grid
from experiments.tracking import Tracker, TrackingError

from test_experiments_support import (FakeBackend, cell_runs, fake_env, finished_keys, mlflow_template,  # noqa: F401
                                      store, write_grid)

GRID = """
name: {name}
method: mudpt
options: {{depth: [1, 2]}}
datasets: [exp-test-a, exp-test-b]
seeds: [1]
shots: 4
"""


def _grid(tmp_path, name="g"):
    return load_grid(write_grid(tmp_path / f"{name}.yaml", GRID.format(name=name)))


def test_cells_are_logged_in_the_report_schema(tmp_path, store, fake_env):
    from mlflow.tracking import MlflowClient
    from safetensors import safe_open

    grid = _grid(tmp_path)
    summary = run_grid(grid, tracking_uri=store, backend=FakeBackend())
    assert (summary.count("done"), summary.count("failed"), summary.exit_code) == (4, 0, 0)
    c = MlflowClient(store)
    exp = c.get_experiment_by_name("g")
    parents = c.search_runs([exp.experiment_id], "tags.`mudpt.role` = 'grid'")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert parents[0].data.params["grid_seeds"] == "1" and parents[0].data.params["grid_file"].endswith("g.yaml")
    runs = cell_runs(store, "g")
    assert len(runs) == 4
    for r in runs:
        t = r.data.tags
        assert t["mlflow.parentRunId"] == parents[0].info.run_id
        assert t["mudpt.status"] == "finished" and r.info.status == "FINISHED" and t["mudpt.grid"] == "g"
        assert t["mudpt.label"] in ("mudpt[depth=1]", "mudpt[depth=2]") and t["mudpt.method"] == "mudpt"
        assert t["mudpt.protocol"] == "fewshot" and t["mudpt.dataset"] in ("exp-test-a", "exp-test-b")
        assert len(r.data.params["long"]) <= 6000 and r.data.params["shots"] == "4"
        assert r.data.metrics["acc"] > 0 and "macro_f1" in r.data.metrics
        assert [m.step for m in c.get_metric_history(r.info.run_id, "train_loss")] == [0, 1, 2]
        assert {m.key for m in [*c.get_metric_history(r.info.run_id, "lr"),
                                *c.get_metric_history(r.info.run_id, "train_acc")]} == {"lr", "train_acc"}
        art = Path(c.download_artifacts(r.info.run_id, "", str(tmp_path / r.info.run_id)))
        cfg = json.loads((art / "config.json").read_text())
        assert cfg["key"] == t["mudpt.key"] and cfg["config"]["method"] == "mudpt" and cfg["params"]["shots"] == 4
        with safe_open(str(art / "prompts.safetensors"), "pt") as f:
            assert f.metadata()["method"] == "mudpt" and list(f.keys()) == ["ctx"]


def test_failures_are_recorded_and_the_grid_goes_on(tmp_path, store, fake_env, monkeypatch):
    import typer
    from typer.testing import CliRunner

    from experiments.commands import run

    monkeypatch.setenv("FAKE_FAIL", "exp-test-b")
    path = write_grid(tmp_path / "g.yaml", GRID.format(name="g"))
    app = typer.Typer()
    app.command()(run)
    app.command("noop")(lambda: None)  # two commands: `run` stays a subcommand
    res = CliRunner().invoke(app, ["run", "--grid", str(path), "--tracking-uri", store,
                                   "--backend", "test_experiments_support:FakeBackend"])
    assert res.exit_code == 1, res.output
    assert "done 2, skipped (already finished) 0, failed 2" in res.output
    runs = cell_runs(store, "g")
    failed = [r for r in runs if r.data.tags["mudpt.status"] == "failed"]
    assert len(failed) == 2 and all(r.info.status == "FAILED" for r in failed)
    assert all("TrainingError: loss is nan" in r.data.tags["mudpt.error"] for r in failed)
    assert {r.data.tags["mudpt.dataset"] for r in failed} == {"exp-test-b"}
    # once fixed, a rerun runs only the failed cells
    monkeypatch.delenv("FAKE_FAIL")
    res = CliRunner().invoke(app, ["run", "--grid", str(path), "--tracking-uri", store,
                                   "--backend", "test_experiments_support:FakeBackend"])
    assert res.exit_code == 0 and "done 2, skipped (already finished) 2, failed 0" in res.output
    assert sorted(finished_keys(store, "g")) == sorted(c.config.key() for c in load_grid(path).cells)


def test_a_killed_grid_resumes_with_every_cell_exactly_once(tmp_path, store, fake_env, monkeypatch):
    path = write_grid(tmp_path / "g.yaml", GRID.format(name="g"))
    mark = tmp_path / "hang.mark"
    monkeypatch.setenv("FAKE_HANG", "exp-test-b:1")  # the 2nd cell hangs after its first epoch
    monkeypatch.setenv("FAKE_HANG_MARK", str(mark))
    script = ("import test_experiments_support\n"
              "from experiments.grid import load_grid\nfrom experiments.runner import run_grid\n"
              f"run_grid(load_grid({str(path)!r}), tracking_uri={store!r}, "
              "backend_ref='test_experiments_support:FakeBackend')\n")
    proc = subprocess.Popen([sys.executable, "-c", script], env=dict(os.environ))
    try:
        deadline = time.time() + 60
        while not mark.exists():
            assert proc.poll() is None and time.time() < deadline, "the grid process never reached the hang"
            time.sleep(0.1)
    finally:
        os.kill(proc.pid, signal.SIGKILL)  # no handler runs: the worst case
        proc.wait()
    runs = cell_runs(store, "g")
    assert len(finished_keys(store, "g")) == 1  # only the first cell completed
    partial = [r for r in runs if r.data.tags["mudpt.status"] != "finished"]
    assert len(partial) == 1 and partial[0].info.status == "RUNNING"  # never finished-looking
    monkeypatch.delenv("FAKE_HANG")
    summary = run_grid(load_grid(path), tracking_uri=store, backend=FakeBackend())
    assert (summary.count("skipped"), summary.count("done"), summary.exit_code) == (1, 3, 0)
    keys = finished_keys(store, "g")
    assert sorted(keys) == sorted(c.config.key() for c in load_grid(path).cells)  # each cell exactly once
    again = run_grid(load_grid(path), tracking_uri=store, backend=FakeBackend())
    assert again.count("skipped") == 4 and again.count("done") == 0


def test_finished_means_tag_and_status(tmp_path, store):
    """A kill between the finished tag and set_terminated leaves a run that must not count as finished."""
    tr = Tracker(store, "g")
    from mudpt.config import RunConfig

    cfg = RunConfig.make("coop", "exp-test-a")
    run = tr.start_cell(cfg, "k1", "coop", "g", None)
    tr.client.set_tag(run.run_id, "mudpt.status", "finished")
    assert tr.finished_cells() == {} and tr.finished_run("k1") is None
    tr.client.set_terminated(run.run_id, "FINISHED")
    assert tr.finished_cells() == {"k1": run.run_id}


def test_force_reruns_and_leaves_one_finished_run_per_key(tmp_path, store, fake_env):
    grid = _grid(tmp_path)
    run_grid(grid, tracking_uri=store, backend=FakeBackend())
    forced = run_grid(grid, tracking_uri=store, backend=FakeBackend(), force=True)
    assert forced.count("done") == 4
    keys = finished_keys(store, "g")
    assert len(keys) == len(set(keys)) == 4
    assert sum(r.data.tags["mudpt.status"] == "superseded" for r in cell_runs(store, "g")) == 4
    assert len(fake_env.read_text().splitlines()) == 8


def test_dry_run_lists_cells_keys_and_cost_without_running(tmp_path, store, fake_env):
    from rich.console import Console

    grid = _grid(tmp_path)
    uri_absent = f"sqlite:///{tmp_path / 'absent.db'}"
    con = Console(record=True, width=250)
    s = run_grid(grid, tracking_uri=uri_absent, backend=FakeBackend(), dry_run=True, console=con)
    out = con.export_text()
    assert s.exit_code == 0 and not (tmp_path / "absent.db").exists() and not fake_env.exists()
    assert "mudpt[depth=1]" in out and "exp-test-b" in out and out.count(" new ") == 4
    assert "3 x 10" in out and "to run: 4 of 4 cells, 120 training images" in out
    run_grid(grid, tracking_uri=store, backend=FakeBackend())
    con = Console(record=True, width=250)
    run_grid(grid, tracking_uri=store, backend=FakeBackend(), dry_run=True, console=con, workers=2)
    out = con.export_text()
    assert out.count("finished") == 4 and "to run: 0 of 4 cells" in out
    assert grid.cells[0].config.key() in out


def test_estimate_uses_measured_throughput(tmp_path, store, fake_env):
    from experiments.runner import Planned, estimate_seconds, CellCost, CELL_OVERHEAD_S

    grid = _grid(tmp_path)
    run_grid(grid, tracking_uri=store, backend=FakeBackend())
    rates = Tracker(store, "g").throughput()
    assert rates[("mudpt-tiny", "mudpt")] == (100.0, 1000.0)
    p = Planned(0, grid.cells[0], "k", CellCost(3, 10, 100))
    assert estimate_seconds(p, rates) == pytest.approx(CELL_OVERHEAD_S + 0.3 + 0.1)


def test_unreachable_tracking_uri_is_reported_before_any_training(tmp_path, fake_env):
    grid = _grid(tmp_path)
    with pytest.raises(TrackingError, match="folder .* does not exist"):
        run_grid(grid, tracking_uri=f"sqlite:///{tmp_path}/no/such/dir/m.db", backend=FakeBackend())
    t0 = time.time()
    with pytest.raises(TrackingError, match=r"tracking URI 'http://127.0.0.1:9' is not reachable"):
        run_grid(grid, tracking_uri="http://127.0.0.1:9", backend=FakeBackend())
    assert time.time() - t0 < 30 and not fake_env.exists()
