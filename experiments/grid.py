"""Grid files: many cells described as data, validated whole before anything runs.

A grid is a YAML (or TOML) mapping. Every value may be a scalar or a list; lists are crossed
(cartesian product). Keys:

    name: few-shot                 # experiment name in MLflow (default: the file name)
    description: one line shown by `mudpt-bench list`
    protocol: fewshot              # fewshot | base2new | cross-dataset | domain-generalization | zeroshot
    method: mudpt                  # or `methods: [coop, mudpt]`
    options: {fusion: [bi, "off"], depth: "1..layers"}  # method switches ("off" quoted: YAML reads a
                                   # bare off as false); "a..b" is an int range,
                                   # `layers` is the backbone's layer count
    recipe: {lr: [0.002, 0.0035]}  # overrides of the method's default recipe (merged key by key)
    datasets: [caltech101, dtd]    # or `dataset:`; "@suite" / "@dg-sources": lists of the embedded suite
    targets: [imagenetv2, ...]     # evaluation-only datasets of each cell (not crossed); "@dg-targets"
                                   # gives each embedded source its own shifted renderings
    shots: [1, 2, 4, 8, 16]
    seeds: [1, 2, 3]               # or `seed:`; "1..3" works too
    backbone: {name: ViT-B-16, pretrained: openai}   # or `backbone: ViT-B-16` plus `pretrained: openai`
    cells:                         # optional explicit blocks; each one takes the settings above,
      - {method: coop, shots: 16}  # replaces the keys it names (recipe: merged) and is crossed on its own
    embedded: {...}                # settings used on the embedded suite (the default)
    coop: {...}                    # settings used on the CoOp suite (chosen by --data-root)

The suite is `coop` when a data root is given and `embedded` otherwise; its section overrides the top
level (recipe merged key by key). `--backbone/--pretrained` override the grid's backbone.
"""
from __future__ import annotations

import itertools
import re
from dataclasses import dataclass, fields
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterable, Mapping

from mudpt.config import EMBEDDED_BACKBONE, EMBEDDED_PRETRAINED, PROTOCOLS, BackboneConfig, Recipe, RunConfig
from mudpt.errors import UserError

GRIDS_DIR = Path(__file__).with_name("grids")
SUITES = ("embedded", "coop")
TRAINING_PROTOCOLS = ("fewshot", "base2new", "cross-dataset", "domain-generalization")
TARGET_PROTOCOLS = ("cross-dataset", "domain-generalization")
GRID_SUFFIXES = (".yaml", ".yml", ".toml")

_CELL_KEYS = ("protocol", "method", "methods", "options", "recipe", "dataset", "datasets", "targets",
              "shots", "seed", "seeds")
_GRID_KEYS = _CELL_KEYS + ("name", "description", "backbone", "pretrained", "cells")
_TOP_KEYS = _GRID_KEYS + SUITES

# "@name" in a dataset position -> a list exported by mudpt.toy.datasets. A mapping-valued one
# (source -> its targets) may only be the whole `targets` value: each source then gets its own targets.
EMBEDDED_LISTS = {
    "@suite": "EMBEDDED_SUITE",
    "@dg-sources": "DG_SOURCES",
    "@dg-targets": "DG_TARGETS",
}

_RANGE = re.compile(r"^\s*(-?\d+)\s*\.\.\s*(-?\d+|layers)\s*$")
_MAX_LISTED = 12


class GridError(UserError):
    """A grid file that cannot run. The message names the file, the key and what is valid."""


@dataclass(frozen=True)
class Cell:
    config: RunConfig
    label: str  # method id plus the switches that differ from the method's defaults on this backbone


@dataclass(frozen=True)
class Grid:
    name: str
    path: Path
    description: str
    suite: str
    backbone: BackboneConfig
    n_layers: int
    cells: tuple[Cell, ...]

    @property
    def seeds(self) -> list[int]:
        return sorted({c.config.seed for c in self.cells})


# ------------------------------------------------------------------------------------ discovery
def list_grids() -> list[tuple[str, str]]:
    """(name, description) of the named grids shipped in experiments/grids/."""
    out = []
    for path in sorted(p for p in GRIDS_DIR.iterdir() if p.suffix in GRID_SUFFIXES):
        try:
            raw = _read(path)
            desc = str(raw.get("description", "")) if isinstance(raw, Mapping) else ""
        except GridError as e:
            desc = f"(unreadable: {e})"
        out.append((path.stem, desc))
    return out


def find_grid(source: str | Path) -> Path:
    """A path to a grid file, or the name of a grid in experiments/grids/."""
    p = Path(source).expanduser()
    if p.is_file():
        return p
    for suffix in GRID_SUFFIXES:
        named = GRIDS_DIR / f"{source}{suffix}"
        if named.is_file():
            return named
    names = ", ".join(n for n, _ in list_grids())
    raise GridError(f"grid {str(source)!r} not found: no such file, and no named grid of that name; "
                    f"named grids: {names}")


def _read(path: Path) -> Any:
    text = path.read_text()
    try:
        if path.suffix == ".toml":
            import tomllib

            return tomllib.loads(text)
        import yaml

        return yaml.safe_load(text)
    except Exception as e:  # yaml.YAMLError / tomllib.TOMLDecodeError carry the line and column
        raise GridError(f"{path}: not valid {path.suffix[1:].upper()}: {e}") from e


# ------------------------------------------------------------------------------------ backbone
@lru_cache(maxsize=None)
def backbone_layers(name: str) -> int:
    """Layers a depth switch can reach on an open_clip architecture, read from its config (no weights):
    min(text layers, vision layers), as `mudpt.api.resolve` computes it from the loaded model."""
    import mudpt.compat  # noqa: F401  (before open_clip)
    import open_clip
    from open_clip.model import CLIPTextCfg, CLIPVisionCfg

    if name == EMBEDDED_BACKBONE:
        from mudpt.toy.model import register_config

        register_config()
    cfg = open_clip.get_model_config(name)
    if cfg is None:
        raise GridError(f"backbone {name!r} is not an open_clip architecture; "
                        f"e.g. ViT-B-16, ViT-B-32 or the embedded default {EMBEDDED_BACKBONE!r}")
    text = CLIPTextCfg(**cfg.get("text_cfg", {})).layers
    vision = CLIPVisionCfg(**cfg.get("vision_cfg", {})).layers
    vision = vision if isinstance(vision, int) else 0  # ResNet towers take no visual prompts
    return min(text, vision or text)


def _backbone(settings: Mapping[str, Any], name: str | None, pretrained: str | None, errors: "_Errors") -> BackboneConfig:
    grid_name, grid_tag = EMBEDDED_BACKBONE, EMBEDDED_PRETRAINED
    b = settings.get("backbone")
    if isinstance(b, Mapping):
        bad = sorted(set(b) - {"name", "pretrained"})
        if bad:
            errors.add("backbone", f"unknown key(s) {bad}; valid: name, pretrained")
        grid_name, grid_tag = str(b.get("name", grid_name)), str(b.get("pretrained", grid_tag))
    elif isinstance(b, str):
        grid_name = b
        grid_tag = EMBEDDED_PRETRAINED if b == EMBEDDED_BACKBONE else "openai"
    elif b is not None:
        errors.add("backbone", f"expected an architecture name or {{name, pretrained}}, got {b!r}")
    if "pretrained" in settings:
        grid_tag = str(settings["pretrained"])
    if name is None:
        return BackboneConfig(grid_name, pretrained or grid_tag)
    if pretrained is None:  # a new architecture keeps the grid's weights only if the grid names the same one
        pretrained = grid_tag if name == grid_name else (EMBEDDED_PRETRAINED if name == EMBEDDED_BACKBONE else "openai")
    return BackboneConfig(name, pretrained)


# ------------------------------------------------------------------------------------ errors
class _Errors:
    def __init__(self, path: Path):
        self.path, self.items = path, []

    def add(self, key: str, message: str) -> None:
        line = f"{key}: {message}"
        if line not in self.items:
            self.items.append(line)

    def raise_if_any(self) -> None:
        if not self.items:
            return
        if len(self.items) == 1:
            raise GridError(f"{self.path}: {self.items[0]}")
        shown = self.items[:_MAX_LISTED]
        more = len(self.items) - len(shown)
        lines = "\n".join(f"  - {m}" for m in shown) + (f"\n  - ... and {more} more" if more else "")
        raise GridError(f"{self.path}: invalid grid ({len(self.items)} problem(s)):\n{lines}")


# ------------------------------------------------------------------------------------ values
def _values(value: Any, key: str, errors: _Errors, n_layers: int | None = None) -> list[Any]:
    """Scalar or list -> list; "a..b" strings become int ranges (b may be `layers`)."""
    items = value if isinstance(value, list) else [value]
    out: list[Any] = []
    for v in items:
        m = _RANGE.match(v) if isinstance(v, str) else None
        if m is None:
            if v is None or isinstance(v, (dict, list)):
                errors.add(key, f"expected a value or a list of values, got {v!r}")
                continue
            out.append(v)
            continue
        lo, hi = int(m.group(1)), n_layers if m.group(2) == "layers" else int(m.group(2))
        if hi is None or hi < lo:
            errors.add(key, f"range {v!r} is empty")
            continue
        out.extend(range(lo, hi + 1))
    if not out and not errors.items:
        errors.add(key, "is an empty list")
    return out


def _ints(value: Any, key: str, errors: _Errors) -> list[int]:
    vals = _values(value, key, errors)
    bad = [v for v in vals if not isinstance(v, int) or isinstance(v, bool)]
    if bad:
        errors.add(key, f"expected integers, got {bad}")
    return [v for v in vals if v not in bad]


def _one_of(settings: Mapping[str, Any], singular: str, plural: str, errors: _Errors) -> Any:
    if singular in settings and plural in settings:
        errors.add(plural, f"give either `{singular}` or `{plural}`, not both")
    return settings.get(plural, settings.get(singular))


def _dataset_names(value: Any, key: str, errors: _Errors) -> list[str]:
    out: list[str] = []
    for v in _values(value, key, errors):
        if not isinstance(v, str):
            errors.add(key, f"expected dataset names, got {v!r}")
        elif v.startswith("@"):
            names = _embedded_list(v, key, errors)
            if isinstance(names, Mapping):
                errors.add(key, f"{v} gives targets per source dataset; use it as the whole `targets` value")
            else:
                out.extend(names)
        else:
            out.append(v)
    return out


def _targets(value: Any, key: str, errors: _Errors) -> tuple[str, ...] | dict[str, tuple[str, ...]]:
    """A tuple shared by every cell, or (for a mapping-valued "@" list) one tuple per source dataset."""
    if not value:
        return ()
    if isinstance(value, str) and value.startswith("@"):
        names = _embedded_list(value, key, errors)
        if isinstance(names, Mapping):
            return {str(k): tuple(v) for k, v in names.items()}
    return tuple(_dataset_names(value, key, errors))


def _embedded_list(symbol: str, key: str, errors: _Errors) -> list[str] | Mapping[str, list[str]]:
    if symbol not in EMBEDDED_LISTS:
        errors.add(key, f"unknown dataset list {symbol!r}; valid: {', '.join(EMBEDDED_LISTS)}")
        return []
    try:
        import mudpt.toy.datasets as toy
    except ImportError as e:
        errors.add(key, f"{symbol} needs the embedded suite (mudpt.toy.datasets), which failed to import: {e}")
        return []
    names = getattr(toy, EMBEDDED_LISTS[symbol], None)
    if names is None:
        errors.add(key, f"{symbol}: mudpt.toy.datasets defines no {EMBEDDED_LISTS[symbol]}")
        return []
    if isinstance(names, Mapping):
        return names
    return [names] if isinstance(names, str) else list(names)


# ------------------------------------------------------------------------------------ checks
def _check_recipe(recipe: Mapping[str, Any], errors: _Errors) -> None:
    specs = {f.name: f for f in fields(Recipe)}
    for k, v in recipe.items():
        if k not in specs:
            errors.add(f"recipe.{k}", f"unknown recipe key; valid: {', '.join(specs)}")
            continue
        default = specs[k].default
        if isinstance(default, str):
            ok = isinstance(v, str)
        elif isinstance(default, int):
            ok = isinstance(v, int) and not isinstance(v, bool)
        else:
            ok = isinstance(v, (int, float)) and not isinstance(v, bool)
        if not ok:
            errors.add(f"recipe.{k}", f"{v!r} has the wrong type; expected {type(default).__name__}")
        elif k == "precision" and v not in ("auto", "fp32", "bf16", "fp16"):
            errors.add("recipe.precision", f"{v!r}; valid: auto, fp32, bf16, fp16")
        elif k in ("lr", "batch_size", "eval_batch_size", "epochs") and v <= 0:
            errors.add(f"recipe.{k}", f"{v!r}; expected a positive number")
        elif k in ("warmup_epochs", "warmup_lr", "momentum", "weight_decay") and v < 0:
            errors.add(f"recipe.{k}", f"{v!r}; expected a number >= 0")


def _check_dataset(name: str, key: str, data_root: str | None, as_source: bool, errors: _Errors) -> None:
    from mudpt.data.base import DataError
    from mudpt.data.registry import get_spec

    try:
        spec = get_spec(name)
    except DataError as e:
        errors.add(key, str(e))
        return
    if spec.kind == "coop" and data_root is None:
        errors.add(key, f"dataset {name!r} is read from the CoOp data folder: pass --data-root DIR")
    if as_source and spec.test_only:
        errors.add(key, f"dataset {name!r} is test-only (no train split); it can only be a `targets` entry")


def label_for(cls: Any, resolved: Any, n_layers: int) -> str:
    """`mudpt[depth=3,fusion=off]`: the method id plus switches that differ from its defaults on this backbone."""
    from mudpt.method import resolve_options

    defaults = resolve_options(cls, {}, n_layers)
    diff = sorted((f.name, getattr(resolved, f.name)) for f in fields(resolved)
                  if getattr(resolved, f.name) != getattr(defaults, f.name))
    return cls.name if not diff else f"{cls.name}[{','.join(f'{k}={v}' for k, v in diff)}]"


# ------------------------------------------------------------------------------------ loading
def load_grid(source: str | Path, *, backbone: str | None = None, pretrained: str | None = None,
              data_root: str | None = None, suite: str | None = None) -> Grid:
    """Read, expand and validate a grid file. Raises one GridError listing every problem found."""
    path = find_grid(source)
    return build_grid(_read(path), path, backbone=backbone, pretrained=pretrained, data_root=data_root, suite=suite)


def build_grid(raw: Any, path: Path, *, backbone: str | None = None, pretrained: str | None = None,
               data_root: str | None = None, suite: str | None = None) -> Grid:
    """Expand and validate grid settings; `path` names their origin in error messages."""
    errors = _Errors(path)
    if not isinstance(raw, Mapping):
        raise GridError(f"{path}: expected a mapping of grid keys at the top level, got {type(raw).__name__}")
    for k in raw:
        if k not in _TOP_KEYS:
            errors.add(str(k), f"unknown key; valid: {', '.join(_TOP_KEYS)}")
    suite = suite or ("coop" if data_root else "embedded")
    if suite not in SUITES:
        raise GridError(f"suite {suite!r} is not valid; choose one of {', '.join(SUITES)}")
    settings = _with_suite(raw, suite, errors)
    name = settings.get("name", path.stem)
    if not isinstance(name, str) or not name:
        errors.add("name", f"expected a non-empty string, got {name!r}")
        name = path.stem
    bb = _backbone(settings, backbone, pretrained, errors)
    try:
        n_layers = backbone_layers(bb.name)
    except GridError as e:
        errors.add("backbone", str(e))
        errors.raise_if_any()
        raise
    blocks = settings.get("cells", [{}])
    if not isinstance(blocks, list) or not blocks or not all(isinstance(b, Mapping) for b in blocks):
        errors.add("cells", "expected a non-empty list of mappings")
        blocks = []
    base = {k: v for k, v in settings.items() if k in _CELL_KEYS}
    cells: dict[RunConfig, Cell] = {}
    for i, block in enumerate(blocks):
        where = f"cells[{i}]." if "cells" in settings else ""
        bad = sorted(set(block) - set(_CELL_KEYS))
        if bad:
            errors.add(f"{where}{bad[0]}", f"unknown key in a cells entry; valid: {', '.join(_CELL_KEYS)}")
        for cell in _expand(_merge(base, block), where, bb, n_layers, data_root, errors):
            cells.setdefault(cell.config, cell)
    errors.raise_if_any()
    if not cells:
        raise GridError(f"{path}: the grid has no cells")
    desc = settings.get("description", "")
    return Grid(name, path, str(desc), suite, bb, n_layers, tuple(cells.values()))


def _merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """`over` replaces keys of `base`, except `recipe`, which is merged key by key."""
    out = dict(base)
    for k, v in over.items():
        if k == "recipe" and isinstance(v, Mapping) and isinstance(base.get("recipe"), Mapping):
            out["recipe"] = {**base["recipe"], **v}
        else:
            out[k] = v
    for a, b in (("method", "methods"), ("dataset", "datasets"), ("seed", "seeds")):
        if a in over and b not in over:  # a block's `method:` replaces the inherited `methods:`
            out.pop(b, None)
        if b in over and a not in over:
            out.pop(a, None)
    return out


def _with_suite(raw: Mapping[str, Any], suite: str, errors: _Errors) -> dict[str, Any]:
    out = {k: v for k, v in raw.items() if k not in SUITES}
    for s in SUITES:
        section = raw.get(s)
        if section is None:
            continue
        if not isinstance(section, Mapping):
            errors.add(s, f"expected a mapping of grid keys, got {section!r}")
            continue
        for k in section:
            if k not in _GRID_KEYS:
                errors.add(f"{s}.{k}", f"unknown key; valid: {', '.join(_GRID_KEYS)}")
        if s == suite:
            out = _merge(out, section)
    return out


def _expand(s: Mapping[str, Any], where: str, bb: BackboneConfig, n_layers: int, data_root: str | None,
            errors: _Errors) -> Iterable[Cell]:
    from mudpt.method import MethodError, get_method, resolve_options

    n_before = len(errors.items)
    methods = _one_of(s, "method", "methods", errors)
    datasets = _one_of(s, "dataset", "datasets", errors)
    if methods is None:
        errors.add(f"{where}method", "missing; name a method (see `mudpt-bench list`)")
    if datasets is None:
        errors.add(f"{where}datasets", "missing; name one or more datasets (see `mudpt-bench list`)")
    if methods is None or datasets is None:
        return
    methods = _values(methods, f"{where}method", errors)
    datasets = _dataset_names(datasets, f"{where}datasets", errors)
    protocols = _values(s.get("protocol", "fewshot"), f"{where}protocol", errors)
    shots = _ints(s.get("shots", 16), f"{where}shots", errors)
    seed_value = _one_of(s, "seed", "seeds", errors)
    seeds = _ints(1 if seed_value is None else seed_value, f"{where}seeds", errors)
    targets = _targets(s.get("targets"), f"{where}targets", errors)
    options, recipe = s.get("options") or {}, s.get("recipe") or {}
    for key, m in (("options", options), ("recipe", recipe)):
        if not isinstance(m, Mapping):
            errors.add(f"{where}{key}", f"expected a mapping of name: value(s), got {m!r}")
    if not isinstance(options, Mapping) or not isinstance(recipe, Mapping):
        return
    opt_axes = {k: _values(v, f"{where}options.{k}", errors, n_layers) for k, v in options.items()}
    rec_axes = {k: _values(v, f"{where}recipe.{k}", errors) for k, v in recipe.items()}

    for p in protocols:
        if p not in PROTOCOLS:
            errors.add(f"{where}protocol", f"{p!r} is not a protocol; valid: {', '.join(PROTOCOLS)}")
        if p in TRAINING_PROTOCOLS:
            for k in shots:
                if k <= 0:
                    errors.add(f"{where}shots", f"{k} is not valid for protocol {p!r}: expected a positive "
                                                f"number of shots per class (e.g. 1, 2, 4, 8, 16); only "
                                                f"protocol 'zeroshot' accepts shots <= 0 (the full lists)")
        if p in TARGET_PROTOCOLS and not targets:
            errors.add(f"{where}targets", f"protocol {p!r} evaluates the trained prompts on `targets`; give "
                                          f"the evaluation datasets")
        if p == "base2new" and targets:
            errors.add(f"{where}targets", "protocol 'base2new' evaluates base and new classes of the same "
                                          "dataset; remove `targets`")
    for seed in seeds:
        if seed < 0:
            errors.add(f"{where}seeds", f"{seed}; expected integers >= 0")
    for d in datasets:
        _check_dataset(d, f"{where}datasets", data_root, as_source=any(p in TRAINING_PROTOCOLS for p in protocols),
                       errors=errors)
    if isinstance(targets, dict):
        missing = [d for d in datasets if d not in targets]
        if missing:
            errors.add(f"{where}targets", f"{s.get('targets')} has no targets for {missing}; it has them for "
                                          f"{', '.join(targets)}")
    for t in sorted({t for ts in (targets.values() if isinstance(targets, dict) else [targets]) for t in ts}):
        _check_dataset(t, f"{where}targets", data_root, as_source=False, errors=errors)
    rec_combos = [dict(zip(rec_axes, c)) for c in itertools.product(*rec_axes.values())]
    for rc in rec_combos:
        _check_recipe(rc, errors)
    variants = []  # (method class, switches, label), each validated once
    for method in methods:
        try:
            cls = get_method(str(method))
        except MethodError as e:
            errors.add(f"{where}method", str(e))
            continue
        for combo in itertools.product(*opt_axes.values()):
            opts = dict(zip(opt_axes, combo))
            try:
                resolved = resolve_options(cls, opts, n_layers)
            except (MethodError, TypeError, ValueError) as e:
                msg = str(e).replace("(the backbone's layer count)", f"(backbone {bb.name} has {n_layers} layers)")
                if any(f"{k}={v!r}" in msg for k, v in opts.items() if isinstance(v, bool)):
                    msg += " (YAML reads a bare off/on/yes/no as a boolean: quote it, e.g. \"off\")"
                errors.add(f"{where}options", msg)
                continue
            variants.append((cls, opts, label_for(cls, resolved, n_layers)))
    if len(errors.items) > n_before:
        return
    for (cls, opts, label), rc, d, p, k, seed in itertools.product(variants, rec_combos, datasets, protocols,
                                                                   shots, seeds):
        cell_targets = targets[d] if isinstance(targets, dict) else targets
        cfg = RunConfig.make(cls.name, d, opts, rc, backbone=bb, protocol=p, shots=k, seed=seed,
                             targets=cell_targets, data_root=data_root)
        yield Cell(cfg, label)
