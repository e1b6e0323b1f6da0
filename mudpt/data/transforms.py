"""Input pipeline of every CoOp-protocol method (PROTOCOLS §3.1, Dassl >= v0.5.0).

Train: RandomResizedCrop(scale, ratio (3/4, 4/3), bicubic) -> horizontal flip -> ToTensor -> CLIP Normalize.
Test: resize the shorter side (bicubic, aspect kept) -> centre crop -> ToTensor -> CLIP Normalize.
The test pipeline is split into its geometric part (PIL in, PIL out) and its tensor part so the decoded
image cache can store exactly what the geometric part produces.
"""
from __future__ import annotations

import mudpt.compat  # noqa: F401  (must precede torchvision)
from torchvision import transforms as T

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
BICUBIC = T.InterpolationMode.BICUBIC


def test_geometry(image_size: int) -> T.Compose:
    """Shorter side to `image_size`, then the central `image_size` square (PIL -> PIL)."""
    return T.Compose([T.Resize(image_size, interpolation=BICUBIC), T.CenterCrop(image_size)])


def to_normalized_tensor() -> T.Compose:
    """PIL image or HxWx3 uint8 array -> CLIP-normalised 3xHxW float tensor."""
    return T.Compose([T.ToTensor(), T.Normalize(CLIP_MEAN, CLIP_STD)])


def train_augment(image_size: int, crop_scale: tuple[float, float] = (0.08, 1.0), hflip: bool = True) -> T.Compose:
    """The random part of the train pipeline (PIL -> PIL); draws from torch's global CPU generator.
    `hflip=False` only for label spaces a mirror changes (digits); the CoOp protocol always flips."""
    steps = [T.RandomResizedCrop((image_size, image_size), scale=tuple(crop_scale), interpolation=BICUBIC)]
    if hflip:
        steps.append(T.RandomHorizontalFlip(p=0.5))
    return T.Compose(steps)


def build_transform(image_size: int, train: bool, crop_scale: tuple[float, float] = (0.08, 1.0),
                    hflip: bool = True) -> T.Compose:
    if image_size < 1:
        raise ValueError(f"image_size must be positive, got {image_size}")
    if not 0 < crop_scale[0] <= crop_scale[1] <= 1:
        raise ValueError(f"crop_scale must satisfy 0 < low <= high <= 1, got {crop_scale}")
    geometry = train_augment(image_size, crop_scale, hflip) if train else test_geometry(image_size)
    return T.Compose([*geometry.transforms, *to_normalized_tensor().transforms])
