"""The promptable wrapper: equivalence with open_clip, injection positions, trimming, errors."""
from __future__ import annotations

import pytest
import torch

from mudpt.promptable import PromptError

TEXTS = ["a photo of a dog.", "a photo of a very large golden retriever puppy.", "cat texture."]


def _hook_inputs(blocks):
    seen = {}

    def make(i):
        def hook(_module, args, kwargs):
            seen[i] = (args[0] if args else kwargs["q_x"]).detach().clone()
        return hook

    handles = [b.register_forward_pre_hook(make(i), with_kwargs=True) for i, b in enumerate(blocks)]
    return seen, handles


@pytest.mark.parametrize("fixture", ["tiny_clip", "vitb16_clip"])
def test_no_prompts_reproduces_open_clip(fixture, request):
    clip = request.getfixturevalue(fixture)
    torch.manual_seed(1)
    size = clip.image_size
    images = torch.randn(2, 3, size, size)
    with torch.no_grad():
        ref_img = clip.model.encode_image(images)
        ref_txt = clip.model.encode_text(clip.tokenizer(TEXTS))
        ours_txt = clip.encode_text(clip.tokenize(TEXTS))
        # a zero-token visual prompt takes our own ViT path, not open_clip's forward
        ours_img = clip.encode_image(images, ctx=torch.zeros(0, clip.vision_width))
    torch.testing.assert_close(ours_txt, ref_txt, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ours_img, ref_img, rtol=1e-5, atol=1e-5)


def test_trimmed_text_context_is_exact(tiny_clip):
    torch.manual_seed(2)
    n = 4
    ctx = torch.randn(n, tiny_clip.text_width)
    deep = [None] + [torch.randn(n, tiny_clip.text_width) for _ in range(tiny_clip.text_layers - 1)]
    with torch.no_grad():
        tiny_clip.trim_text = False
        full_batch = tiny_clip.tokenize(TEXTS)
        full = tiny_clip.encode_text(full_batch, ctx, deep)
        tiny_clip.trim_text = True
        trimmed_batch = tiny_clip.tokenize(TEXTS)
        trimmed = tiny_clip.encode_text(trimmed_batch, ctx, deep)
    assert full_batch.ids.shape[1] == 77
    assert trimmed_batch.ids.shape[1] == int(trimmed_batch.eot.max()) + 1 < 77
    torch.testing.assert_close(trimmed, full, rtol=1e-5, atol=1e-5)


def test_text_context_occupies_positions_after_sos(tiny_clip):
    batch = tiny_clip.tokenize(TEXTS)
    n = 4
    # The original embeddings of tokens 1..n as context must reproduce the unprompted features exactly.
    ctx = batch.embeds[:, 1:1 + n].clone()
    with torch.no_grad():
        torch.testing.assert_close(tiny_clip.encode_text(batch, ctx), tiny_clip.encode_text(batch))
        other = tiny_clip.encode_text(batch, ctx + 1.0)
    assert not torch.allclose(other, tiny_clip.encode_text(batch))


def test_deep_text_prompt_replaces_positions_1_to_n(tiny_clip):
    batch = tiny_clip.tokenize(TEXTS)
    n, d = 2, tiny_clip.text_width
    ctx = torch.randn(n, d)
    p2 = torch.randn(n, d)
    seen, handles = _hook_inputs(tiny_clip.model.transformer.resblocks)
    try:
        with torch.no_grad():
            tiny_clip.encode_text(batch, ctx, [None, None, p2])
            with_deep = {k: v.clone() for k, v in seen.items()}
            tiny_clip.encode_text(batch, ctx, None)
    finally:
        for h in handles:
            h.remove()
    # block 2 sees p2 at positions 1..n, everything else as it would have been
    assert torch.equal(with_deep[2][:, 1:1 + n], p2.expand(len(TEXTS), -1, -1))
    assert torch.equal(with_deep[2][:, 0], seen[2][:, 0])
    assert torch.equal(with_deep[1], seen[1])


def test_visual_prompts_are_appended_after_patches_and_replaced(tiny_clip):
    torch.manual_seed(3)
    n, d = 3, tiny_clip.vision_width
    images = torch.randn(2, 3, tiny_clip.image_size, tiny_clip.image_size)
    ctx, p1 = torch.randn(n, d), torch.randn(n, d)
    v = tiny_clip.model.visual
    n_patches = (tiny_clip.image_size // 8) ** 2
    seen, handles = _hook_inputs(v.transformer.resblocks)
    try:
        with torch.no_grad():
            tiny_clip.encode_image(images, ctx, [None, p1])
    finally:
        for h in handles:
            h.remove()
    x0 = seen[0]
    assert x0.shape[1] == 1 + n_patches + n
    # the appended tokens carry no positional embedding and pass through ln_pre
    torch.testing.assert_close(x0[:, -n:], v.ln_pre(ctx).expand(2, -1, -1))
    assert torch.equal(seen[1][:, -n:], p1.expand(2, -1, -1))
    assert seen[2].shape[1] == 1 + n_patches + n  # carried forward, sequence length unchanged


def test_prompt_errors(tiny_clip):
    batch = tiny_clip.tokenize(TEXTS)
    with pytest.raises(PromptError, match="width"):
        tiny_clip.encode_text(batch, torch.randn(2, tiny_clip.text_width + 1))
    too_deep = [None] * (tiny_clip.text_layers + 1)
    with pytest.raises(PromptError, match="layers"):
        tiny_clip.encode_text(batch, torch.randn(2, tiny_clip.text_width), too_deep)
    with pytest.raises(PromptError, match="tokens"):
        tiny_clip.encode_text(batch, torch.randn(2, tiny_clip.text_width), [None, torch.randn(3, tiny_clip.text_width)])


def test_non_vit_backbone_refuses_visual_prompts(tmp_path):
    import json

    import open_clip

    from mudpt.promptable import PromptableCLIP

    cfg = {"embed_dim": 32, "vision_cfg": {"image_size": 32, "layers": [1, 1, 1, 1], "width": 16},
           "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 1, "layers": 1}}
    (tmp_path / "test-rn.json").write_text(json.dumps(cfg))
    open_clip.add_model_config(tmp_path / "test-rn.json")
    model = open_clip.create_model("test-rn", pretrained=None).eval()
    clip = PromptableCLIP(model, open_clip.get_tokenizer("RN50"), name="test-rn")
    images = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        clip.encode_image(images)  # plain path works
        with pytest.raises(PromptError, match="ViT"):
            clip.encode_image(images, torch.randn(2, 16))
