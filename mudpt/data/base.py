"""The one dataset interface every benchmark dataset is served through.

CoOp datasets on disk and the embedded synthetic suite both produce a `DatasetSplits`; few-shot
draws, base/new subsampling, grids and evaluation only ever see this type.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field, replace
from typing import Callable, Sequence

from PIL import Image

from ..errors import UserError


class DataError(UserError):
    """Bad or missing data. The message names the dataset and the file and says what was expected."""


@dataclass(frozen=True)
class Datum:
    """One labelled image. `impath` is relative to the dataset's image root (never absolute),
    so manifests survive a move of the data root."""

    impath: str
    label: int
    classname: str


@dataclass
class DatasetSplits:
    """Train/val/test lists of one dataset plus what a prompt needs to know about it.

    `read_image(impath)` returns an RGB PIL image; `source_id` identifies where images come from
    (a data root, or the synthetic generator's version and seed) and goes into decoded-image cache keys.
    """

    name: str
    classnames: list[str]
    template: str
    train: list[Datum]
    val: list[Datum]
    test: list[Datum]
    read_image: Callable[[str], Image.Image] = field(repr=False, compare=False)
    source_id: str = ""
    warnings: list[str] = field(default_factory=list)
    # Optional override of the train-time RandomResizedCrop scale (the CoOp protocol uses (0.08, 1.0)).
    train_crop_scale: tuple[float, float] = (0.08, 1.0)
    # Random horizontal flips at training time; off only where a mirror changes the label (digits).
    train_hflip: bool = True

    @property
    def num_classes(self) -> int:
        return len(self.classnames)

    def with_lists(self, train: Sequence[Datum], val: Sequence[Datum], test: Sequence[Datum],
                   classnames: list[str] | None = None) -> "DatasetSplits":
        return replace(self, train=list(train), val=list(val), test=list(test),
                       classnames=list(classnames if classnames is not None else self.classnames))


def data_hash(items: Sequence[Datum]) -> str:
    """Content hash of an ordered list of items (path, label, class name)."""
    payload = json.dumps([[d.impath, d.label, d.classname] for d in items], separators=(",", ":"))
    return hashlib.sha256(payload.encode()).hexdigest()


def classnames_from(items: Sequence[Datum]) -> list[str]:
    """Class names ordered by label, as Dassl's `get_lab2cname` does (num_classes = max label + 1)."""
    if not items:
        return []
    n = max(d.label for d in items) + 1
    names: list[str | None] = [None] * n
    for d in items:
        names[d.label] = d.classname
    missing = [i for i, c in enumerate(names) if c is None]
    if missing:
        raise DataError(f"labels {missing[:5]} have no items; labels must be contiguous 0..{n - 1}")
    return names  # type: ignore[return-value]
