"""The CoOp dataset suite (PROTOCOLS §1), read exactly as published under one data root.

Eleven few-shot datasets and four ImageNet test-only targets. The published splits are the
`split_zhou_*.json` files (FGVCAircraft: its official txt lists; ImageNet and its variants: class
folders plus `classnames.txt`). A missing split file is an error: CoOp's fallback splitter depends on
RNG state and filesystem order, so a regenerated split would silently differ from the published one.

Class names are stored prompt-ready: the names in the split files are already cleaned per §1.3 and
every method replaces `_` with a space before building prompts, so that replacement is done here once.

Folder-based datasets (ImageNet, its variants) cache their listing as a JSON manifest of relative
paths, sorted within each class (so a few-shot draw does not depend on the filesystem's order), and
revalidate it with one stat per class folder instead of one per image.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Sequence

from PIL import Image, UnidentifiedImageError

from .base import DataError, DatasetSplits, Datum, classnames_from
from .registry import register_dataset


class DataCountWarning(UserWarning):
    """Class or image counts differ from the published ones (§1.1); results may not be comparable."""


@dataclass(frozen=True)
class CoopDataset:
    """Where a dataset lives under the data root and what the published version looks like."""

    key: str  # config key (configs/datasets/<key>.yaml) and our registry name
    name: str  # Dassl DATASET.NAME
    dirname: str  # under the data root
    image_dir: str  # relative to the dataset dir; "" means the dataset dir itself (StanfordCars)
    layout: str  # "json", "fgvc", "imagenet", "imagenetv2", "wnid_folders"
    num_classes: int
    counts: tuple[int | None, int | None, int | None]  # published train/val/test; None = not checked
    template: str
    description: str
    split_file: str = ""

    @property
    def test_only(self) -> bool:
        return self.layout in ("imagenetv2", "wnid_folders")


_PHOTO = "a photo of a {}."

COOP_DATASETS: dict[str, CoopDataset] = {d.key: d for d in [
    CoopDataset("imagenet", "ImageNet", "imagenet", "images", "imagenet", 1000, (1_281_167, None, 50_000),
                _PHOTO, "ImageNet-1k (val is the test set)"),
    CoopDataset("caltech101", "Caltech101", "caltech-101", "101_ObjectCategories", "json", 100,
                (4128, 1649, 2465), _PHOTO, "Caltech-101 (100 classes)", "split_zhou_Caltech101.json"),
    CoopDataset("oxford_pets", "OxfordPets", "oxford_pets", "images", "json", 37, (2944, 736, 3669),
                "a photo of a {}, a type of pet.", "Oxford-IIIT Pets", "split_zhou_OxfordPets.json"),
    CoopDataset("stanford_cars", "StanfordCars", "stanford_cars", "", "json", 196, (6509, 1635, 8041),
                _PHOTO, "Stanford Cars", "split_zhou_StanfordCars.json"),
    CoopDataset("oxford_flowers", "OxfordFlowers", "oxford_flowers", "jpg", "json", 102, (4093, 1633, 2463),
                "a photo of a {}, a type of flower.", "Oxford Flowers-102", "split_zhou_OxfordFlowers.json"),
    CoopDataset("food101", "Food101", "food-101", "images", "json", 101, (50500, 20200, 30300),
                "a photo of {}, a type of food.", "Food-101", "split_zhou_Food101.json"),
    CoopDataset("fgvc_aircraft", "FGVCAircraft", "fgvc_aircraft", "images", "fgvc", 100, (3334, 3333, 3333),
                "a photo of a {}, a type of aircraft.", "FGVC-Aircraft 2013b (variants)"),
    CoopDataset("sun397", "SUN397", "sun397", "SUN397", "json", 397, (15880, 3970, 19850),
                _PHOTO, "SUN397", "split_zhou_SUN397.json"),
    CoopDataset("dtd", "DescribableTextures", "dtd", "images", "json", 47, (2820, 1128, 1692),
                "{} texture.", "Describable Textures", "split_zhou_DescribableTextures.json"),
    CoopDataset("eurosat", "EuroSAT", "eurosat", "2750", "json", 10, (13500, 5400, 8100),
                "a centered satellite photo of {}.", "EuroSAT RGB", "split_zhou_EuroSAT.json"),
    CoopDataset("ucf101", "UCF101", "ucf101", "UCF-101-midframes", "json", 101, (7639, 1898, 3783),
                "a photo of a person doing {}.", "UCF101 middle frames", "split_zhou_UCF101.json"),
    CoopDataset("imagenetv2", "ImageNetV2", "imagenetv2", "imagenetv2-matched-frequency-format-val",
                "imagenetv2", 1000, (None, None, 10_000), _PHOTO, "ImageNetV2 matched-frequency (test only)"),
    CoopDataset("imagenet_sketch", "ImageNetSketch", "imagenet-sketch", "images", "wnid_folders", 1000,
                (None, None, 50_889), _PHOTO, "ImageNet-Sketch (test only)"),
    CoopDataset("imagenet_a", "ImageNetA", "imagenet-adversarial", "imagenet-a", "wnid_folders", 200,
                (None, None, 7_500), _PHOTO, "ImageNet-A, 200 classes (test only)"),
    CoopDataset("imagenet_r", "ImageNetR", "imagenet-rendition", "imagenet-r", "wnid_folders", 200,
                (None, None, 30_000), _PHOTO, "ImageNet-R, 200 classes (test only)"),
]}

# Zero-shot / prompt template per dataset (CUSTOM_TEMPLATES of CoOp's zsclip.py), keyed by config key.
TEMPLATES: dict[str, str] = {k: d.template for k, d in COOP_DATASETS.items()}

LISTING_FILE = "mudpt-listing.json"
_LISTING_FORMAT = "mudpt-folder-listing"
_LISTING_VERSION = 1


def user_cache_dir() -> Path:
    """$MUDPT_CACHE, else ~/.cache/mudpt-bench."""
    env = os.environ.get("MUDPT_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "mudpt-bench"


def dataset_dir(key: str, data_root: str | Path) -> Path:
    """The dataset's folder under the data root (it may not exist)."""
    return Path(data_root).expanduser() / _info(key).dirname


def clean_classname(name: str) -> str:
    """What every method does before building a prompt."""
    return name.replace("_", " ")


@dataclass(frozen=True)
class ImageReader:
    """Reads one image of a dataset as RGB. Picklable, so DataLoader workers can use it."""

    dataset: str
    image_dir: Path

    def __call__(self, impath: str) -> Image.Image:
        path = self.image_dir / impath
        try:
            with Image.open(path) as im:
                return im.convert("RGB")  # convert() forces the full decode, so truncation fails here
        except FileNotFoundError:
            raise DataError(f"{self.dataset}: image file {path} does not exist") from None
        except (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError) as e:
            raise DataError(f"{self.dataset}: cannot decode image {path} ({type(e).__name__}: {e}); "
                            "the file is unreadable or corrupt, replace it from the original archive") from e


def load_coop(key: str, data_root: str | Path | None) -> DatasetSplits:
    """Load one CoOp dataset from the data root (see the module docstring)."""
    info = _info(key)
    if data_root is None:
        raise DataError(f"dataset {key!r} is read from the CoOp data folder: pass --data-root DIR")
    root = Path(data_root).expanduser()
    if not root.is_dir():
        raise DataError(f"data root {root} does not exist or is not a folder")
    ddir = root / info.dirname
    if not ddir.is_dir():
        raise DataError(f"{key}: dataset folder {ddir} not found; expected the CoOp layout "
                        f"($DATA/{info.dirname}/, see CoOp's DATASETS.md)")
    image_dir = ddir / info.image_dir if info.image_dir else ddir
    if not image_dir.is_dir():
        raise DataError(f"{key}: image folder {image_dir} not found; expected the CoOp layout "
                        f"($DATA/{info.dirname}/{info.image_dir}/)")
    loader = {"json": _load_json, "fgvc": _load_fgvc, "imagenet": _load_imagenet,
              "imagenetv2": _load_imagenetv2, "wnid_folders": _load_wnid_folders}[info.layout]
    return loader(info, ddir, image_dir)


def _info(key: str) -> CoopDataset:
    try:
        return COOP_DATASETS[key]
    except KeyError:
        raise DataError(f"unknown CoOp dataset {key!r}; valid: {', '.join(COOP_DATASETS)}") from None


# ---------------------------------------------------------------------------------------------------
# split_zhou JSON datasets


def _load_json(info: CoopDataset, ddir: Path, image_dir: Path) -> DatasetSplits:
    split_path = ddir / info.split_file
    if not split_path.is_file():
        raise DataError(
            f"{info.key}: split file {split_path} not found. Expected the published {info.split_file} "
            f"(download it from the link in CoOp's DATASETS.md into {ddir}/). mudpt-bench never generates "
            "a split: CoOp's fallback splitter depends on RNG state and file order and would not match "
            "the published one.")
    try:
        raw = json.loads(split_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"{info.key}: cannot parse split file {split_path}: {e}") from e
    if not isinstance(raw, dict) or not all(isinstance(raw.get(s), list) for s in ("train", "val", "test")):
        raise DataError(f"{info.key}: split file {split_path} must be an object with lists "
                        "'train', 'val' and 'test' of [relative_path, label, classname]")
    lists = [_parse_entries(info.key, split_path, s, raw[s]) for s in ("train", "val", "test")]
    _check_files_exist(info.key, image_dir, [d for items in lists for d in items], str(split_path))
    return _finish(info, image_dir, *lists, origin=str(split_path))


def _parse_entries(dataset: str, origin: Path, split: str, entries: list[Any]) -> list[Datum]:
    out = []
    for i, e in enumerate(entries):
        where = f"{dataset}: {split}[{i}] of {origin}"
        if not (isinstance(e, list) and len(e) == 3):
            raise DataError(f"{where}: expected [relative_path, label, classname], got {e!r}")
        path, label, cname = e
        if isinstance(label, str) and label.strip().lstrip("-").isdigit():
            label = int(label)  # Dassl rereads labels with int()
        if not isinstance(path, str) or not isinstance(cname, str) or type(label) is not int:
            raise DataError(f"{where}: expected [str, int, str], got {e!r}")
        if label < 0:
            raise DataError(f"{where}: label {label} is out of range (labels are 0-based)")
        p = PurePosixPath(path)
        if not path or p.is_absolute() or ".." in p.parts or "\\" in path:
            raise DataError(f"{where}: image path {path!r} must be relative to the image folder, "
                            "with '/' separators and no '..'")
        out.append(Datum(path, label, clean_classname(cname)))
    return out


def _check_files_exist(dataset: str, image_dir: Path, items: Sequence[Datum], origin: str) -> None:
    """One directory listing per folder instead of one stat per image."""
    by_folder: dict[str, set[str]] = {}
    for d in items:
        folder, _, name = d.impath.rpartition("/")
        by_folder.setdefault(folder, set()).add(name)
    missing: list[str] = []
    for folder, names in by_folder.items():
        path = image_dir / folder if folder else image_dir
        try:
            with os.scandir(path) as it:
                present = {e.name for e in it if e.is_file()}
        except (FileNotFoundError, NotADirectoryError):
            raise DataError(f"{dataset}: folder {path} does not exist, but {origin} lists "
                            f"{len(names)} image(s) in it") from None
        missing.extend(f"{folder}/{n}" if folder else n for n in sorted(names - present))
    if missing:
        examples = ", ".join(str(image_dir / m) for m in missing[:3])
        raise DataError(f"{dataset}: {len(missing)} image file(s) listed in {origin} are missing, "
                        f"e.g. {examples}")


# ---------------------------------------------------------------------------------------------------
# FGVCAircraft: variants.txt + images_variant_{train,val,test}.txt


def _load_fgvc(info: CoopDataset, ddir: Path, image_dir: Path) -> DatasetSplits:
    variants_file = ddir / "variants.txt"
    variants = [line.strip() for line in _read_lines(info.key, variants_file) if line.strip()]
    cname2lab: dict[str, int] = {}
    for i, v in enumerate(variants):
        if v in cname2lab:
            raise DataError(f"{info.key}: variant {v!r} appears twice in {variants_file} (lines "
                            f"{cname2lab[v] + 1} and {i + 1})")
        cname2lab[v] = i
    lists = []
    for split in ("train", "val", "test"):
        path = ddir / f"images_variant_{split}.txt"
        items = []
        for n, line in enumerate(_read_lines(info.key, path), start=1):
            parts = line.strip().split(" ")
            if not parts[0]:
                continue
            variant = " ".join(parts[1:])
            if variant not in cname2lab:
                raise DataError(f"{info.key}: line {n} of {path}: variant {variant!r} is not listed in "
                                f"{variants_file}")
            items.append(Datum(parts[0] + ".jpg", cname2lab[variant], clean_classname(variant)))
        lists.append(items)
    _check_files_exist(info.key, image_dir, [d for items in lists for d in items],
                       f"{ddir}/images_variant_*.txt")
    return _finish(info, image_dir, *lists, origin=f"{ddir}/images_variant_*.txt")


def _read_lines(dataset: str, path: Path) -> list[str]:
    if not path.is_file():
        raise DataError(f"{dataset}: required file {path} not found (part of the CoOp layout; "
                        "see CoOp's DATASETS.md)")
    try:
        return path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{dataset}: cannot read {path}: {e}") from e


# ---------------------------------------------------------------------------------------------------
# ImageNet and its test-only variants: class folders + classnames.txt


def _read_classnames(dataset: str, path: Path) -> dict[str, str]:
    """`<wnid> <name words…>` per line, in file order."""
    names: dict[str, str] = {}
    for n, line in enumerate(_read_lines(dataset, path), start=1):
        parts = line.strip().split(" ")
        if not parts[0]:
            continue
        if len(parts) < 2:
            raise DataError(f"{dataset}: line {n} of {path}: expected '<wnid> <class name>', got {line!r}")
        if parts[0] in names:
            raise DataError(f"{dataset}: line {n} of {path}: folder {parts[0]!r} listed twice")
        names[parts[0]] = clean_classname(" ".join(parts[1:]))
    return names


def _load_imagenet(info: CoopDataset, ddir: Path, image_dir: Path) -> DatasetSplits:
    names_file = ddir / "classnames.txt"
    names = _read_classnames(info.key, names_file)
    listing = folder_listing(info.key, ddir, image_dir, ("train", "val"))
    folders = sorted(listing["train"])  # label = index in the sorted train folder list (§1.4)
    if sorted(listing["val"]) != folders:
        only = sorted(set(listing["val"]) ^ set(folders))[:5]
        raise DataError(f"{info.key}: {image_dir}/train and {image_dir}/val must hold the same class "
                        f"folders; they differ in {only}")
    _check_wnids(info.key, folders, names, names_file)
    classnames = [names[f] for f in folders]
    train = [Datum(f"train/{f}/{n}", i, classnames[i]) for i, f in enumerate(folders) for n in listing["train"][f]]
    test = [Datum(f"val/{f}/{n}", i, classnames[i]) for i, f in enumerate(folders) for n in listing["val"][f]]
    # Dassl hands the val list over as both val and test ("evaluate the last-step model").
    return _finish(info, image_dir, train, test, test, origin=str(image_dir), classnames=classnames)


def _load_imagenetv2(info: CoopDataset, ddir: Path, image_dir: Path) -> DatasetSplits:
    names_file = ddir / "classnames.txt"
    names = _read_classnames(info.key, names_file)
    listing = folder_listing(info.key, ddir, image_dir, ("",))[""]
    classnames = list(names.values())  # label i <-> folder str(i) <-> i-th wnid of classnames.txt
    absent = [str(i) for i in range(len(classnames)) if str(i) not in listing]
    if absent:
        raise DataError(f"{info.key}: class folder(s) {', '.join(absent[:5])} missing in {image_dir} "
                        f"(expected folders 0..{len(classnames) - 1}, one per line of {names_file})")
    extra = sorted(set(listing) - {str(i) for i in range(len(classnames))})
    if extra:
        raise DataError(f"{info.key}: unexpected folder(s) {extra[:5]} in {image_dir}; expected only "
                        f"0..{len(classnames) - 1}")
    test = [Datum(f"{i}/{n}", i, c) for i, c in enumerate(classnames) for n in listing[str(i)]]
    return _finish(info, image_dir, [], [], test, origin=str(image_dir), classnames=classnames)


def _load_wnid_folders(info: CoopDataset, ddir: Path, image_dir: Path) -> DatasetSplits:
    names_file = ddir / "classnames.txt"
    names = _read_classnames(info.key, names_file)
    listing = folder_listing(info.key, ddir, image_dir, ("",))[""]
    folders = sorted(listing)  # label = index in this dataset's own sorted folder list (A/R: 0..199)
    _check_wnids(info.key, folders, names, names_file)
    classnames = [names[f] for f in folders]
    test = [Datum(f"{f}/{n}", i, classnames[i]) for i, f in enumerate(folders) for n in listing[f]]
    return _finish(info, image_dir, [], [], test, origin=str(image_dir), classnames=classnames)


def _check_wnids(dataset: str, folders: list[str], names: dict[str, str], names_file: Path) -> None:
    unknown = [f for f in folders if f not in names]
    if unknown:
        raise DataError(f"{dataset}: class folder(s) {unknown[:5]} are not listed in {names_file}")


def folder_listing(dataset: str, ddir: Path, image_dir: Path,
                   subdirs: Sequence[str]) -> dict[str, dict[str, list[str]]]:
    """{subdir: {class folder: sorted file names}} for class folders under image_dir/subdir.

    Cached as JSON (relative names only) in the dataset dir, or in the user cache when that is not
    writable. A cached class folder is reused while its mtime is unchanged (adding, removing or renaming
    a file changes it), so a warm start costs one stat per class folder.
    """
    candidates = [ddir / LISTING_FILE, user_cache_dir() / "listings" /
                  f"{dataset}-{hashlib.sha256(str(ddir.resolve()).encode()).hexdigest()[:16]}.json"]
    cached = _read_listing(candidates)
    result: dict[str, dict[str, list[str]]] = {}
    stored: dict[str, dict[str, Any]] = {}
    changed = False
    for sub in subdirs:
        base = image_dir / sub if sub else image_dir
        try:
            with os.scandir(base) as it:
                class_dirs = {e.name: e.stat().st_mtime_ns for e in it if not e.name.startswith(".") and e.is_dir()}
        except (FileNotFoundError, NotADirectoryError):
            raise DataError(f"{dataset}: folder {base} not found; expected one sub-folder per class") from None
        if not class_dirs:
            raise DataError(f"{dataset}: folder {base} holds no class folders")
        old = cached.get(sub, {})
        entries: dict[str, Any] = {}
        for name, mtime in sorted(class_dirs.items()):
            prev = old.get(name)
            if isinstance(prev, dict) and prev.get("mtime_ns") == mtime and isinstance(prev.get("files"), list):
                entries[name] = prev
            else:
                entries[name] = {"mtime_ns": mtime, "files": _list_files(base / name)}
                changed = True
        changed |= set(old) != set(entries)
        stored[sub] = entries
        result[sub] = {name: e["files"] for name, e in entries.items()}
    if changed or set(cached) != set(subdirs):
        _write_listing(candidates, stored)
    return result


def _list_files(folder: Path) -> list[str]:
    # Sorted, unlike Dassl's os.listdir order, so that few-shot draws do not depend on the filesystem.
    with os.scandir(folder) as it:
        return sorted(e.name for e in it if not e.name.startswith(".") and e.is_file())


def _read_listing(candidates: Sequence[Path]) -> dict[str, dict[str, Any]]:
    """The most recently written valid listing (a stale one may remain in a now read-only dataset dir)."""
    best: tuple[int, dict[str, dict[str, Any]]] = (-1, {})
    for path in candidates:
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(raw, dict) and raw.get("format") == _LISTING_FORMAT and raw.get("version") == _LISTING_VERSION \
                and isinstance(raw.get("subdirs"), dict) and int(raw.get("written_ns", 0)) > best[0]:
            best = (int(raw.get("written_ns", 0)), raw["subdirs"])
    return best[1]


def _write_listing(candidates: Sequence[Path], stored: dict[str, dict[str, Any]]) -> None:
    payload = json.dumps({"format": _LISTING_FORMAT, "version": _LISTING_VERSION, "written_ns": time.time_ns(),
                          "subdirs": stored}, separators=(",", ":"))
    for path in candidates:
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_text(payload, encoding="utf-8")
            os.replace(tmp, path)  # atomic: concurrent runs never read a half-written listing
            return
        except OSError:
            tmp.unlink(missing_ok=True)
    warnings.warn(f"could not write the folder listing to any of {[str(c) for c in candidates]}; "
                  "the next run will list the folders again", stacklevel=3)


# ---------------------------------------------------------------------------------------------------


def _finish(info: CoopDataset, image_dir: Path, train: list[Datum], val: list[Datum], test: list[Datum], *,
            origin: str, classnames: list[str] | None = None) -> DatasetSplits:
    """Class names by label (from train, as Dassl), label/name consistency, and the count check."""
    if classnames is None:
        classnames = _classnames_by_label(info.key, train, origin)
    n = len(classnames)
    for split, items in (("train", train), ("val", val), ("test", test)):
        for i, d in enumerate(items):
            if not 0 <= d.label < n:
                raise DataError(f"{info.key}: {split} item {i} ({d.impath}) in {origin} has label {d.label}, "
                                f"out of range 0..{n - 1} (the classes are those of the train split)")
            if d.classname != classnames[d.label]:
                raise DataError(f"{info.key}: {split} item {i} ({d.impath}) in {origin} names label {d.label} "
                                f"{d.classname!r}, but the train split names it {classnames[d.label]!r}")
    return DatasetSplits(
        name=info.key, classnames=classnames, template=info.template, train=train, val=val, test=test,
        read_image=ImageReader(info.key, image_dir), source_id=str(image_dir.resolve()),
        warnings=_count_warnings(info, n, len(train), len(val), len(test)))


def _classnames_by_label(dataset: str, train: list[Datum], origin: str) -> list[str]:
    if not train:
        raise DataError(f"{dataset}: the train split in {origin} is empty")
    try:
        return classnames_from(train)
    except DataError as e:
        raise DataError(f"{dataset}: {e} (train split of {origin})") from None


def _count_warnings(info: CoopDataset, n_classes: int, *counts: int) -> list[str]:
    out = []
    if n_classes != info.num_classes:
        out.append(f"{info.key}: {n_classes} classes found, the published dataset has {info.num_classes}")
    for split, found, published in zip(("train", "val", "test"), counts, info.counts):
        if published is not None and found != published:
            out.append(f"{info.key}: {found} {split} images found, the published split has {published}")
    for msg in out:
        warnings.warn(msg, DataCountWarning, stacklevel=4)
    return out


def _register(info: CoopDataset) -> None:
    @register_dataset(info.key, kind="coop", description=info.description, test_only=info.test_only)
    def _load(data_root: Path | None) -> DatasetSplits:
        return load_coop(info.key, data_root)


for _d in COOP_DATASETS.values():
    _register(_d)
