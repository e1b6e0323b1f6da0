"""Dassl-identical few-shot draws (PROTOCOLS §2.2), base/new class subsampling (§2.3), frozen draw manifests.

Dassl seeds the global `random` module (`random.seed(seed)`) and consumes nothing from it before the
draw, so `random.Random(seed)` yields the identical stream. Per split, items are grouped by label in
order of first appearance; each group with at least K items contributes `rng.sample(group, K)` (in draw
order), a smaller group contributes all its items and consumes no random numbers. Train is drawn with K,
then val with min(K, 4), on the same stream.

Python only promises reproducibility of `random()`, not of `sample`, so every draw is frozen as a JSON
manifest per (dataset, K, seed, source split) with a sha256 of its content; later runs read the manifest.
"""
from __future__ import annotations

import hashlib
import io
import json
import math
import os
import pickle
import platform
import random
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Sequence

from .base import DataError, Datum, data_hash

SUBSAMPLES = ("all", "base", "new")
# Datasets whose Dassl class draws train only and keeps the full val list as val/test (ImageNet, §2.2).
TRAIN_ONLY_FEWSHOT = frozenset({"imagenet"})
MANIFEST_FORMAT = "mudpt-fewshot-manifest"
MANIFEST_VERSION = 1


def group_by_label(items: Sequence[Datum]) -> dict[int, list[Datum]]:
    """Items per label, labels in order of first appearance, items in list order (Dassl's tracker)."""
    groups: dict[int, list[Datum]] = {}
    for d in items:
        groups.setdefault(d.label, []).append(d)
    return groups


def fewshot_sample(items: Sequence[Datum], num_shots: int, rng: random.Random) -> list[Datum]:
    """Dassl's `generate_fewshot_dataset(items, num_shots=K, repeat=False)` on the given stream."""
    out: list[Datum] = []
    for group in group_by_label(items).values():
        out.extend(rng.sample(group, num_shots) if len(group) >= num_shots else group)
    return out


@dataclass(frozen=True)
class FewShotDraw:
    train: list[Datum]
    val: list[Datum]


def dassl_fewshot_draw(train: Sequence[Datum], val: Sequence[Datum], num_shots: int, seed: int, *,
                       sample_val: bool = True) -> FewShotDraw:
    """Seed, draw train with K, then val with min(K, 4) on the same stream (val kept whole if not sample_val)."""
    if num_shots < 1:
        raise ValueError(f"num_shots must be >= 1 for a few-shot draw, got {num_shots}")
    if seed < 0:
        # Dassl seeds nothing when SEED < 0 (and ignores --seed 0); such draws are not reproducible.
        raise ValueError(f"seed must be >= 0, got {seed}")
    rng = random.Random(seed)
    drawn_train = fewshot_sample(train, num_shots, rng)
    drawn_val = fewshot_sample(val, min(num_shots, 4), rng) if sample_val else list(val)
    return FewShotDraw(drawn_train, drawn_val)


def subsample_classes(lists: Sequence[Sequence[Datum]], subsample: str) -> tuple[list[list[Datum]], list[int] | None]:
    """Dassl's `subsample_classes`: labels from the first list, sorted; base = first ceil(n/2), new = rest.

    Returns the filtered, relabelled lists and the kept original labels in new-label order
    (None for "all", where the lists are returned unchanged).
    """
    if subsample not in SUBSAMPLES:
        raise ValueError(f"subsample must be one of {SUBSAMPLES}, got {subsample!r}")
    if subsample == "all":
        return [list(x) for x in lists], None
    if not lists or not lists[0]:
        raise DataError(f"subsample={subsample!r} needs a non-empty train split to take the classes from")
    labels = sorted({d.label for d in lists[0]})
    m = math.ceil(len(labels) / 2)
    kept = labels[:m] if subsample == "base" else labels[m:]
    relabel = {old: new for new, old in enumerate(kept)}
    out = [[Datum(d.impath, relabel[d.label], d.classname) for d in items if d.label in relabel] for items in lists]
    return out, kept


def draw_sha256(train: Sequence[Datum], val: Sequence[Datum]) -> str:
    """Content hash of a (train, val) pair; the id of a few-shot draw (or of a full split)."""
    return hashlib.sha256(f"train:{data_hash(train)}\nval:{data_hash(val)}".encode()).hexdigest()


@dataclass(frozen=True)
class FewShotManifest:
    dataset: str
    shots: int
    seed: int
    source: str  # "dassl-random.sample" or "dassl-pickle:<file name>"
    source_sha256: str  # draw_sha256 of the full train/val lists the draw was taken from
    train: list[Datum]
    val: list[Datum]
    sha256: str  # draw_sha256(train, val)


def manifest_path(cache_dir: Path, dataset: str, shots: int, seed: int, source_sha256: str) -> Path:
    # The source hash is part of the name: a changed split file yields a new draw, never a stale one.
    return Path(cache_dir) / "fewshot" / dataset / f"shot_{shots}-seed_{seed}-src_{source_sha256[:16]}.json"


def write_manifest(path: Path, m: FewShotManifest) -> None:
    payload = {
        "format": MANIFEST_FORMAT, "version": MANIFEST_VERSION, "dataset": m.dataset, "shots": m.shots,
        "seed": m.seed, "source": m.source, "source_sha256": m.source_sha256, "python": platform.python_version(),
        "sha256": m.sha256,
        "train": [[d.impath, d.label, d.classname] for d in m.train],
        "val": [[d.impath, d.label, d.classname] for d in m.val],
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(payload, indent=1), encoding="utf-8")
    os.replace(tmp, path)  # concurrent grid workers write identical content; never a half-written file


def read_manifest(path: Path) -> FewShotManifest:
    """Read and verify a manifest (format, version and content hash)."""
    try:
        raw = json.loads(Path(path).read_text(encoding="utf-8"))
        if raw.get("format") != MANIFEST_FORMAT or raw.get("version") != MANIFEST_VERSION:
            raise DataError(f"few-shot manifest {path}: unknown format/version "
                            f"{raw.get('format')!r}/{raw.get('version')!r}; "
                            f"expected {MANIFEST_FORMAT!r}/{MANIFEST_VERSION}")
        train = [Datum(str(p), int(lab), str(c)) for p, lab, c in raw["train"]]
        val = [Datum(str(p), int(lab), str(c)) for p, lab, c in raw["val"]]
        m = FewShotManifest(str(raw["dataset"]), int(raw["shots"]), int(raw["seed"]), str(raw["source"]),
                            str(raw["source_sha256"]), train, val, str(raw["sha256"]))
    except DataError:
        raise
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise DataError(f"few-shot manifest {path} is unreadable ({type(e).__name__}: {e}); delete it to redraw") from e
    actual = draw_sha256(m.train, m.val)
    if actual != m.sha256:
        raise DataError(f"few-shot manifest {path} was modified: its content hashes to {actual[:12]}…, the file "
                        f"records {m.sha256[:12]}…; delete it to redraw")
    return m


def fewshot_manifest(dataset: str, train: Sequence[Datum], val: Sequence[Datum], shots: int, seed: int,
                     cache_dir: Path, *, dassl_pickle: Path | None = None) -> tuple[FewShotManifest, Path]:
    """The frozen draw for (dataset, K, seed) over these full lists: read it, or draw (or import) and write it.

    With `dassl_pickle`, the draw is taken from Dassl's `split_fewshot/shot_K-seed_S.pkl` instead
    (see `import_dassl_fewshot_pickle`); an existing manifest with different content is an error.
    """
    train_only = dataset in TRAIN_ONLY_FEWSHOT
    source_sha = draw_sha256(train, val)
    path = manifest_path(cache_dir, dataset, shots, seed, source_sha)
    existing = read_manifest(path) if path.is_file() else None
    if dassl_pickle is not None:
        ptrain, pval = import_dassl_fewshot_pickle(dassl_pickle, train, val, dataset=dataset, train_only=train_only)
        m = FewShotManifest(dataset, shots, seed, f"dassl-pickle:{Path(dassl_pickle).name}", source_sha,
                            ptrain, pval, draw_sha256(ptrain, pval))
        if existing is not None and existing.sha256 != m.sha256:
            raise DataError(f"{dataset}: the Dassl pickle {dassl_pickle} holds a different draw than the existing "
                            f"manifest {path} (source {existing.source!r}); delete the manifest to replace it")
        if existing is None:
            write_manifest(path, m)
        return (existing or m), path
    if existing is not None:
        return existing, path
    draw = dassl_fewshot_draw(train, val, shots, seed, sample_val=not train_only)
    val_items = [] if train_only else draw.val  # ImageNet: the full val list stays val/test, not part of the draw
    m = FewShotManifest(dataset, shots, seed, "dassl-random.sample", source_sha, draw.train, val_items,
                        draw_sha256(draw.train, val_items))
    write_manifest(path, m)
    return m, path


# ---------------------------------------------------------------------------------------------------
# Opt-in import of Dassl's split_fewshot pickles


class _PickledDatum:
    """Stand-in for `dassl.data.datasets.base_dataset.Datum` while unpickling (its state is a plain dict)."""

    def __setstate__(self, state: Any) -> None:
        if not isinstance(state, dict):
            raise pickle.UnpicklingError(f"unexpected Datum state {type(state).__name__}")
        self.__dict__.update(state)


class _DasslUnpickler(pickle.Unpickler):
    _ALLOWED = {
        ("dassl.data.datasets.base_dataset", "Datum"): _PickledDatum,
        ("copyreg", "_reconstructor"): None,  # protocol 0/1 pickles rebuild objects through these two
        ("builtins", "object"): object,
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}: only Dassl Datum objects are accepted")
        if (module, name) == ("copyreg", "_reconstructor"):
            import copyreg

            return copyreg._reconstructor  # type: ignore[attr-defined]
        return self._ALLOWED[(module, name)]


def import_dassl_fewshot_pickle(path: Path, train: Sequence[Datum], val: Sequence[Datum], *, dataset: str,
                                train_only: bool = False) -> tuple[list[Datum], list[Datum]]:
    """Read Dassl's `split_fewshot/shot_K-seed_S.pkl` and map its items onto the loaded split.

    SECURITY: pickle is a code-execution format; loading a pickle can run arbitrary code. This reader
    refuses every class except Dassl's `Datum` (and the two helpers old protocols need), which blocks
    the known attacks, but only import files you trust. It is reached only behind an explicit flag.

    Dassl stores absolute paths; each is matched to the split item whose relative path is its longest
    suffix, and its label and class name must agree with that item. ImageNet pickles hold train only.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{dataset}: Dassl few-shot pickle {path} not found (Dassl writes it to "
                        "<dataset dir>/split_fewshot/shot_<K>-seed_<S>.pkl)")
    try:
        raw = _DasslUnpickler(io.BytesIO(path.read_bytes())).load()
    except Exception as e:  # any failure to parse untrusted bytes is a data error, reported with the file
        raise DataError(f"{dataset}: cannot import Dassl pickle {path}: {type(e).__name__}: {e}") from e
    if not isinstance(raw, dict) or "train" not in raw or (not train_only and "val" not in raw):
        raise DataError(f"{dataset}: Dassl pickle {path} must hold a dict with 'train'"
                        + ("" if train_only else " and 'val'"))
    out_train = _map_pickled(raw["train"], train, dataset, path, "train")
    out_val = [] if train_only else _map_pickled(raw["val"], val, dataset, path, "val")
    return out_train, out_val


def _map_pickled(objs: Any, reference: Sequence[Datum], dataset: str, path: Path, split: str) -> list[Datum]:
    if not isinstance(objs, list):
        raise DataError(f"{dataset}: Dassl pickle {path}: '{split}' is not a list")
    by_path = {d.impath: d for d in reference}
    out = []
    for i, o in enumerate(objs):
        state = getattr(o, "__dict__", {})
        impath, label, cname = state.get("_impath"), state.get("_label"), state.get("_classname")
        if not isinstance(impath, str) or type(label) is not int or not isinstance(cname, str):
            raise DataError(f"{dataset}: Dassl pickle {path}: {split}[{i}] is not a Dassl Datum with "
                            "_impath/_label/_classname")
        parts = PurePosixPath(impath.replace("\\", "/")).parts
        match = next((by_path["/".join(parts[k:])] for k in range(len(parts)) if "/".join(parts[k:]) in by_path), None)
        if match is None:
            raise DataError(f"{dataset}: Dassl pickle {path}: {split} image {impath} is not in this dataset's "
                            f"{split} split")
        if match.label != label or match.classname != cname.replace("_", " "):
            raise DataError(f"{dataset}: Dassl pickle {path}: {split} image {impath} has label {label} "
                            f"({cname!r}); the split file says {match.label} ({match.classname!r})")
        out.append(match)
    return out
