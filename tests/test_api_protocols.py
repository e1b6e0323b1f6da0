"""End to end through `run_experiment` on miniature CoOp layouts with a tiny random backbone."""
from __future__ import annotations

import pytest

from mudpt.api import cell_key, run_experiment
from mudpt.config import BackboneConfig, RunConfig
from mudpt.errors import UserError
from fixtures_coop import build_coop_root

FAST = {"epochs": 2, "batch_size": 4}


@pytest.fixture(scope="module")
def coop_root(tmp_path_factory):
    return build_coop_root(tmp_path_factory.mktemp("coop")).root


@pytest.fixture
def cfg(tiny_model_name, coop_root, tmp_path, monkeypatch):
    monkeypatch.setenv("MUDPT_CACHE", str(tmp_path / "cache"))
    backbone = BackboneConfig(name=tiny_model_name, pretrained="random")

    def make(method, dataset, **kw):
        kw.setdefault("recipe", FAST)
        return RunConfig.make(method, dataset, backbone=backbone, data_root=str(coop_root), shots=2, **kw)

    return make


def test_fewshot_is_deterministic_and_keyed(cfg):
    c = cfg("mudpt", "dtd", options={"depth": 2})
    a, b = run_experiment(c), run_experiment(c)
    assert 0 <= a.metrics["acc"] <= 100 and 0 <= a.metrics["macro_f1"] <= 100
    assert a.metrics["acc"] == b.metrics["acc"] and a.key == b.key == cell_key(c)
    assert [h.loss for h in a.history] == [h.loss for h in b.history] and len(a.history) == 2
    assert a.params["opt.depth"] == 2 and a.params["recipe.epochs"] == 2 and a.params["manifest_hash"]
    assert a.params["n_trainable"] == sum(t.numel() for t in a.prompt_state.values())
    other = cfg("mudpt", "dtd", options={"depth": 2}, seed=2)
    assert cell_key(other) != a.key


def test_base_to_new_evaluates_the_same_prompts_on_new_classes(cfg):
    r = run_experiment(cfg("maple", "eurosat", protocol="base2new", options={"depth": 2}))
    m = r.metrics
    assert {"base_acc", "new_acc", "hm", "base_macro_f1", "new_macro_f1"} <= set(m)
    assert m["hm"] == pytest.approx(2 * m["base_acc"] * m["new_acc"] / (m["base_acc"] + m["new_acc"]))
    assert r.params["n_classes"] == 2  # ceil(3 / 2) base classes of the miniature EuroSAT


def test_cross_dataset_and_dg_evaluate_targets_without_retraining(cfg):
    r = run_experiment(cfg("coop", "imagenet", protocol="domain-generalization",
                           targets=["imagenetv2", "imagenet_a"], options={"n_ctx": 2}))
    assert {"acc", "acc.imagenetv2", "acc.imagenet_a", "target_avg_acc"} <= set(r.metrics)
    assert r.metrics["target_avg_acc"] == pytest.approx((r.metrics["acc.imagenetv2"] + r.metrics["acc.imagenet_a"]) / 2)
    assert len(r.history) == 2  # one training, three evaluations


def test_zero_shot_trains_nothing_and_validation_split_is_separate(cfg):
    r = run_experiment(cfg("zsclip", "caltech101"))
    assert r.history == [] and r.params["n_trainable"] == 0
    v = run_experiment(cfg("coop", "caltech101", options={"n_ctx": 2}), eval_split="val", eval_every_epoch=True)
    assert "val_acc" in v.metrics and "acc" not in v.metrics
    assert all(h.val_acc is not None for h in v.history)


def test_bad_inputs_are_user_errors(cfg):
    with pytest.raises(UserError, match="unknown recipe key"):
        run_experiment(cfg("coop", "dtd", recipe={"learning_rate": 1}))
    with pytest.raises(UserError, match="no training split"):
        run_experiment(cfg("coop", "imagenet_a"))
    with pytest.raises(UserError, match="unknown dataset"):
        run_experiment(cfg("coop", "dtdd"))
