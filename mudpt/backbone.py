"""Loading a frozen open_clip backbone: by name + pretrained tag, local checkpoint file, `local-dir:`,
the shipped embedded tiny CLIP, or random weights (tests and benchmarks)."""
from __future__ import annotations

import contextlib
import hashlib
import logging
import os
from dataclasses import replace
from functools import lru_cache
from pathlib import Path

from .errors import UserError
from .config import EMBEDDED_BACKBONE, EMBEDDED_PRETRAINED, BackboneConfig


class BackboneError(UserError):
    """A backbone that cannot be loaded; the message says what to pass instead."""


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _hub_offline_error(name: str, tag: str, err: Exception) -> BackboneError:
    return BackboneError(
        f"could not fetch pretrained weights {name!r}/{tag!r} from the hub ({type(err).__name__}: {err}). "
        f"Offline, download the checkpoint elsewhere and pass it as a file: "
        f"--backbone {name} --pretrained /path/to/open_clip_pytorch_model.bin "
        f"(or --pretrained local-dir:/path/to/hf-snapshot)."
    )


class _NoRandomInitWarning(logging.Filter):
    """open_clip warns on every pretrained=None build; ours are deliberate (weights load right after,
    or random weights were asked for)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "No pretrained weights loaded" not in record.getMessage()


@contextlib.contextmanager
def quiet_random_init():
    f = _NoRandomInitWarning()
    logging.getLogger().addFilter(f)
    try:
        yield
    finally:
        logging.getLogger().removeFilter(f)


def load_open_clip(cfg: BackboneConfig):
    """Returns (model, tokenizer, resolved cfg with weights_id). The model is fp32, eval mode, frozen."""
    import mudpt.compat  # noqa: F401  (torchvision import fix, before open_clip)
    import open_clip

    name, tag = cfg.name, cfg.pretrained
    if name == EMBEDDED_BACKBONE:
        from mudpt.toy.model import get_tokenizer, load_embedded_model, register_config, weights_sha256

        register_config()
        if tag == EMBEDDED_PRETRAINED:
            with quiet_random_init():
                model = load_embedded_model()
            weights_id = f"sha256:{weights_sha256()}"
        elif tag == "random":
            with quiet_random_init():
                model = open_clip.create_model(name, pretrained=None)
            weights_id = "random"
        else:
            model = _create_with_pretrained(open_clip, name, tag)
            weights_id = _weights_id(tag)
        tokenizer = get_tokenizer()
    else:
        if name not in open_clip.list_models():
            raise BackboneError(f"unknown open_clip architecture {name!r}; see `open_clip.list_models()` "
                                f"(e.g. ViT-B-16, ViT-B-32) or use the embedded default {EMBEDDED_BACKBONE!r}")
        model = _create_with_pretrained(open_clip, name, None if tag == "random" else tag)
        weights_id = "random" if tag == "random" else _weights_id(tag)
        tokenizer = open_clip.get_tokenizer(name)
    model = model.float().eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model, tokenizer, replace(cfg, weights_id=weights_id)


def _weights_id(tag: str) -> str:
    p = Path(tag[len("local-dir:"):] if tag.startswith("local-dir:") else tag).expanduser()
    if p.is_file():
        return f"sha256:{file_sha256(p)}"
    if tag.startswith("local-dir:"):
        files = sorted(q for q in p.glob("*") if q.is_file() and q.suffix in (".bin", ".safetensors", ".pt", ".pth"))
        return "sha256:" + hashlib.sha256("".join(file_sha256(q) for q in files).encode()).hexdigest()
    return f"tag:{tag}"


def _create_with_pretrained(open_clip, name: str, tag: str | None):
    if tag is None:
        with quiet_random_init():
            return open_clip.create_model(name, pretrained=None)
    if tag.startswith("local-dir:"):
        d = Path(tag[len("local-dir:"):]).expanduser()
        if not d.is_dir():
            raise BackboneError(f"--pretrained {tag!r}: folder {d} does not exist")
        return open_clip.create_model(name, pretrained=tag)
    looks_like_path = os.sep in tag or tag.endswith((".bin", ".pt", ".pth", ".safetensors"))
    if looks_like_path:
        p = Path(tag).expanduser()
        if not p.is_file():
            raise BackboneError(f"--pretrained {tag!r}: checkpoint file {p} does not exist")
        return open_clip.create_model(name, pretrained=str(p))
    valid = open_clip.list_pretrained_tags_by_model(name)
    if tag not in valid:
        raise BackboneError(f"unknown pretrained tag {tag!r} for {name}; valid: {', '.join(valid) or '(none)'}, "
                            f"a checkpoint file, local-dir:PATH or 'random'")
    # Fail in seconds when offline instead of open_clip's long retry loop.
    if not _online():
        _force_hub_offline()
    try:
        return open_clip.create_model(name, pretrained=tag)
    except Exception as e:  # network errors surface as many different types
        raise _hub_offline_error(name, tag, e) from e


def _force_hub_offline() -> None:
    """huggingface_hub reads HF_HUB_OFFLINE at import time; set both so cached files still load."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        from huggingface_hub import constants

        constants.HF_HUB_OFFLINE = True
    except ImportError:
        pass


@lru_cache(maxsize=1)
def _online(timeout: float = 2.0) -> bool:
    """Whether huggingface.co answers within `timeout` s (honours HF_HUB_OFFLINE=1)."""
    if os.environ.get("HF_HUB_OFFLINE") == "1":
        return False
    import socket

    try:
        socket.create_connection(("huggingface.co", 443), timeout=timeout).close()
        return True
    except OSError:
        return False
