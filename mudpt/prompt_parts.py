"""Building blocks shared by methods: context initialisation, prompt stacks, the injection block."""
from __future__ import annotations

import torch
from torch import nn

from .promptable import PromptableCLIP, PromptError

PLACEHOLDER = "X"


def normal_prompt(*shape: int) -> nn.Parameter:
    """Prompt tensors are initialised N(0, 0.02^2) in every official implementation."""
    return nn.Parameter(torch.empty(*shape).normal_(std=0.02))


def token_count(clip: PromptableCLIP, text: str) -> int:
    return int(clip.tokenizer([text]).argmax(dim=-1)) - 1


def text_context(clip: PromptableCLIP, n: int, init: str, keep_full_init: bool) -> tuple[nn.Parameter, str]:
    """Learnable context for positions 1..n and the words placed before each class name.

    keep_full_init=False (MuDPT HEAD, CoOp ctxv1): the string holds only the n learnable words,
    "a photo {cls}." for n=2. keep_full_init=True (MaPLe, IVLP): the string keeps the whole init,
    "a photo of a {cls}.", and only its first n tokens are learnable. If the init has fewer than n
    tokens (or is empty), the context is random N(0, 0.02^2) behind n placeholder tokens (trap T10).
    """
    if n < 1:
        raise PromptError(f"n_ctx must be >= 1, got {n}")
    init = (init or "").strip()
    if init and token_count(clip, init) >= n:
        words = init.split()
        prefix = init if keep_full_init else " ".join(words[:n])
        if not keep_full_init and token_count(clip, prefix) != n:
            raise PromptError(f"the first {n} words of ctx_init {init!r} are not {n} tokens; "
                              f"use an init whose words are single tokens")
        return nn.Parameter(clip.word_embeddings(init, n)), prefix
    return normal_prompt(n, clip.text_width), " ".join([PLACEHOLDER] * n)


def class_strings(prefix: str, classnames, suffix: str = ".") -> list[str]:
    return [f"{prefix} {c.replace('_', ' ')}{suffix}".strip() for c in classnames]


def deep_list(stack: torch.Tensor | list | None, depth: int) -> list[torch.Tensor | None] | None:
    """Deep prompts for blocks 1..depth-1 as the wrapper's per-block list (index 0 unused)."""
    if stack is None or depth <= 1:
        return None
    return [None] + [stack[j] for j in range(depth - 1)]


class QuickGELU(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


class LightTransformer(nn.Module):
    """One pre-LN residual block (MHA with width/64 heads, MLP 4x with QuickGELU), no mask (METHODS §5.2)."""

    def __init__(self, width: int):
        super().__init__()
        self.ln_1 = nn.LayerNorm(width)
        self.attn = nn.MultiheadAttention(width, max(1, width // 64), batch_first=True)
        self.ln_2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), QuickGELU(), nn.Linear(4 * width, width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.ln_1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.mlp(self.ln_2(x))


class InjectionNet(nn.Module):
    """The paper's injection model: LN -> LightTransformer over the n tokens of each layer -> LN -> Linear.

    Input (layers, n, d_in): attention runs over the n tokens of one layer; layers are the batch (trap T12).
    """

    def __init__(self, d_in: int, d_out: int):
        super().__init__()
        self.ln_in = nn.LayerNorm(d_in)
        self.block = LightTransformer(d_in)
        self.ln_out = nn.LayerNorm(d_in)
        self.proj = nn.Linear(d_in, d_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(self.ln_out(self.block(self.ln_in(x))))
