"""Miniature copies of every CoOp dataset layout (tiny JPEGs in the exact folder structure).

`build_coop_root(tmp_path)` writes all 15 datasets and returns a `MiniRoot` describing what it wrote,
so tests can compare what the loaders read with what is on disk. Train items in the split files are
written interleaved across classes, starting with label 1, to exercise first-appearance grouping.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from PIL import Image

# key -> (dataset dir, image dir, split file, [(classname as stored in the JSON, folder/prefix)], path rule)
PathRule = Callable[[str, str, int], str]  # (folder, split, running index) -> path relative to the image dir
JSON_LAYOUTS: dict[str, tuple[str, str, str, list[tuple[str, str]], PathRule]] = {
    "caltech101": ("caltech-101", "101_ObjectCategories", "split_zhou_Caltech101.json",
                   [("airplane", "airplanes"), ("face", "Faces"), ("accordion", "accordion")],
                   lambda f, s, n: f"{f}/image_{n:04d}.jpg"),
    "oxford_pets": ("oxford_pets", "images", "split_zhou_OxfordPets.json",
                    [("abyssinian", "Abyssinian"), ("american_bulldog", "american_bulldog"), ("bengal", "Bengal")],
                    lambda f, s, n: f"{f}_{n}.jpg"),
    "stanford_cars": ("stanford_cars", "", "split_zhou_StanfordCars.json",
                      [("2012 Tesla Model S Sedan", ""), ("2007 Volvo 240 Sedan", ""), ("2012 Acura TL Sedan", "")],
                      lambda f, s, n: f"cars_{'test' if s == 'test' else 'train'}/{n:05d}.jpg"),
    "oxford_flowers": ("oxford_flowers", "jpg", "split_zhou_OxfordFlowers.json",
                       [("pink primrose", ""), ("hard-leaved pocket orchid", ""), ("canterbury bells", "")],
                       lambda f, s, n: f"image_{n:05d}.jpg"),
    "food101": ("food-101", "images", "split_zhou_Food101.json",
                [("apple_pie", "apple_pie"), ("baby_back_ribs", "baby_back_ribs"), ("baklava", "baklava")],
                lambda f, s, n: f"{f}/{100000 + n}.jpg"),
    "sun397": ("sun397", "SUN397", "split_zhou_SUN397.json",
               [("abbey", "a/abbey"), ("outdoor apartment_building", "a/apartment_building/outdoor"),
                ("shop bakery", "b/bakery/shop")],
               lambda f, s, n: f"{f}/sun_{n:06d}.jpg"),
    "dtd": ("dtd", "images", "split_zhou_DescribableTextures.json",
            [("banded", "banded"), ("blotchy", "blotchy"), ("braided", "braided")],
            lambda f, s, n: f"{f}/{f}_{n:04d}.jpg"),
    "eurosat": ("eurosat", "2750", "split_zhou_EuroSAT.json",
                [("Annual Crop Land", "AnnualCrop"), ("Forest", "Forest"), ("Sea or Lake", "SeaLake")],
                lambda f, s, n: f"{f}/{f}_{n}.jpg"),
    "ucf101": ("ucf101", "UCF-101-midframes", "split_zhou_UCF101.json",
               [("Apply_Eye_Makeup", "Apply_Eye_Makeup"), ("Yo_Yo", "Yo_Yo"), ("Band_Marching", "Band_Marching")],
               lambda f, s, n: f"{f}/v_{f.replace('_', '')}_g{n:02d}_c01.jpg"),
}
FGVC_VARIANTS = ["707-320", "A300B4", "F/A-18", "Cessna 172"]
WNIDS = {"n01440764": "tench", "n01443537": "goldfish", "n01484850": "great white shark"}


@dataclass
class MiniDataset:
    key: str
    classnames: list[str]  # prompt-ready, by label
    counts: tuple[int, int, int]
    image_dir: Path
    split_file: Path | None = None
    train: list[list] = field(default_factory=list)  # [relpath, label, classname] as written


@dataclass
class MiniRoot:
    root: Path
    datasets: dict[str, MiniDataset]


def write_jpeg(path: Path, seed: int, size: tuple[int, int] = (20, 14)) -> None:
    """A small, deterministic, non-uniform JPEG (two colours split at a seed-dependent column)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    w, h = size
    img = Image.new("RGB", size, ((seed * 37) % 256, (seed * 91) % 256, (seed * 53) % 256))
    img.paste(((seed * 11) % 256, 255 - (seed * 29) % 256, 128), (seed % (w - 1) + 1, 0, w, h))
    img.save(path, "JPEG", quality=90)


def interleave(per_class: list[list]) -> list:
    """Round-robin over classes starting with class 1 (so first appearance is not label order)."""
    order = list(range(1, len(per_class))) + [0]
    out, i = [], 0
    while any(i < len(per_class[c]) for c in order):
        out.extend(per_class[c][i] for c in order if i < len(per_class[c]))
        i += 1
    return out


def build_json_dataset(root: Path, key: str, n_train: tuple[int, ...] = (6, 5, 2), n_val: int = 3,
                       n_test: int = 2, seed0: int = 0) -> MiniDataset:
    dirname, image_sub, split_name, classes, rule = JSON_LAYOUTS[key]
    ddir = root / dirname
    image_dir = ddir / image_sub if image_sub else ddir
    running = 1
    splits: dict[str, list] = {}
    for split, counts in (("train", n_train), ("val", (n_val,) * len(classes)), ("test", (n_test,) * len(classes))):
        per_class = []
        for label, ((cname, folder), n) in enumerate(zip(classes, counts)):
            entries = []
            for _ in range(n):
                rel = rule(folder, split, running)
                write_jpeg(image_dir / rel, seed0 + running)
                entries.append([rel, label, cname])
                running += 1
            per_class.append(entries)
        splits[split] = interleave(per_class) if split == "train" else [e for c in per_class for e in c]
    split_file = ddir / split_name
    split_file.write_text(json.dumps(splits, indent=4))
    return MiniDataset(key, [c.replace("_", " ") for c, _ in classes],
                       (sum(n_train), n_val * len(classes), n_test * len(classes)), image_dir, split_file,
                       splits["train"])


def build_fgvc(root: Path, per_split: int = 2) -> MiniDataset:
    ddir = root / "fgvc_aircraft"
    (ddir / "images").mkdir(parents=True, exist_ok=True)
    (ddir / "variants.txt").write_text("".join(v + "\n" for v in FGVC_VARIANTS))
    n = 1000000
    for split in ("train", "val", "test"):
        lines = []
        for v in FGVC_VARIANTS:
            for _ in range(per_split):
                write_jpeg(ddir / "images" / f"{n}.jpg", n)
                lines.append(f"{n} {v}\n")
                n += 1
        (ddir / f"images_variant_{split}.txt").write_text("".join(lines))
    k = per_split * len(FGVC_VARIANTS)
    return MiniDataset("fgvc_aircraft", list(FGVC_VARIANTS), (k, k, k), ddir / "images")


def write_classnames(path: Path, wnids: dict[str, str] = WNIDS) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{w} {name}\n" for w, name in wnids.items()))


def build_imagenet(root: Path, n_train: int = 5, n_val: int = 2) -> MiniDataset:
    ddir = root / "imagenet"
    write_classnames(ddir / "classnames.txt")
    # Written in reverse name order so a listing in creation order would not be sorted.
    for k, w in enumerate(WNIDS):
        for i in reversed(range(n_train)):
            write_jpeg(ddir / "images" / "train" / w / f"{w}_{i * 7 + 3}.JPEG", i)
        for i in reversed(range(n_val)):
            write_jpeg(ddir / "images" / "val" / w / f"ILSVRC2012_val_{k * 100 + i:08d}.JPEG", i + 50)
    return MiniDataset("imagenet", list(WNIDS.values()), (n_train * 3, n_val * 3, n_val * 3), ddir / "images")


def build_imagenet_targets(root: Path, per_class: int = 2) -> dict[str, MiniDataset]:
    out = {}
    wn = list(WNIDS)
    v2 = root / "imagenetv2"
    write_classnames(v2 / "classnames.txt")
    for label in range(len(wn)):
        for i in range(per_class):
            write_jpeg(v2 / "imagenetv2-matched-frequency-format-val" / str(label) / f"{label}{i:03d}abc.jpeg", i)
    out["imagenetv2"] = MiniDataset("imagenetv2", list(WNIDS.values()), (0, 0, per_class * 3),
                                    v2 / "imagenetv2-matched-frequency-format-val")
    sk = root / "imagenet-sketch"
    write_classnames(sk / "classnames.txt")
    for w in wn:
        for i in range(per_class):
            write_jpeg(sk / "images" / w / f"sketch_{i}.JPEG", i)
    out["imagenet_sketch"] = MiniDataset("imagenet_sketch", list(WNIDS.values()), (0, 0, per_class * 3), sk / "images")
    # A and R hold a subset of the classes (and a README.txt that must be ignored); labels are 0..len-1.
    for key, dirname, sub in (("imagenet_a", "imagenet-adversarial", "imagenet-a"),
                              ("imagenet_r", "imagenet-rendition", "imagenet-r")):
        d = root / dirname
        write_classnames(d / "classnames.txt")
        subset = [wn[2], wn[0]]
        for w in subset:
            for i in range(per_class):
                write_jpeg(d / sub / w / f"{key}_{i}.jpg", i)
        (d / sub / "README.txt").write_text("readme\n")
        out[key] = MiniDataset(key, [WNIDS[w] for w in sorted(subset)], (0, 0, per_class * 2), d / sub)
    return out


def build_coop_root(tmp_path: Path) -> MiniRoot:
    root = tmp_path / "DATA"
    datasets = {key: build_json_dataset(root, key, seed0=i * 100) for i, key in enumerate(JSON_LAYOUTS)}
    datasets["fgvc_aircraft"] = build_fgvc(root)
    datasets["imagenet"] = build_imagenet(root)
    datasets.update(build_imagenet_targets(root))
    return MiniRoot(root, datasets)
