"""The embedded default: the world regenerates identically, the shipped checkpoint is the recorded one,
and the headroom bands hold (on reduced test sets)."""
from __future__ import annotations

import shutil

import numpy as np
import pytest

from mudpt.toy import datasets as D
from mudpt.toy import world as W


def test_world_is_deterministic_per_index():
    a = [W.pretraining_example(3, i) for i in (0, 5, 77)]
    b = [W.pretraining_example(3, i) for i in (77, 0, 5)]  # order must not matter
    for (img_a, item_a), (img_b, item_b) in zip(a, [b[1], b[2], b[0]]):
        assert np.array_equal(img_a, img_b)
        assert item_a == item_b
    assert not np.array_equal(W.pretraining_example(3, 0)[0], W.pretraining_example(4, 0)[0])
    caps = [[W.pool_caption(it, np.random.default_rng([1, 2])) for _, it in a] for _ in range(2)]
    assert caps[0] == caps[1]


def test_pool_does_not_depend_on_chunking():
    imgs1, items1 = W.render_pool(9, 23, processes=1, chunk=23)
    imgs2, items2 = W.render_pool(9, 23, processes=1, chunk=5)
    assert np.array_equal(imgs1, imgs2) and items1 == items2
    assert imgs1.shape == (23, W.OUT, W.OUT, 3) and imgs1.dtype == np.uint8


def test_captions_contain_the_evaluation_prompt_words():
    rng = np.random.default_rng(0)
    _, items = W.render_pool(1, 200, processes=1)
    caps = [W.pool_caption(it, rng) for it in items for _ in range(3)]
    assert any(c.startswith("a photo of a ") for c in caps)
    assert 0.3 < np.mean([c.endswith(".") for c in caps]) < 0.7
    for word in (*W.SHAPES, *W.COLOUR_NAMES, *W.TEXTURES, *W.DIGIT_WORDS, "background", "digit"):
        assert any(word in c.split() or word in c for c in caps), word


def test_split_slice_regenerates_and_prefixes_are_balanced():
    ds = D.TOY_DATASETS["toy-shapes"]
    for dom in (ds.train_domain, *ds.targets):
        x1, y1 = D.render_split(ds, dom, "test", stop=12)
        x2, y2 = D.render_split(ds, dom, "test", stop=12)
        assert np.array_equal(x1, x2) and np.array_equal(y1, y2)
        assert list(y1[:10]) == list(range(10))
    # A prefix of a longer slice is the shorter slice; different domains draw the same scenes differently.
    x6, _ = D.render_split(ds, ds.train_domain, "test", stop=6)
    assert np.array_equal(x6, D.render_split(ds, ds.train_domain, "test", stop=12)[0][:6])
    assert not np.array_equal(x6, D.render_split(ds, ds.targets[0], "test", stop=6)[0])


def test_cached_split_matches_regeneration(tmp_path, monkeypatch):
    monkeypatch.setenv("MUDPT_CACHE", str(tmp_path))
    from mudpt.data.registry import load_dataset

    splits = load_dataset("toy-textures")
    ds = D.TOY_DATASETS["toy-textures"]
    assert (len(splits.train), len(splits.val), len(splits.test)) == tuple(p * 6 for p in ds.per_class)
    assert splits.classnames == list(ds.classnames) and splits.train_crop_scale == D.TOY_CROP_SCALE
    fresh, labels = D.render_split(ds, ds.train_domain, "train", stop=8)
    for i in range(8):
        datum = splits.train[i]
        assert datum.label == labels[i] and datum.impath == f"{ds.train_domain.name}/train/{i}.png"
        assert np.array_equal(np.asarray(splits.read_image(datum.impath)), fresh[i])
    target = load_dataset("toy-textures-noisy")
    assert not target.train and len(target.test) == len(splits.test)
    with pytest.raises(Exception, match="expected '<domain>/<split>/<index>.png'"):
        splits.read_image("nowhere/test/0.png")


def test_shipped_checkpoint_loads_and_matches_its_hash(tmp_path):
    from mudpt.toy.model import EMBEDDED_WEIGHTS, CheckpointError, load_embedded_model, recorded_meta, verify_weights

    assert EMBEDDED_WEIGHTS.exists(), f"{EMBEDDED_WEIGHTS} is missing: the embedded default ships it"
    assert verify_weights() == recorded_meta()["sha256"]
    assert EMBEDDED_WEIGHTS.stat().st_size <= 25 * 2**20
    model = load_embedded_model()
    assert not model.training
    # A tampered copy is refused, and the message names both hashes.
    bad = tmp_path / "mudpt-tiny.safetensors"
    shutil.copy(EMBEDDED_WEIGHTS, bad)
    shutil.copy(EMBEDDED_WEIGHTS.with_name("mudpt-tiny.meta.json"), tmp_path / "mudpt-tiny.meta.json")
    with open(bad, "r+b") as f:
        f.seek(-3, 2)
        f.write(b"\x00\x01\x02")
    with pytest.raises(CheckpointError, match=recorded_meta()["sha256"]):
        load_embedded_model(bad)


def test_headroom_bands_hold_on_reduced_test_sets():
    from mudpt.toy.headroom import headroom_table

    rows = headroom_table(reduced=True, show=False)
    names = {r.dataset for r in rows}
    assert set(D.EMBEDDED_SUITE) <= names and all(t in names for ts in D.DG_TARGETS.values() for t in ts)
    out = [f"{r.dataset}: {100 * r.zero_shot:.1f}% not in [{100 * r.low:.1f}, {100 * r.high:.0f}]"
           for r in rows if not r.in_band]
    assert not out, "; ".join(out)
