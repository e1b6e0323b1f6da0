"""Shared fixtures: tiny random-weight open_clip models (no downloads) wrapped for prompting."""
from __future__ import annotations

import json

import pytest
import torch

import mudpt.compat  # noqa: F401

TINY_CFG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 3, "width": 64, "head_width": 32, "patch_size": 8},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 48, "heads": 2, "layers": 3},
}


@pytest.fixture(scope="session")
def tiny_model_name(tmp_path_factory):
    import open_clip

    path = tmp_path_factory.mktemp("cfg") / "test-tiny.json"
    path.write_text(json.dumps(TINY_CFG))
    open_clip.add_model_config(path)
    return "test-tiny"


@pytest.fixture(scope="session")
def tiny_clip(tiny_model_name):
    import open_clip

    from mudpt.promptable import PromptableCLIP

    torch.manual_seed(0)
    model = open_clip.create_model(tiny_model_name, pretrained=None).float().eval()
    return PromptableCLIP(model, open_clip.get_tokenizer("ViT-B-16"), name=tiny_model_name)


@pytest.fixture(scope="session")
def vitb16_clip():
    """ViT-B-16 shapes with random weights: for parameter counts and exactness on real shapes."""
    import open_clip

    from mudpt.promptable import PromptableCLIP

    torch.manual_seed(0)
    model = open_clip.create_model("ViT-B-16", pretrained=None).float().eval()
    return PromptableCLIP(model, open_clip.get_tokenizer("ViT-B-16"), name="ViT-B-16")
