"""The one data entry point of the engine: dataset -> few-shot draw -> base/new subsampling (PROTOCOLS §2.1).

Order as in Dassl: read the published split, draw the few-shot train (K) and val (min(K, 4)) sets,
then keep the base or new half of the classes in train, val and test, relabelled from 0.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from .base import DataError, DatasetSplits, data_hash
from .fewshot import SUBSAMPLES, TRAIN_ONLY_FEWSHOT, draw_sha256, fewshot_manifest, subsample_classes
from .registry import get_spec, load_dataset


@dataclass
class PreparedData:
    """What one run trains and evaluates on.

    `splits`: train = few-shot train, val = few-shot val (ImageNet: the full val list, as Dassl),
    test = the full test split; all three restricted to the `subsample` classes and relabelled.
    `manifest_hash`: sha256 of the (train, val) draw before subsampling, so base and new runs of
    one seed share it; with shots <= 0 it is the hash of the full train/val lists. Log it with the run.
    `split_sha256`: hash of the full published train/val/test lists the draw came from.
    """

    splits: DatasetSplits
    manifest_hash: str
    manifest_path: Path | None
    subsample: str
    split_sha256: str = ""
    source: str = ""  # "dassl-random.sample", "dassl-pickle:<file>", or "full" (shots <= 0)

    @property
    def warnings(self) -> list[str]:
        return self.splits.warnings


def default_cache_dir() -> Path:
    env = os.environ.get("MUDPT_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "mudpt-bench"


def dassl_pickle_path(dataset: str, data_root: str | Path, shots: int, seed: int) -> Path:
    from .coop import dataset_dir

    return dataset_dir(dataset, data_root) / "split_fewshot" / f"shot_{shots}-seed_{seed}.pkl"


def prepare_data(dataset: str, *, shots: int, seed: int, subsample: str = "all", data_root: str | Path | None = None,
                 cache_dir: Path | None = None, import_dassl_pickle: bool = False) -> PreparedData:
    """Load `dataset`, draw (or reuse) its frozen K-shot set for `seed`, and subsample classes.

    shots <= 0 uses the full train and val lists. `import_dassl_pickle=True` takes the draw from
    Dassl's `<dataset dir>/split_fewshot/shot_K-seed_S.pkl` instead of drawing it; pickle is a
    code-execution format, so this is opt-in only (see `fewshot.import_dassl_fewshot_pickle`).
    """
    if subsample not in SUBSAMPLES:
        raise ValueError(f"subsample must be one of {SUBSAMPLES}, got {subsample!r}")
    spec = get_spec(dataset)
    if import_dassl_pickle and (spec.kind != "coop" or data_root is None):
        raise DataError(f"{dataset}: importing a Dassl few-shot pickle needs a CoOp dataset and --data-root")
    splits = load_dataset(dataset, data_root)
    cache = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    test_hash = data_hash(splits.test)
    source_sha = draw_sha256(splits.train, splits.val)
    split_sha = hashlib.sha256(f"{source_sha}\ntest:{test_hash}".encode()).hexdigest()

    if shots > 0 and splits.train:
        pickle_path = dassl_pickle_path(dataset, data_root, shots, seed) if import_dassl_pickle and data_root else None
        manifest, path = fewshot_manifest(dataset, splits.train, splits.val, shots, seed, cache,
                                          dassl_pickle=pickle_path)
        if manifest.source_sha256 != source_sha:
            raise DataError(f"{dataset}: few-shot manifest {path} was drawn from another split (source "
                            f"{manifest.source_sha256[:12]}…, now {source_sha[:12]}…); delete it to redraw")
        train = manifest.train
        val = splits.val if dataset in TRAIN_ONLY_FEWSHOT else manifest.val
        manifest_hash, manifest_path, source = manifest.sha256, path, manifest.source
    else:
        train, val = splits.train, splits.val
        manifest_hash, manifest_path, source = source_sha, None, "full"

    (train, val, test), kept = subsample_classes([train, val, splits.test], subsample)
    classnames = splits.classnames if kept is None else [splits.classnames[k] for k in kept]
    prepared = splits.with_lists(train, val, test, classnames=classnames)
    return PreparedData(prepared, manifest_hash, manifest_path, subsample, split_sha, source)
