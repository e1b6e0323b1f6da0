"""Zero-shot CLIP with the per-dataset hand-crafted template (CoOp's `ZeroshotCLIP`, PROTOCOLS §1.1)."""
from __future__ import annotations

from typing import Sequence

from mudpt.method import PromptMethod, register_method


@register_method
class ZeroShotCLIP(PromptMethod):
    name = "zsclip"
    description = "zero-shot CLIP, one hand-crafted template per dataset"
    paper = "Radford et al., ICML 2021; templates from CoOp's trainers/zsclip.py"
    trains = False
    fixed_text = True

    def class_texts(self, classnames: Sequence[str], template: str) -> list[str]:
        return [template.format(c.replace("_", " ")) for c in classnames]
