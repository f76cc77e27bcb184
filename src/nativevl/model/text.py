"""The Qwen2 decoder (InternVL3-1B … 78B) and its relatives: pre-RMSNorm blocks, grouped-query attention with
q/k/v biases (Qwen2) or without (Llama/InternLM, Qwen3, whose query and key heads are RMS-normed before RoPE),
rotary positions computed per token from float position ids (so V2PE's fractional positions are exact),
dynamic-NTK RoPE scaling, a SwiGLU MLP and an optionally tied `lm_head`.

Module names follow transformers' `Qwen2ForCausalLM` (`model.layers.i.self_attn.q_proj`, …), which is also
what the original InternVL checkpoints store under `language_model.`.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from nativevl.config import TextConfig
from nativevl.kernels import PackedLinear
from nativevl.model.quant import QuantGroup
from nativevl.model.attention import AttentionInputs, attend
from nativevl.model.layers import RMSNorm, activation


# --- rotary position embedding ------------------------------------------------------------------------------


def rope_inv_freq(cfg: TextConfig, position_ids: torch.Tensor) -> torch.Tensor:
    """Inverse frequencies (head_dim/2,), with dynamic NTK scaling once positions pass the trained length.

    Dynamic NTK (transformers' `_compute_dynamic_ntk_parameters`) enlarges the base as a function of the
    longest position in the call, `seq_len = max(position) + 1`; up to `max_position_embeddings` it is plain
    RoPE. transformers instead keeps an enlarged table until a call shorter than the limit resets it; the two
    agree for prefill plus decoding (positions only grow) and differ only when a long call follows a longer one.
    """
    dim = cfg.head_dim
    exponents = torch.arange(0, dim, 2, dtype=torch.int64, device=position_ids.device).float() / dim
    plain = 1.0 / (cfg.rope_theta**exponents)
    scaling = cfg.rope_scaling  # normalised by TextConfig: None or {"type": "dynamic", "factor": f}
    if scaling is None or not position_ids.numel():
        return plain
    limit, factor = cfg.max_position_embeddings, scaling["factor"]
    seq_len = position_ids.float().max() + 1
    base = cfg.rope_theta * ((factor * seq_len / limit) - (factor - 1)) ** (dim / (dim - 2))
    # both tables and a select rather than `if seq_len > limit`: a branch on a tensor splits a compiled decode
    # step into separate graphs (8 per step of the 1B, each with its guards), and plain RoPE keeps its bits
    return torch.where(seq_len > limit, 1.0 / (base**exponents), plain)


def rope_cos_sin(
    cfg: TextConfig, position_ids: torch.Tensor, dtype: torch.dtype, inv_freq: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The rotary tables `apply_rope` takes, (B, 1, L, head_dim) each, for float or integer positions (B, L),
    computed in float32 as transformers does (so a V2PE step of 1/256 is resolved exactly only below 65,536):
    cos, and sin with its first half negated (the sign rotate-half puts on the second half of x).
    `inv_freq`: the frequencies already chosen for these positions (a captured graph cannot branch on them)."""
    if inv_freq is None:
        inv_freq = rope_inv_freq(cfg, position_ids)
    freqs = position_ids.float()[:, None, :, None] * inv_freq
    return torch.cat([freqs, freqs], dim=-1).cos().to(dtype), torch.cat([-freqs, freqs], dim=-1).sin().to(dtype)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x (B, H, L, D) rotated by the tables of `rope_cos_sin`: x * cos + rotate_half(x) * sin, where
    rotate_half(x) = (-x2, x1). With the sign folded into sin that is a roll of x by D/2 (negation is exact, so
    the result is bit-identical to transformers'), four operations instead of seven."""
    return x * cos + x.roll(x.shape[-1] // 2, dims=-1) * sin


# --- KV cache -----------------------------------------------------------------------------------------------


class KVCache:
    """Preallocated keys and values for every layer: (B, kv_heads, max_len, head_dim) each.

    `length` counts the slots written so far. Slots are independent of RoPE positions, which the caller
    passes explicitly (V2PE positions are fractional and do not equal slot indices).
    """

    def __init__(
        self, cfg: TextConfig, batch: int, max_len: int, dtype: torch.dtype, device: torch.device | str
    ) -> None:
        shape = (batch, cfg.num_key_value_heads, max_len, cfg.head_dim)
        self.keys = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(cfg.num_hidden_layers)]
        self.values = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(cfg.num_hidden_layers)]
        self.length = 0
        self.max_len = max_len
        # Static mode (a decode step captured as a CUDA graph, infer/generate.py's GraphDecoder): one new slot
        # per step, written at this tensor's index, and every slot returned (a mask hides the unwritten ones).
        self.slot: torch.Tensor | None = None

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write the new keys/values after the current length; return everything written so far."""
        if self.slot is not None:
            self.keys[layer].index_copy_(2, self.slot, k)
            self.values[layer].index_copy_(2, self.slot, v)
            return self.keys[layer], self.values[layer]
        end = self.length + k.shape[2]
        if end > self.max_len:
            raise ValueError(f"KV cache is full: {end} slots needed, {self.max_len} allocated")
        self.keys[layer][:, :, self.length : end] = k
        self.values[layer][:, :, self.length : end] = v
        return self.keys[layer][:, :, :end], self.values[layer][:, :, :end]

    # --- cache surgery for dynamic batching (serve/engine.py): rows leave, batches join ---

    def select(self, rows: torch.Tensor, first_slot: int = 0) -> "KVCache":
        """A cache of only `rows`, without the slots before `first_slot` (padding that every kept row masks)."""
        out = KVCache.__new__(KVCache)
        out.keys = [k[rows, :, first_slot:] for k in self.keys]
        out.values = [v[rows, :, first_slot:] for v in self.values]
        out.length, out.max_len, out.slot = self.length - first_slot, self.max_len - first_slot, None
        return out

    @staticmethod
    def join(caches: list["KVCache"], room: int) -> "KVCache":
        """The rows of every cache in one, each right-aligned to the longest (the slots in front of a shorter one
        are zeros, which its rows must mask as left padding), with `room` free slots after them."""
        length = max(c.length for c in caches)
        k0 = caches[0].keys[0]
        shape = (sum(c.keys[0].shape[0] for c in caches), k0.shape[1], length + room, k0.shape[3])
        out = KVCache.__new__(KVCache)
        out.keys = [k0.new_zeros(shape) for _ in caches[0].keys]
        out.values = [k0.new_zeros(shape) for _ in caches[0].keys]
        out.length, out.max_len, out.slot = length, length + room, None
        row = 0
        for c in caches:
            rows = slice(row, row + c.keys[0].shape[0])
            for layer in range(len(out.keys)):
                out.keys[layer][rows, :, length - c.length:length] = c.keys[layer][:, :, :c.length]
                out.values[layer][rows, :, length - c.length:length] = c.values[layer][:, :, :c.length]
            row = rows.stop
        return out


# --- decoder ------------------------------------------------------------------------------------------------


def attention_inputs(
    cfg: TextConfig,
    position_ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
    past: int,
    dtype: torch.dtype,
    cu_seqlens: torch.Tensor | None = None,
) -> AttentionInputs:
    """Causal attention over `past` cached slots plus the new ones, hiding padded keys.

    attention_mask: (B, past + L) with 1 for real tokens, or None when nothing is padded.
    cu_seqlens: (n + 1,) boundaries of the samples packed into a single row (no cache, no padding mask).
    """
    cos, sin = rope_cos_sin(cfg, position_ids, dtype)
    length = position_ids.shape[1]
    if cu_seqlens is not None:
        if position_ids.shape[0] != 1 or past or attention_mask is not None:
            raise ValueError("packed attention (cu_seqlens) takes one row, no KV cache and no attention_mask")
        bounds = [int(b) for b in cu_seqlens.tolist()]
        segments = list(zip(bounds[:-1], bounds[1:], strict=True))
        if bounds[0] != 0 or bounds[-1] != length or any(b >= e for b, e in segments):
            raise ValueError(f"cu_seqlens {bounds[:8]}… must rise strictly from 0 to the row length {length}")
        return AttentionInputs(cos, sin, cu_seqlens=cu_seqlens, segments=segments,
                               max_seqlen=max(e - s for s, e in segments))
    padded = attention_mask is not None and not bool(attention_mask.all())
    if not padded:
        if past == 0:
            return AttentionInputs(cos, sin, is_causal=True)
        if length == 1:
            return AttentionInputs(cos, sin)
    device = position_ids.device
    q_idx = torch.arange(past, past + length, device=device)[:, None]
    k_idx = torch.arange(past + length, device=device)[None, :]
    mask = (k_idx <= q_idx)[None, None]
    if padded:
        keep = attention_mask[:, None, None, : past + length].bool()
        # A padded query row would otherwise see no key at all (NaN); let it see itself. Its output is unused.
        mask = (mask & keep) | (k_idx == q_idx)[None, None]
    return AttentionInputs(cos, sin, mask=mask)


class Attention(nn.Module):
    PACKED_TOGETHER = ("q_proj", "k_proj", "v_proj")  # one product after `prepack_linears` (model/layers.py)

    def __init__(self, cfg: TextConfig, layer_idx: int) -> None:
        super().__init__()
        self.layer_idx = layer_idx
        self.num_heads = cfg.num_attention_heads
        self.num_kv_heads = cfg.num_key_value_heads
        self.head_dim = cfg.head_dim
        self.dropout = cfg.attention_dropout
        d, hd = cfg.hidden_size, cfg.head_dim
        self.q_proj = nn.Linear(d, self.num_heads * hd, bias=cfg.attention_bias)
        self.k_proj = nn.Linear(d, self.num_kv_heads * hd, bias=cfg.attention_bias)
        self.v_proj = nn.Linear(d, self.num_kv_heads * hd, bias=cfg.attention_bias)
        self.o_proj = nn.Linear(self.num_heads * hd, d, bias=False)
        if cfg.qk_norm:  # Qwen3: over each head's own dim, so it is unchanged by the packed q/k/v product
            self.q_norm = RMSNorm(hd, cfg.rms_norm_eps)
            self.k_norm = RMSNorm(hd, cfg.rms_norm_eps)
        self.qk_norm = cfg.qk_norm
        self.packed: PackedLinear | QuantGroup | None = None
        self.kernel_attention = False  # CPU bf16 prompts on nativevl's kernel (nativevl/kernels): prepack_linears

    def forward(self, x: torch.Tensor, a: AttentionInputs, cache: KVCache | None) -> torch.Tensor:
        b, length, _ = x.shape
        if self.packed is not None and self.packed.takes(x):
            qkv = self.packed(x)  # the three products as one (prepack_linears)
        else:
            qkv = torch.cat([self.q_proj(x), self.k_proj(x), self.v_proj(x)], dim=-1)
        heads = qkv.view(b, length, -1, self.head_dim).transpose(1, 2)  # (B, H + 2 Hkv, L, D)
        nq, nqk = self.num_heads, self.num_heads + self.num_kv_heads
        qk = heads[:, :nqk]
        if self.qk_norm:
            qk = torch.cat([self.q_norm(qk[:, :nq]), self.k_norm(qk[:, nq:])], dim=1)
        qk = apply_rope(qk, a.cos, a.sin)  # queries and keys rotated in one go
        q, k, v = qk[:, :nq], qk[:, nq:], heads[:, nqk:]
        if cache is not None:
            k, v = cache.update(self.layer_idx, k, v)
        out = attend(q, k, v, a, self.dropout if self.training else 0.0, self.kernel_attention)
        return self.o_proj(out.transpose(1, 2).reshape(b, length, -1))


class MLP(nn.Module):
    PACKED_TOGETHER = ("gate_proj", "up_proj")

    def __init__(self, cfg: TextConfig) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.up_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.down_proj = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=False)
        self.act = activation(cfg.hidden_act)
        self.packed: PackedLinear | QuantGroup | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.packed is not None and self.packed.takes(x):
            gate, up = self.packed(x).chunk(2, dim=-1)
        else:
            gate, up = self.gate_proj(x), self.up_proj(x)
        return self.down_proj(self.act(gate) * up)


class DecoderLayer(nn.Module):
    def __init__(self, cfg: TextConfig, layer_idx: int) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.self_attn = Attention(cfg, layer_idx)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp = MLP(cfg)

    def forward(self, x: torch.Tensor, a: AttentionInputs, cache: KVCache | None) -> torch.Tensor:
        x = x + self.self_attn(self.input_layernorm(x), a, cache)
        return x + self.mlp(self.post_attention_layernorm(x))


class Decoder(nn.Module):
    def __init__(self, cfg: TextConfig) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(cfg, i) for i in range(cfg.num_hidden_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)


class CausalLM(nn.Module):
    """Decoder plus `lm_head`; forward takes embeddings, so the caller can splice images in first."""

    def __init__(self, cfg: TextConfig) -> None:
        super().__init__()
        self.config = cfg
        self.model = Decoder(cfg)
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        self.tie_weights()
        self.activation_checkpointing = False  # recompute each layer in the backward pass (training memory)

    def tie_weights(self) -> None:
        """Share lm_head with the embedding when the config ties them (again after to_empty or loading)."""
        if self.config.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight

    def forward(
        self,
        inputs_embeds: torch.Tensor,
        position_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        cache: KVCache | None = None,
        logits_to_keep: int = 0,
        cu_seqlens: torch.Tensor | None = None,
        head: bool = True,
    ) -> torch.Tensor:
        """(B, L, D) embeddings -> (B, L or logits_to_keep, vocab) logits, or with head=False the final normed
        hidden states (B, L or logits_to_keep, D); appends to `cache` if given."""
        past = cache.length if cache is not None else 0
        a = attention_inputs(self.config, position_ids, attention_mask, past, inputs_embeds.dtype, cu_seqlens)
        x = inputs_embeds
        recompute = self.activation_checkpointing and self.training and torch.is_grad_enabled() and cache is None
        for layer in self.model.layers:
            x = checkpoint(layer, x, a, None, use_reentrant=False) if recompute else layer(x, a, cache)
        if cache is not None:
            cache.length += x.shape[1]
        x = self.model.norm(x[:, -logits_to_keep:] if logits_to_keep else x)
        return self.lm_head(x) if head else x

    def static_step(self, token: torch.Tensor, position: torch.Tensor, inv_freq: torch.Tensor,
                    mask: torch.Tensor, cache: KVCache) -> torch.Tensor:
        """One decode step with nothing that depends on the values or the cache length: token (B, 1), position
        (B, 1), mask (B, 1, 1, max_len) of the slots to attend, `cache.slot` set -> logits (B, vocab)."""
        cos, sin = rope_cos_sin(self.config, position, self.model.embed_tokens.weight.dtype, inv_freq)
        a = AttentionInputs(cos, sin, mask=mask)
        x = self.model.embed_tokens(token)
        for layer in self.model.layers:
            x = layer(x, a, cache)
        return self.lm_head(self.model.norm(x))[:, -1]
