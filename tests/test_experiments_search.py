"""Optuna search with a fake backend: validation-only objective, pruning, MLflow trials, a runnable best-grid file."""
from __future__ import annotations

import pytest

from experiments.grid import load_grid
from experiments.search import SearchError, run_search

from test_experiments_support import FakeBackend, fake_env, mlflow_template, store  # noqa: F401


class RecordingBackend(FakeBackend):
    def __init__(self):
        self.calls = []

    def run(self, cfg, on_epoch, eval_split="test", eval_every_epoch=False):
        self.calls.append((eval_split, eval_every_epoch))
        return super().run(cfg, on_epoch, eval_split, eval_every_epoch)


def test_search_scores_on_val_prunes_and_writes_a_grid_run_accepts(tmp_path, store, fake_env):
    from mlflow.tracking import MlflowClient

    backend = RecordingBackend()
    best = tmp_path / "best.yaml"
    out = run_search("mudpt", "exp-test-a", n_trials=9, shots=4, storage=f"journal:{tmp_path / 's.journal'}",
                     tracking_uri=store, write_best=best, sampler_seed=0, backend=backend)
    assert set(backend.calls) == {("val", True)}  # never the test split
    assert out.n_complete + out.n_pruned + out.n_failed == 9 and out.n_failed == 0
    assert out.n_pruned >= 1  # the fake's per-epoch val acc lets MedianPruner stop weak trials
    c = MlflowClient(store)
    exp = c.get_experiment_by_name(f"search:{out.study_name}")
    runs = c.search_runs([exp.experiment_id], "tags.`mudpt.role` = 'trial'")
    assert len(runs) == 9
    complete = [r for r in runs if r.data.tags["mudpt.status"] == "finished"]
    assert max(r.data.metrics["val_acc"] for r in complete) == pytest.approx(out.best_value)
    assert sum(r.data.tags["mudpt.status"] == "pruned" for r in runs) == out.n_pruned
    g = load_grid(best)
    assert [c.config.seed for c in g.cells] == [1, 2, 3]
    cfg = g.cells[0].config
    assert cfg.method == "mudpt" and cfg.dataset == "exp-test-a" and cfg.shots == 4
    assert cfg.options_dict["depth"] == out.best_params["depth"]
    assert cfg.recipe_dict["lr"] == pytest.approx(out.best_params["lr"])
    assert "validation accuracy" in best.read_text()
    # a second invocation continues the same study
    more = run_search("mudpt", "exp-test-a", n_trials=1, shots=4, storage=f"journal:{tmp_path / 's.journal'}",
                      tracking_uri=store, sampler_seed=0, backend=backend)
    assert more.n_complete + more.n_pruned + more.n_failed == 10


def test_search_refuses_a_dataset_whose_val_split_is_its_test_split(tmp_path, store):
    with pytest.raises(SearchError, match="tune on test"):
        run_search("mudpt", "imagenet", n_trials=1, data_root=str(tmp_path), tracking_uri=store,
                   backend=FakeBackend())
