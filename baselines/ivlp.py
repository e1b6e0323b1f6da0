"""IVLP: independent deep vision-language prompts, no coupling (MaPLe's baseline; METHODS §5.1, §6.6).

Equivalent to `mudpt --fusion off` up to the text string and depths: IVLP keeps the full
"a photo of a {cls}." and learns only its first n tokens (trap T2).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from mudpt.config import Recipe
from mudpt.method import PromptMethod, PromptSet, int_range, register_method
from mudpt.prompt_parts import class_strings, deep_list, normal_prompt, text_context


@dataclass(frozen=True)
class IVLPOptions:
    n_ctx_text: int = int_range(1, 4, 2)
    n_ctx_vision: int = int_range(1, 64, 2)
    text_depth: int = int_range(1, "layers", 12)
    vision_depth: int = int_range(1, "layers", 12)
    ctx_init: str = "a photo of a"


@register_method
class IVLP(PromptMethod):
    name = "ivlp"
    description = "IVLP: independent deep text and visual prompts"
    paper = "Khattak et al., CVPR 2023 (MaPLe repo, IVLP config)"
    Options = IVLPOptions

    def __init__(self, clip, options: IVLPOptions):
        super().__init__(clip, options)
        o = options
        self.text_ctx, self.prefix = text_context(clip, o.n_ctx_text, o.ctx_init, keep_full_init=True)
        self.text_deep = normal_prompt(o.text_depth - 1, o.n_ctx_text, clip.text_width) if o.text_depth > 1 else None
        self.vision_ctx = normal_prompt(o.n_ctx_vision, clip.vision_width)
        self.vision_deep = (normal_prompt(o.vision_depth - 1, o.n_ctx_vision, clip.vision_width)
                            if o.vision_depth > 1 else None)

    def class_texts(self, classnames: Sequence[str], template: str) -> list[str]:
        return class_strings(self.prefix, classnames)

    def prompts(self) -> PromptSet:
        o = self.options
        return PromptSet(self.text_ctx, deep_list(self.text_deep, o.text_depth),
                         self.vision_ctx, deep_list(self.vision_deep, o.vision_depth))

    @classmethod
    def default_recipe(cls, shots: int, dataset: str) -> Recipe:
        return Recipe(lr=0.0035, batch_size=4, epochs=5)
