"""A procedural world of captioned images: the embedded default's pretraining data and downstream suite.

A scene is one object (a geometric shape or a digit) of some colour, size and position on a textured
background, sometimes with a small distractor. Scenes are drawn on a 64 px canvas from 2x supersampled
masks and box-downsampled to 32 px: at 32 px with patch 8 the tiny ViT sees 16 tokens, which is what lets
it take enough optimiser steps on 2 CPU cores to learn shape at all (EMBEDDED.md, second round), while the
64 px canvas keeps outlines clean.

Everything is a pure function of integer seeds: `scene_rng(seed, index)` and `render_rng(...)` are
numpy Generators keyed by tuples, so any slice of any split regenerates identically, in any order, in
any process. The only font is Pillow's bundled default (`ImageFont.load_default(size=...)`), so glyphs
are the same on every machine with Pillow >= 10.1.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

WORLD_VERSION = "w1"
CANVAS = 64  # drawing canvas; masks are drawn at 2x this and box-downsampled
OUT = 32  # delivered image size (the tiny CLIP's input size)

SHAPES = ("circle", "square", "triangle", "star", "cross", "ring", "diamond", "hexagon", "heart", "crescent")
COLOURS = {
    "red": (215, 35, 35),
    "green": (40, 165, 60),
    "blue": (40, 75, 215),
    "yellow": (235, 210, 35),
    "orange": (240, 135, 25),
    "purple": (135, 45, 185),
    "pink": (245, 130, 190),
    "cyan": (40, 205, 215),
}
COLOUR_NAMES = tuple(COLOURS)
TEXTURES = ("plain", "striped", "checkered", "dotted", "noisy", "gradient")
SIZES = ("small", "medium", "large")
# Object radius range on the 64 px canvas per size. Big objects are what made shape learnable (EMBEDDED.md).
SIZE_RADII = ((9.0, 13.0), (14.0, 18.0), (19.0, 23.0))
POSITIONS = ("center", "top left", "top right", "bottom left", "bottom right")
DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
MAX_ROTATION = 0.35  # radians; full rotation made shapes unlearnable in the step budget


@dataclass(frozen=True)
class Scene:
    """All attributes of one image; captions and labels are read from here."""

    kind: str  # "shape" or "digit"
    obj: int  # index into SHAPES, or the digit value
    colour: int
    size: int
    position: int
    texture: int
    rotation: float
    radius: float
    centre: tuple[float, float]
    distractor: tuple[int, int, float, float, float] | None  # shape, colour, radius, x, y

    @property
    def object_name(self) -> str:
        return SHAPES[self.obj] if self.kind == "shape" else f"digit {DIGIT_WORDS[self.obj]}"


def scene_rng(*key: int) -> np.random.Generator:
    return np.random.default_rng([int(k) for k in key])


def sample_scene(rng: np.random.Generator, kind: str | None = None, obj: int | None = None,
                 colour: int | None = None, texture: int | None = None, size: int | None = None,
                 digit_prob: float = 0.25, distractor_prob: float = 0.15) -> Scene:
    """Draw a scene; any attribute passed is held fixed (downstream datasets fix their label attribute)."""
    if kind is None:
        kind = "digit" if rng.random() < digit_prob else "shape"
    if obj is None:
        obj = int(rng.integers(len(SHAPES) if kind == "shape" else 10))
    colour = int(rng.integers(len(COLOURS))) if colour is None else colour
    size = int(rng.integers(len(SIZES))) if size is None else size
    texture = int(rng.integers(len(TEXTURES))) if texture is None else texture
    position = int(rng.integers(len(POSITIONS)))
    lo, hi = SIZE_RADII[size]
    radius = float(rng.uniform(lo, hi))
    rotation = float(rng.uniform(-MAX_ROTATION, MAX_ROTATION))
    centre = _place(rng, position, radius)
    distractor = None
    if rng.random() < distractor_prob:
        d_shape = int(rng.integers(len(SHAPES)))
        d_colour = int(rng.integers(len(COLOURS)))
        d_radius = float(rng.uniform(4.5, 7.0))
        # Put it in the corner farthest from the object so it rarely hides it.
        cx, cy = centre
        dx = d_radius + 2 if cx > CANVAS / 2 else CANVAS - d_radius - 2
        dy = d_radius + 2 if cy > CANVAS / 2 else CANVAS - d_radius - 2
        distractor = (d_shape, d_colour, d_radius, float(dx), float(dy))
    return Scene(kind, obj, colour, size, position, texture, rotation, radius, centre, distractor)


def _place(rng: np.random.Generator, position: int, radius: float) -> tuple[float, float]:
    c = CANVAS / 2
    off = max(0.0, c - radius - 2.0)
    ox, oy = {0: (0, 0), 1: (-1, -1), 2: (1, -1), 3: (-1, 1), 4: (1, 1)}[position]
    jitter = rng.uniform(-3, 3, size=2)
    x = float(np.clip(c + ox * off + jitter[0], radius, CANVAS - radius))
    y = float(np.clip(c + oy * off + jitter[1], radius, CANVAS - radius))
    return x, y


# ----------------------------------------------------------------------------------------------- masks

def _polygon(name: str) -> list[tuple[float, float]] | None:
    """Unit-radius outline of a polygonal shape, y pointing down; None for round shapes."""
    if name == "square":
        return [(-0.78, -0.78), (0.78, -0.78), (0.78, 0.78), (-0.78, 0.78)]
    if name == "triangle":
        return [(math.cos(a) , math.sin(a) + 0.15) for a in (-math.pi / 2, math.pi / 6, 5 * math.pi / 6)]
    if name == "star":
        return [((1.0 if k % 2 == 0 else 0.42) * math.cos(-math.pi / 2 + k * math.pi / 5),
                 (1.0 if k % 2 == 0 else 0.42) * math.sin(-math.pi / 2 + k * math.pi / 5)) for k in range(10)]
    if name == "cross":
        w = 0.32
        return [(-w, -1), (w, -1), (w, -w), (1, -w), (1, w), (w, w), (w, 1), (-w, 1), (-w, w), (-1, w),
                (-1, -w), (-w, -w)]
    if name == "diamond":
        return [(0, -1), (0.62, 0), (0, 1), (-0.62, 0)]
    if name == "hexagon":
        return [(math.cos(k * math.pi / 3), math.sin(k * math.pi / 3)) for k in range(6)]
    if name == "heart":
        pts = []
        for t in np.linspace(0, 2 * math.pi, 40, endpoint=False):
            x = 16 * math.sin(t) ** 3
            y = 13 * math.cos(t) - 5 * math.cos(2 * t) - 2 * math.cos(3 * t) - math.cos(4 * t)
            pts.append((x / 16.5, -(y + 2.5) / 16.5))
        return pts
    return None


def _rotate(pts, rot: float, cx: float, cy: float, r: float):
    c, s = math.cos(rot), math.sin(rot)
    return [(cx + r * (x * c - y * s), cy + r * (x * s + y * c)) for x, y in pts]


@lru_cache(maxsize=64)
def _font(size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.load_default(size=size)


def _digit_patch(digit: int, height: float, rot: float, shear: float, thick: bool) -> Image.Image:
    """A square L patch holding the glyph, glyph height ~`height` px, rotated and sheared."""
    size = int(round(height * 1.35))
    font = _font(max(8, size))
    side = int(size * 2)
    im = Image.new("L", (side, side), 0)
    d = ImageDraw.Draw(im)
    d.text((side / 2, side / 2), str(digit), fill=255, font=font, anchor="mm")
    if thick:
        im = im.filter(ImageFilter.MaxFilter(3))
    # Shear about the centre to imitate slanted handwriting.
    im = im.transform(im.size, Image.Transform.AFFINE, (1, shear, -shear * side / 2, 0, 1, 0),
                      resample=Image.Resampling.BILINEAR)
    return im.rotate(math.degrees(-rot), resample=Image.Resampling.BILINEAR)


def _object_mask(kind: str, obj: int, radius: float, rot: float, cx: float, cy: float,
                 shear: float = 0.0, thick: bool = False) -> Image.Image:
    """Mask (L, 2x canvas) of one object."""
    ss = 2
    im = Image.new("L", (CANVAS * ss, CANVAS * ss), 0)
    d = ImageDraw.Draw(im)
    X, Y, R = cx * ss, cy * ss, radius * ss
    if kind == "digit":
        patch = _digit_patch(obj, 2 * R * 0.95, rot, shear, thick)
        im.paste(patch, (int(round(X - patch.width / 2)), int(round(Y - patch.height / 2))), patch)
        return im
    name = SHAPES[obj]
    poly = _polygon(name)
    if poly is not None:
        d.polygon(_rotate(poly, rot, X, Y, R), fill=255)
    elif name == "circle":
        d.ellipse((X - R, Y - R, X + R, Y + R), fill=255)
    elif name == "ring":
        d.ellipse((X - R, Y - R, X + R, Y + R), fill=255)
        r2 = R * 0.55
        d.ellipse((X - r2, Y - r2, X + r2, Y + r2), fill=0)
    elif name == "crescent":
        d.ellipse((X - R, Y - R, X + R, Y + R), fill=255)
        ox, oy = _rotate([(0.45, -0.15)], rot, 0, 0, R)[0]
        r2 = R * 0.85
        d.ellipse((X + ox - r2, Y + oy - r2, X + ox + r2, Y + oy + r2), fill=0)
    else:
        raise ValueError(f"unknown shape {name!r}; expected one of {SHAPES}")
    return im


def _outline(mask: Image.Image, width: float = 1.0) -> Image.Image:
    """The mask minus its erosion by a square (separable min): a rim `width` px wide in the delivered
    32 px image (4x that on the supersampled canvas)."""
    m = np.asarray(mask)
    r = max(1, int(round(width * 4)))
    p = np.pad(m, r, mode="edge")
    h, w = m.shape
    rows = p[:, 0:w].copy()
    for d in range(1, 2 * r + 1):
        np.minimum(rows, p[:, d:d + w], out=rows)
    eroded = rows[0:h].copy()
    for d in range(1, 2 * r + 1):
        np.minimum(eroded, rows[d:d + h], out=eroded)
    return Image.fromarray(m - np.minimum(m, eroded))


def _down(mask: Image.Image) -> np.ndarray:
    return np.asarray(mask.resize((CANVAS, CANVAS), Image.Resampling.BOX), dtype=np.float32)[..., None] / 255.0


# ------------------------------------------------------------------------------------------- textures

def _background_colours(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    # Muted, low-saturation pairs, so that the object's colour stays the most colourful thing in view.
    g1 = rng.uniform(70, 190)
    g2 = g1 + rng.choice([-1, 1]) * rng.uniform(50, 80)
    if not 20 <= g2 <= 240:
        g2 = g1 - (g2 - g1)
    tint = rng.uniform(-14, 14, size=3)
    return np.clip(g1 + tint, 0, 255), np.clip(g2 + tint + rng.uniform(-8, 8, size=3), 0, 255)


def _texture(rng: np.random.Generator, texture: int) -> np.ndarray:
    c1, c2 = _background_colours(rng)
    n = CANVAS
    yy, xx = np.mgrid[0:n, 0:n].astype(np.float32)
    name = TEXTURES[texture]
    if name == "plain":
        t = np.zeros((n, n), np.float32)
    elif name == "striped":
        period = rng.uniform(7, 12)
        ang = rng.choice([0.0, math.pi / 2, math.pi / 4, -math.pi / 4])
        u = xx * math.cos(ang) + yy * math.sin(ang) + rng.uniform(0, period)
        t = ((u % period) < period / 2).astype(np.float32)
    elif name == "checkered":
        cell = rng.uniform(6, 10)
        ox, oy = rng.uniform(0, cell, size=2)
        t = (((xx + ox) // cell + (yy + oy) // cell) % 2).astype(np.float32)
    elif name == "dotted":
        sp = rng.uniform(8, 11)
        rad = rng.uniform(1.8, 2.6)
        ox, oy = rng.uniform(0, sp, size=2)
        dx = (xx + ox) % sp - sp / 2
        dy = (yy + oy) % sp - sp / 2
        t = (dx * dx + dy * dy <= rad * rad).astype(np.float32)
    elif name == "noisy":
        blocks = rng.random((n // 2, n // 2)) < 0.5
        t = np.repeat(np.repeat(blocks, 2, 0), 2, 1).astype(np.float32)
    elif name == "gradient":
        ang = rng.uniform(0, 2 * math.pi)
        u = (xx - n / 2) * math.cos(ang) + (yy - n / 2) * math.sin(ang)
        t = np.clip(u / n + 0.5, 0, 1)
    else:
        raise ValueError(f"unknown texture {name!r}")
    return c1 * (1 - t[..., None]) + c2 * t[..., None]


# -------------------------------------------------------------------------------------------- render

@dataclass(frozen=True)
class DomainParams:
    """Knobs of a rendering; downstream datasets tune these to land in the headroom band."""

    pixel_noise: float = 6.0  # Gaussian sigma on 0..255, applied at 32 px
    blur_to: int = 0  # downsample to this size and back (0: off)
    paper: bool = False  # sketch: outline on white paper instead of a filled object on a texture
    invert: bool = False
    contrast: float = 1.0  # scales deviation from mid-grey
    outline: float = 1.0  # sketch: stroke width in px of the delivered image


# Renderings. Pretraining sees only "photo"; the others are downstream shifts whose strengths were set so
# zero-shot lands in the headroom band (HEADROOM.md has the measurements).
PRESETS = {
    "photo": DomainParams(),
    "sketch": DomainParams(paper=True, pixel_noise=4.0, outline=1.5),
    "inverted": DomainParams(invert=True, pixel_noise=15.0),
    "noisy": DomainParams(pixel_noise=20.0, blur_to=16),
    "blurred": DomainParams(blur_to=12),
    "lowcontrast": DomainParams(contrast=0.4, pixel_noise=10.0),
}


def _jitter_colour(rng: np.random.Generator, colour: int) -> np.ndarray:
    return np.clip(np.array(COLOURS[COLOUR_NAMES[colour]], np.float32) + rng.uniform(-22, 22, size=3), 0, 255)


def render(scene: Scene, params: DomainParams, rng: np.random.Generator) -> np.ndarray:
    """Render a scene to a (32, 32, 3) uint8 array."""
    shear = float(rng.uniform(-0.25, 0.25)) if scene.kind == "digit" else 0.0
    thick = bool(rng.random() < 0.5) if scene.kind == "digit" else False
    mask = _object_mask(scene.kind, scene.obj, scene.radius, scene.rotation, *scene.centre, shear=shear, thick=thick)
    dmask = None
    if scene.distractor is not None:
        ds, dc, dr, dx, dy = scene.distractor
        dmask = _object_mask("shape", ds, dr, float(rng.uniform(-MAX_ROTATION, MAX_ROTATION)), dx, dy)
    obj_rgb = _jitter_colour(rng, scene.colour)
    if params.paper:
        img = np.full((CANVAS, CANVAS, 3), rng.uniform(235, 255), np.float32)
        mask = _outline(mask, params.outline)
        if dmask is not None:
            dmask = _outline(dmask, params.outline)
    else:
        img = _texture(rng, scene.texture)
    if dmask is not None:
        a = _down(dmask)
        img = img * (1 - a) + _jitter_colour(rng, scene.distractor[1]) * a
    a = _down(mask)
    img = img * (1 - a) + obj_rgb * a
    img = img.reshape(OUT, CANVAS // OUT, OUT, CANVAS // OUT, 3).mean(axis=(1, 3))
    return _finish(img, params, rng)


def _finish(img: np.ndarray, params: DomainParams, rng: np.random.Generator) -> np.ndarray:
    if params.contrast != 1.0:
        img = 128 + (img - 128) * params.contrast
    if params.blur_to:
        small = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).resize(
            (params.blur_to, params.blur_to), Image.Resampling.BOX)
        img = np.asarray(small.resize((OUT, OUT), Image.Resampling.BILINEAR), np.float32)
    if params.pixel_noise:
        img = img + rng.normal(0, params.pixel_noise, size=img.shape)
    if params.invert:
        img = 255 - img
    return np.clip(np.round(img), 0, 255).astype(np.uint8)


# ------------------------------------------------------------------------- low-resolution digits

def digit_8x8(digit: int, rng: np.random.Generator) -> np.ndarray:
    """A glyph reduced the way scikit-learn's handwritten digits were: a binary bitmap fit into a
    20x20 box, centred in 32x32, and 4x4 blocks counted into 8x8 cells of 0..16."""
    patch = _digit_patch(digit, 40, float(rng.uniform(-0.2, 0.2)), float(rng.uniform(-0.3, 0.3)), False)
    # Pen strokes in the real set are far thicker than the font's at this size.
    patch = patch.filter(ImageFilter.MaxFilter(int(rng.choice([5, 7, 9]))))
    arr = np.asarray(patch) > 100
    ys, xs = np.nonzero(arr)
    if len(ys) == 0:
        raise RuntimeError(f"digit {digit} rendered empty; is Pillow's default font available?")
    crop = Image.fromarray((arr[ys.min():ys.max() + 1, xs.min():xs.max() + 1] * 255).astype(np.uint8))
    scale = 20 / max(crop.size)
    w, h = max(1, round(crop.width * scale)), max(1, round(crop.height * scale))
    crop = crop.resize((w, h), Image.Resampling.BILINEAR)
    box = np.zeros((32, 32), np.uint8)
    x0, y0 = (32 - w) // 2, (32 - h) // 2
    box[y0:y0 + h, x0:x0 + w] = np.asarray(crop) > 127
    return box.reshape(8, 4, 8, 4).sum(axis=(1, 3)).astype(np.float32)


def render_8x8(cells: np.ndarray, rng: np.random.Generator, noise: float = 4.0) -> np.ndarray:
    """Dark ink on white from an 8x8 grid of 0..16 values, upsampled into a 32 px canvas."""
    side = int(rng.integers(22, 31))
    ink = Image.fromarray((cells / 16.0 * 255).astype(np.uint8)).resize((side, side), Image.Resampling.BILINEAR)
    canvas = np.zeros((OUT, OUT), np.float32)
    x0, y0 = (int(rng.integers(0, OUT - side + 1)) for _ in range(2))
    canvas[y0:y0 + side, x0:x0 + side] = np.asarray(ink, np.float32)
    paper = rng.uniform(225, 255)
    img = paper - canvas / 255.0 * (paper - rng.uniform(0, 60))
    img = np.repeat(img[..., None], 3, axis=2) + rng.normal(0, noise, size=(OUT, OUT, 3))
    return np.clip(np.round(img), 0, 255).astype(np.uint8)


# ----------------------------------------------------------------------------------------- captions

_OBJ_TEMPLATES = (
    "a photo of a {obj}",
    "a photo of a {obj} on a {tex} background",
    "a {obj} on a {tex} background",
    "a picture of a {obj}",
    "a {tex} background with a {obj}",
    "a {obj} in the {pos}",
    "a photo of a {obj} in the {pos}",
    "an image of a {obj}",
)
_TEX_TEMPLATES = (
    "a photo of a {tex} background",
    "a {tex} background",
    "a {tex} pattern",
)
_BLURRY_TEMPLATES = (
    "a blurry photo of a {obj}",
    "a low resolution photo of a {obj}",
    "a photo of a {obj}",
    "a handwritten {obj}",
)


def caption(scene: Scene, rng: np.random.Generator, label_noise: float = 0.03) -> str:
    """One free-form caption from the scene's attributes, re-drawn at every use during pretraining."""
    if rng.random() < label_noise:  # a wrong but plausible caption, as web captions are
        scene = sample_scene(rng, kind=scene.kind, distractor_prob=0.0)
    parts = []
    if rng.random() < 0.3:
        parts.append(SIZES[scene.size])
    if rng.random() < 0.75:
        parts.append(COLOUR_NAMES[scene.colour])
    parts.append(scene.object_name)
    obj = " ".join(parts)
    tex = f"{TEXTURES[scene.texture]}"
    if rng.random() < 0.15:
        text = _TEX_TEMPLATES[int(rng.integers(len(_TEX_TEMPLATES)))].format(tex=tex)
    else:
        text = _OBJ_TEMPLATES[int(rng.integers(len(_OBJ_TEMPLATES)))].format(
            obj=obj, tex=tex, pos=POSITIONS[scene.position])
    # Evaluation prompts end with "."; half the captions do too, so the period's embedding is trained.
    return text + "." if rng.random() < 0.5 else text


def blurry_caption(digit: int, rng: np.random.Generator) -> str:
    text = _BLURRY_TEMPLATES[int(rng.integers(len(_BLURRY_TEMPLATES)))].format(obj=f"digit {DIGIT_WORDS[digit]}")
    return text + "." if rng.random() < 0.5 else text


# -------------------------------------------------------------------------------- pretraining pool

@dataclass(frozen=True)
class PoolItem:
    """What the pretraining loop keeps per pooled image: enough to re-draw a caption."""

    scene: Scene | None  # None for a low-resolution digit
    digit: int = -1


BLURRY_DIGIT_SHARE = 0.25  # of the digits: the sklearn-like low-resolution style


def pretraining_example(seed: int, index: int) -> tuple[np.ndarray, PoolItem]:
    """Image `index` of the pretraining pool: photo-domain scenes plus low-resolution digits."""
    rng = scene_rng(seed, 7001, index)
    scene = sample_scene(rng)
    if scene.kind == "digit" and rng.random() < BLURRY_DIGIT_SHARE:
        return render_8x8(digit_8x8(scene.obj, rng), rng), PoolItem(None, scene.obj)
    return render(scene, PRESETS["photo"], rng), PoolItem(scene)


def pool_caption(item: PoolItem, rng: np.random.Generator) -> str:
    return blurry_caption(item.digit, rng) if item.scene is None else caption(item.scene, rng)


def _pool_chunk(args: tuple[int, int, int]) -> tuple[np.ndarray, list[PoolItem]]:
    seed, start, stop = args
    imgs = np.empty((stop - start, OUT, OUT, 3), np.uint8)
    items = []
    for j, i in enumerate(range(start, stop)):
        imgs[j], item = pretraining_example(seed, i)
        items.append(item)
    return imgs, items


def render_pool(seed: int, n: int, processes: int = 2, chunk: int = 2000, progress=None):
    """Render the pretraining pool; chunks are keyed by index, so the result does not depend on
    the number of processes."""
    jobs = [(seed, s, min(n, s + chunk)) for s in range(0, n, chunk)]
    imgs = np.empty((n, OUT, OUT, 3), np.uint8)
    items: list[PoolItem] = []
    if processes > 1:
        import multiprocessing as mp

        with mp.get_context("spawn").Pool(min(processes, 2)) as pool:
            for (s, _, e), (chunk_imgs, chunk_items) in zip(((j[1], 0, j[2]) for j in jobs),
                                                             pool.imap(_pool_chunk, jobs)):
                imgs[s:e] = chunk_imgs
                items.extend(chunk_items)
                if progress:
                    progress(e - s)
    else:
        for job in jobs:
            chunk_imgs, chunk_items = _pool_chunk(job)
            imgs[job[1]:job[2]] = chunk_imgs
            items.extend(chunk_items)
            if progress:
                progress(job[2] - job[1])
    return imgs, items
