"""Shared pieces of the experiments tests: a fast fake backend (also loaded by worker subprocesses through
`--backend test_experiments_support:FakeBackend`), two registered test datasets and a tracking-store
template, so the queue, resume and kill tests do not depend on the real data stack.

The fake is steered by environment variables, which worker processes inherit:
  FAKE_LOG   file that every run appends "<key> <pid>" to (O_APPEND: one write per line)
  FAKE_FAIL  comma list of datasets whose runs fail with a NaN-loss TrainingError
  FAKE_HANG  "<dataset>:<seed>": that run writes FAKE_HANG_MARK after its first epoch, then sleeps
  FAKE_SLEEP seconds per epoch (default 0)
"""
from __future__ import annotations

import os
import time
from pathlib import Path

TEST_DATASETS = ("exp-test-a", "exp-test-b")
FAKE_EPOCHS = 3


def register_test_datasets() -> None:
    from mudpt.data.base import DataError
    from mudpt.data.registry import _REGISTRY, register_dataset

    def loader(root):  # the fake backend never loads data
        raise DataError("experiments test dataset: not loadable")

    for name in TEST_DATASETS:
        if name not in _REGISTRY:
            register_dataset(name, kind="embedded", description="experiments tests")(loader)


register_test_datasets()


class FakeBackend:
    """plan/run with the real RunResult type, in milliseconds."""

    def plan(self, cfg):
        from experiments.runner import CellCost

        return cfg.key(), CellCost(FAKE_EPOCHS, 10, 100)

    def run(self, cfg, on_epoch, eval_split="test", eval_every_epoch=False):
        import torch

        from mudpt.api import RunResult
        from mudpt.engine import EpochStats, TrainingError

        hang = os.environ.get("FAKE_HANG", "")
        fail = [d for d in os.environ.get("FAKE_FAIL", "").split(",") if d]
        # A value that depends on the switches and recipe, so a search has something to find.
        opts, rec = cfg.options_dict, cfg.recipe_dict
        quality = 60.0 + 5.0 * float(opts.get("depth", 1)) - 20.0 * abs(float(rec.get("lr", 0.003)) - 0.003) * 100
        history = []
        for epoch in range(FAKE_EPOCHS):
            if cfg.dataset in fail:
                raise TrainingError(f"loss is nan at epoch {epoch} step 0 (lr 0.002)")
            time.sleep(float(os.environ.get("FAKE_SLEEP", "0")))
            val = quality * (epoch + 1) / FAKE_EPOCHS if eval_every_epoch else None
            stats = EpochStats(epoch, 2.0 / (epoch + 1), 0.002, 10.0 * (epoch + 1), 0.01, 10, val)
            history.append(stats)
            on_epoch(stats)
            if hang and hang == f"{cfg.dataset}:{cfg.seed}":
                Path(os.environ["FAKE_HANG_MARK"]).write_text(str(os.getpid()))
                time.sleep(3600)
        if os.environ.get("FAKE_LOG"):
            fd = os.open(os.environ["FAKE_LOG"], os.O_WRONLY | os.O_APPEND | os.O_CREAT)
            os.write(fd, f"{cfg.key()} {os.getpid()}\n".encode())
            os.close(fd)
        metrics = {"val_acc": quality} if eval_split == "val" else {"acc": quality, "macro_f1": quality - 1}
        metrics.update(wall_s=0.05, n_trainable=8.0, train_images_per_s=100.0, eval_images_per_s=1000.0)
        params = {"method": cfg.method, "dataset": cfg.dataset, "shots": cfg.shots, "seed": cfg.seed,
                  "backbone": cfg.backbone.name, "n_trainable": 8, "long": "x" * 7000,
                  **{f"opt.{k}": v for k, v in opts.items()}, **{f"recipe.{k}": v for k, v in rec.items()}}
        return RunResult(cfg, cfg.key(), metrics, params, history, {"ctx": torch.full((2, 4), 0.5)},
                         {"method": cfg.method, "options": str(opts)}, [])


# ------------------------------------------------------------------------------------ fixtures
import shutil  # noqa: E402

import pytest  # noqa: E402


_TEMPLATE: list[Path] = []


@pytest.fixture(scope="session")
def mlflow_template(tmp_path_factory) -> Path:
    """An initialised MLflow sqlite store: creating one runs its migrations (seconds), copying it does not.
    Cached per process: each test module that imports this fixture gets its own fixture instance."""
    from experiments.tracking import connect

    if not _TEMPLATE:
        path = tmp_path_factory.mktemp("mlflow-template") / "mlflow.db"
        connect(f"sqlite:///{path}")
        _TEMPLATE.append(path)
    return _TEMPLATE[0]


@pytest.fixture
def store(tmp_path, mlflow_template) -> str:
    """A fresh tracking URI for one test."""
    path = tmp_path / "mlflow.db"
    shutil.copy(mlflow_template, path)
    return f"sqlite:///{path}"


@pytest.fixture
def fake_env(tmp_path, monkeypatch) -> Path:
    """FAKE_LOG in tmp_path, no failures or hangs, and tests/ importable by worker subprocesses."""
    log = tmp_path / "runs.log"
    monkeypatch.setenv("FAKE_LOG", str(log))
    for k in ("FAKE_FAIL", "FAKE_HANG", "FAKE_SLEEP"):
        monkeypatch.delenv(k, raising=False)
    tests_dir = str(Path(__file__).parent)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [tests_dir, os.environ.get("PYTHONPATH")])))
    return log


def write_grid(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def cell_runs(uri: str, experiment: str) -> list:
    from mlflow.tracking import MlflowClient

    c = MlflowClient(uri)
    exp = c.get_experiment_by_name(experiment)
    return c.search_runs([exp.experiment_id], "tags.`mudpt.role` = 'cell'", max_results=1000) if exp else []


def finished_keys(uri: str, experiment: str) -> list[str]:
    """Keys of finished-looking cell runs (finished tag AND MLflow status FINISHED), with repeats."""
    return [r.data.tags["mudpt.key"] for r in cell_runs(uri, experiment)
            if r.data.tags.get("mudpt.status") == "finished" and r.info.status == "FINISHED"]
