"""Contrastive pretraining of mudpt-tiny on the procedural world (the shipped checkpoint's recipe).

Recipe (EMBEDDED.md, second round): AdamW lr 1e-3, betas (0.9, 0.98), eps 1e-6, weight decay 0.1 on
>=2-D weights that are not embeddings, linear warm-up then cosine to 0, batch 256, learnable logit scale
clamped at 100. The schedule is step-based so the result does not depend on the machine's speed.
Data: a pool of pre-rendered photo-domain images sampled with replacement; the caption is re-drawn from
the scene's attributes at every use. Sketch/noisy/inverted renderings are never shown in pretraining:
they are the downstream domain shifts.
"""
from __future__ import annotations

import json
import math
import os
import platform
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass(frozen=True)
class PretrainConfig:
    steps: int = 2000
    seed: int = 0
    batch_size: int = 256
    pool_size: int = 120_000
    warmup: int = 100
    lr: float = 1e-3
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.98)
    eps: float = 1e-6
    max_logit_scale: float = 100.0
    threads: int = 2
    render_processes: int = 2


def lr_at(step: int, cfg: PretrainConfig) -> float:
    """Multiplier of the base lr at optimiser step `step` (0-based)."""
    if step < cfg.warmup:
        return (step + 1) / cfg.warmup
    progress = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def param_groups(model, weight_decay: float):
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        # Embeddings (token, positional, class) and gains/biases/logit scale are not decayed.
        (decay if p.ndim >= 2 and "embedding" not in name else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def to_tensor(images, mean=CLIP_MEAN, std=CLIP_STD):
    """uint8 (N, H, W, 3) array -> CLIP-normalised float (N, 3, H, W) tensor."""
    import torch

    x = torch.from_numpy(images).permute(0, 3, 1, 2).float().div_(255.0)
    return (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)


def _versions() -> dict:
    import numpy
    import open_clip
    import PIL
    import safetensors
    import torch

    return {"python": platform.python_version(), "torch": torch.__version__, "open_clip": open_clip.__version__,
            "numpy": numpy.__version__, "Pillow": PIL.__version__, "safetensors": safetensors.__version__}


def _log(message: str) -> None:
    print(message, flush=True)  # flushed: the log is usually a file watched while the run goes


def pretrain(cfg: PretrainConfig, out_dir: Path, command: str, log=_log) -> dict:
    """Train mudpt-tiny from scratch and write `mudpt-tiny.safetensors` (fp16) and its meta json."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # kinder under contention on a shared 2-core box
    import mudpt.compat  # noqa: F401
    import numpy as np
    import torch
    import torch.nn.functional as F
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
    from safetensors.torch import save_file

    from . import world
    from .model import MODEL_NAME, create_model, file_sha256, get_tokenizer, model_config

    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    t_start = time.time()

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
               TimeElapsedColumn(), TimeRemainingColumn())
    with Progress(*columns, transient=False) as progress:
        task = progress.add_task("rendering pool", total=cfg.pool_size, info="")
        images, items = world.render_pool(cfg.seed, cfg.pool_size, processes=cfg.render_processes,
                                          progress=lambda n: progress.advance(task, n))
        log(f"pool of {cfg.pool_size} images rendered in {time.time() - t_start:.0f} s")

        model = create_model().train()
        tokenizer = get_tokenizer()
        opt = torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=cfg.betas, eps=cfg.eps)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_at(s, cfg))
        rng = np.random.default_rng([cfg.seed, 9001])
        max_log_scale = math.log(cfg.max_logit_scale)
        labels = torch.arange(cfg.batch_size)
        losses: list[float] = []
        task = progress.add_task("pretraining", total=cfg.steps, info="")
        t_train = time.time()
        for step in range(cfg.steps):
            idx = rng.integers(len(items), size=cfg.batch_size)
            # Tokenise the batch afresh: caching per-string token rows keeps whole batch tensors alive
            # and leaked ~15 MB per step (EMBEDDED.md).
            texts = tokenizer([world.pool_caption(items[i], rng) for i in idx])
            x = to_tensor(images[idx])
            img = model.encode_image(x, normalize=True)
            txt = model.encode_text(texts, normalize=True)
            logits = model.logit_scale.exp() * img @ txt.T
            loss = 0.5 * (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            with torch.no_grad():
                model.logit_scale.clamp_(0, max_log_scale)
            losses.append(loss.item())
            info = f"loss {np.mean(losses[-20:]):.3f} scale {model.logit_scale.exp().item():.1f}"
            progress.update(task, advance=1, info=info)
            if (step + 1) % 50 == 0 or step == 0:
                log(f"step {step + 1}/{cfg.steps} {info} lr {sched.get_last_lr()[0]:.2e} "
                    f"{(time.time() - t_train) / (step + 1):.2f} s/step")

    weights = out_dir / "mudpt-tiny.safetensors"
    state = {k: v.detach().to(torch.float16).contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(weights), metadata={"model": MODEL_NAME, "seed": str(cfg.seed), "steps": str(cfg.steps)})
    weights.chmod(0o644)  # package data: readable by everyone who installs it
    meta = {
        "model": MODEL_NAME,
        "sha256": file_sha256(weights),
        "bytes": weights.stat().st_size,
        "dtype": "float16",
        "command": command,
        "invoked_as": " ".join(sys.argv),
        "config": asdict(cfg),
        "model_config": model_config(),
        "world_version": world.WORLD_VERSION,
        "wall_seconds": round(time.time() - t_start, 1),
        "final_loss": round(float(np.mean(losses[-50:])), 4),
        "final_logit_scale": round(model.logit_scale.exp().item(), 2),
        "loss_at": {str(s): round(losses[s - 1], 4) for s in (1, 100, 500, 1000, cfg.steps) if s <= len(losses)},
        "versions": _versions(),
        "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform()},
    }
    (out_dir / "mudpt-tiny.meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    log(f"wrote {weights} ({meta['bytes'] / 2**20:.1f} MiB, sha256 {meta['sha256'][:12]}…) in {meta['wall_seconds']:.0f} s")
    return meta
