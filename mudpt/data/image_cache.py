"""Decoded-image cache, so epochs over a few-shot set do not decode the same JPEGs again.

Two kinds of entry, both uint8 HxWx3 arrays, kept in an in-memory LRU and (optionally) as .npy files:
- test: the image after the deterministic test geometry (shorter side resized, centre-cropped), i.e.
  exactly what the test transform hands to ToTensor;
- train: the full decoded RGB image, so RandomResizedCrop still sees every pixel of the original.

Both are exact: the cached path yields the same tensors as decoding every time. The one inexact
option, off by default, is `train_downscale_factor=f`: images whose shorter side exceeds f*size are
stored downscaled (bicubic) to a shorter side of ceil(f*size); crops then come from a smaller image.

Keys are sha256(source_id, impath, kind, size, PIL and torchvision versions). The cache assumes image
files are not rewritten in place under the same source; call `clear()` (or delete the folder) if they are.
"""
from __future__ import annotations

import hashlib
import math
import os
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import PIL
from PIL import Image

ReadImage = Callable[[str], Image.Image]
_SUBDIR = "decoded-images-v1"  # bump when the stored content changes meaning


@dataclass
class CacheStats:
    memory_hits: int = 0
    disk_hits: int = 0
    misses: int = 0


class DecodedImageCache:
    def __init__(self, root: str | Path | None = None, *, memory_bytes: int = 512 << 20,
                 train_downscale_factor: float | None = None):
        if train_downscale_factor is not None and train_downscale_factor < 1:
            raise ValueError(f"train_downscale_factor must be >= 1, got {train_downscale_factor}")
        self.root = Path(root).expanduser() / _SUBDIR if root is not None else None
        self.memory_bytes = memory_bytes
        self.train_downscale_factor = train_downscale_factor
        self.stats = CacheStats()
        self._lru: OrderedDict[str, np.ndarray] = OrderedDict()
        self._lru_bytes = 0
        import torchvision  # noqa: F401  (version only; mudpt.compat was imported by transforms)

        self._versions = f"PIL={PIL.__version__};tv={torchvision.__version__}"

    def test_array(self, source_id: str, impath: str, size: int, read_image: ReadImage) -> np.ndarray:
        """The test-geometry image (size x size x 3 uint8)."""
        def make() -> np.ndarray:
            from .transforms import test_geometry

            return np.array(test_geometry(size)(read_image(impath)), dtype=np.uint8)

        return self._get(self._key(source_id, impath, "test", size), make)

    def train_array(self, source_id: str, impath: str, size: int, read_image: ReadImage) -> np.ndarray:
        """The full decoded image (or the documented downscaled one), HxWx3 uint8."""
        f = self.train_downscale_factor
        if f is None:
            return self._get(self._key(source_id, impath, "full", 0), lambda: np.array(read_image(impath), np.uint8))

        def make() -> np.ndarray:
            img = read_image(impath)
            target = math.ceil(f * size)
            w, h = img.size
            if min(w, h) > target:
                s = target / min(w, h)
                img = img.resize((max(target, round(w * s)), max(target, round(h * s))), Image.BICUBIC)
            return np.array(img, dtype=np.uint8)

        return self._get(self._key(source_id, impath, f"full-max{f}", size), make)

    def clear(self) -> None:
        """Drop the memory layer and this cache's files."""
        self._lru.clear()
        self._lru_bytes = 0
        if self.root is not None and self.root.is_dir():
            import shutil

            shutil.rmtree(self.root)

    def _key(self, source_id: str, impath: str, kind: str, size: int) -> str:
        if not source_id:
            raise ValueError("the decoded-image cache needs a non-empty source_id (it keys the entries)")
        return hashlib.sha256(f"{source_id}\0{impath}\0{kind}\0{size}\0{self._versions}".encode()).hexdigest()

    def _get(self, key: str, make: Callable[[], np.ndarray]) -> np.ndarray:
        arr = self._lru.get(key)
        if arr is not None:
            self._lru.move_to_end(key)
            self.stats.memory_hits += 1
            return arr
        arr = self._load(key)
        if arr is not None:
            self.stats.disk_hits += 1
        else:
            self.stats.misses += 1
            arr = make()  # np.array copies: writable and contiguous
            if arr.ndim != 3 or arr.shape[2] != 3 or arr.dtype != np.uint8:
                raise ValueError(f"expected an HxWx3 uint8 image, got {arr.shape} {arr.dtype}")
            self._store(key, arr)
        self._remember(key, arr)
        return arr

    def _path(self, key: str) -> Path:
        assert self.root is not None
        return self.root / key[:2] / f"{key[2:]}.npy"

    def _load(self, key: str) -> np.ndarray | None:
        if self.root is None:
            return None
        try:
            arr = np.load(self._path(key), allow_pickle=False)
        except (OSError, ValueError, EOFError):  # absent, or damaged by something outside this class
            return None
        return arr if arr.ndim == 3 and arr.shape[2] == 3 and arr.dtype == np.uint8 else None

    def _store(self, key: str, arr: np.ndarray) -> None:
        if self.root is None:
            return
        path = self._path(key)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(tmp, "wb") as f:
                np.save(f, arr, allow_pickle=False)
            os.replace(tmp, path)  # readers (other workers) never see a partial file
        except OSError:
            tmp.unlink(missing_ok=True)  # a full or read-only disk only costs speed

    def _remember(self, key: str, arr: np.ndarray) -> None:
        if arr.nbytes > self.memory_bytes:
            return
        self._lru[key] = arr
        self._lru_bytes += arr.nbytes
        while self._lru_bytes > self.memory_bytes:
            _, old = self._lru.popitem(last=False)
            self._lru_bytes -= old.nbytes


# The name the engine imports.
