"""The one training engine: Dassl's optimiser and schedule, last-epoch evaluation, top-1 and macro-F1."""
from __future__ import annotations

import contextlib
import math
import random
import time
from dataclasses import dataclass
from typing import Callable, Iterable

import numpy as np
import torch
import torch.nn.functional as F

from .config import Recipe
from .errors import UserError
from .method import PromptMethod
from .promptable import TextBatch


class TrainingError(RuntimeError):
    """A run that cannot continue (NaN loss, nothing to train)."""


@dataclass
class EpochStats:
    epoch: int
    loss: float
    lr: float
    train_acc: float
    seconds: float
    images: int
    val_acc: float | None = None  # only when the caller asks for a per-epoch validation pass


@dataclass
class EvalResult:
    acc: float  # top-1, percent
    macro_f1: float  # percent, over the labels present in the ground truth (Dassl)
    n: int
    seconds: float

    @property
    def images_per_s(self) -> float:
        return self.n / self.seconds if self.seconds > 0 else float("nan")


def set_seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def lr_at_epoch(recipe: Recipe, epoch: int) -> float:
    """Dassl: constant warm-up lr for the first W epochs, then cosine with T_max = MAX_EPOCH counted from
    the first post-warm-up epoch, stepped once per epoch (PROTOCOLS §3.2, trap T14)."""
    if epoch < recipe.warmup_epochs:
        return recipe.warmup_lr
    return 0.5 * recipe.lr * (1 + math.cos(math.pi * (epoch - recipe.warmup_epochs) / recipe.epochs))


def resolve_precision(requested: str, device: torch.device) -> str:
    if requested not in ("auto", "fp32", "bf16", "fp16"):
        raise UserError(f"precision {requested!r}: expected auto, fp32, bf16 or fp16")
    if device.type != "cuda":
        if requested in ("bf16", "fp16"):
            raise UserError(f"precision {requested!r} needs a GPU; on CPU the engine runs fp32")
        return "fp32"
    if requested == "auto":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return requested


def autocast(precision: str, device: torch.device):
    """Mixed precision on GPU only; weights always stay fp32 (never pure half, trap T7)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)


def make_optimizer(params, recipe: Recipe) -> torch.optim.Optimizer:
    if recipe.optimizer == "sgd":  # Dassl: momentum 0.9, wd 5e-4, no dampening, no Nesterov
        return torch.optim.SGD(params, lr=recipe.lr, momentum=recipe.momentum, weight_decay=recipe.weight_decay,
                               dampening=0, nesterov=False)
    if recipe.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=recipe.lr, weight_decay=recipe.weight_decay)
    raise UserError(f"recipe optimizer {recipe.optimizer!r}: expected 'sgd' or 'adamw'")


def train(method: PromptMethod, text: TextBatch, loader: Iterable, recipe: Recipe, device: torch.device,
          precision: str = "fp32", on_epoch: Callable[[EpochStats], None] | None = None,
          epoch_eval: Callable[[], float] | None = None) -> list[EpochStats]:
    """SGD over the method's trainable tensors. `epoch_eval` (e.g. validation accuracy for pruning)
    runs after every epoch; `on_epoch` receives the stats and may raise to stop the run."""
    params = method.trainable_parameters()
    if not params:
        raise TrainingError(f"method {method.name!r} has no trainable parameters")
    opt = make_optimizer(params, recipe)
    scaler = torch.amp.GradScaler(device.type) if precision == "fp16" else None
    fixed_text = None
    if method.fixed_text:  # constant text side: encode once, outside the loop
        with torch.no_grad(), autocast(precision, device):
            fixed_text = method.text_features(text).float()
    method.train()
    history = []
    for epoch in range(recipe.epochs):
        lr = lr_at_epoch(recipe, epoch)
        for g in opt.param_groups:
            g["lr"] = lr
        t0, loss_sum, correct, seen = time.perf_counter(), 0.0, 0, 0
        for step, (images, labels) in enumerate(loader):
            images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
            with autocast(precision, device):
                logits = method(images, text, fixed_text)
            loss = F.cross_entropy(logits.float(), labels)
            if not torch.isfinite(loss):
                raise TrainingError(f"loss is {loss.item()} at epoch {epoch} step {step} (lr {lr:.3g})")
            opt.zero_grad(set_to_none=True)
            if scaler is not None:
                scaler.scale(loss).backward()
                scaler.step(opt)
                scaler.update()
            else:
                loss.backward()
                opt.step()
            loss_sum += loss.item() * labels.shape[0]
            correct += int((logits.argmax(-1) == labels).sum())
            seen += labels.shape[0]
        stats = EpochStats(epoch, loss_sum / max(seen, 1), lr, 100.0 * correct / max(seen, 1),
                           time.perf_counter() - t0, seen)
        if epoch_eval is not None:
            stats.val_acc = epoch_eval()
            method.train()
        history.append(stats)
        if on_epoch is not None:
            on_epoch(stats)
    method.eval()
    return history


@torch.no_grad()
def predict(method: PromptMethod, text: TextBatch, loader: Iterable, device: torch.device,
            precision: str = "fp32", cache_text: bool = True) -> tuple[np.ndarray, np.ndarray, float]:
    """Predictions and labels over a loader. Text features are computed once per evaluation when
    the method's text side does not depend on the image (`cache_text=False` re-encodes per batch,
    the cost profile of the official code, kept for the benchmark)."""
    method.eval()
    t0 = time.perf_counter()
    text_features = None
    if cache_text and not method.image_conditioned:
        with autocast(precision, device):
            text_features = method.text_features(text).float()
    preds, labels = [], []
    for images, y in loader:
        images = images.to(device, non_blocking=True)
        with autocast(precision, device):
            logits = method(images, text, text_features)
        preds.append(logits.argmax(-1).cpu())
        labels.append(y)
    if not preds:
        raise TrainingError("evaluation set is empty")
    return torch.cat(preds).numpy(), torch.cat(labels).numpy(), time.perf_counter() - t0


def score(pred: np.ndarray, true: np.ndarray, seconds: float = 0.0) -> EvalResult:
    from sklearn.metrics import f1_score

    acc = 100.0 * float((pred == true).mean())
    f1 = 100.0 * float(f1_score(true, pred, average="macro", labels=np.unique(true), zero_division=0))
    return EvalResult(acc, f1, int(len(true)), seconds)


def evaluate(method: PromptMethod, text: TextBatch, loader: Iterable, device: torch.device,
             precision: str = "fp32", cache_text: bool = True) -> EvalResult:
    pred, true, seconds = predict(method, text, loader, device, precision, cache_text)
    return score(pred, true, seconds)
