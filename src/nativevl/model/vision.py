"""InternViT, the vision tower (spec §1.2), in both released variants.

300M (InternVL3-1B … 14B): LayerNorm, qkv bias.  6B (38B, 78B): RMSNorm, no qkv bias, and q/k RMS-normalised
over the full width (all heads together) before the heads are split. Both: pre-norm blocks whose branches are
scaled per channel by LayerScale (`ls1`, `ls2`) and dropped per sample by DropPath; no norm before or after the
encoder. Module names follow the original `InternVisionModel`, so the original checkpoint keys load unchanged.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from nativevl import kernels
from nativevl.config import VisionConfig
from nativevl.model.layers import DropPath, RMSNorm, activation, make_norm


class VisionEmbeddings(nn.Module):
    def __init__(self, cfg: VisionConfig) -> None:
        super().__init__()
        c = cfg.hidden_size
        self.grid = cfg.image_size // cfg.patch_size
        self.class_embedding = nn.Parameter(torch.randn(1, 1, c))
        self.patch_embedding = nn.Conv2d(cfg.num_channels, c, kernel_size=cfg.patch_size, stride=cfg.patch_size)
        self.position_embedding = nn.Parameter(torch.randn(1, self.grid**2 + 1, c))

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(tiles, 3, H, W) -> (tiles, 1 + (H/14)(W/14), C), the CLS token first."""
        weight = self.patch_embedding.weight
        patches = self.patch_embedding(pixel_values.to(weight.dtype))  # (n, C, h, w)
        h, w = patches.shape[-2:]
        patches = patches.flatten(2).transpose(1, 2)  # row-major over the patch grid
        cls = self.class_embedding.expand(patches.shape[0], -1, -1)
        return torch.cat([cls, patches], dim=1) + self._positions(h, w).to(patches.dtype)

    def _positions(self, h: int, w: int) -> torch.Tensor:
        """The learned table, its patch part bicubically resized when the tile is not the trained size."""
        table = self.position_embedding
        if (h, w) == (self.grid, self.grid):
            return table  # bicubic resize to the same size is the identity
        c = table.shape[-1]
        grid = table[:, 1:].float().reshape(1, self.grid, self.grid, c).permute(0, 3, 1, 2)
        grid = F.interpolate(grid, size=(h, w), mode="bicubic", align_corners=False)
        grid = grid.reshape(1, c, h * w).transpose(1, 2).to(table.dtype)
        return torch.cat([table[:, :1], grid], dim=1)


class VisionAttention(nn.Module):
    def __init__(self, cfg: VisionConfig) -> None:
        super().__init__()
        c = cfg.hidden_size
        self.num_heads = cfg.num_attention_heads
        self.dropout = cfg.attention_dropout
        self.qkv = nn.Linear(c, 3 * c, bias=cfg.qkv_bias)
        self.proj = nn.Linear(c, c)
        self.qk_normalization = cfg.qk_normalization
        if cfg.qk_normalization:
            self.q_norm = RMSNorm(c, eps=cfg.layer_norm_eps)
            self.k_norm = RMSNorm(c, eps=cfg.layer_norm_eps)
        self.kernel_attention = False  # CPU bf16 inference on nativevl's kernel (nativevl/kernels): prepack_linears

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, length, c = x.shape
        q, k, v = self.qkv(x).chunk(3, dim=-1)  # each (n, L, C), heads concatenated
        if self.qk_normalization:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k, v = (t.view(n, length, self.num_heads, -1).transpose(1, 2) for t in (q, k, v))
        dropout = self.dropout if self.training else 0.0
        if self.kernel_attention and dropout == 0.0 and kernels.attention_takes(q, k, v):
            out = kernels.attention(q, k, v)
        else:
            out = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout)  # bidirectional within a tile
        return self.proj(out.transpose(1, 2).reshape(n, length, c))


class VisionMLP(nn.Module):
    def __init__(self, cfg: VisionConfig) -> None:
        super().__init__()
        self.fc1 = nn.Linear(cfg.hidden_size, cfg.intermediate_size)
        self.act = activation(cfg.hidden_act)
        self.fc2 = nn.Linear(cfg.intermediate_size, cfg.hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class VisionLayer(nn.Module):
    def __init__(self, cfg: VisionConfig, drop_path: float) -> None:
        super().__init__()
        c = cfg.hidden_size
        self.norm1 = make_norm(cfg.norm_type, c, cfg.layer_norm_eps)
        self.attn = VisionAttention(cfg)
        self.ls1 = nn.Parameter(torch.full((c,), cfg.initializer_factor))
        self.norm2 = make_norm(cfg.norm_type, c, cfg.layer_norm_eps)
        self.mlp = VisionMLP(cfg)
        self.ls2 = nn.Parameter(torch.full((c,), cfg.initializer_factor))
        self.drop_path1 = DropPath(drop_path)
        self.drop_path2 = DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path1(self.attn(self.norm1(x)) * self.ls1)
        return x + self.drop_path2(self.mlp(self.norm2(x)) * self.ls2)


class VisionEncoder(nn.Module):
    def __init__(self, cfg: VisionConfig) -> None:
        super().__init__()
        rates = torch.linspace(0, cfg.drop_path_rate, cfg.num_hidden_layers, device="cpu").tolist()
        self.layers = nn.ModuleList(VisionLayer(cfg, rate) for rate in rates)


class InternViT(nn.Module):
    def __init__(self, cfg: VisionConfig) -> None:
        super().__init__()
        self.config = cfg
        self.embeddings = VisionEmbeddings(cfg)
        self.encoder = VisionEncoder(cfg)
        self.activation_checkpointing = False  # recompute each layer in the backward pass (training memory)

    def forward(self, pixel_values: torch.Tensor, num_layers: int | None = None) -> torch.Tensor:
        """(tiles, 3, H, W) -> hidden states after `num_layers` layers (all by default), CLS included."""
        x = self.embeddings(pixel_values)
        for layer in self.encoder.layers[:num_layers]:
            if self.activation_checkpointing and self.training and torch.is_grad_enabled():
                x = checkpoint(layer, x, use_reentrant=False)
            else:
                x = layer(x)
        return x
