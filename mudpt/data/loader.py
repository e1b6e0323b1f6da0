"""Batches of (CLIP-normalised images, labels) for training and evaluation (PROTOCOLS §3.1).

Train: a RandomSampler driven by a torch.Generator seeded from `seed`; `drop_last` only when there
are at least `batch_size` items (Dassl >= v0.4.2; otherwise tiny few-shot sets would give no batch).
Each sample also gets its own augmentation seed from that generator, and the random crop/flip is drawn
from a CPU generator seeded with it, so batches depend only on `seed` and the epoch, not on the number
of workers or on what else consumed torch's global RNG. Test: sequential, no randomness.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterator, Sequence

import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, RandomSampler, Sampler, SequentialSampler

from .base import Datum
from .image_cache import DecodedImageCache
from .transforms import build_transform, test_geometry, to_normalized_tensor, train_augment


class _SeededRandomSampler(Sampler):
    """RandomSampler's permutation plus one augmentation seed per drawn index, from one generator."""

    def __init__(self, n: int, generator: torch.Generator):
        self.n = n
        self.generator = generator
        self._perm = RandomSampler(range(n), generator=generator)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        order = list(self._perm)
        seeds = torch.randint(0, 2**62, (len(order),), generator=self.generator).tolist()
        return iter(zip(order, seeds))

    def __len__(self) -> int:
        return self.n


class ImageListDataset(Dataset):
    def __init__(self, items: Sequence[Datum], read_image: Callable[[str], Image.Image], image_size: int,
                 train: bool, crop_scale: tuple[float, float] = (0.08, 1.0),
                 cache: DecodedImageCache | None = None, source_id: str = "", hflip: bool = True):
        self.items = list(items)
        self.read_image = read_image
        self.image_size = image_size
        self.train = train
        self.cache = cache
        self.source_id = source_id
        self.augment = train_augment(image_size, crop_scale, hflip) if train else None
        self.geometry = None if train else test_geometry(image_size)
        self.to_tensor = to_normalized_tensor()
        build_transform(image_size, train, crop_scale, hflip)  # validates the arguments once, here

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[torch.Tensor, int]:
        if self.train:
            index, aug_seed = key if isinstance(key, tuple) else (key, 0)
            d = self.items[index]
            img = (Image.fromarray(self.cache.train_array(self.source_id, d.impath, self.image_size, self.read_image))
                   if self.cache is not None else self.read_image(d.impath))
            img = self._augment(img, aug_seed)
            return self.to_tensor(img), d.label
        d = self.items[key]  # type: ignore[index]
        if self.cache is not None:
            arr = self.cache.test_array(self.source_id, d.impath, self.image_size, self.read_image)
            return self.to_tensor(arr), d.label
        return self.to_tensor(self.geometry(self.read_image(d.impath))), d.label  # type: ignore[misc]

    def _augment(self, img: Image.Image, seed: int) -> Image.Image:
        # torchvision draws from the global CPU generator; seed it for this sample and restore it after,
        # touching no CUDA generator (torch.manual_seed would reseed those too).
        gen = torch.default_generator
        state = gen.get_state()
        gen.manual_seed(seed)
        try:
            return self.augment(img)  # type: ignore[misc]
        finally:
            gen.set_state(state)


def make_loader(items: list[Datum], read_image: Callable[[str], Image.Image], image_size: int, train: bool,
                batch_size: int, *, crop_scale: tuple[float, float] = (0.08, 1.0),
                cache: DecodedImageCache | None = None, seed: int = 0, num_workers: int = 0,
                pin_memory: bool = False, source_id: str | None = None, hflip: bool = True) -> DataLoader:
    """DataLoader yielding (float images B x 3 x S x S, int64 labels B).

    `source_id` keys the decoded-image cache (default: `read_image.image_dir`, else required with a cache).
    """
    if not items:
        raise ValueError("make_loader got an empty item list")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if cache is not None and not source_id:
        image_dir = getattr(read_image, "image_dir", None)
        if image_dir is None:
            raise ValueError("a decoded-image cache needs source_id (e.g. DatasetSplits.source_id)")
        source_id = str(Path(image_dir).resolve())
    ds = ImageListDataset(items, read_image, image_size, train, crop_scale, cache, source_id or "", hflip)
    if train:
        gen = torch.Generator().manual_seed(seed)
        sampler: Sampler = _SeededRandomSampler(len(items), gen)
        drop_last = len(items) >= batch_size
    else:
        gen = None
        sampler = SequentialSampler(range(len(items)))
        drop_last = False
    return DataLoader(ds, batch_size=batch_size, sampler=sampler, drop_last=drop_last, num_workers=num_workers,
                      pin_memory=pin_memory, generator=gen, persistent_workers=False)
