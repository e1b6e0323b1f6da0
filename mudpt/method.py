"""Method interface and registry.

A method is one file that subclasses `PromptMethod`, declares its switches as an `Options`
dataclass and its learnable tensors as ordinary parameters, and registers itself with
`@register_method`. The wrapper runs the transformers; the engine trains whatever the method
declares trainable. Baselines live in `baselines/` and are discovered automatically.
"""
from __future__ import annotations

import dataclasses
import importlib
import json
import pkgutil
from dataclasses import dataclass, fields
from typing import Any, ClassVar, Mapping, Sequence

import torch
from torch import nn

from .config import Recipe
from .errors import UserError
from .promptable import PromptableCLIP, TextBatch


class MethodError(UserError):
    """Unknown method, bad switch value, or a checkpoint that does not fit."""


@dataclass(frozen=True)
class NoOptions:
    pass


@dataclass
class PromptSet:
    """Everything a method injects in one forward pass (image-independent)."""

    text_ctx: torch.Tensor | None = None
    text_deep: list[torch.Tensor | None] | None = None
    vision_ctx: torch.Tensor | None = None
    vision_deep: list[torch.Tensor | None] | None = None


def choice(*values: Any, default: Any) -> Any:
    """A switch with a closed set of values (validated by `resolve_options`)."""
    return dataclasses.field(default=default, metadata={"choices": values})


def int_range(lo: int, hi: int | str, default: int) -> Any:
    """An int switch in [lo, hi]; hi may be 'layers' (the backbone's layer count)."""
    return dataclasses.field(default=default, metadata={"range": (lo, hi)})


class PromptMethod(nn.Module):
    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    paper: ClassVar[str] = ""
    Options: ClassVar[type] = NoOptions
    # True when the text side depends on the image (CoCoOp): text features cannot be cached.
    image_conditioned: ClassVar[bool] = False
    trains: ClassVar[bool] = True
    # True when the text side has no learnable input (zero-shot, VPT): text features are constants.
    fixed_text: ClassVar[bool] = False

    def __init__(self, clip: PromptableCLIP, options: Any):
        super().__init__()
        # Stored outside the module tree: the frozen backbone is never part of a method's state.
        object.__setattr__(self, "clip", clip)
        self.options = options

    # --- what a method defines ------------------------------------------------------------
    def class_texts(self, classnames: Sequence[str], template: str) -> list[str]:
        """The strings tokenised for each class (placeholder words where learnable context goes)."""
        raise NotImplementedError

    def prompts(self) -> PromptSet:
        return PromptSet()

    @classmethod
    def default_recipe(cls, shots: int, dataset: str) -> Recipe:
        return Recipe()

    @classmethod
    def search_space(cls, trial, n_layers: int) -> dict[str, dict[str, Any]]:
        """Optuna search space: {"options": {...}, "recipe": {...}} sampled from `trial`."""
        return {"options": {}, "recipe": {"lr": trial.suggest_float("lr", 1e-4, 5e-2, log=True)}}

    # --- derived ---------------------------------------------------------------------------
    def text_features(self, text: TextBatch, prompts: PromptSet | None = None) -> torch.Tensor:
        p = prompts if prompts is not None else self.prompts()
        return self.clip.encode_text(text, p.text_ctx, p.text_deep)

    def image_features(self, images: torch.Tensor, prompts: PromptSet | None = None) -> torch.Tensor:
        p = prompts if prompts is not None else self.prompts()
        return self.clip.encode_image(images, p.vision_ctx, p.vision_deep)

    def forward(self, images: torch.Tensor, text: TextBatch, text_features: torch.Tensor | None = None):
        """Logits (B, C). Pass precomputed `text_features` at evaluation (image-independent text)."""
        p = self.prompts()
        img = self.image_features(images, p)
        txt = text_features if text_features is not None else self.text_features(text, p)
        return self.clip.logits(img, txt)

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    def n_trainable(self) -> int:
        return sum(p.numel() for p in self.trainable_parameters())

    # --- checkpoints: learned tensors only, independent of class names ----------------------
    def prompt_state(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().to("cpu", copy=True).contiguous() for k, v in self.named_parameters() if v.requires_grad}

    def checkpoint_metadata(self) -> dict[str, str]:
        return {"method": self.name, "options": json.dumps(dataclasses.asdict(self.options), sort_keys=True),
                "backbone": self.clip.name}

    def load_prompt_state(self, state: Mapping[str, torch.Tensor], metadata: Mapping[str, str] | None = None):
        if metadata is not None and metadata.get("method") not in (None, self.name):
            raise MethodError(f"checkpoint is for method {metadata.get('method')!r}, not {self.name!r}")
        own = {k: v for k, v in self.named_parameters() if v.requires_grad}
        missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
        if missing or unexpected:
            raise MethodError(f"checkpoint does not fit {self.name} with {self.options}: "
                              f"missing {missing[:6]}, unexpected {unexpected[:6]}")
        for k, p in own.items():
            if tuple(state[k].shape) != tuple(p.shape):
                raise MethodError(f"checkpoint tensor {k!r} has shape {tuple(state[k].shape)}, "
                                  f"{self.name} with {self.options} expects {tuple(p.shape)}")
            with torch.no_grad():
                p.copy_(state[k].to(p.device, p.dtype))


# ------------------------------------------------------------------------------ registry
_METHODS: dict[str, type[PromptMethod]] = {}
_PROVIDER_PACKAGES = ("baselines",)
_PROVIDER_MODULES = ("mudpt.mudpt_method",)


def register_method(cls: type[PromptMethod]) -> type[PromptMethod]:
    if not cls.name:
        raise RuntimeError(f"{cls.__name__} has no name")
    if cls.name in _METHODS and _METHODS[cls.name] is not cls:
        raise RuntimeError(f"method {cls.name!r} registered twice")
    _METHODS[cls.name] = cls
    return cls


def _discover() -> None:
    for mod in _PROVIDER_MODULES:
        importlib.import_module(mod)
    for pkg_name in _PROVIDER_PACKAGES:
        pkg = importlib.import_module(pkg_name)
        for info in pkgutil.iter_modules(pkg.__path__):
            if not info.name.startswith("_"):
                importlib.import_module(f"{pkg_name}.{info.name}")


def list_methods() -> list[type[PromptMethod]]:
    _discover()
    return [_METHODS[k] for k in sorted(_METHODS)]


def get_method(name: str) -> type[PromptMethod]:
    _discover()
    if name not in _METHODS:
        raise MethodError(f"unknown method {name!r}; valid: {', '.join(sorted(_METHODS))}")
    return _METHODS[name]


def option_specs(cls: type[PromptMethod]) -> list[dataclasses.Field]:
    return list(fields(cls.Options))


def resolve_options(cls: type[PromptMethod], options: Mapping[str, Any] | None,
                    n_layers: int | None = None) -> Any:
    """Validate switches against the method's Options (names, choices, ranges) and fill defaults."""
    options = dict(options or {})
    specs = {f.name: f for f in fields(cls.Options)}
    unknown = sorted(set(options) - set(specs))
    if unknown:
        valid = ", ".join(specs) or "(none)"
        raise MethodError(f"method {cls.name!r} has no switch {unknown[0]!r}; valid: {valid}")
    for k, v in options.items():
        f = specs[k]
        if "choices" in f.metadata and v not in f.metadata["choices"]:
            raise MethodError(f"{cls.name}: {k}={v!r} is not valid; choose one of {list(f.metadata['choices'])}")
        if "range" in f.metadata:
            lo, hi = f.metadata["range"]
            if hi == "layers":
                hi = n_layers
            if not isinstance(v, int) or isinstance(v, bool) or v < lo or (hi is not None and v > hi):
                raise MethodError(f"{cls.name}: {k}={v!r} is not valid; expected an integer in [{lo}, {hi}]"
                                  + (" (the backbone's layer count)" if f.metadata['range'][1] == "layers" else ""))
        elif f.type in ("str", str) and not isinstance(v, str):
            raise MethodError(f"{cls.name}: {k}={v!r} must be a string")
    # A depth default larger than a small backbone means "every layer" there.
    for f in fields(cls.Options):
        if f.name not in options and f.metadata.get("range", (0, 0))[1] == "layers" and n_layers:
            options[f.name] = min(f.default, n_layers)
    resolved = cls.Options(**options)
    check = getattr(resolved, "validate", None)
    if check is not None:
        check()
    return resolved


def build_method(name: str, clip: PromptableCLIP, options: Mapping[str, Any] | None = None) -> PromptMethod:
    cls = get_method(name)
    opts = resolve_options(cls, options, n_layers=min(clip.text_layers, clip.vision_layers or clip.text_layers))
    return cls(clip, opts)
