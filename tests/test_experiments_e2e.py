"""The real stack end to end (backbone, data, methods, engine, MLflow): a tiny grid runs, resumes and
leaves checkpoints that load back into the method. Random weights: this checks plumbing, not accuracy."""
from __future__ import annotations

import pytest

from experiments.grid import load_grid
from experiments.runner import run_grid

from test_experiments_support import cell_runs, finished_keys, mlflow_template, store, write_grid  # noqa: F401

GRID = """
name: e2e
backbone: {name: mudpt-tiny, pretrained: random}
shots: 1
seeds: [1]
recipe: {epochs: 1}
cells:
  - {method: mudpt, options: {depth: [1, 2]}, dataset: toy-textures}
  - {method: coop, options: {n_ctx: 2}, protocol: domain-generalization, dataset: toy-textures,
     targets: "@dg-targets"}
"""


@pytest.mark.slow
def test_tiny_grid_runs_resumes_and_its_prompts_load_back(tmp_path, store):
    from mlflow.tracking import MlflowClient
    from safetensors import safe_open

    from mudpt.api import cell_key, get_backbone
    from mudpt.method import build_method

    grid = load_grid(write_grid(tmp_path / "e2e.yaml", GRID))
    summary = run_grid(grid, tracking_uri=store)
    assert (summary.count("done"), summary.exit_code) == (3, 0), [o.error for o in summary.outcomes]
    assert sorted(finished_keys(store, "e2e")) == sorted(cell_key(c.config) for c in grid.cells)
    c = MlflowClient(store)
    clip, _ = get_backbone(grid.backbone)
    for r in cell_runs(store, "e2e"):
        m = r.data.metrics
        assert 0 <= m["acc"] <= 100 and m["n_trainable"] > 0 and r.data.params["env.torch"]
        assert len(c.get_metric_history(r.info.run_id, "train_loss")) == 1
        if r.data.tags["mudpt.protocol"] == "domain-generalization":
            assert "acc.toy-textures-noisy" in m and "target_avg_acc" in m
        path = c.download_artifacts(r.info.run_id, "prompts.safetensors", str(tmp_path / r.info.run_id))
        with safe_open(path, "pt") as f:
            meta, state = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
        import json

        method = build_method(meta["method"], clip, json.loads(meta["options"]))
        method.load_prompt_state(state, meta)  # shapes and names fit the method it came from
    again = run_grid(load_grid(tmp_path / "e2e.yaml"), tracking_uri=store)
    assert again.count("skipped") == 3 and again.count("done") == 0
