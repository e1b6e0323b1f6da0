"""The Optuna work queue: N local worker processes drain one grid, each cell run exactly once."""
from __future__ import annotations

import pytest

from experiments.grid import load_grid
from experiments.runner import run_grid

from test_experiments_support import (cell_runs, fake_env, finished_keys, mlflow_template, store,  # noqa: F401
                                      write_grid)

GRID = """
name: q
method: mudpt
options: {depth: [1, 2]}
datasets: [exp-test-a, exp-test-b]
seeds: "1..3"
shots: 4
"""


def test_four_local_workers_run_each_cell_exactly_once(tmp_path, store, fake_env, monkeypatch):
    import optuna
    from optuna.trial import TrialState

    from experiments.queue import open_storage

    monkeypatch.setenv("FAKE_SLEEP", "0.15")  # about half a second a cell, so the workers overlap
    monkeypatch.setenv("FAKE_FAIL", "")
    grid = load_grid(write_grid(tmp_path / "q.yaml", GRID))
    storage = f"journal:{tmp_path / 'queue.journal'}"
    summary = run_grid(grid, tracking_uri=store, workers=4, storage=storage,
                       backend_ref="test_experiments_support:FakeBackend")
    assert (summary.count("done"), summary.count("failed"), summary.exit_code) == (12, 0, 0)
    lines = fake_env.read_text().splitlines()
    keys = [line.split()[0] for line in lines]
    expected = sorted(c.config.key() for c in grid.cells)
    assert sorted(keys) == expected  # every cell ran, none twice
    assert len({line.split()[1] for line in lines}) >= 2  # and more than one worker did the work
    assert sorted(finished_keys(store, "q")) == expected
    assert all(r.data.tags["mudpt.worker"] for r in cell_runs(store, "q"))
    (name,) = [s.study_name for s in optuna.get_all_study_summaries(open_storage(storage))]
    trials = optuna.load_study(study_name=name, storage=open_storage(storage)).get_trials()
    cells = [t for t in trials if "config" in t.user_attrs]
    assert len(cells) == 12 and all(t.state == TrialState.COMPLETE for t in cells)
    # a second invocation finds everything finished and enqueues nothing
    again = run_grid(grid, tracking_uri=store, workers=4, storage=storage,
                     backend_ref="test_experiments_support:FakeBackend")
    assert again.count("skipped") == 12 and len(fake_env.read_text().splitlines()) == 12


def test_worker_drains_an_enqueued_grid_in_process(tmp_path, store, fake_env):
    """`run --workers 0 --storage URL` only enqueues; `worker --storage URL` (here in-process) drains."""
    import threading

    from experiments.queue import work
    from test_experiments_support import FakeBackend

    grid = load_grid(write_grid(tmp_path / "q.yaml", GRID))
    storage = f"journal:{tmp_path / 'remote.journal'}"
    result = {}
    t = threading.Thread(target=lambda: result.setdefault(
        "s", run_grid(grid, tracking_uri=store, workers=0, storage=storage, backend=FakeBackend())))
    t.start()
    outs = []
    while t.is_alive():  # the worker may start before the parent has enqueued
        outs += work(storage, backend=FakeBackend())
        t.join(timeout=0.2)
    assert len(outs) == 12 and all(o.status == "done" for o in outs)
    assert result["s"].count("done") == 12 and result["s"].exit_code == 0
    assert sorted(finished_keys(store, "q")) == sorted(c.config.key() for c in grid.cells)


def test_bad_storage_url_is_a_clear_error():
    from experiments.queue import QueueError, open_storage

    with pytest.raises(QueueError, match="unknown scheme"):
        open_storage("redis://localhost/0")


def test_a_restart_closes_the_old_queue_so_only_the_new_one_is_drained(tmp_path, store, fake_env):
    from experiments.queue import QueueError, enqueue, work
    from experiments.runner import plan_cells
    from experiments.tracking import Tracker
    from test_experiments_support import FakeBackend

    grid = load_grid(write_grid(tmp_path / "q.yaml", GRID))
    plans = plan_cells(list(grid.cells)[:2], FakeBackend())
    tr = Tracker(store, "q")
    storage = f"journal:{tmp_path / 'r.journal'}"
    meta = {"grid": "q", "experiment": "q", "tracking_uri": tr.uri, "force": False}
    old = enqueue(storage, plans, {**meta, "parent_run_id": "a" * 32})  # an interrupted invocation's queue
    new = enqueue(storage, plans, {**meta, "parent_run_id": "b" * 32})
    with pytest.raises(QueueError, match=f"replaced by '{new}'"):
        work(storage, study_name=old, backend=FakeBackend())
    outs = work(storage, backend=FakeBackend())
    assert len(outs) == 2 and len(fake_env.read_text().splitlines()) == 2  # each cell once, from the new queue
