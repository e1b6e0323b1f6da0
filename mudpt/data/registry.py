"""Dataset registry: every dataset (CoOp on disk, embedded synthetic) is found by name here."""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .base import DataError, DatasetSplits

# Modules whose import registers datasets. Imported lazily so `mudpt-bench --help` stays fast.
_PROVIDERS = ("mudpt.data.coop", "mudpt.toy.datasets")


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    kind: str  # "coop" (needs --data-root) or "embedded" (generated on first use)
    loader: Callable[[Path | None], DatasetSplits]
    description: str = ""
    # Test-only targets (ImageNet variants, shifted renderings) have no train split.
    test_only: bool = False


_REGISTRY: dict[str, DatasetSpec] = {}


def register_dataset(name: str, kind: str, description: str = "", test_only: bool = False):
    def deco(fn: Callable[[Path | None], DatasetSplits]):
        if name in _REGISTRY:
            raise RuntimeError(f"dataset {name!r} registered twice")
        _REGISTRY[name] = DatasetSpec(name, kind, fn, description, test_only)
        return fn

    return deco


def _load_providers() -> None:
    for mod in _PROVIDERS:
        try:
            importlib.import_module(mod)
        except ModuleNotFoundError as e:  # a provider that is not written yet must not break the others
            if e.name != mod:
                raise


def list_datasets(kind: str | None = None) -> list[DatasetSpec]:
    _load_providers()
    return [s for s in sorted(_REGISTRY.values(), key=lambda s: (s.kind, s.name)) if kind in (None, s.kind)]


def get_spec(name: str) -> DatasetSpec:
    _load_providers()
    if name not in _REGISTRY:
        valid = ", ".join(sorted(_REGISTRY))
        raise DataError(f"unknown dataset {name!r}; valid: {valid}")
    return _REGISTRY[name]


def load_dataset(name: str, data_root: str | Path | None = None) -> DatasetSplits:
    spec = get_spec(name)
    if spec.kind == "coop" and data_root is None:
        raise DataError(f"dataset {name!r} is read from the CoOp data folder: pass --data-root DIR")
    return spec.loader(Path(data_root).expanduser() if data_root is not None else None)
