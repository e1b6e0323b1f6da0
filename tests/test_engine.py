"""Engine: Dassl schedule, frozen backbone, determinism, NaN handling, metrics."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from mudpt.config import Recipe
from mudpt.engine import TrainingError, evaluate, lr_at_epoch, score, train
from mudpt.method import build_method

CPU = torch.device("cpu")


def test_lr_schedule_matches_dassl_maple_log():
    r = Recipe(lr=0.0035, epochs=5)
    got = [lr_at_epoch(r, e) for e in range(5)]
    # PROTOCOLS §3.2: MaPLe, T=5, base 0.0035
    np.testing.assert_allclose(got, [1e-5, 3.5e-3, 3.1658e-3, 2.2908e-3, 1.2092e-3], rtol=1e-4)
    two = Recipe(lr=0.0026, epochs=2)
    assert [lr_at_epoch(two, e) for e in range(2)] == [1e-5, 0.0026]
    last = lr_at_epoch(Recipe(lr=1.0, epochs=10), 9)
    assert last == pytest.approx(0.5 * (1 + math.cos(math.pi * 8 / 10))) and last > 0


def _toy_batches(clip, n_classes=3, per_class=4, batch=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    s = clip.image_size
    means = torch.randn(n_classes, 3, 1, 1, generator=g)
    xs = torch.cat([means[c] + 0.3 * torch.randn(per_class, 3, s, s, generator=g) for c in range(n_classes)])
    ys = torch.arange(n_classes).repeat_interleave(per_class)
    perm = torch.randperm(len(ys), generator=g)
    xs, ys = xs[perm], ys[perm]
    return [(xs[i:i + batch], ys[i:i + batch]) for i in range(0, len(ys), batch)]


CLASSES = ["red", "green", "blue"]


def _run(clip, name, options, epochs=3, seed=0):
    torch.manual_seed(seed)
    method = build_method(name, clip, options)
    text = clip.tokenize(method.class_texts(CLASSES, "a photo of a {}."))
    data = _toy_batches(clip, seed=seed)
    hist = train(method, text, data, Recipe(lr=0.05, epochs=epochs), CPU)
    return method, text, data, hist


def test_training_touches_only_prompts_and_is_deterministic(tiny_clip):
    before = {k: v.clone() for k, v in tiny_clip.model.state_dict().items()}
    m1, text, data, h1 = _run(tiny_clip, "mudpt", {"depth": 2})
    for k, v in tiny_clip.model.state_dict().items():
        assert torch.equal(v, before[k]), f"frozen backbone tensor {k} changed"
    m2, _, _, h2 = _run(tiny_clip, "mudpt", {"depth": 2})
    assert [h.loss for h in h1] == [h.loss for h in h2]
    r1, r2 = evaluate(m1, text, data, CPU), evaluate(m2, text, data, CPU)
    assert (r1.acc, r1.macro_f1) == (r2.acc, r2.macro_f1)
    assert [h.lr for h in h1] == [1e-5, 0.05, lr_at_epoch(Recipe(lr=0.05, epochs=3), 2)]


def test_training_reduces_loss(tiny_clip):
    _, _, _, hist = _run(tiny_clip, "vpt-deep", {}, epochs=6)
    assert hist[-1].loss < hist[1].loss


def test_cached_text_features_give_identical_predictions(tiny_clip):
    method, text, data, _ = _run(tiny_clip, "maple", {"depth": 2}, epochs=2)
    fast = evaluate(method, text, data, CPU, cache_text=True)
    ref = evaluate(method, text, data, CPU, cache_text=False)
    assert (fast.acc, fast.macro_f1) == (ref.acc, ref.macro_f1)


def test_nan_loss_is_a_clear_error(tiny_clip):
    method = build_method("coop", tiny_clip, {"n_ctx": 2})
    with torch.no_grad():
        method.ctx.fill_(float("nan"))
    text = tiny_clip.tokenize(method.class_texts(CLASSES, "{}"))
    with pytest.raises(TrainingError, match="loss is nan at epoch 0 step 0"):
        train(method, text, _toy_batches(tiny_clip), Recipe(lr=0.01, epochs=1), CPU)


def test_zero_shot_has_nothing_to_train(tiny_clip):
    method = build_method("zsclip", tiny_clip)
    text = tiny_clip.tokenize(method.class_texts(CLASSES, "a photo of a {}."))
    with pytest.raises(TrainingError, match="no trainable parameters"):
        train(method, text, _toy_batches(tiny_clip), Recipe(epochs=1), CPU)


def test_score_is_top1_and_dassl_macro_f1():
    pred, true = np.array([0, 1, 1, 2, 2, 2]), np.array([0, 1, 2, 2, 2, 0])
    r = score(pred, true)
    assert r.acc == pytest.approx(100 * 4 / 6)
    # per class F1: c0 P=1 R=.5 -> .667, c1 P=.5 R=1 -> .667, c2 P=2/3 R=2/3 -> .667
    assert r.macro_f1 == pytest.approx(100 * 2 / 3)
