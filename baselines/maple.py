"""MaPLe (Khattak et al., CVPR 2023): text prompts coupled to vision prompts by per-layer Linear maps.

Layer 0: vision tokens = Linear_0(text ctx); block j = 1..J-1: text tokens = P_j, vision tokens =
Linear_j(P_j). No independent visual prompts. Text string "a photo of a {cls}." with its first n
tokens learnable (METHODS §6.7). Official runs cast the maps to fp16; we keep fp32 / autocast (T7).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import nn

from mudpt.config import Recipe
from mudpt.method import PromptMethod, PromptSet, int_range, register_method
from mudpt.prompt_parts import class_strings, deep_list, normal_prompt, text_context


@dataclass(frozen=True)
class MaPLeOptions:
    n_ctx: int = int_range(1, 4, 2)
    depth: int = int_range(1, "layers", 9)
    ctx_init: str = "a photo of a"


@register_method
class MaPLe(PromptMethod):
    name = "maple"
    description = "MaPLe: deep text prompts, vision prompts = per-layer Linear(text)"
    paper = "Khattak et al., CVPR 2023 (muzairkhattak/multimodal-prompt-learning)"
    Options = MaPLeOptions

    def __init__(self, clip, options: MaPLeOptions):
        super().__init__(clip, options)
        n, J, dt, dv = options.n_ctx, options.depth, clip.text_width, clip.vision_width
        self.text_ctx, self.prefix = text_context(clip, n, options.ctx_init, keep_full_init=True)
        self.proj0 = nn.Linear(dt, dv)
        self.text_deep = normal_prompt(J - 1, n, dt) if J > 1 else None
        self.deep_projs = nn.ModuleList(nn.Linear(dt, dv) for _ in range(J - 1))

    def class_texts(self, classnames: Sequence[str], template: str) -> list[str]:
        return class_strings(self.prefix, classnames)

    def prompts(self) -> PromptSet:
        J = self.options.depth
        vision_deep = None
        if self.text_deep is not None:
            vision_deep = torch.stack([proj(self.text_deep[j]) for j, proj in enumerate(self.deep_projs)])
        return PromptSet(self.text_ctx, deep_list(self.text_deep, J),
                         self.proj0(self.text_ctx), deep_list(vision_deep, J))

    @classmethod
    def default_recipe(cls, shots: int, dataset: str) -> Recipe:
        return Recipe(lr=0.0035, batch_size=4, epochs=5)
