"""The shipped tiny CLIP: open_clip config registration, checkpoint loading and integrity check."""
from __future__ import annotations

import json
from pathlib import Path

from ..backbone import file_sha256

MODEL_NAME = "mudpt-tiny"
CONFIG_PATH = Path(__file__).with_name("mudpt-tiny.json")
ASSETS = Path(__file__).with_name("assets")
EMBEDDED_WEIGHTS = ASSETS / "mudpt-tiny.safetensors"
EMBEDDED_META = ASSETS / "mudpt-tiny.meta.json"
REBUILD_HINT = "rebuild it with `mudpt-bench toy pretrain` (the exact command is in mudpt/toy/assets/mudpt-tiny.meta.json)"


class CheckpointError(RuntimeError):
    """The embedded checkpoint is missing, or its bytes differ from the recorded hash."""


def register_config() -> None:
    """Register mudpt-tiny with open_clip (idempotent)."""
    import mudpt.compat  # noqa: F401  (before open_clip)
    import open_clip
    from open_clip.factory import _MODEL_CONFIGS

    if MODEL_NAME not in _MODEL_CONFIGS:
        open_clip.add_model_config(CONFIG_PATH)


def model_config() -> dict:
    return json.loads(CONFIG_PATH.read_text())


def recorded_meta(meta_path: Path = EMBEDDED_META) -> dict:
    if not meta_path.exists():
        raise CheckpointError(f"{meta_path} is missing; {REBUILD_HINT}")
    return json.loads(meta_path.read_text())


def weights_sha256(weights: Path = EMBEDDED_WEIGHTS) -> str:
    """sha256 of the checkpoint file as it is on disk now."""
    if not Path(weights).exists():
        raise CheckpointError(f"checkpoint {weights} is missing; {REBUILD_HINT}")
    return file_sha256(Path(weights))


def verify_weights(weights: Path = EMBEDDED_WEIGHTS, meta_path: Path | None = None) -> str:
    """Check the checkpoint against the sha256 recorded in its meta json; returns the hash."""
    weights = Path(weights)
    meta_path = meta_path or weights.with_name(weights.name.replace(".safetensors", ".meta.json"))
    expected = recorded_meta(meta_path).get("sha256")
    actual = weights_sha256(weights)
    if actual != expected:
        raise CheckpointError(
            f"checkpoint {weights} has sha256 {actual}, but {meta_path} records {expected}; "
            f"the file is corrupt or was replaced without updating its meta: {REBUILD_HINT}")
    return actual


def create_model():
    """A randomly initialised mudpt-tiny (fp32), for pretraining."""
    register_config()
    import open_clip

    return open_clip.create_model(MODEL_NAME, precision="fp32", device="cpu")


def load_embedded_model(weights: Path | None = None, verify: bool = True):
    """The shipped (or given) mudpt-tiny checkpoint as an fp32 open_clip CLIP in eval mode."""
    import torch
    from safetensors.torch import load_file

    weights = Path(weights) if weights is not None else EMBEDDED_WEIGHTS
    if verify:
        verify_weights(weights)
    elif not weights.exists():
        raise CheckpointError(f"checkpoint {weights} is missing; {REBUILD_HINT}")
    model = create_model()
    state = {k: v.to(torch.float32) for k, v in load_file(str(weights)).items()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise CheckpointError(f"checkpoint {weights} does not fit {CONFIG_PATH}: missing keys {missing[:5]}, "
                              f"unexpected keys {unexpected[:5]}; {REBUILD_HINT}")
    return model.eval()


def get_tokenizer():
    """open_clip's CLIP BPE tokenizer at mudpt-tiny's context length."""
    register_config()
    import open_clip

    return open_clip.get_tokenizer(MODEL_NAME)
