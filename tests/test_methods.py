"""Every method: official parameter counts, gradient flow, fusion directions, depth, checkpoints."""
from __future__ import annotations

import pytest
import torch

from mudpt.method import MethodError, build_method, get_method, list_methods, resolve_options

# METHODS.md §10 / §5.2: trainable parameters on ViT-B/16 shapes.
OFFICIAL_COUNTS = [
    ("zsclip", {}, 0),
    ("coop", {}, 8_192),
    ("cocoop", {}, 35_360),
    ("vpt-shallow", {}, 6_144),
    ("vpt-deep", {}, 73_728),
    ("ivlp", {}, 30_720),
    ("maple", {}, 3_555_072),
    ("mudpt", {}, 1_227_776),
    ("mudpt", {"n_ctx": 2}, 1_204_736),
    ("mudpt", {"n_ctx": 2, "depth": 8}, 1_202_176),
    ("mudpt", {"n_ctx": 2, "fusion_net": "injection"}, 11_056_128),
    ("mudpt", {"n_ctx": 4, "fusion_net": "injection"}, 11_079_168),
]


@pytest.mark.parametrize("name,options,count", OFFICIAL_COUNTS)
def test_official_trainable_counts(vitb16_clip, name, options, count):
    assert build_method(name, vitb16_clip, options).n_trainable() == count


def test_fusion_off_counts_only_prompts(vitb16_clip):
    # n=4, J=9: T_0 + 8 deep text sets (512) and V_0 + 8 deep visual sets (768); no maps
    expected = 9 * 4 * 512 + 9 * 4 * 768
    assert build_method("mudpt", vitb16_clip, {"fusion": "off"}).n_trainable() == expected


def test_registry_lists_every_catalogue_method():
    names = {m.name for m in list_methods()}
    assert {"zsclip", "coop", "cocoop", "vpt-shallow", "vpt-deep", "ivlp", "maple", "mudpt"} <= names


def test_bad_switches_are_clear_errors(tiny_clip):
    with pytest.raises(MethodError, match="valid: fusion"):
        build_method("mudpt", tiny_clip, {"fusoin": "bi"})
    with pytest.raises(MethodError, match=r"choose one of \['bi', 'off', 't2v', 'v2t'\]"):
        build_method("mudpt", tiny_clip, {"fusion": "both"})
    with pytest.raises(MethodError, match=r"\[1, 3\]"):
        build_method("mudpt", tiny_clip, {"depth": 4})
    with pytest.raises(MethodError, match="unknown method 'mudtp'"):
        get_method("mudtp")


def test_depth_default_clamps_to_small_backbones(tiny_clip):
    assert resolve_options(get_method("mudpt"), {}, n_layers=3).depth == 3
    assert resolve_options(get_method("mudpt"), {}, n_layers=12).depth == 9


CLASSNAMES = ["dog", "golden_retriever", "cat"]


def _forward(method, clip):
    torch.manual_seed(0)
    images = torch.randn(2, 3, clip.image_size, clip.image_size)
    text = clip.tokenize(method.class_texts(CLASSNAMES, "a photo of a {}."))
    return method(images, text)


@pytest.mark.parametrize("name,options", [
    ("coop", {}), ("cocoop", {}), ("vpt-shallow", {}), ("vpt-deep", {}), ("ivlp", {}), ("maple", {}),
    ("mudpt", {}), ("mudpt", {"fusion": "off"}), ("mudpt", {"fusion": "t2v"}), ("mudpt", {"fusion": "v2t"}),
    ("mudpt", {"fusion_net": "injection"}), ("mudpt", {"fusion_net": "injection", "fusion": "t2v"}),
    ("mudpt", {"depth": 1}),
])
def test_gradients_reach_every_trainable_tensor_and_nothing_else(tiny_clip, name, options):
    torch.manual_seed(0)
    method = build_method(name, tiny_clip, options)
    logits = _forward(method, tiny_clip)
    logits.logsumexp(-1).sum().backward()
    for pname, p in method.named_parameters():
        assert p.requires_grad
        assert p.grad is not None and p.grad.abs().sum() > 0, f"{name}: no gradient reaches {pname}"
    assert all(p.grad is None for p in tiny_clip.model.parameters())


def _text_and_vision(method, clip):
    p = method.prompts()
    text = clip.tokenize(method.class_texts(CLASSNAMES, "{}"))
    txt = method.text_features(text, p)
    vis = torch.cat([p.vision_ctx.flatten()] + [t.flatten() for t in p.vision_deep if t is not None])
    return txt.detach(), vis.detach()


@pytest.mark.parametrize("fusion_net", ["linear", "injection"])
@pytest.mark.parametrize("fusion,t_to_v,v_to_t", [("bi", True, True), ("t2v", True, False),
                                                  ("v2t", False, True), ("off", False, False)])
def test_fusion_direction(tiny_clip, fusion, fusion_net, t_to_v, v_to_t):
    torch.manual_seed(0)
    method = build_method("mudpt", tiny_clip, {"fusion": fusion, "fusion_net": fusion_net, "depth": 3})
    txt0, vis0 = _text_and_vision(method, tiny_clip)
    with torch.no_grad():  # perturb the deep text prompts: do the visual tokens move?
        method.text_deep.add_(0.5)
    txt1, vis1 = _text_and_vision(method, tiny_clip)
    assert not torch.allclose(txt1, txt0)
    assert (not torch.allclose(vis1, vis0)) == t_to_v
    with torch.no_grad():  # perturb the deep visual prompts: do the text features move?
        method.vision_deep.add_(0.5)
    txt2, vis2 = _text_and_vision(method, tiny_clip)
    assert not torch.allclose(vis2, vis1)
    assert (not torch.allclose(txt2, txt1)) == v_to_t


def test_layer0_fusion_switch(tiny_clip):
    on = build_method("mudpt", tiny_clip, {"depth": 1})
    off = build_method("mudpt", tiny_clip, {"depth": 1, "layer0_t2v": False})
    assert not torch.equal(on.prompts().vision_ctx, on.vision_ctx)
    assert torch.equal(off.prompts().vision_ctx, off.vision_ctx)


@pytest.mark.parametrize("depth", [1, 2, 3])
def test_depth_semantics(tiny_clip, depth):
    p = build_method("mudpt", tiny_clip, {"depth": depth}).prompts()
    for deep in (p.text_deep, p.vision_deep):
        if depth == 1:
            assert deep is None
        else:  # blocks 1..J-1 get new prompts, block 0 gets the layer-0 ones, the rest carry forward
            assert len(deep) == depth and deep[0] is None and all(t is not None for t in deep[1:])


def test_text_strings_follow_each_methods_rule(tiny_clip):
    mudpt2 = build_method("mudpt", tiny_clip, {"n_ctx": 2})
    maple = build_method("maple", tiny_clip)
    coop = build_method("coop", tiny_clip)
    coop_v1 = build_method("coop", tiny_clip, {"ctx_init": "a photo of a"})
    assert mudpt2.class_texts(["golden_retriever"], "") == ["a photo golden retriever."]
    assert maple.class_texts(["golden_retriever"], "") == ["a photo of a golden retriever."]
    assert coop.class_texts(["dog"], "") == [" ".join(["X"] * 16) + " dog."]
    assert coop_v1.ctx.shape[0] == 4 and coop_v1.class_texts(["dog"], "") == ["a photo of a dog."]
    # the context initialisation is the embedding of the init words (trap T10 guard beyond 4)
    torch.testing.assert_close(maple.text_ctx.data, tiny_clip.word_embeddings("a photo of a", 2))
    assert build_method("mudpt", tiny_clip, {"n_ctx": 6}).class_texts(["dog"], "") == ["X X X X X X dog."]


def test_checkpoints_hold_only_learned_tensors_and_transfer_to_new_classes(tiny_clip):
    torch.manual_seed(0)
    a = build_method("mudpt", tiny_clip, {"depth": 2})
    state, meta = a.prompt_state(), a.checkpoint_metadata()
    assert sum(t.numel() for t in state.values()) == a.n_trainable()
    torch.manual_seed(1)
    b = build_method("mudpt", tiny_clip, {"depth": 2})
    b.load_prompt_state(state, meta)
    images = torch.randn(2, 3, tiny_clip.image_size, tiny_clip.image_size)
    new_classes = tiny_clip.tokenize(a.class_texts(["horse", "zebra", "moose", "owl"], "{}"))
    with torch.no_grad():
        torch.testing.assert_close(a(images, new_classes), b(images, new_classes))
    with pytest.raises(MethodError, match="for method 'mudpt', not 'maple'"):
        build_method("maple", tiny_clip).load_prompt_state(state, meta)
    with pytest.raises(MethodError, match="missing"):
        build_method("mudpt", tiny_clip, {"depth": 2, "fusion": "off"}).load_prompt_state(state, meta)
    with pytest.raises(MethodError, match="shape"):
        build_method("mudpt", tiny_clip, {"depth": 2, "n_ctx": 2}).load_prompt_state(state, meta)
