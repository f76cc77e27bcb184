"""Tensor names between the layouts: nativevl's (= the original `InternVLChatModel`'s), transformers' legacy
on-disk and in-memory names, and InternLM2's packed `wqkv` (spec §1.5; hf-transformers-reference §3, §4)."""

from __future__ import annotations

import re

import torch

from nativevl.config import TextConfig
from nativevl.weights.errors import CheckpointError

# (original name, transformers legacy on-disk name); `{i}` is a layer index; a trailing '.' marks a prefix.
_RENAMES = [
    ("vision_model.embeddings.class_embedding", "vision_tower.embeddings.cls_token"),
    ("vision_model.embeddings.position_embedding", "vision_tower.embeddings.position_embeddings"),
    ("vision_model.embeddings.patch_embedding.", "vision_tower.embeddings.patch_embeddings.projection."),
    ("vision_model.encoder.layers.{i}.attn.proj.", "vision_tower.encoder.layer.{i}.attention.projection_layer."),
    ("vision_model.encoder.layers.{i}.attn.q_norm.", "vision_tower.encoder.layer.{i}.attention.q_norm."),
    ("vision_model.encoder.layers.{i}.attn.k_norm.", "vision_tower.encoder.layer.{i}.attention.k_norm."),
    ("vision_model.encoder.layers.{i}.ls1", "vision_tower.encoder.layer.{i}.lambda_1"),
    ("vision_model.encoder.layers.{i}.ls2", "vision_tower.encoder.layer.{i}.lambda_2"),
    ("vision_model.encoder.layers.{i}.norm1.", "vision_tower.encoder.layer.{i}.layernorm_before."),
    ("vision_model.encoder.layers.{i}.norm2.", "vision_tower.encoder.layer.{i}.layernorm_after."),
    ("vision_model.encoder.layers.{i}.mlp.", "vision_tower.encoder.layer.{i}.mlp."),
    ("mlp1.0.", "multi_modal_projector.layer_norm."),
    ("mlp1.1.", "multi_modal_projector.linear_1."),
    ("mlp1.3.", "multi_modal_projector.linear_2."),
    ("language_model.", "language_model."),
]
# transformers' in-memory names -> its legacy on-disk names.
_IN_MEMORY = [
    ("model.vision_tower.", "vision_tower."),
    ("model.multi_modal_projector.", "multi_modal_projector."),
    ("model.language_model.", "language_model.model."),
    ("lm_head.", "language_model.lm_head."),
]
_QKV = re.compile(r"^vision_model\.encoder\.layers\.(\d+)\.attn\.qkv\.(weight|bias)$")
_QKV_SPLIT = re.compile(r"^vision_tower\.encoder\.layer\.(\d+)\.attention\.([qkv])_proj\.(weight|bias)$")


# nativevl's decoder names (Qwen2 / Llama) -> the InternLM2 names the original 9B folder uses (q, k and v are
# packed into one `wqkv` per layer, below).
_INTERNLM2 = [
    ("language_model.model.embed_tokens.", "language_model.model.tok_embeddings."),
    ("language_model.lm_head.", "language_model.output."),
    ("language_model.model.layers.{i}.self_attn.o_proj.", "language_model.model.layers.{i}.attention.wo."),
    ("language_model.model.layers.{i}.mlp.gate_proj.", "language_model.model.layers.{i}.feed_forward.w1."),
    ("language_model.model.layers.{i}.mlp.up_proj.", "language_model.model.layers.{i}.feed_forward.w3."),
    ("language_model.model.layers.{i}.mlp.down_proj.", "language_model.model.layers.{i}.feed_forward.w2."),
    ("language_model.model.layers.{i}.input_layernorm.", "language_model.model.layers.{i}.attention_norm."),
    ("language_model.model.layers.{i}.post_attention_layernorm.", "language_model.model.layers.{i}.ffn_norm."),
]
_LLM_QKV = re.compile(r"^language_model\.model\.layers\.(\d+)\.self_attn\.([qkv])_proj\.weight$")
_WQKV = re.compile(r"^language_model\.model\.layers\.(\d+)\.attention\.wqkv\.weight$")


def _compile(rules: list[tuple[str, str]], reverse: bool) -> list[tuple[re.Pattern[str], str]]:
    out = []
    for src, dst in rules:
        if reverse:
            src, dst = dst, src
        pattern = re.escape(src).replace(r"\{i\}", r"(?P<i>\d+)")
        pattern = "^" + pattern + ("" if src.endswith(".") else "$")
        out.append((re.compile(pattern), dst))
    return out


_TO_HF = _compile(_RENAMES, reverse=False)
_FROM_HF = _compile(_RENAMES, reverse=True)
_FROM_IN_MEMORY = _compile(_IN_MEMORY, reverse=False)
_TO_IN_MEMORY = _compile(_IN_MEMORY, reverse=True)


_TO_INTERNLM2 = _compile(_INTERNLM2, reverse=False)
_FROM_INTERNLM2 = _compile(_INTERNLM2, reverse=True)


def _rename(key: str, rules: list[tuple[re.Pattern[str], str]]) -> str | None:
    for pattern, dst in rules:
        m = pattern.match(key)
        if m:
            return dst.replace("{i}", m.groupdict().get("i") or "") + key[m.end() :]
    return None


def legacy_name(key: str) -> str:
    """A transformers in-memory name (`model.vision_tower.*`, `lm_head.weight`) as its legacy on-disk name;
    any other name unchanged."""
    return _rename(key, _FROM_IN_MEMORY) or key


def in_memory_name(key: str) -> str:
    """A transformers legacy on-disk name as its in-memory one (the inverse of `legacy_name`; PEFT's adapter
    files use these); any other name unchanged."""
    return _rename(key, _TO_IN_MEMORY) or key


def to_transformers(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Original names -> transformers legacy names, splitting each fused qkv into q, k and v."""
    out: dict[str, torch.Tensor] = {}
    for key, tensor in state.items():
        m = _QKV.match(key)
        if m:
            layer, kind = m.groups()
            for part, piece in zip("qkv", tensor.chunk(3, dim=0), strict=True):
                out[f"vision_tower.encoder.layer.{layer}.attention.{part}_proj.{kind}"] = piece
            continue
        new = _rename(key, _TO_HF)
        if new is None:
            raise CheckpointError(f"no transformers name for parameter {key!r}")
        out[new] = tensor
    return out


def to_internlm2(state: dict[str, torch.Tensor], t: TextConfig) -> dict[str, torch.Tensor]:
    """nativevl names -> InternLM2 names. Each layer's q, k and v become one `wqkv` whose rows are grouped by
    key/value head: for group g, its n = heads / kv_heads query heads, then its key head, then its value head
    (InternLM2Attention splits it with `rearrange(qkv, 'b q (h gs d) -> b q h gs d', gs=n + 2)`)."""
    out: dict[str, torch.Tensor] = {}
    parts: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in state.items():
        m = _LLM_QKV.match(key)
        if m:
            parts.setdefault(m.group(1), {})[m.group(2)] = tensor
            continue
        out[_rename(key, _TO_INTERNLM2) or key] = tensor
    kv, d = t.num_key_value_heads, t.head_dim
    for layer, p in parts.items():
        width = p["q"].shape[1]
        q = p["q"].reshape(kv, -1, d, width)
        packed = torch.cat([q, p["k"].reshape(kv, 1, d, width), p["v"].reshape(kv, 1, d, width)], dim=1)
        out[f"language_model.model.layers.{layer}.attention.wqkv.weight"] = packed.reshape(-1, width)
    return out


def from_internlm2(state: dict[str, torch.Tensor], t: TextConfig) -> dict[str, torch.Tensor]:
    """InternLM2 names -> nativevl names, unpacking each `wqkv` (the inverse of `to_internlm2`)."""
    out: dict[str, torch.Tensor] = {}
    kv, d = t.num_key_value_heads, t.head_dim
    n = t.num_attention_heads // kv
    for key, tensor in state.items():
        m = _WQKV.match(key)
        if not m:
            out[_rename(key, _FROM_INTERNLM2) or key] = tensor
            continue
        groups = tensor.reshape(kv, n + 2, d, tensor.shape[1])
        prefix = f"language_model.model.layers.{m.group(1)}.self_attn."
        out[prefix + "q_proj.weight"] = groups[:, :n].reshape(-1, tensor.shape[1])
        out[prefix + "k_proj.weight"] = groups[:, n].reshape(-1, tensor.shape[1])
        out[prefix + "v_proj.weight"] = groups[:, n + 1].reshape(-1, tensor.shape[1])
    return out


def from_transformers(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """transformers names (legacy or in-memory) -> original names, fusing q, k, v back into qkv."""
    out: dict[str, torch.Tensor] = {}
    parts: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
    for key, tensor in state.items():
        key = legacy_name(key)
        m = _QKV_SPLIT.match(key)
        if m:
            layer, part, kind = m.groups()
            parts.setdefault((layer, kind), {})[part] = tensor
            continue
        new = _rename(key, _FROM_HF)
        out[new if new is not None else f"<unmapped>{key}"] = tensor
    for (layer, kind), qkv in parts.items():
        key = f"vision_model.encoder.layers.{layer}.attn.qkv.{kind}"
        missing = [p for p in "qkv" if p not in qkv]
        if missing:
            raise CheckpointError(f"layer {layer}: {kind} of {', '.join(p + '_proj' for p in missing)} missing")
        out[key] = torch.cat([qkv["q"], qkv["k"], qkv["v"]], dim=0)
    return out
