"""Transforms (§3.1), the decoded-image cache's exactness, and loader determinism / drop_last."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from fixtures_coop import write_jpeg
from mudpt.data.base import DataError, Datum
from mudpt.data.coop import ImageReader
from mudpt.data.image_cache import DecodedImageCache
from mudpt.data.loader import make_loader
from mudpt.data.transforms import CLIP_MEAN, CLIP_STD, build_transform, to_normalized_tensor

SIZE = 16


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """12 JPEGs of mixed sizes and aspect ratios in 3 classes."""
    root = tmp_path_factory.mktemp("imgs")
    items = []
    for i in range(12):
        w, h = [(40, 30), (30, 44), (64, 20), (17, 17)][i % 4]
        write_jpeg(root / f"c{i % 3}" / f"{i}.jpg", i, size=(w, h))
        items.append(Datum(f"c{i % 3}/{i}.jpg", i % 3, f"class {i % 3}"))
    return root, items, ImageReader("mini", root)


def _normalize(arr: np.ndarray) -> torch.Tensor:
    t = torch.from_numpy(arr.copy()).permute(2, 0, 1).float() / 255
    return (t - torch.tensor(CLIP_MEAN)[:, None, None]) / torch.tensor(CLIP_STD)[:, None, None]


def test_test_transform_resizes_short_side_then_centre_crops():
    # columns: left third red, middle green, right third blue; a squash-resize would keep all three.
    img = Image.new("RGB", (48, 16))
    for x in range(48):
        for y in range(16):
            img.putpixel((x, y), [(255, 0, 0), (0, 255, 0), (0, 0, 255)][x // 16])
    out = build_transform(SIZE, train=False)(img)
    assert out.shape == (3, SIZE, SIZE) and out.dtype == torch.float32
    expected = _normalize(np.asarray(img))  # short side is already 16, so the crop is the middle third
    assert torch.allclose(out, expected[:, :, 16:32], atol=1e-6)
    big = Image.new("RGB", (90, 60), (10, 200, 30))
    by_hand = big.resize((24, 16), Image.BICUBIC).crop((4, 0, 20, 16))  # 90x60 -> 24x16 -> centre 16x16
    assert torch.allclose(build_transform(SIZE, False)(big), _normalize(np.asarray(by_hand)), atol=1e-6)


def test_train_transform_components():
    import mudpt.compat  # noqa: F401
    from torchvision import transforms as T

    tf = build_transform(SIZE, train=True, crop_scale=(0.5, 1.0))
    rrc, flip, _, norm = tf.transforms
    assert isinstance(rrc, T.RandomResizedCrop) and rrc.size == (SIZE, SIZE) and rrc.scale == (0.5, 1.0)
    assert rrc.interpolation == T.InterpolationMode.BICUBIC and rrc.ratio == pytest.approx((3 / 4, 4 / 3))
    assert isinstance(flip, T.RandomHorizontalFlip) and flip.p == 0.5
    assert tuple(norm.mean) == CLIP_MEAN and tuple(norm.std) == CLIP_STD
    torch.manual_seed(0)
    assert tf(Image.new("RGB", (50, 30))).shape == (3, SIZE, SIZE)
    with pytest.raises(ValueError, match="crop_scale"):
        build_transform(SIZE, True, (0.0, 1.0))


def test_cache_is_exact_for_test_and_train(folder, tmp_path):
    root, items, reader = folder
    test_tf, train_tf = build_transform(SIZE, False), build_transform(SIZE, True)
    cache = DecodedImageCache(tmp_path / "cache")
    for d in items:
        direct = test_tf(reader(d.impath))
        assert torch.equal(direct, to_normalized_tensor()(cache.test_array("src", d.impath, SIZE, reader)))
        full = cache.train_array("src", d.impath, SIZE, reader)
        torch.manual_seed(d.label + 7)
        a = train_tf(reader(d.impath))
        torch.manual_seed(d.label + 7)
        b = train_tf(Image.fromarray(full))
        assert torch.equal(a, b)
    assert cache.stats.misses == 2 * len(items) and cache.stats.memory_hits == 0
    for d in items:
        cache.test_array("src", d.impath, SIZE, reader)
    assert cache.stats.memory_hits == len(items) and cache.stats.misses == 2 * len(items)
    # a new instance reads the .npy files (disk layer) and still gives identical arrays
    fresh = DecodedImageCache(tmp_path / "cache")
    for d in items:
        assert np.array_equal(fresh.test_array("src", d.impath, SIZE, reader),
                              cache.test_array("src", d.impath, SIZE, reader))
    assert fresh.stats.disk_hits == len(items) and fresh.stats.misses == 0


def test_cache_keys_separate_sources_sizes_and_bound_memory(folder):
    root, items, reader = folder
    cache = DecodedImageCache(None, memory_bytes=3 * SIZE * SIZE * 3)
    a = cache.test_array("src-a", items[0].impath, SIZE, reader)
    b = cache.test_array("src-a", items[0].impath, SIZE * 2, reader)
    c = cache.test_array("src-b", items[1].impath, SIZE, reader)
    assert a.shape == (SIZE, SIZE, 3) and b.shape == (2 * SIZE, 2 * SIZE, 3) and c.shape == a.shape
    assert cache.stats.misses == 3
    assert cache._lru_bytes <= cache.memory_bytes
    with pytest.raises(ValueError, match="source_id"):
        cache.test_array("", items[0].impath, SIZE, reader)


def test_optional_train_downscale_only_for_large_images(folder):
    root, items, reader = folder
    cache = DecodedImageCache(None, train_downscale_factor=1.0)
    # 64x20 (short side 20 > 16) is reduced to short side 16; 17x17 > 16 too; nothing goes below 16
    shapes = {reader(d.impath).size: cache.train_array("s", d.impath, SIZE, reader).shape[:2] for d in items}
    assert shapes[(64, 20)] == (16, 51) and shapes[(17, 17)] == (16, 16)
    assert DecodedImageCache(None, train_downscale_factor=4.0).train_array("s", items[2].impath, SIZE, reader).shape \
        == (20, 64, 3)  # 20 <= 4*16: stored unchanged


def _batches(loader):
    return [(x.clone(), y.clone()) for x, y in loader]


def test_loader_shapes_dtypes_and_sequential_test(folder):
    root, items, reader = folder
    batches = _batches(make_loader(items, reader, SIZE, train=False, batch_size=5))
    assert [len(y) for _, y in batches] == [5, 5, 2]
    x, y = batches[0]
    assert x.shape == (5, 3, SIZE, SIZE) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert torch.cat([y for _, y in batches]).tolist() == [d.label for d in items]


def test_drop_last_only_when_enough_items(folder):
    root, items, reader = folder
    small = make_loader(items[:10], reader, SIZE, train=True, batch_size=32)
    assert [len(y) for _, y in small] == [10]  # fewer items than a batch: one partial batch, not zero
    big = make_loader(items, reader, SIZE, train=True, batch_size=5)
    assert [len(y) for _, y in big] == [5, 5]  # 12 items, batch 5: the partial batch is dropped
    assert len(big) == 2


def test_train_loader_is_deterministic_and_isolated_from_global_rng(folder, tmp_path):
    root, items, reader = folder
    a = make_loader(items, reader, SIZE, train=True, batch_size=4, seed=3)
    b = make_loader(items, reader, SIZE, train=True, batch_size=4, seed=3)
    torch.manual_seed(123)
    epochs_a = [_batches(a) for _ in range(2)]
    state = torch.get_rng_state()
    torch.rand(1000)  # other consumers of the global generator must not change the batches
    epochs_b = [_batches(b) for _ in range(2)]
    for ea, eb in zip(epochs_a, epochs_b):
        for (xa, ya), (xb, yb) in zip(ea, eb):
            assert torch.equal(xa, xb) and torch.equal(ya, yb)
    assert not torch.equal(epochs_a[0][0][0], epochs_a[1][0][0])  # epochs differ
    torch.set_rng_state(state)
    _batches(make_loader(items, reader, SIZE, train=True, batch_size=4, seed=3))
    assert torch.equal(torch.get_rng_state(), state)  # iterating leaves the global generator untouched
    other = _batches(make_loader(items, reader, SIZE, train=True, batch_size=4, seed=4))
    assert not all(torch.equal(ya, yo) for (_, ya), (_, yo) in zip(epochs_a[0], other)) or \
        not all(torch.equal(xa, xo) for (xa, _), (xo, _) in zip(epochs_a[0], other))
    cached = make_loader(items, reader, SIZE, train=True, batch_size=4, seed=3,
                         cache=DecodedImageCache(tmp_path / "c"))
    for (xa, ya), (xc, yc) in zip(epochs_a[0], _batches(cached)):
        assert torch.equal(xa, xc) and torch.equal(ya, yc)  # the cache changes nothing


def test_workers_give_the_same_batches(folder):
    root, items, reader = folder
    ref = _batches(make_loader(items, reader, SIZE, train=True, batch_size=4, seed=9))
    par = _batches(make_loader(items, reader, SIZE, train=True, batch_size=4, seed=9, num_workers=2))
    for (xa, ya), (xb, yb) in zip(ref, par):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)


def test_cached_test_loader_equals_uncached(folder, tmp_path):
    root, items, reader = folder
    plain = _batches(make_loader(items, reader, SIZE, train=False, batch_size=4))
    cache = DecodedImageCache(tmp_path / "c")
    for _ in range(2):  # first pass fills, second pass hits
        for (xa, ya), (xb, yb) in zip(plain, _batches(make_loader(items, reader, SIZE, False, 4, cache=cache))):
            assert torch.equal(xa, xb) and torch.equal(ya, yb)
    assert cache.stats.misses == len(items) and cache.stats.memory_hits == len(items)


def test_loader_errors(folder, tmp_path):
    root, items, reader = folder
    with pytest.raises(ValueError, match="empty"):
        make_loader([], reader, SIZE, True, 4)
    with pytest.raises(ValueError, match="source_id"):
        make_loader(items, lambda p: reader(p), SIZE, False, 4, cache=DecodedImageCache(None))
    (tmp_path / "bad.jpg").write_bytes(b"\xff\xd8 broken")
    bad = make_loader([Datum("bad.jpg", 0, "x")], ImageReader("mini", tmp_path), SIZE, False, 1)
    with pytest.raises(DataError, match="mini: cannot decode image .*bad.jpg"):
        next(iter(bad))
