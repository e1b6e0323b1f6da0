"""Headroom check: zero-shot top-1 of the shipped tiny CLIP on every embedded dataset.

A dataset is useful for comparing prompt-tuning methods only if zero-shot is well above chance (the
model knows something to start from) and well below perfect (there is something left to gain):
band = [1.5 x chance, 85 %]. This is plain CLIP zero-shot: the dataset's template, L2-normalised
image and text embeddings, argmax of the cosine.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

BAND_HIGH = 0.85
BAND_CHANCE_FACTOR = 1.5
REDUCED_IMAGES = 400  # per evaluation set, class-balanced; enough to keep the estimate within a few points


@dataclass(frozen=True)
class HeadroomRow:
    dataset: str  # registry name
    domain: str
    role: str  # "few-shot" (the dataset's train domain) or "target" (test-only shifted rendering)
    classes: int
    test_images: int
    chance: float
    zero_shot: float
    low: float
    high: float

    @property
    def in_band(self) -> bool:
        return self.low <= self.zero_shot <= self.high


def preprocess(images: np.ndarray, size: int):
    """uint8 (N, H, W, 3) -> CLIP-normalised (N, 3, size, size): shorter side to `size` (bicubic),
    centre crop, as the CoOp test pipeline does; identity geometry for 32 px images at size 32."""
    import torch.nn.functional as F

    from .pretrain import to_tensor

    x = to_tensor(images)
    h, w = x.shape[-2:]
    if min(h, w) != size:
        s = size / min(h, w)
        x = F.interpolate(x, size=(max(size, round(h * s)), max(size, round(w * s))), mode="bicubic",
                          align_corners=False)
        h, w = x.shape[-2:]
    top, left = (h - size) // 2, (w - size) // 2
    return x[..., top:top + size, left:left + size].contiguous() if (h, w) != (size, size) else x


def zero_shot_accuracy(model, tokenizer, images: np.ndarray, labels: np.ndarray, classnames, template: str,
                       image_size: int, batch: int = 500) -> float:
    import torch

    with torch.no_grad():
        text = model.encode_text(tokenizer([template.format(c) for c in classnames]), normalize=True)
        correct = 0
        for s in range(0, len(images), batch):
            feats = model.encode_image(preprocess(images[s:s + batch], image_size), normalize=True)
            correct += int((feats @ text.T).argmax(1).eq(torch.from_numpy(labels[s:s + batch])).sum())
    return correct / max(1, len(images))


def headroom_table(reduced: bool = False, weights: Path | None = None, reduced_images: int = REDUCED_IMAGES,
                   show: bool = True) -> list[HeadroomRow]:
    """Zero-shot top-1 on the test split of every embedded dataset (few-shot domains and shifted
    targets), with chance and the band. `reduced`: only the first ~`reduced_images` test images of each
    set (a class-balanced prefix, at least 5 per class), rendered in memory without the cache, for CI."""
    import mudpt.compat  # noqa: F401
    import torch

    from . import datasets as D
    from .model import get_tokenizer, load_embedded_model, model_config

    torch.set_num_threads(min(2, torch.get_num_threads()))
    model = load_embedded_model(weights)
    tokenizer = get_tokenizer()
    size = model_config()["vision_cfg"]["image_size"]
    rows = []
    for ds, dom, role in D.all_evaluation_sets():
        if reduced:
            per_class = max(5, reduced_images // len(ds.classnames))
            images, labels = D.render_split(ds, dom, "test", stop=per_class * len(ds.classnames))
        else:
            images, labels = D.load_split(ds, dom, "test")
        acc = zero_shot_accuracy(model, tokenizer, images, labels, ds.classnames, ds.template, size)
        chance = 1 / len(ds.classnames)
        name = ds.name if role == "few-shot" else D.target_name(ds, dom)
        rows.append(HeadroomRow(name, dom.name, role, len(ds.classnames), len(labels), chance, acc,
                                BAND_CHANCE_FACTOR * chance, BAND_HIGH))
    if show:
        print_table(rows, reduced)
    return rows


def print_table(rows: list[HeadroomRow], reduced: bool = False) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title="Zero-shot headroom of the embedded tiny CLIP" + (" (reduced test sets)" if reduced else ""))
    for col in ("dataset", "domain", "role", "classes", "test images", "chance %", "zero-shot %", "band %", "in band"):
        t.add_column(col, justify="left" if col in ("dataset", "domain", "role") else "right")
    for r in rows:
        t.add_row(r.dataset, r.domain, r.role, str(r.classes), str(r.test_images), f"{100 * r.chance:.1f}",
                  f"{100 * r.zero_shot:.1f}", f"{100 * r.low:.1f}–{100 * r.high:.0f}",
                  "[green]yes[/green]" if r.in_band else "[red]no[/red]")
    Console().print(t)


def markdown_table(rows: list[HeadroomRow]) -> str:
    lines = ["| dataset | domain | role | classes | test images | chance % | zero-shot % | band % | in band |",
             "|---|---|---|---:|---:|---:|---:|---|---|"]
    for r in rows:
        lines.append(f"| {r.dataset} | {r.domain} | {r.role} | {r.classes} | {r.test_images} | {100 * r.chance:.1f} | "
                     f"{100 * r.zero_shot:.1f} | {100 * r.low:.1f}–{100 * r.high:.0f} | {'yes' if r.in_band else 'no'} |")
    return "\n".join(lines)
