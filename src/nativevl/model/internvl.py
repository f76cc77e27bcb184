"""InternVL: InternViT -> pixel shuffle -> `mlp1` projector -> image features written into the `<IMG_CONTEXT>`
positions of the LLM's input embeddings -> Qwen2 -> logits (spec §1.3, §1.4).

Module names follow the original `InternVLChatModel` (`vision_model`, `mlp1`, `language_model`), so the
original checkpoint layout is this module's own state dict.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from nativevl.config import IGNORE_INDEX, ModelConfig
from nativevl.model.layers import activation
from nativevl.model.text import CausalLM, KVCache
from nativevl.model.vision import InternViT


@dataclass
class Output:
    logits: torch.Tensor | None  # None when the loss was computed in chunks (loss_chunk > 0)
    loss: torch.Tensor | None = None


def pixel_shuffle(x: torch.Tensor, ratio: float = 0.5, version: str = "v2") -> torch.Tensor:
    """Fold each s x s block of neighbouring patches into one token with s*s*C channels (s = 1/ratio).

    x: (tiles, rows, cols, C) -> (tiles, rows/s, cols/s, s*s*C). Output token (i, j) holds, in this channel
    order, x(s*i + a, s*j + b) for a (row offset) outer and b (column offset) inner: for s = 2 top-left,
    top-right, bottom-left, bottom-right. `v1` (older checkpoints) returns the same tokens on a transposed grid.
    """
    s = round(1 / ratio)
    n, rows, cols, c = x.shape
    if rows % s or cols % s:
        raise ValueError(f"pixel shuffle needs a patch grid divisible by {s}, got {rows}x{cols}")
    x = x.reshape(n, rows // s, s, cols // s, s, c).permute(0, 1, 3, 2, 4, 5)
    x = x.reshape(n, rows // s, cols // s, s * s * c)
    if version == "v1":
        return x.transpose(1, 2)
    if version != "v2":
        raise ValueError(f"ps_version must be 'v1' or 'v2', got {version!r}")
    return x


class InternVLModel(nn.Module):
    """The model's math: the ViT, pixel shuffle, projector and LLM, their forward and loss. Users hold its
    subclass `nativevl.InternVL` (api.py), which adds loading, saving and the original's chat API."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        v, t = config.vision, config.text
        self.vision_model = InternViT(v)
        width = v.hidden_size * round(1 / config.downsample_ratio) ** 2
        self.mlp1 = nn.Sequential(
            nn.LayerNorm(width),  # eps 1e-5 (PyTorch's default), unlike the ViT's 1e-6
            nn.Linear(width, t.hidden_size),
            activation("gelu"),
            nn.Linear(t.hidden_size, t.hidden_size),
        )
        self.language_model = CausalLM(t)

    # --- construction ----------------------------------------------------------------------------------------

    @classmethod
    def from_config(
        cls, config: ModelConfig, dtype: torch.dtype | None = None, device: torch.device | str | None = None
    ) -> "InternVLModel":
        """A randomly initialised model (built on the meta device first, so large shapes are quick)."""
        with torch.device("meta"):
            model = cls(config)
        model.to_empty(device=device or "cpu")
        model.language_model.tie_weights()
        model.init_weights()
        return model.to(dtype) if dtype is not None else model

    @torch.no_grad()
    def init_weights(self) -> None:
        """Linear/conv/embedding weights ~ N(0, initializer_range), biases 0, norms 1, LayerScale = factor."""
        v, t = self.config.vision, self.config.text
        for name, module in self.named_modules():
            std = v.initializer_range if name.startswith("vision_model") else t.initializer_range
            if isinstance(module, (nn.Linear, nn.Conv2d, nn.Embedding)):
                module.weight.normal_(0.0, std)
                if getattr(module, "bias", None) is not None:
                    module.bias.zero_()
            elif isinstance(module, nn.LayerNorm) or hasattr(module, "eps"):
                module.weight.fill_(1.0)
                if getattr(module, "bias", None) is not None:
                    module.bias.zero_()
        emb = self.vision_model.embeddings
        emb.class_embedding.normal_()
        emb.position_embedding.normal_()
        for layer in self.vision_model.encoder.layers:
            layer.ls1.fill_(v.initializer_factor)
            layer.ls2.fill_(v.initializer_factor)

    # --- vision ----------------------------------------------------------------------------------------------

    @property
    def num_image_token(self) -> int:
        return self.config.num_image_token

    def check_pixel_values(self, pixel_values: torch.Tensor) -> None:
        """Refuse, with one line naming both sizes, tiles that are not the ViT's size: another size gives another
        number of features per tile than the prompt's `num_image_token` placeholders (448-px tiles on a 112-px
        model: 16x as many), which otherwise surfaces as a count mismatch after the ViT has run."""
        size = self.config.vision.image_size
        if pixel_values.ndim != 4:
            raise ValueError(f"pixel_values must be (tiles, 3, {size}, {size}), got shape "
                             f"{tuple(pixel_values.shape)}")
        h, w = pixel_values.shape[-2:]
        if (h, w) != (size, size):
            raise ValueError(f"pixel_values are {h}x{w} tiles, but this model's vision tower takes {size}x{size}: "
                             "tile with load_image(image, input_size=model) (or input_size="
                             f"{size}), or use Pipeline, which tiles at the model's size")

    def vision_hidden_states(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """The ViT hidden state picked by `select_layer` (-1: the last layer's output), CLS included."""
        layers = self.config.vision.num_hidden_layers
        k = self.config.select_layer
        # hidden_states[k] in the original counts the embeddings as state 0: state i is after i layers.
        index = k if k >= 0 else layers + 1 + k
        if not 0 <= index <= layers:
            raise ValueError(f"select_layer {k} is out of range for a {layers}-layer ViT")
        return self.vision_model(pixel_values, num_layers=index)

    def extract_feature(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(tiles, 3, H, W) -> (tiles, tokens_per_tile, llm_hidden): ViT, drop CLS, pixel shuffle, mlp1."""
        x = self.vision_hidden_states(pixel_values)[:, 1:]
        n, tokens, c = x.shape
        side = math.isqrt(tokens)
        if side * side != tokens:
            raise ValueError(f"tiles must give a square patch grid, got {tokens} patches")
        x = pixel_shuffle(x.reshape(n, side, side, c), self.config.downsample_ratio, self.config.ps_version)
        return self.mlp1(x.reshape(n, -1, x.shape[-1]))

    # --- the multimodal forward ------------------------------------------------------------------------------

    def embed(
        self,
        input_ids: torch.Tensor,
        pixel_values: torch.Tensor | None = None,
        image_flags: torch.Tensor | None = None,
        feature_index: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Token embeddings with every `<IMG_CONTEXT>` position replaced, in order, by the image features.

        Tiles are consumed in order, `num_image_token` positions each, across the flattened batch. Tiles whose
        `image_flags` is 0 (the dummy tile of a text-only sample) are encoded, keeping the ViT in the graph,
        and then dropped. `feature_index` lets several slots read one encoded tile (the two answers of a
        preference pair): slot tile i takes encoded tile feature_index[i].
        """
        embeds = self.language_model.model.embed_tokens(input_ids)
        if pixel_values is None:
            return embeds  # a generated <IMG_CONTEXT> token is embedded as text, as transformers does
        self.check_pixel_values(pixel_values)  # before the ViT: a wrong tile size is named as such
        selected = input_ids == self.config.img_context_token_id
        features = self.extract_feature(pixel_values)
        if feature_index is not None:
            features = features[feature_index]
            image_flags = image_flags.reshape(-1)[feature_index] if image_flags is not None else None
        if image_flags is not None:
            flags = image_flags.reshape(-1)
            if flags.numel() != features.shape[0]:
                raise ValueError(f"image_flags has {flags.numel()} entries for {features.shape[0]} tiles")
            features = features[flags == 1]
        features = features.reshape(-1, features.shape[-1])
        slots = int(selected.sum())
        if slots != features.shape[0]:
            raise ValueError(
                f"the input has {slots} <IMG_CONTEXT> tokens (id {self.config.img_context_token_id}) but the "
                f"{features.shape[0] // self.num_image_token} image tiles give {features.shape[0]} features "
                f"({self.num_image_token} per tile)"
            )
        if slots == 0:
            return embeds + 0.0 * features.sum()  # keeps the ViT in the graph for text-only batches
        return embeds.masked_scatter(selected.unsqueeze(-1), features.to(embeds.dtype))

    def forward(
        self,
        input_ids: torch.Tensor,
        pixel_values: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        image_flags: torch.Tensor | None = None,
        cache: KVCache | None = None,
        logits_to_keep: int = 0,
        cu_seqlens: torch.Tensor | None = None,
        feature_index: torch.Tensor | None = None,
        label_weights: torch.Tensor | None = None,
        loss_denominator: torch.Tensor | float | None = None,
        loss_chunk: int = 0,
    ) -> Output:
        """input_ids (B, L); pixel_values (tiles, 3, H, W); attention_mask (B, past + L) of 1 = real token;
        position_ids (B, L), integer or fractional (V2PE); labels (B, L) with -100 = not learned;
        cu_seqlens (n + 1,): the row holds n packed samples that do not attend to each other;
        feature_index: which encoded tile each image slot reads (see `embed`).

        The loss (see `lm_loss`) weighs labels by `label_weights` (B, L) (default: a token mean) and divides by
        `loss_denominator` (default: the weights' sum). With loss_chunk > 0 it is computed from the hidden
        states `loss_chunk` positions at a time and `logits` is None: training memory without the full logits."""
        prompt = cache is None or cache.length == 0
        if pixel_values is None and prompt and bool((input_ids == self.config.img_context_token_id).any()):
            raise ValueError("the input has <IMG_CONTEXT> tokens but no pixel_values")
        embeds = self.embed(input_ids, pixel_values, image_flags, feature_index)
        if position_ids is None and cu_seqlens is not None:
            starts = torch.repeat_interleave(cu_seqlens[:-1].long(), (cu_seqlens[1:] - cu_seqlens[:-1]).long())
            position_ids = (torch.arange(input_ids.shape[1], device=input_ids.device) - starts.to(input_ids.device))[None]
        elif position_ids is None:
            position_ids = default_positions(input_ids, attention_mask, cache.length if cache else 0)
        lm = self.language_model
        if labels is not None and loss_chunk > 0:
            hidden = lm(embeds, position_ids, attention_mask, cache, logits_to_keep, cu_seqlens, head=False)
            return Output(None, lm_loss(hidden, lm.lm_head, labels, label_weights, loss_denominator, loss_chunk))
        logits = lm(embeds, position_ids, attention_mask, cache, logits_to_keep, cu_seqlens)
        loss = lm_loss(logits, None, labels, label_weights, loss_denominator) if labels is not None else None
        return Output(logits=logits, loss=loss)

    def new_cache(self, batch: int, max_len: int) -> KVCache:
        p = self.language_model.model.embed_tokens.weight  # never quantized (the head may be)
        return KVCache(self.config.text, batch, max_len, p.dtype, p.device)


def default_positions(input_ids: torch.Tensor, attention_mask: torch.Tensor | None, past: int) -> torch.Tensor:
    """0, 1, 2, … counted over real tokens only (left padding does not shift positions), as `generate` does."""
    b, length = input_ids.shape
    if attention_mask is None:
        return torch.arange(past, past + length, device=input_ids.device).expand(b, length)
    positions = attention_mask.long().cumsum(-1) - 1
    return positions.masked_fill(attention_mask == 0, 1)[:, -length:]


def lm_loss(
    hidden: torch.Tensor,
    head: nn.Module | None,
    labels: torch.Tensor,
    weights: torch.Tensor | None = None,
    denominator: torch.Tensor | float | None = None,
    chunk: int = 0,
) -> torch.Tensor:
    """sum_t ce_t * w_t / D over next-token predictions (position t predicts labels[t + 1], weighted by
    weights[t + 1], by default 1 on every label that is not -100); D defaults to the sum of those weights.

    `hidden` (B, L, D) goes through `head` (the output layer) first; with head None it already is the logits.
    With chunk > 0 the logits are made `chunk` positions at a time and recomputed in the backward pass, so the
    whole (L, vocab) float32 logits never exist: for 16,384 tokens of a 151,674-word vocabulary they, their
    softmax and gradient would take about 30 GB. The cross-entropy is always taken in float32."""
    h = hidden[:, :-1].reshape(-1, hidden.shape[-1])
    y = labels[:, 1:].reshape(-1).to(h.device)
    w = (y != IGNORE_INDEX).float() if weights is None else weights[:, 1:].reshape(-1).to(h.device, torch.float32)
    step = chunk if chunk > 0 else max(h.shape[0], 1)
    recompute = head is not None and 0 < chunk < h.shape[0] and torch.is_grad_enabled()  # one chunk: no gain
    total = h.new_zeros((), dtype=torch.float32)
    for start in range(0, h.shape[0], step):
        part = (h[start : start + step], y[start : start + step], w[start : start + step])
        total = total + (checkpoint(_weighted_ce, head, *part, use_reentrant=False) if recompute
                         else _weighted_ce(head, *part))
    if denominator is None:
        denominator = w.sum()
    return total / torch.clamp_min(torch.as_tensor(denominator, device=h.device), 1e-12)


def _weighted_ce(head: nn.Module | None, h: torch.Tensor, y: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    logits = (h if head is None else head(h)).float()
    return (F.cross_entropy(logits, y, ignore_index=IGNORE_INDEX, reduction="none") * w).sum()
