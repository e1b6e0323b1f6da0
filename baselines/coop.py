"""CoOp (Zhou et al., IJCV 2022): a unified learnable context in front of the class name.

[SOS, ctx_1..ctx_n, class tokens, ".", EOS]; random N(0, 0.02^2) init behind n placeholder tokens,
or initialised from the words of `ctx_init` (then n = the number of init tokens, as CoOp does).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from mudpt.config import Recipe
from mudpt.method import PromptMethod, PromptSet, int_range, register_method
from mudpt.prompt_parts import token_count, class_strings, text_context


@dataclass(frozen=True)
class CoOpOptions:
    n_ctx: int = int_range(1, 64, 16)
    ctx_init: str = ""  # "a photo of a" gives the ctxv1 variant (n_ctx becomes 4)


@register_method
class CoOp(PromptMethod):
    name = "coop"
    description = "CoOp: unified learnable text context, class token at the end"
    paper = "Zhou et al., IJCV 2022 (KaiyangZhou/CoOp)"
    Options = CoOpOptions

    def __init__(self, clip, options: CoOpOptions):
        super().__init__(clip, options)
        n = token_count(clip, options.ctx_init) if options.ctx_init.strip() else options.n_ctx
        self.ctx, self.prefix = text_context(clip, n, options.ctx_init, keep_full_init=False)

    def class_texts(self, classnames: Sequence[str], template: str) -> list[str]:
        return class_strings(self.prefix, classnames)

    def prompts(self) -> PromptSet:
        return PromptSet(text_ctx=self.ctx)

    @classmethod
    def default_recipe(cls, shots: int, dataset: str) -> Recipe:
        # PROTOCOLS §3.3: 50 / 100 / 100 / 200 / 200 epochs for 1 / 2 / 4 / 8 / 16 shots; ImageNet 50.
        epochs = 50 if dataset == "imagenet" or shots <= 1 else 100 if shots <= 4 else 200
        return Recipe(lr=0.002, batch_size=32, epochs=epochs)

    @classmethod
    def search_space(cls, trial, n_layers: int):
        return {"options": {"n_ctx": trial.suggest_categorical("n_ctx", [4, 8, 16])},
                "recipe": {"lr": trial.suggest_float("lr", 1e-4, 5e-2, log=True)}}
