"""Few-shot draws against an independent re-statement of Dassl + CPython, base/new subsampling, manifests."""
from __future__ import annotations

import json
import pickle
import random
import sys
import types

import pytest

from fixtures_coop import build_imagenet, build_imagenet_targets, build_json_dataset
from mudpt.data import fewshot
from mudpt.data.base import DataError, Datum
from mudpt.data.fewshot import dassl_fewshot_draw, fewshot_sample, subsample_classes
from mudpt.data.protocol import prepare_data
from mudpt.data.registry import load_dataset

pytestmark = pytest.mark.filterwarnings("ignore::mudpt.data.coop.DataCountWarning")


# ------------------------------------------------------------------ independent re-statement (PROTOCOLS §2.2)


def ref_randbelow(rng: random.Random, n: int) -> int:
    k = n.bit_length()
    while True:
        r = rng.getrandbits(k)
        if r < n:
            return r


def ref_sample(rng: random.Random, items: list, k: int) -> list:
    n = len(items)
    setsize = 21
    if k > 5:
        e = 0
        while 4**e < 3 * k:  # 4 ** ceil(log4(3k)) in integers
            e += 1
        setsize += 4**e
    out = []
    if n <= setsize:
        pool = list(items)
        for i in range(k):
            j = ref_randbelow(rng, n - i)
            out.append(pool[j])
            pool[j] = pool[n - i - 1]
    else:
        chosen: set[int] = set()
        for _ in range(k):
            j = ref_randbelow(rng, n)
            while j in chosen:
                j = ref_randbelow(rng, n)
            chosen.add(j)
            out.append(items[j])
    return out


def ref_fewshot(rng: random.Random, items: list, k: int) -> list:
    labels_in_order: list[int] = []
    for d in items:
        if d.label not in labels_in_order:
            labels_in_order.append(d.label)
    out = []
    for lab in labels_in_order:
        group = [d for d in items if d.label == lab]
        out.extend(ref_sample(rng, group, k) if len(group) >= k else group)
    return out


def make_split(sizes: dict[int, int], prefix: str, seed: int = 0) -> list[Datum]:
    """Items of several classes in a shuffled order (labels first appear out of order)."""
    items = [Datum(f"{prefix}/{lab}/{i}.jpg", lab, f"class {lab}") for lab, n in sizes.items() for i in range(n)]
    random.Random(seed).shuffle(items)
    return items


# Class sizes around every branch: fewer than K, exactly K, pool path (n <= setsize), set path (n > setsize).
TRAIN_SIZES = {3: 100, 0: 1, 5: 16, 1: 40, 4: 86, 2: 7, 6: 22, 7: 300}
VAL_SIZES = {3: 9, 0: 1, 5: 4, 1: 30, 4: 3, 2: 25, 6: 5, 7: 2}


@pytest.mark.parametrize("k", [1, 2, 4, 8, 16])
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_draw_matches_independent_restatement(k, seed):
    train, val = make_split(TRAIN_SIZES, "tr", 1), make_split(VAL_SIZES, "va", 2)
    draw = dassl_fewshot_draw(train, val, k, seed)
    rng = random.Random(seed)
    assert draw.train == ref_fewshot(rng, train, k)
    assert draw.val == ref_fewshot(rng, val, min(k, 4))  # same stream, after the train draw
    # and the draw really is a per-class subset of the right size, grouped in first-appearance order
    first_seen = list(dict.fromkeys(d.label for d in train))
    assert list(dict.fromkeys(d.label for d in draw.train)) == first_seen
    for lab, n in TRAIN_SIZES.items():
        got = [d for d in draw.train if d.label == lab]
        assert len(got) == min(n, k) and len(set(got)) == len(got)


def test_draw_equals_dassl_on_the_global_random_module():
    train, val = make_split(TRAIN_SIZES, "tr", 1), make_split(VAL_SIZES, "va", 2)
    state = random.getstate()
    try:
        random.seed(2)  # what Dassl's set_random_seed does, then generate_fewshot_dataset twice
        expected_train = ref_fewshot(random, train, 16)  # type: ignore[arg-type]
        expected_val = ref_fewshot(random, val, 4)  # type: ignore[arg-type]
    finally:
        random.setstate(state)
    draw = dassl_fewshot_draw(train, val, 16, 2)
    assert (draw.train, draw.val) == (expected_train, expected_val)


def test_val_draw_depends_on_the_train_draw():
    train, val = make_split(TRAIN_SIZES, "tr", 1), make_split(VAL_SIZES, "va", 2)
    chained = dassl_fewshot_draw(train, val, 16, 1).val
    fresh = fewshot_sample(val, 4, random.Random(1))
    assert chained != fresh


def test_small_classes_take_all_items_and_consume_no_randomness():
    items = make_split({0: 3, 1: 20, 2: 2}, "x", 5)
    rng_a, rng_b = random.Random(7), random.Random(7)
    out = fewshot_sample(items, 4, rng_a)
    assert [d for d in out if d.label == 0] == [d for d in items if d.label == 0]  # list order kept
    big = [d for d in items if d.label == 1]
    assert [d for d in out if d.label == 1] == rng_b.sample(big, 4)
    assert rng_a.getstate() == rng_b.getstate()


def test_draw_rejects_bad_arguments():
    items = make_split({0: 5}, "x")
    with pytest.raises(ValueError, match="num_shots"):
        dassl_fewshot_draw(items, items, 0, 1)
    with pytest.raises(ValueError, match="seed"):
        dassl_fewshot_draw(items, items, 1, -1)


# ------------------------------------------------------------------ base / new (PROTOCOLS §2.3)


def test_subsample_ceil_rule_and_relabelling():
    train = make_split({4: 2, 0: 2, 9: 2, 2: 2, 7: 2}, "tr")  # 5 labels, not contiguous
    test = make_split({4: 1, 0: 1, 9: 1, 2: 1, 7: 1, 11: 1}, "te")  # 11 is not in train: always dropped
    (btr, bte), kept_b = subsample_classes([train, test], "base")
    (ntr, nte), kept_n = subsample_classes([train, test], "new")
    assert kept_b == [0, 2, 4] and kept_n == [7, 9]  # sorted labels, first ceil(5/2) = 3 are base
    assert {d.label for d in btr} == {0, 1, 2} and {d.label for d in ntr} == {0, 1}
    assert [d.classname for d in bte] == [f"class {kept_b[d.label]}" for d in bte]
    assert sorted(d.classname for d in nte) == ["class 7", "class 9"]
    assert [d.impath for d in btr] == [d.impath for d in train if d.label in kept_b]  # order kept
    (a,), kept = subsample_classes([train], "all")
    assert a == train and kept is None
    with pytest.raises(ValueError, match="subsample"):
        subsample_classes([train], "half")


@pytest.mark.parametrize("n,base", [(1000, 500), (37, 19), (397, 199), (47, 24), (101, 51), (10, 5)])
def test_subsample_sizes_match_published_table(n, base):
    train = [Datum(f"{i}.jpg", i, str(i)) for i in range(n)]
    assert len(subsample_classes([train], "base")[1]) == base
    assert len(subsample_classes([train], "new")[1]) == n - base


# ------------------------------------------------------------------ prepare_data and manifests


def test_prepare_data_draws_writes_and_reuses_the_manifest(tmp_path, monkeypatch):
    build_json_dataset(tmp_path / "data", "oxford_pets", n_train=(6, 5, 2), n_val=5)
    p = prepare_data("oxford_pets", shots=4, seed=1, data_root=tmp_path / "data", cache_dir=tmp_path / "cache")
    full = load_dataset("oxford_pets", tmp_path / "data")
    rng = random.Random(1)
    assert p.splits.train == ref_fewshot(rng, full.train, 4)
    assert p.splits.val == ref_fewshot(rng, full.val, 4)
    assert p.splits.test == full.test and p.splits.classnames == full.classnames
    assert p.source == "dassl-random.sample" and p.manifest_path is not None
    raw = json.loads(p.manifest_path.read_text())
    assert (raw["dataset"], raw["shots"], raw["seed"], raw["sha256"]) == ("oxford_pets", 4, 1, p.manifest_hash)
    assert raw["train"][0] == [p.splits.train[0].impath, p.splits.train[0].label, p.splits.train[0].classname]
    # a second run reads the frozen manifest and draws nothing
    monkeypatch.setattr(fewshot, "dassl_fewshot_draw", lambda *a, **k: pytest.fail("drew again"))
    again = prepare_data("oxford_pets", shots=4, seed=1, data_root=tmp_path / "data", cache_dir=tmp_path / "cache")
    assert (again.splits.train, again.manifest_hash) == (p.splits.train, p.manifest_hash)


def test_manifest_tampering_is_detected(tmp_path):
    build_json_dataset(tmp_path / "data", "dtd")
    p = prepare_data("dtd", shots=2, seed=3, data_root=tmp_path / "data", cache_dir=tmp_path / "c")
    raw = json.loads(p.manifest_path.read_text())
    raw["train"][0], raw["train"][1] = raw["train"][1], raw["train"][0]
    p.manifest_path.write_text(json.dumps(raw))
    with pytest.raises(DataError, match="was modified"):
        prepare_data("dtd", shots=2, seed=3, data_root=tmp_path / "data", cache_dir=tmp_path / "c")


def test_changed_split_gets_its_own_manifest(tmp_path):
    m = build_json_dataset(tmp_path / "data", "dtd")
    a = prepare_data("dtd", shots=2, seed=1, data_root=tmp_path / "data", cache_dir=tmp_path / "c")
    raw = json.loads(m.split_file.read_text())
    raw["train"] = raw["train"][1:]
    m.split_file.write_text(json.dumps(raw, indent=4))
    b = prepare_data("dtd", shots=2, seed=1, data_root=tmp_path / "data", cache_dir=tmp_path / "c")
    assert a.manifest_path != b.manifest_path and a.split_sha256 != b.split_sha256


def test_base_and_new_share_one_draw(tmp_path):
    build_json_dataset(tmp_path / "data", "eurosat", n_train=(6, 6, 6), n_val=4, n_test=3)
    kw = dict(shots=2, seed=2, data_root=tmp_path / "data", cache_dir=tmp_path / "c")
    al, base, new = (prepare_data("eurosat", subsample=s, **kw) for s in ("all", "base", "new"))
    assert al.manifest_hash == base.manifest_hash == new.manifest_hash
    assert base.splits.classnames == ["Annual Crop Land", "Forest"] and new.splits.classnames == ["Sea or Lake"]
    assert [d.impath for d in base.splits.train] == [d.impath for d in al.splits.train if d.label < 2]
    assert {d.label for d in new.splits.test} == {0} and len(new.splits.test) == 3
    assert all(base.splits.classnames[d.label] == d.classname for d in base.splits.val + base.splits.test)


def test_full_train_when_shots_not_positive(tmp_path):
    build_json_dataset(tmp_path / "data", "dtd")
    p = prepare_data("dtd", shots=0, seed=1, data_root=tmp_path / "data", cache_dir=tmp_path / "c")
    assert len(p.splits.train) == 13 and len(p.splits.val) == 9
    assert p.manifest_path is None and p.source == "full" and len(p.manifest_hash) == 64
    assert not (tmp_path / "c").exists()


def test_imagenet_draws_train_only_and_keeps_full_val(tmp_path):
    build_imagenet(tmp_path / "data", n_train=5, n_val=2)
    p = prepare_data("imagenet", shots=2, seed=1, data_root=tmp_path / "data", cache_dir=tmp_path / "c")
    full = load_dataset("imagenet", tmp_path / "data")
    assert p.splits.train == ref_fewshot(random.Random(1), full.train, 2)
    assert p.splits.val == full.test == p.splits.test
    assert json.loads(p.manifest_path.read_text())["val"] == []


def test_test_only_target_prepares_full_test(tmp_path):
    build_imagenet_targets(tmp_path / "data")
    p = prepare_data("imagenet_r", shots=16, seed=1, data_root=tmp_path / "data", cache_dir=tmp_path / "c")
    assert p.splits.train == [] and len(p.splits.test) == 4 and p.manifest_path is None
    with pytest.raises(DataError, match="needs a non-empty train split"):
        prepare_data("imagenet_r", shots=0, seed=1, subsample="base", data_root=tmp_path / "data",
                     cache_dir=tmp_path / "c")


# ------------------------------------------------------------------ Dassl pickle import (opt-in)


@pytest.fixture
def fake_dassl(monkeypatch):
    """A module at Dassl's import path with a Datum like Dassl's, so pickles name the real class."""
    mod = types.ModuleType("dassl.data.datasets.base_dataset")

    class Datum:
        def __init__(self, impath, label, classname, domain=0):
            self._impath, self._label, self._domain, self._classname = impath, label, domain, classname

    Datum.__module__ = mod.__name__
    Datum.__qualname__ = "Datum"
    mod.Datum = Datum
    for name in ("dassl", "dassl.data", "dassl.data.datasets"):
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    monkeypatch.setitem(sys.modules, mod.__name__, mod)
    return Datum


def _write_dassl_pickle(path, data_dir, draw, cls, raw_names, protocol=pickle.HIGHEST_PROTOCOL):
    def conv(items):
        return [cls(str(data_dir / "images" / d.impath), d.label, raw_names[d.classname]) for d in items]

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps({"train": conv(draw.train), "val": conv(draw.val)}, protocol=protocol))


@pytest.mark.parametrize("protocol", [2, pickle.HIGHEST_PROTOCOL])
def test_import_dassl_pickle(tmp_path, fake_dassl, protocol):
    m = build_json_dataset(tmp_path / "data", "oxford_pets")
    full = load_dataset("oxford_pets", tmp_path / "data")
    draw = dassl_fewshot_draw(full.train, full.val, 2, 5)
    pkl = tmp_path / "data" / "oxford_pets" / "split_fewshot" / "shot_2-seed_5.pkl"
    raw_names = {"abyssinian": "abyssinian", "american bulldog": "american_bulldog", "bengal": "bengal"}
    _write_dassl_pickle(pkl, m.image_dir.parent, draw, fake_dassl, raw_names, protocol)
    p = prepare_data("oxford_pets", shots=2, seed=5, data_root=tmp_path / "data", cache_dir=tmp_path / "c",
                     import_dassl_pickle=True)
    assert p.source == "dassl-pickle:shot_2-seed_5.pkl"
    assert (p.splits.train, p.splits.val) == (draw.train, draw.val)
    # our own draw of the same (K, seed) is the same content, hence the same hash
    assert p.manifest_hash == fewshot.draw_sha256(draw.train, draw.val)


def test_import_refuses_foreign_classes_and_mismatches(tmp_path, fake_dassl):
    m = build_json_dataset(tmp_path / "data", "dtd")
    pkl = tmp_path / "data" / "dtd" / "split_fewshot" / "shot_1-seed_1.pkl"
    kw = dict(shots=1, seed=1, data_root=tmp_path / "data", cache_dir=tmp_path / "c", import_dassl_pickle=True)
    with pytest.raises(DataError, match="Dassl few-shot pickle .*shot_1-seed_1.pkl not found"):
        prepare_data("dtd", **kw)

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    pkl.parent.mkdir(parents=True)
    pkl.write_bytes(pickle.dumps({"train": [Evil()], "val": []}))
    with pytest.raises(DataError, match="refusing to load builtins.print"):
        prepare_data("dtd", **kw)
    other = fake_dassl("/elsewhere/dtd/images/zigzagged/zigzagged_0001.jpg", 0, "banded")
    pkl.write_bytes(pickle.dumps({"train": [other], "val": []}))
    with pytest.raises(DataError, match="is not in this dataset's train split"):
        prepare_data("dtd", **kw)
    wrong = fake_dassl(f"/x/dtd/images/{m.train[0][0]}", 2, "braided")
    pkl.write_bytes(pickle.dumps({"train": [wrong], "val": []}))
    with pytest.raises(DataError, match="has label 2 .*the split file says"):
        prepare_data("dtd", **kw)


def test_import_flag_needs_a_coop_data_root():
    with pytest.raises(DataError, match="needs a CoOp dataset and --data-root"):
        prepare_data("caltech101", shots=1, seed=1, import_dassl_pickle=True)
