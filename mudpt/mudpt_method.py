"""MuDPT: Multi-modal Deep-symphysis Prompt Tuning (Miao et al., ICME 2023).

Learnable text prompts T_0..T_{J-1} and visual prompts V_0..V_{J-1}, fused across modalities
(METHODS.md §3.2, §5.4). With the released code's fusion (`fusion_net=linear`, `fusion=bi`):

| layer        | text tokens             | visual tokens                |
| 0            | T_0                     | V_0 + W0_{t->v} T_0          |
| 1 .. J-1     | T_j + W_{v->t} V_j      | V_j + W_{t->v} T_j           |
| J ..         | carried forward         | carried forward              |

One shared Linear per direction serves all deep layers, plus a separate layer-0 t->v Linear. The
fusion inputs are always the *raw* other-modality parameters (trap T5); nothing depends on the image.
Switches give the ablations: `fusion` off (= independent V-L prompts), t2v or v2t only (additive,
configs c'/d'), and `fusion_net=injection`, the paper figure's injection model (LN -> one pre-LN
transformer block over the n tokens of a layer -> LN -> Linear).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import nn

from .config import Recipe
from .method import PromptMethod, PromptSet, choice, int_range, register_method
from .prompt_parts import InjectionNet, class_strings, deep_list, normal_prompt, text_context


@dataclass(frozen=True)
class MuDPTOptions:
    fusion: str = choice("bi", "off", "t2v", "v2t", default="bi")
    fusion_net: str = choice("linear", "injection", default="linear")
    depth: int = int_range(1, "layers", 9)  # J: prompted blocks 0..J-1 in both towers
    n_ctx: int = int_range(1, 32, 4)
    ctx_init: str = "a photo of a"
    layer0_t2v: bool = choice(True, False, default=True)  # released code: True; paper figure: False


@register_method
class MuDPT(PromptMethod):
    name = "mudpt"
    description = "MuDPT: deep text+visual prompts with bidirectional cross-modal fusion"
    paper = "Miao et al., ICME 2023 (arXiv 2306.11400); released code Mechrev0/MuDPT HEAD"
    Options = MuDPTOptions

    def __init__(self, clip, options: MuDPTOptions):
        super().__init__(clip, options)
        o = options
        n, J, dt, dv = o.n_ctx, o.depth, clip.text_width, clip.vision_width
        self.t2v = o.fusion in ("bi", "t2v")
        self.v2t = o.fusion in ("bi", "v2t")
        self.text_ctx, self.prefix = text_context(clip, n, o.ctx_init, keep_full_init=False)
        self.vision_ctx = normal_prompt(n, dv)
        self.text_deep = normal_prompt(J - 1, n, dt) if J > 1 else None
        self.vision_deep = normal_prompt(J - 1, n, dv) if J > 1 else None
        if o.fusion_net == "linear":
            self.t2v_layer0 = nn.Linear(dt, dv) if self.t2v and o.layer0_t2v else None
            self.t2v_deep = nn.Linear(dt, dv) if self.t2v and J > 1 else None
            self.v2t_deep = nn.Linear(dv, dt) if self.v2t and J > 1 else None
        else:
            uses_t2v = self.t2v and (J > 1 or o.layer0_t2v)
            self.t2v_net = InjectionNet(dt, dv) if uses_t2v else None
            self.v2t_net = InjectionNet(dv, dt) if self.v2t and J > 1 else None

    def class_texts(self, classnames: Sequence[str], template: str) -> list[str]:
        return class_strings(self.prefix, classnames)

    @classmethod
    def default_recipe(cls, shots: int, dataset: str) -> Recipe:
        return Recipe(lr=0.0025, batch_size=4, epochs=10)

    @classmethod
    def search_space(cls, trial, n_layers: int):
        return {
            "options": {"depth": trial.suggest_int("depth", 1, n_layers),
                        "n_ctx": trial.suggest_categorical("n_ctx", [2, 4]),
                        "fusion_net": trial.suggest_categorical("fusion_net", ["linear", "injection"])},
            "recipe": {"lr": trial.suggest_float("lr", 1e-4, 5e-2, log=True)},
        }

    def _t2v_maps(self) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Text->vision contributions for layer 0 and for the deep layers."""
        if not self.t2v:
            return None, None
        if self.options.fusion_net == "linear":
            s0 = self.t2v_layer0(self.text_ctx) if self.t2v_layer0 is not None else None
            sd = self.t2v_deep(self.text_deep) if self.t2v_deep is not None else None
            return s0, sd
        stack = self.text_ctx.unsqueeze(0)
        if self.text_deep is not None:
            stack = torch.cat([stack, self.text_deep], dim=0)
        out = self.t2v_net(stack)
        return (out[0] if self.options.layer0_t2v else None), (out[1:] if self.text_deep is not None else None)

    def _v2t_maps(self) -> torch.Tensor | None:
        if not self.v2t or self.vision_deep is None:
            return None
        net = self.v2t_deep if self.options.fusion_net == "linear" else self.v2t_net
        return net(self.vision_deep)

    def prompts(self) -> PromptSet:
        s0, sd = self._t2v_maps()
        rd = self._v2t_maps()
        vision0 = self.vision_ctx + s0 if s0 is not None else self.vision_ctx
        vision_deep = self.vision_deep + sd if sd is not None else self.vision_deep
        text_deep = self.text_deep + rd if rd is not None else self.text_deep
        J = self.options.depth
        return PromptSet(self.text_ctx, deep_list(text_deep, J), vision0, deep_list(vision_deep, J))
