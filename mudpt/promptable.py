"""The one promptable wrapper around a frozen open_clip ViT CLIP.

Methods never re-implement a transformer: they hand this wrapper per-layer prompt tensors.

Semantics (METHODS.md §1, §3.2, §8):
* text: learnable context vectors occupy token positions 1..n (right after SOS) and receive the
  positional embeddings of those positions; a deep text prompt for block i >= 1 overwrites positions
  1..n of the hidden states before that block; the causal mask is unchanged; the feature is the
  EOT position (argmax of the ids) after ln_final, times text_projection.
* vision: prompt tokens are appended after the patch tokens (after the positional embedding, so they
  get none) and go through ln_pre; a deep visual prompt for block i >= 1 overwrites the last n tokens
  before that block; the feature is ln_post of the CLS token times proj.
* `deep[i]` (i >= 1) is the prompt for block i, `None` means "carry the previous tokens forward".
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .errors import UserError

DeepPrompts = Sequence[torch.Tensor | None]


class PromptError(UserError):
    """A prompt that does not fit the backbone (wrong width, too deep, visual prompts on a non-ViT)."""


@dataclass
class TextBatch:
    """Tokenised class prompts: prompt-independent, computed once per class set."""

    ids: torch.Tensor  # (C, L) token ids, trimmed to the longest prompt unless trimming is off
    eot: torch.Tensor  # (C,) EOT position of each prompt
    embeds: torch.Tensor  # (C, L, d_t) frozen token embeddings

    def __len__(self) -> int:
        return self.ids.shape[0]

    def to(self, device) -> "TextBatch":
        return TextBatch(self.ids.to(device), self.eot.to(device), self.embeds.to(device))


class PromptableCLIP(nn.Module):
    def __init__(self, model: nn.Module, tokenizer, name: str = ""):
        super().__init__()
        self.model = model.eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.tokenizer = tokenizer
        self.name = name
        self.trim_text = True  # exact under the causal mask; off only to measure the reference cost
        self.text_layers = len(model.transformer.resblocks)
        self.text_width = model.token_embedding.weight.shape[1]
        self.context_length = model.positional_embedding.shape[0]
        if getattr(model, "text_pool_type", "argmax") != "argmax":
            raise PromptError(f"{name}: text pooling {model.text_pool_type!r} is not supported (CLIP uses argmax/EOT)")
        v = model.visual
        self.is_vit = hasattr(v, "conv1") and hasattr(v, "transformer") and hasattr(v, "class_embedding")
        if self.is_vit:
            self.vision_layers = len(v.transformer.resblocks)
            self.vision_width = v.class_embedding.shape[0]
            self.image_size = int(v.image_size[0] if isinstance(v.image_size, (tuple, list)) else v.image_size)
            self._vit_supported = getattr(v, "attn_pool", None) is None and getattr(v, "pool_type", "tok") == "tok"
        else:
            self.vision_layers, self.vision_width, self._vit_supported = 0, 0, False
            size = getattr(v, "image_size", 224)
            self.image_size = int(size[0] if isinstance(size, (tuple, list)) else size)
        self.embed_dim = model.text_projection.shape[1] if isinstance(model.text_projection, torch.Tensor) \
            else model.text_projection.out_features

    # ------------------------------------------------------------------ text
    def tokenize(self, texts: Sequence[str]) -> TextBatch:
        ids = self.tokenizer(list(texts))
        device = self.model.token_embedding.weight.device
        ids = ids.to(device)
        eot = ids.argmax(dim=-1)
        if self.trim_text:
            ids = ids[:, : int(eot.max()) + 1]
        with torch.no_grad():
            embeds = self.model.token_embedding(ids)
        return TextBatch(ids, eot, embeds)

    def word_embeddings(self, text: str, n: int) -> torch.Tensor:
        """Embeddings of tokens 1..n of `text` (SOS excluded): the 'a photo of a' initialisation."""
        ids = self.tokenizer([text]).to(self.model.token_embedding.weight.device)
        eot = int(ids.argmax(dim=-1))
        if n > eot - 1:
            raise PromptError(f"init text {text!r} has {eot - 1} tokens, fewer than n_ctx={n}")
        with torch.no_grad():
            return self.model.token_embedding(ids[0, 1: 1 + n]).clone()

    def encode_text(self, batch: TextBatch, ctx: torch.Tensor | None = None,
                    deep: DeepPrompts | None = None) -> torch.Tensor:
        """Text features (C, D). `ctx`: (n, d_t) shared or (C, n, d_t) per prompt."""
        m = self.model
        x = batch.embeds
        n = None
        if ctx is not None:
            n = ctx.shape[-2]
            self._check_width(ctx, self.text_width, "text context")
            if ctx.dim() == 2:
                ctx = ctx.unsqueeze(0).expand(x.shape[0], -1, -1)
            x = torch.cat([x[:, :1], ctx.to(x.dtype), x[:, 1 + n:]], dim=1)
        L = x.shape[1]
        x = x + m.positional_embedding[:L].to(x.dtype)
        mask = m.attn_mask[:L, :L] if m.attn_mask is not None else None
        x = self._run_blocks(m.transformer, x, deep, mask, self._replace_text, "text", n)
        x = m.ln_final(x)
        x = x[torch.arange(x.shape[0], device=x.device), batch.eot]
        proj = m.text_projection
        return proj(x) if isinstance(proj, nn.Linear) else x @ proj

    # ---------------------------------------------------------------- vision
    def encode_image(self, images: torch.Tensor, ctx: torch.Tensor | None = None,
                     deep: DeepPrompts | None = None) -> torch.Tensor:
        """Image features (B, D). `ctx`: (n, d_v) shared or (B, n, d_v) per image."""
        v = self.model.visual
        if ctx is None and not deep:
            return v(images)  # the untouched open_clip path
        if not self._vit_supported:
            raise PromptError(f"{self.name or 'this backbone'}: visual prompts need a ViT vision tower with CLS "
                              f"pooling (got {type(v).__name__}); use a text-only method (coop, zsclip) instead")
        x = v.conv1(images.to(v.conv1.weight.dtype))
        x = x.reshape(x.shape[0], x.shape[1], -1).permute(0, 2, 1)
        cls = v.class_embedding.to(x.dtype).view(1, 1, -1).expand(x.shape[0], -1, -1)
        x = torch.cat([cls, x], dim=1) + v.positional_embedding.to(x.dtype)
        x = v.patch_dropout(x)
        n = None
        if ctx is not None:
            self._check_width(ctx, self.vision_width, "visual prompt")
            n = ctx.shape[-2]
            if ctx.dim() == 2:
                ctx = ctx.unsqueeze(0).expand(x.shape[0], -1, -1)
            x = torch.cat([x, ctx.to(x.dtype)], dim=1)
        x = v.ln_pre(x)
        x = self._run_blocks(v.transformer, x, deep, None, self._replace_vision, "vision", n)
        pooled = v.ln_post(x[:, 0])
        return pooled @ v.proj if v.proj is not None else pooled

    # ---------------------------------------------------------------- shared
    @staticmethod
    def _replace_text(x: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
        n = p.shape[-2]
        p = p.unsqueeze(0).expand(x.shape[0], -1, -1) if p.dim() == 2 else p
        return torch.cat([x[:, :1], p.to(x.dtype), x[:, 1 + n:]], dim=1)

    @staticmethod
    def _replace_vision(x: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
        n = p.shape[-2]
        p = p.unsqueeze(0).expand(x.shape[0], -1, -1) if p.dim() == 2 else p
        return torch.cat([x[:, :-n], p.to(x.dtype)], dim=1)

    def _run_blocks(self, transformer, x, deep, mask, replace, tower: str, n: int | None):
        blocks = transformer.resblocks
        if deep is not None:
            if len(deep) > len(blocks):
                raise PromptError(f"{tower} deep prompts given for {len(deep)} layers; the backbone has {len(blocks)}")
            if deep and deep[0] is not None:
                raise PromptError(f"{tower} deep prompt for block 0: layer-0 prompts go in `ctx`")
        width = self.text_width if tower == "text" else self.vision_width
        batch_first = getattr(transformer, "batch_first", True)
        for i, blk in enumerate(blocks):
            p = deep[i] if deep is not None and i < len(deep) else None
            if p is not None:
                self._check_width(p, width, f"{tower} deep prompt {i}")
                if n is not None and p.shape[-2] != n:
                    raise PromptError(f"{tower} deep prompt {i} has {p.shape[-2]} tokens, layer 0 has {n}")
                if n is None and tower == "vision":
                    raise PromptError("deep visual prompts need layer-0 visual prompt tokens to replace")
                x = replace(x, p)
            if batch_first:
                x = blk(x, attn_mask=mask)
            else:
                x = blk(x.transpose(0, 1), attn_mask=mask).transpose(0, 1)
        return x

    @staticmethod
    def _check_width(t: torch.Tensor, width: int, what: str) -> None:
        if t.shape[-1] != width:
            raise PromptError(f"{what} has width {t.shape[-1]}, the backbone expects {width}")

    # ---------------------------------------------------------------- head
    @property
    def logit_scale(self) -> torch.Tensor:
        return self.model.logit_scale.exp()

    def logits(self, image_features: torch.Tensor, text_features: torch.Tensor) -> torch.Tensor:
        """CLIP logits: exp(logit_scale) * cosine similarity. Text features (C, D) or per image (B, C, D)."""
        img = F.normalize(image_features, dim=-1)
        txt = F.normalize(text_features, dim=-1)
        if txt.dim() == 3:
            return self.logit_scale * torch.einsum("bd,bcd->bc", img, txt)
        return self.logit_scale * img @ txt.t()
