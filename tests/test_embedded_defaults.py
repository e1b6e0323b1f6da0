"""What the embedded default brings beyond its weights: its recipe and its augmentation choices."""
from __future__ import annotations

from mudpt.api import get_backbone, resolve
from mudpt.config import EMBEDDED_RECIPE, BackboneConfig, RunConfig
from mudpt.data.registry import load_dataset


def test_embedded_backbone_brings_its_recipe_and_explicit_overrides_win(tiny_model_name):
    cfg = RunConfig.make("mudpt", "toy-shapes", recipe={"epochs": 3})
    clip, _ = get_backbone(cfg.backbone)
    _, _, recipe = resolve(cfg, clip)
    assert (recipe.optimizer, recipe.lr, recipe.batch_size) == ("adamw", EMBEDDED_RECIPE["lr"], 32)
    assert recipe.epochs == 3
    real = RunConfig.make("mudpt", "toy-shapes", backbone=BackboneConfig(tiny_model_name, "random"))
    clip, _ = get_backbone(real.backbone)
    _, _, official = resolve(real, clip)
    assert (official.optimizer, official.lr, official.batch_size, official.epochs) == ("sgd", 0.0025, 4, 10)


def test_only_digits_skip_horizontal_flips():
    assert load_dataset("toy-digits").train_hflip is False
    assert load_dataset("toy-shapes").train_hflip is True
