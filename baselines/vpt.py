"""Visual prompt tuning on CLIP (the "deep vision prompting" baseline of MaPLe, METHODS §6.5).

n visual tokens N(0, 0.02^2) appended after the patch tokens; VPT-deep replaces them in every block,
VPT-shallow only has the layer-0 tokens. The text side is the frozen "a photo of a {}." prompt.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from mudpt.config import Recipe
from mudpt.method import PromptMethod, PromptSet, int_range, register_method
from mudpt.prompt_parts import class_strings, deep_list, normal_prompt


@dataclass(frozen=True)
class VPTDeepOptions:
    n_ctx: int = int_range(1, 64, 8)
    depth: int = int_range(1, "layers", 12)


@dataclass(frozen=True)
class VPTShallowOptions:
    n_ctx: int = int_range(1, 64, 8)
    depth: int = int_range(1, 1, 1)


class _VPT(PromptMethod):
    fixed_text = True

    def __init__(self, clip, options):
        super().__init__(clip, options)
        d = options.depth
        self.vision_ctx = normal_prompt(options.n_ctx, clip.vision_width)
        self.vision_deep = normal_prompt(d - 1, options.n_ctx, clip.vision_width) if d > 1 else None

    def class_texts(self, classnames: Sequence[str], template: str) -> list[str]:
        return class_strings("a photo of a", classnames)

    def prompts(self) -> PromptSet:
        return PromptSet(vision_ctx=self.vision_ctx, vision_deep=deep_list(self.vision_deep, self.options.depth))

    @classmethod
    def default_recipe(cls, shots: int, dataset: str) -> Recipe:
        return Recipe(lr=0.0025, batch_size=4, epochs=5)


@register_method
class VPTDeep(_VPT):
    name = "vpt-deep"
    description = "VPT-deep: visual prompts replaced at every layer, frozen hand-crafted text"
    paper = "Jia et al., ECCV 2022; CLIP variant as in MaPLe's deep vision prompting"
    Options = VPTDeepOptions


@register_method
class VPTShallow(_VPT):
    name = "vpt-shallow"
    description = "VPT-shallow: visual prompts at the input only, frozen hand-crafted text"
    paper = "Jia et al., ECCV 2022"
    Options = VPTShallowOptions
