"""CoOp dataset suite: every layout, class-name cleaning, templates, listings and every data error."""
from __future__ import annotations

import dataclasses
import json
import os
import warnings

import pytest
from PIL import Image

from fixtures_coop import WNIDS, build_coop_root, build_fgvc, build_imagenet, build_json_dataset, write_jpeg
from mudpt.data import coop
from mudpt.data.base import DataError
from mudpt.data.check import check_data_root, data_check
from mudpt.data.coop import COOP_DATASETS, TEMPLATES, DataCountWarning, load_coop
from mudpt.data.registry import get_spec, list_datasets, load_dataset

# The miniature datasets never match the published counts; tests of that warning enable it explicitly.
pytestmark = pytest.mark.filterwarnings("ignore::mudpt.data.coop.DataCountWarning")


@pytest.fixture(scope="module")
def mini(tmp_path_factory):
    return build_coop_root(tmp_path_factory.mktemp("coop"))


def test_registry_holds_the_fifteen_config_keys():
    keys = {"imagenet", "caltech101", "oxford_pets", "stanford_cars", "oxford_flowers", "food101", "fgvc_aircraft",
            "sun397", "dtd", "eurosat", "ucf101", "imagenetv2", "imagenet_sketch", "imagenet_a", "imagenet_r"}
    assert {s.name for s in list_datasets("coop")} == keys
    assert {k for k in keys if get_spec(k).test_only} == {"imagenetv2", "imagenet_sketch", "imagenet_a", "imagenet_r"}


def test_templates_are_coop_custom_templates():
    photo = "a photo of a {}."
    expected = {
        "oxford_pets": "a photo of a {}, a type of pet.", "oxford_flowers": "a photo of a {}, a type of flower.",
        "fgvc_aircraft": "a photo of a {}, a type of aircraft.", "dtd": "{} texture.",
        "eurosat": "a centered satellite photo of {}.", "food101": "a photo of {}, a type of food.",
        "ucf101": "a photo of a person doing {}.", "stanford_cars": photo, "sun397": photo, "caltech101": photo,
        "imagenet": photo, "imagenetv2": photo, "imagenet_sketch": photo, "imagenet_a": photo, "imagenet_r": photo,
    }
    assert TEMPLATES == expected


def test_published_base_new_class_counts_follow_from_class_counts():
    # §1.5 lists base/new sizes; they must be the ceil split of the class counts recorded here.
    b2n = {"imagenet": (500, 500), "caltech101": (50, 50), "oxford_pets": (19, 18), "stanford_cars": (98, 98),
           "oxford_flowers": (51, 51), "food101": (51, 50), "fgvc_aircraft": (50, 50), "sun397": (199, 198),
           "dtd": (24, 23), "eurosat": (5, 5), "ucf101": (51, 50)}
    for key, (base, new) in b2n.items():
        assert COOP_DATASETS[key].num_classes == base + new, key


def test_every_layout_loads_as_written(mini):
    for key, m in mini.datasets.items():
        s = load_dataset(key, mini.root)
        assert s.name == key
        assert s.classnames == m.classnames, key
        assert (len(s.train), len(s.val), len(s.test)) == m.counts, key
        assert s.template == TEMPLATES[key]
        assert s.source_id == str(m.image_dir.resolve())
        for d in s.train[:2] + s.test[:2]:
            assert not d.impath.startswith("/")
            assert s.classnames[d.label] == d.classname
            img = s.read_image(d.impath)
            assert img.mode == "RGB" and img.size == (20, 14)
        if m.split_file is not None:  # JSON datasets keep the file's order, names cleaned
            assert [(d.impath, d.label, d.classname) for d in s.train] == \
                   [(p, lab, c.replace("_", " ")) for p, lab, c in m.train]


def test_test_only_targets_have_no_train_or_val(mini):
    for key in ("imagenetv2", "imagenet_sketch", "imagenet_a", "imagenet_r"):
        s = load_dataset(key, mini.root)
        assert s.train == [] and s.val == [] and len(s.test) > 0


def test_class_names_are_cleaned_for_prompts(mini):
    names = {k: load_dataset(k, mini.root).classnames for k in
             ("oxford_pets", "sun397", "ucf101", "eurosat", "food101", "fgvc_aircraft", "imagenet", "stanford_cars")}
    assert "american bulldog" in names["oxford_pets"]
    assert "outdoor apartment building" in names["sun397"]
    assert names["ucf101"][:2] == ["Apply Eye Makeup", "Yo Yo"]
    assert names["eurosat"] == ["Annual Crop Land", "Forest", "Sea or Lake"]
    assert names["food101"][0] == "apple pie"
    assert names["fgvc_aircraft"] == ["707-320", "A300B4", "F/A-18", "Cessna 172"]  # variants.txt order = labels
    assert names["imagenet"] == ["tench", "goldfish", "great white shark"]
    assert names["stanford_cars"][0] == "2012 Tesla Model S Sedan"


def test_fgvc_labels_are_variant_line_indices(mini):
    s = load_dataset("fgvc_aircraft", mini.root)
    lines = (mini.root / "fgvc_aircraft" / "images_variant_test.txt").read_text().splitlines()
    for d, line in zip(s.test, lines):
        imname, variant = line.split(" ", 1)
        assert d.impath == imname + ".jpg" and s.classnames[d.label] == variant


def test_imagenet_labels_sorted_folders_files_sorted_val_is_test(mini):
    s = load_dataset("imagenet", mini.root)
    wnids = sorted(WNIDS)
    for d in s.train + s.test:
        split, wnid, _ = d.impath.split("/")
        assert d.label == wnids.index(wnid)
    for label in range(3):
        names = [d.impath for d in s.train if d.label == label]
        assert names == sorted(names)
    assert s.val == s.test and all(d.impath.startswith("val/") for d in s.test)
    assert (mini.root / "imagenet" / coop.LISTING_FILE).is_file()


def test_imagenet_a_r_v2_label_rules(mini):
    a = load_dataset("imagenet_a", mini.root)
    assert a.classnames == ["tench", "great white shark"]  # its own sorted wnids, README.txt ignored
    assert {d.label for d in a.test} == {0, 1}
    v2 = load_dataset("imagenetv2", mini.root)
    assert all(d.impath.split("/")[0] == str(d.label) for d in v2.test)
    assert v2.classnames == list(WNIDS.values())  # classnames.txt order


def test_listing_is_reused_and_refreshed_per_class_folder(tmp_path, monkeypatch):
    build_imagenet(tmp_path)
    first = load_coop("imagenet", tmp_path)
    listed: list[str] = []
    real = coop._list_files
    monkeypatch.setattr(coop, "_list_files", lambda folder: listed.append(folder.name) or real(folder))
    assert load_coop("imagenet", tmp_path).train == first.train
    assert listed == []  # warm start: no class folder listed again
    wnid = sorted(WNIDS)[1]
    write_jpeg(tmp_path / "imagenet" / "images" / "train" / wnid / "a_new_one.JPEG", 3)
    again = load_coop("imagenet", tmp_path)
    assert listed == [wnid]  # only the changed folder is listed again
    assert len(again.train) == len(first.train) + 1
    assert any(d.impath == f"train/{wnid}/a_new_one.JPEG" for d in again.train)


def test_listing_goes_to_user_cache_when_dataset_dir_is_not_writable(tmp_path, monkeypatch):
    build_imagenet(tmp_path / "data")
    blocker = tmp_path / "data" / "imagenet" / coop.LISTING_FILE
    blocker.mkdir()  # a non-empty folder in its place makes the write fail even for root
    (blocker / "x").write_text("")
    monkeypatch.setenv("MUDPT_CACHE", str(tmp_path / "cache"))
    load_coop("imagenet", tmp_path / "data")
    cached = list((tmp_path / "cache" / "listings").glob("imagenet-*.json"))
    assert len(cached) == 1
    assert json.loads(cached[0].read_text())["format"] == "mudpt-folder-listing"
    # a stale listing left in the dataset dir must not win over the newer user-cache one
    for p in blocker.iterdir():
        p.unlink()
    blocker.rmdir()
    stale = json.loads(cached[0].read_text())
    stale["written_ns"] = 1
    stale["subdirs"]["train"][sorted(WNIDS)[0]]["files"] = ["stale.JPEG"]
    blocker.write_text(json.dumps(stale))
    assert not any("stale" in d.impath for d in load_coop("imagenet", tmp_path / "data").train)


def test_existence_check_lists_each_folder_once(tmp_path, monkeypatch):
    m = build_json_dataset(tmp_path, "sun397")
    calls: list[str] = []
    real = os.scandir
    monkeypatch.setattr(coop.os, "scandir", lambda p: calls.append(str(p)) or real(p))
    load_coop("sun397", tmp_path)
    assert len(calls) == 3 == len(set(calls))  # three class folders, no per-image stat
    assert all(str(m.image_dir) in c for c in calls)


# ----------------------------------------------------------------------------------------------- errors


def test_missing_split_file_names_the_expected_path(tmp_path):
    m = build_json_dataset(tmp_path, "dtd")
    m.split_file.unlink()
    with pytest.raises(DataError, match="split file .*split_zhou_DescribableTextures.json not found") as e:
        load_coop("dtd", tmp_path)
    assert str(tmp_path / "dtd" / "split_zhou_DescribableTextures.json") in str(e.value)
    assert "never generates" in str(e.value)
    assert not m.split_file.exists()  # and nothing was written


def test_missing_root_dataset_and_image_folders(tmp_path):
    with pytest.raises(DataError, match="data root .* does not exist"):
        load_coop("dtd", tmp_path / "nope")
    with pytest.raises(DataError, match="dtd: dataset folder .*dtd not found"):
        load_coop("dtd", tmp_path)
    (tmp_path / "eurosat").mkdir()
    with pytest.raises(DataError, match="eurosat: image folder .*2750 not found"):
        load_coop("eurosat", tmp_path)


def test_listed_image_missing_names_dataset_and_file(tmp_path):
    m = build_json_dataset(tmp_path, "food101")
    gone = m.image_dir / m.train[0][0]
    gone.unlink()
    with pytest.raises(DataError, match="food101: 1 image file") as e:
        load_coop("food101", tmp_path)
    assert str(gone) in str(e.value) and str(m.split_file) in str(e.value)


def test_listed_folder_missing(tmp_path):
    m = build_json_dataset(tmp_path, "caltech101")
    for p in (m.image_dir / "Faces").iterdir():
        p.unlink()
    (m.image_dir / "Faces").rmdir()
    with pytest.raises(DataError, match=r"caltech101: folder .*Faces does not exist"):
        load_coop("caltech101", tmp_path)


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_corrupt_image_names_dataset_and_file(tmp_path, damage):
    build_json_dataset(tmp_path, "oxford_pets")
    s = load_coop("oxford_pets", tmp_path)
    path = tmp_path / "oxford_pets" / "images" / s.test[0].impath
    write_jpeg(path, 1, size=(64, 48))
    data = path.read_bytes()
    path.write_bytes(b"not a jpeg at all" if damage == "garbage" else data[: len(data) // 2])
    with pytest.raises(DataError, match="oxford_pets: cannot decode image") as e:
        s.read_image(s.test[0].impath)
    assert str(path) in str(e.value)


def test_image_deleted_after_loading(tmp_path):
    build_json_dataset(tmp_path, "dtd")
    s = load_coop("dtd", tmp_path)
    (tmp_path / "dtd" / "images" / s.val[0].impath).unlink()
    with pytest.raises(DataError, match=f"dtd: image file .*{s.val[0].impath} does not exist"):
        s.read_image(s.val[0].impath)


def _edit_split(m, fn):
    raw = json.loads(m.split_file.read_text())
    fn(raw)
    m.split_file.write_text(json.dumps(raw, indent=4))


def test_label_out_of_range(tmp_path):
    m = build_json_dataset(tmp_path, "eurosat")
    _edit_split(m, lambda raw: raw["test"][1].__setitem__(1, 7))
    with pytest.raises(DataError, match=r"eurosat: test item 1 .* label 7, out of range 0\.\.2") as e:
        load_coop("eurosat", tmp_path)
    assert str(m.split_file) in str(e.value)
    _edit_split(m, lambda raw: raw["test"][1].__setitem__(1, -1))
    with pytest.raises(DataError, match=r"eurosat: test\[1\] of .*label -1 is out of range"):
        load_coop("eurosat", tmp_path)


def test_malformed_and_inconsistent_entries(tmp_path):
    m = build_json_dataset(tmp_path, "ucf101")
    _edit_split(m, lambda raw: raw["val"].__setitem__(0, ["a.jpg", 0]))
    with pytest.raises(DataError, match=r"ucf101: val\[0\] of .*expected \[relative_path, label, classname\]"):
        load_coop("ucf101", tmp_path)
    m = build_json_dataset(tmp_path / "b", "ucf101")
    _edit_split(m, lambda raw: raw["test"][0].__setitem__(2, "Juggling"))
    with pytest.raises(DataError, match="names label 0 'Juggling', but the train split names it 'Apply Eye Makeup'"):
        load_coop("ucf101", tmp_path / "b")
    m = build_json_dataset(tmp_path / "c", "ucf101")
    _edit_split(m, lambda raw: raw["test"][0].__setitem__(0, "../escape.jpg"))
    with pytest.raises(DataError, match="must be relative to the image folder"):
        load_coop("ucf101", tmp_path / "c")
    m.split_file.write_text("{not json")
    with pytest.raises(DataError, match="cannot parse split file"):
        load_coop("ucf101", tmp_path / "c")


def test_fgvc_errors(tmp_path):
    build_fgvc(tmp_path)
    with open(tmp_path / "fgvc_aircraft" / "images_variant_val.txt", "a") as f:
        f.write("1000001 Boeing 999\n")
    with pytest.raises(DataError, match=r"fgvc_aircraft: line 9 of .*images_variant_val.txt: variant 'Boeing 999'"):
        load_coop("fgvc_aircraft", tmp_path)
    (tmp_path / "fgvc_aircraft" / "variants.txt").unlink()
    with pytest.raises(DataError, match="fgvc_aircraft: required file .*variants.txt not found"):
        load_coop("fgvc_aircraft", tmp_path)


def test_imagenet_errors(tmp_path):
    build_imagenet(tmp_path)
    names = tmp_path / "imagenet" / "classnames.txt"
    names.write_text("\n".join(names.read_text().splitlines()[:2]) + "\n")
    with pytest.raises(DataError, match=r"imagenet: class folder\(s\) \['n01484850'\] are not listed in .*classnames"):
        load_coop("imagenet", tmp_path)
    (tmp_path / "imagenet" / "images" / "val" / "n09999999").mkdir()
    with pytest.raises(DataError, match="must hold the same class folders; they differ in .'n09999999'."):
        load_coop("imagenet", tmp_path)


def test_imagenetv2_missing_class_folder(mini, tmp_path):
    import shutil

    shutil.copytree(mini.root / "imagenetv2", tmp_path / "imagenetv2")
    shutil.rmtree(tmp_path / "imagenetv2" / "imagenetv2-matched-frequency-format-val" / "1")
    with pytest.raises(DataError, match=r"imagenetv2: class folder\(s\) 1 missing"):
        load_coop("imagenetv2", tmp_path)


@pytest.mark.filterwarnings("default::mudpt.data.coop.DataCountWarning")
def test_count_mismatch_warns_with_both_numbers(tmp_path, monkeypatch):
    build_json_dataset(tmp_path, "dtd")  # 3 classes, 13 / 9 / 6 images
    with pytest.warns(DataCountWarning) as rec:
        s = load_coop("dtd", tmp_path)
    msgs = [str(w.message) for w in rec]
    assert "dtd: 3 classes found, the published dataset has 47" in msgs
    assert "dtd: 13 train images found, the published split has 2820" in msgs
    assert "dtd: 6 test images found, the published split has 1692" in msgs
    assert s.warnings == msgs
    monkeypatch.setitem(COOP_DATASETS, "dtd", dataclasses.replace(COOP_DATASETS["dtd"], num_classes=3,
                                                                 counts=(13, 9, 6)))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert load_coop("dtd", tmp_path).warnings == []


def test_check_data_root_rows_and_table(tmp_path, capsys):
    build_json_dataset(tmp_path, "dtd")
    build_fgvc(tmp_path)
    m = build_json_dataset(tmp_path, "eurosat")
    m.split_file.unlink()
    rows = {r["dataset"]: r for r in check_data_root(tmp_path)}
    assert len(rows) == 15
    assert rows["dtd"]["status"] == "found" and (rows["dtd"]["classes"], rows["dtd"]["train"]) == (3, 13)
    assert "train 13 (published 2,820)" in rows["dtd"]["message"]
    assert rows["fgvc_aircraft"]["status"] == "found"
    assert rows["eurosat"]["status"] == "invalid" and "split_zhou_EuroSAT.json" in rows["eurosat"]["message"]
    assert rows["imagenet"]["status"] == "missing"
    import typer

    with pytest.raises(typer.Exit) as e:
        data_check(tmp_path)
    assert e.value.exit_code == 1
    out = capsys.readouterr().out
    assert "invalid" in out and "found" in out and "missing" in out


def test_read_image_is_picklable_for_workers(mini):
    import pickle

    s = load_dataset("dtd", mini.root)
    reader = pickle.loads(pickle.dumps(s.read_image))
    assert isinstance(reader(s.test[0].impath), Image.Image)
