"""CoCoOp (Zhou et al., CVPR 2022): context conditioned on the image by a small meta-net.

ctx (n tokens, "a photo of a" init) + pi(x), pi = Linear(D -> D/16) -> ReLU -> Linear(D/16 -> d_t)
applied to the normalised frozen image feature. The text tower runs once per image over all
classes, so text features are never cached (METHODS §6.4).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from mudpt.config import Recipe
from mudpt.method import PromptMethod, int_range, register_method
from mudpt.prompt_parts import token_count, class_strings, text_context
from mudpt.promptable import TextBatch


@dataclass(frozen=True)
class CoCoOpOptions:
    n_ctx: int = int_range(1, 16, 4)
    ctx_init: str = "a photo of a"


@register_method
class CoCoOp(PromptMethod):
    name = "cocoop"
    description = "CoCoOp: image-conditioned context via a meta-net"
    paper = "Zhou et al., CVPR 2022 (KaiyangZhou/CoOp)"
    Options = CoCoOpOptions
    image_conditioned = True

    def __init__(self, clip, options: CoCoOpOptions):
        super().__init__(clip, options)
        n = token_count(clip, options.ctx_init) if options.ctx_init.strip() else options.n_ctx
        self.ctx, self.prefix = text_context(clip, n, options.ctx_init, keep_full_init=False)
        d = clip.embed_dim
        self.meta_net = nn.Sequential(nn.Linear(d, d // 16), nn.ReLU(inplace=True), nn.Linear(d // 16, clip.text_width))

    def class_texts(self, classnames: Sequence[str], template: str) -> list[str]:
        return class_strings(self.prefix, classnames)

    def forward(self, images: torch.Tensor, text: TextBatch, text_features: torch.Tensor | None = None):
        with torch.no_grad():
            img = self.clip.encode_image(images)
        img = F.normalize(img, dim=-1)
        shifted = self.ctx.unsqueeze(0) + self.meta_net(img).unsqueeze(1)  # (B, n, d_t)
        scale = self.clip.logit_scale
        rows = []
        for i in range(images.shape[0]):  # one text pass per image over all classes, as the paper defines
            txt = F.normalize(self.clip.encode_text(text, shifted[i]), dim=-1)
            rows.append(scale * img[i] @ txt.t())
        return torch.stack(rows)

    @classmethod
    def default_recipe(cls, shots: int, dataset: str) -> Recipe:
        return Recipe(lr=0.002, batch_size=1, epochs=10)
