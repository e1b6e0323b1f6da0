"""One experiment cell end to end: backbone -> data protocol -> method -> engine -> metrics.

`run_experiment` is what the CLI, the grid runner and the Optuna search call. It never logs
anywhere itself; trackers receive the `RunResult` and per-epoch callbacks.
"""
from __future__ import annotations

import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from .config import EMBEDDED_RECIPE, RunConfig
from .errors import UserError
from .engine import EpochStats, EvalResult, evaluate, resolve_precision, set_seed, train
from .method import PromptMethod, get_method
from .promptable import PromptableCLIP


@dataclass
class RunResult:
    config: RunConfig
    key: str
    metrics: dict[str, float]
    params: dict[str, Any]
    history: list[EpochStats]
    prompt_state: dict[str, torch.Tensor]
    checkpoint_metadata: dict[str, str]
    warnings: list[str] = field(default_factory=list)


_BACKBONES: dict[tuple[str, str, str], tuple[PromptableCLIP, Any]] = {}


def get_backbone(cfg, device: torch.device | None = None) -> tuple[PromptableCLIP, Any]:
    """Load once per process (a grid reuses it). Returns (wrapper, resolved BackboneConfig)."""
    from .backbone import load_open_clip

    device = device or default_device()
    k = (cfg.name, cfg.pretrained, str(device))
    if k not in _BACKBONES:
        model, tokenizer, resolved = load_open_clip(cfg)
        clip = PromptableCLIP(model, tokenizer, name=f"{cfg.name}/{cfg.pretrained}")
        _BACKBONES[k] = (clip.to(device), resolved)
    return _BACKBONES[k]


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def environment(device: torch.device, precision: str) -> dict[str, str]:
    import open_clip

    env = {"env.torch": torch.__version__, "env.open_clip": open_clip.__version__,
           "env.python": platform.python_version(), "env.device": device.type, "precision": precision}
    if device.type == "cuda":
        env["env.gpu"] = torch.cuda.get_device_name(device)
    return env


def resolve(cfg: RunConfig, clip: PromptableCLIP):
    """Method class, resolved switches and recipe for a config (validation happens here)."""
    from .method import resolve_options

    cls = get_method(cfg.method)
    n_layers = min(clip.text_layers, clip.vision_layers or clip.text_layers)
    options = resolve_options(cls, cfg.options_dict, n_layers)
    recipe = cls.default_recipe(cfg.shots, cfg.dataset)
    if cfg.backbone.is_embedded:
        recipe = recipe.merged(EMBEDDED_RECIPE)
    return cls, options, recipe.merged(cfg.recipe_dict)


def _image_cache(cfg: RunConfig, cache_dir: Path):
    """Decoded images in memory, and on disk for datasets read from JPEG files (the synthetic
    suite is already decoded arrays, so a disk layer would only cost time)."""
    from .data.image_cache import DecodedImageCache
    from .data.registry import get_spec

    on_disk = get_spec(cfg.dataset).kind == "coop"
    return DecodedImageCache(Path(cache_dir) / "decoded" if on_disk else None)


def _key(cfg: RunConfig, manifest_hash: str, weights_id: str, options, recipe) -> str:
    return cfg.key({"manifest_hash": manifest_hash, "weights_id": weights_id,
                    "options": vars(options), "recipe": vars(recipe)})


def cell_key(cfg: RunConfig, cache_dir: Path | None = None) -> str:
    """The stable key of a cell: its config plus the resolved switches, recipe, weights identity and
    few-shot manifest hash. Cheap after the first call (backbone and manifests are cached)."""
    from .data.protocol import prepare_data

    clip, backbone = get_backbone(cfg.backbone)
    _, options, recipe = resolve(cfg, clip)
    data = prepare_data(cfg.dataset, shots=cfg.shots, seed=cfg.seed,
                        subsample="base" if cfg.protocol == "base2new" else "all",
                        data_root=cfg.data_root, cache_dir=cache_dir)
    return _key(cfg, data.manifest_hash, backbone.weights_id, options, recipe)


class _Evaluator:
    """Evaluates one trained method on any dataset split, rebuilding only the class-name text."""

    def __init__(self, method: PromptMethod, clip: PromptableCLIP, device, precision, cache, batch_size: int):
        self.method, self.clip, self.device, self.precision = method, clip, device, precision
        self.cache, self.batch_size = cache, batch_size

    def __call__(self, splits, items) -> EvalResult:
        from .data.loader import make_loader

        text = self.clip.tokenize(self.method.class_texts(splits.classnames, splits.template))
        loader = make_loader(items, splits.read_image, self.clip.image_size, train=False,
                             batch_size=self.batch_size, cache=self.cache, source_id=splits.source_id)
        return evaluate(self.method, text, loader, self.device, self.precision)


def run_experiment(cfg: RunConfig, *, on_epoch: Callable[[EpochStats], None] | None = None,
                   device: torch.device | None = None, cache_dir: Path | None = None,
                   use_image_cache: bool = True, eval_split: str = "test",
                   eval_every_epoch: bool = False) -> RunResult:
    """Train and evaluate one cell. `eval_split="val"` scores the few-shot validation split instead of
    test (hyper-parameter search must never see test); `eval_every_epoch` adds a validation pass
    after each epoch (EpochStats.val_acc), for pruning."""
    if eval_split not in ("test", "val"):
        raise UserError(f"eval_split must be 'test' or 'val', got {eval_split!r}")
    from .data.loader import make_loader
    from .data.protocol import default_cache_dir, prepare_data
    from .data.registry import load_dataset

    device = device or default_device()
    clip, backbone = get_backbone(cfg.backbone, device)
    cls, options, recipe = resolve(cfg, clip)
    precision = resolve_precision(recipe.precision, device)
    cache = _image_cache(cfg, cache_dir or default_cache_dir()) if use_image_cache else None
    t_start = time.perf_counter()

    set_seed(cfg.seed)
    subsample = "base" if cfg.protocol == "base2new" else "all"
    data = prepare_data(cfg.dataset, shots=cfg.shots, seed=cfg.seed, subsample=subsample,
                        data_root=cfg.data_root, cache_dir=cache_dir)
    splits = data.splits
    method = cls(clip, options).to(device)
    text = clip.tokenize(method.class_texts(splits.classnames, splits.template))

    evaluator = _Evaluator(method, clip, device, precision, cache, recipe.eval_batch_size)
    history: list[EpochStats] = []
    train_seconds = 0.0
    if cls.trains and cfg.protocol != "zeroshot":
        if not splits.train:
            raise UserError(f"dataset {cfg.dataset!r} has no training split; it can only be an evaluation target")
        loader = make_loader(splits.train, splits.read_image, clip.image_size, train=True,
                             batch_size=recipe.batch_size, crop_scale=splits.train_crop_scale,
                             cache=cache, seed=cfg.seed, source_id=splits.source_id, hflip=splits.train_hflip)
        epoch_eval = (lambda: evaluator(splits, splits.val).acc) if eval_every_epoch else None
        t0 = time.perf_counter()
        history = train(method, text, loader, recipe, device, precision, on_epoch, epoch_eval)
        train_seconds = time.perf_counter() - t0

    metrics: dict[str, float] = {}
    warnings = list(splits.warnings)
    if eval_split == "val":
        if not splits.val:
            raise UserError(f"dataset {cfg.dataset!r} has no validation split to evaluate on")
        res = evaluator(splits, splits.val)
        metrics.update(val_acc=res.acc, val_macro_f1=res.macro_f1)
    elif cfg.protocol == "base2new":
        base = evaluator(splits, splits.test)
        new_data = prepare_data(cfg.dataset, shots=cfg.shots, seed=cfg.seed, subsample="new",
                                data_root=cfg.data_root, cache_dir=cache_dir)
        new = evaluator(new_data.splits, new_data.splits.test)
        hm = 2 * base.acc * new.acc / (base.acc + new.acc) if base.acc + new.acc > 0 else 0.0
        metrics.update(base_acc=base.acc, base_macro_f1=base.macro_f1, new_acc=new.acc,
                       new_macro_f1=new.macro_f1, hm=hm, eval_images_per_s=base.images_per_s)
    else:
        res = evaluator(splits, splits.test)
        metrics.update(acc=res.acc, macro_f1=res.macro_f1, eval_images_per_s=res.images_per_s)
        target_accs = []
        for target in cfg.targets:  # the same trained prompts, never retrained (PROTOCOLS §3.5)
            tsplits = load_dataset(target, cfg.data_root)
            warnings += tsplits.warnings
            r = evaluator(tsplits, tsplits.test)
            metrics[f"acc.{target}"], metrics[f"macro_f1.{target}"] = r.acc, r.macro_f1
            target_accs.append(r.acc)
        if target_accs:
            metrics["target_avg_acc"] = sum(target_accs) / len(target_accs)

    n_train_images = sum(h.images for h in history)
    metrics.update(wall_s=time.perf_counter() - t_start, n_trainable=float(method.n_trainable()),
                   train_images_per_s=n_train_images / train_seconds if train_seconds > 0 else 0.0)
    params: dict[str, Any] = {
        "method": cfg.method, "dataset": cfg.dataset, "protocol": cfg.protocol, "shots": cfg.shots,
        "seed": cfg.seed, "backbone": cfg.backbone.name, "pretrained": cfg.backbone.pretrained,
        "weights_id": backbone.weights_id, "targets": ",".join(cfg.targets), "manifest_hash": data.manifest_hash,
        "n_trainable": method.n_trainable(), "n_classes": splits.num_classes,
        "n_train_images": len(splits.train),
    }
    params.update({f"opt.{k}": v for k, v in vars(options).items()})
    params.update({f"recipe.{k}": v for k, v in vars(recipe).items()})
    params.update(environment(device, precision))
    key = _key(cfg, data.manifest_hash, backbone.weights_id, options, recipe)
    return RunResult(cfg, key, metrics, params, history, method.prompt_state(),
                     method.checkpoint_metadata(), warnings)
