"""Decoded-image cache vs decoding every JPEG every epoch (the few-shot training and test loaders).

Generates N photo-like JPEGs (default 200 at 500x375, quality 90) in a temporary folder, then times
epochs of `make_loader` at the CLIP input size without and with `DecodedImageCache` (disk + memory),
side by side in one process. The first cached epoch fills the cache and is reported separately.

    .venv/bin/python benchmarks/bench_image_cache.py [--images 200] [--epochs 3] [--size 224]
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from mudpt.data.base import Datum
from mudpt.data.coop import ImageReader
from mudpt.data.image_cache import DecodedImageCache
from mudpt.data.loader import make_loader


def make_images(root: Path, n: int, size: tuple[int, int]) -> list[Datum]:
    rng = np.random.default_rng(0)
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    items = []
    for i in range(n):
        # Smooth colour fields plus mild noise: decodes like a photo, not like pure noise or a flat image.
        fx, fy, ph = rng.uniform(0.005, 0.05, 3)
        base = np.stack([np.sin(xx * fx + ph), np.cos(yy * fy + ph * 2), np.sin((xx + yy) * (fx + fy) / 2)], -1)
        arr = (127 + 100 * base + rng.normal(0, 12, (h, w, 3))).clip(0, 255).astype(np.uint8)
        rel = f"c{i % 10}/{i:04d}.jpg"
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(arr).save(root / rel, quality=90)
        items.append(Datum(rel, i % 10, f"class {i % 10}"))
    return items


def time_epochs(loader, epochs: int) -> list[float]:
    out = []
    for _ in range(epochs):
        t = time.perf_counter()
        for _x, _y in loader:
            pass
        out.append(time.perf_counter() - t)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=200)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--batch", type=int, default=32)
    args = ap.parse_args()
    import torch

    torch.set_num_threads(1)  # one core, as a DataLoader worker has
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "images"
        items = make_images(root, args.images, (500, 375))
        reader = ImageReader("bench", root)
        print(f"{args.images} JPEGs 500x375, input size {args.size}, batch {args.batch}, "
              f"{args.epochs} epochs per setting, num_workers=0, torch threads=1")
        for train in (True, False):
            kind = "train (RandomResizedCrop+flip)" if train else "test (resize+centre crop)"
            plain = time_epochs(make_loader(items, reader, args.size, train, args.batch, seed=0), args.epochs)
            cache = DecodedImageCache(Path(tmp) / f"cache-{train}")
            loader = make_loader(items, reader, args.size, train, args.batch, seed=0, cache=cache)
            cached = time_epochs(loader, args.epochs + 1)
            disk_only = DecodedImageCache(Path(tmp) / f"cache-{train}", memory_bytes=0)
            disk = time_epochs(make_loader(items, reader, args.size, train, args.batch, seed=0, cache=disk_only),
                               args.epochs)
            p, c, d = statistics.median(plain), statistics.median(cached[1:]), statistics.median(disk)
            print(f"\n{kind}")
            print(f"  decode every epoch : {p * 1000:8.1f} ms/epoch (median)")
            print(f"  cache, fill epoch  : {cached[0] * 1000:8.1f} ms")
            print(f"  cache, memory hits : {c * 1000:8.1f} ms/epoch   speed-up x{p / c:.2f}")
            print(f"  cache, disk only   : {d * 1000:8.1f} ms/epoch   speed-up x{p / d:.2f}")


if __name__ == "__main__":
    main()
