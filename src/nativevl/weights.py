"""Checkpoints: the original OpenGVLab layout and the transformers layout, single-file or sharded safetensors.

Layouts (spec §1.5; hf-transformers-reference §3, §4):
- "original": `config.json` with `model_type: internvl_chat` (`vision_config`, `llm_config`); keys as the
  original `InternVLChatModel` names them (fused `attn.qkv`, `ls1/ls2`, `mlp1.0/1/3`, `language_model.model.*`).
  This is nativevl's own state dict, so that mapping is the identity.
- "transformers": `config.json` with `model_type: internvl` (`vision_config`, `text_config`); q/k/v split,
  `lambda_1/2`, `multi_modal_projector.*`. Files written by transformers use the legacy names (`vision_tower.*`,
  `language_model.model.*`, `language_model.lm_head.weight`); in-memory names (`model.vision_tower.*`,
  `model.language_model.*`, `lm_head.weight`) are read too. nativevl writes the legacy names, as
  transformers' own `save_pretrained` does.

Only safetensors are read: nothing is unpickled. Tensors come memory-mapped from the files and are assigned
into a model built on the meta device, so a load in the stored dtype holds one copy of the weights.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from nativevl.config import ModelConfig, TextConfig, VisionConfig
from nativevl.model.internvl import InternVL

LAYOUTS = ("original", "transformers")
INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
# Non-weight files a checkpoint folder carries along (tokenizer, generation and processor settings).
SIDECAR_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
    "tokenizer.model",
    "generation_config.json",
    "preprocessor_config.json",
    "processor_config.json",
    "chat_template.jinja",
    "chat_template.json",
)


class CheckpointError(ValueError):
    """A checkpoint that cannot be read as asked: the message names the file and key."""


class DeviceError(ValueError, argparse.ArgumentTypeError):
    """A device this machine cannot load a model on. A ValueError (the CLI prints it as one line) and an
    ArgumentTypeError, so `check_device` can be an argparse `type=` and argparse shows its message."""


_DEVICE_FORMS = "cpu, cuda, cuda:N (N: the GPU's index), mps or xpu"


def check_device(device: str | torch.device | None) -> torch.device:
    """The device to load on, refused with one line if this machine cannot use it: an unknown name ('gpu'),
    or a kind or index it does not have (cuda without a CUDA GPU, cuda:3 with one GPU, mps where absent).
    None is the CPU. Called before anything is read, by `load_model`, `Pipeline` and the server."""
    if device is None:
        return torch.device("cpu")
    name = device.strip().lower() if isinstance(device, str) else str(device)
    try:
        dev = torch.device(name)
    except (RuntimeError, ValueError, TypeError):
        dev = None
    if dev is None or dev.type not in ("cpu", "cuda", "mps", "xpu"):
        raise DeviceError(f"device {name!r} is not a device: use {_DEVICE_FORMS}")
    if dev.type == "cpu":
        return dev
    if dev.type == "mps":
        if not torch.backends.mps.is_available():
            raise DeviceError(f"device {name!r}: this machine has no MPS (Apple GPU) device; use cpu")
        if dev.index not in (None, 0):
            raise DeviceError(f"device {name!r}: there is one MPS device, mps (or mps:0)")
        return dev
    backend = getattr(torch, dev.type, None)  # torch.cuda, torch.xpu
    count = backend.device_count() if backend is not None and backend.is_available() else 0
    kind = dev.type.upper()
    if count == 0:
        raise DeviceError(f"device {name!r}: this machine has no {kind} device (torch {torch.__version__}); "
                          "use cpu")
    if dev.index is not None and dev.index >= count:
        have = ", ".join(f"{dev.type}:{i}" for i in range(count))
        raise DeviceError(f"device {name!r}: this machine has {count} {kind} device{'s' if count > 1 else ''} "
                          f"({have}); use one of those")
    return dev


# --- key names -------------------------------------------------------------------------------------------------

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


_TO_INTERNLM2 = _compile(_INTERNLM2, reverse=False)
_FROM_INTERNLM2 = _compile(_INTERNLM2, reverse=True)


def _rename(key: str, rules: list[tuple[re.Pattern[str], str]]) -> str | None:
    for pattern, dst in rules:
        m = pattern.match(key)
        if m:
            return dst.replace("{i}", m.groupdict().get("i") or "") + key[m.end() :]
    return None


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
        key = _rename(key, _FROM_IN_MEMORY) or key
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


# --- configs ---------------------------------------------------------------------------------------------------

_VISION_TO_HF = {  # nativevl/original vision field -> transformers InternVLVisionConfig field
    "qkv_bias": "attention_bias",
    "qk_normalization": "use_qk_norm",
    "initializer_factor": "layer_scale_init_value",
    "dropout": "hidden_dropout_prob",
}


def _vision_from(d: dict[str, Any], hf: bool) -> VisionConfig:
    d = dict(d)
    if hf:
        for ours, theirs in _VISION_TO_HF.items():
            if theirs in d:
                d[ours] = d.pop(theirs)
    for name in ("image_size", "patch_size"):
        value = d.get(name)
        if isinstance(value, (list, tuple)):
            if len(set(value)) != 1:
                raise CheckpointError(f"vision_config.{name} must be square, got {value}")
            d[name] = value[0]
    known = set(VisionConfig.__dataclass_fields__)
    return VisionConfig(**{k: v for k, v in d.items() if k in known})


_MODEL_TYPES = {"qwen2": "Qwen2ForCausalLM", "internlm2": "InternLM2ForCausalLM", "llama": "LlamaForCausalLM",
                "internlm3": "InternLM3ForCausalLM"}


def _text_from(d: dict[str, Any], where: str) -> TextConfig:
    """An `llm_config` / `text_config` of any supported LLM as a TextConfig; an unsupported feature is an error."""
    d = dict(d)
    model_type = d.get("model_type", "qwen2")
    arch = (d.get("architectures") or [_MODEL_TYPES.get(model_type, model_type)])[0]

    def refuse(what: str) -> None:
        raise CheckpointError(f"{where}: {arch}: {what} is not supported")

    rope = d.get("rope_parameters")  # transformers 5 keeps theta and scaling together
    if isinstance(rope, dict):
        d.setdefault("rope_theta", rope.get("rope_theta", 10000.0))
        if rope.get("rope_type", rope.get("type", "default")) != "default":
            d["rope_scaling"] = rope  # a default rope_parameters never cancels an explicit rope_scaling
    natural = d["hidden_size"] // d["num_attention_heads"]
    if arch == "Qwen2ForCausalLM":
        if d.get("use_sliding_window"):
            refuse("sliding-window attention (use_sliding_window=true)")
        if d.get("head_dim") not in (None, natural):
            refuse("head_dim != hidden_size / num_attention_heads")
        d["attention_bias"] = True  # Qwen2 always has q/k/v biases
    elif arch == "InternLM2ForCausalLM":  # the original 9B folder
        if d.get("bias", True):
            refuse("bias=true (biases on wqkv and wo)")
        d["attention_bias"] = False
    elif arch in ("LlamaForCausalLM", "InternLM3ForCausalLM"):  # InternLM3 is Llama with two bias flags
        if d.get("attention_bias") or d.get("mlp_bias") or d.get("qkv_bias") or d.get("bias"):
            refuse("a bias on the attention or MLP projections")
        d["attention_bias"] = False
        # written by `_text_dict`: this Llama came from an original InternLM2 folder and goes back to one
        arch = "InternLM2ForCausalLM" if d.get("original_architecture") == "InternLM2ForCausalLM" else "LlamaForCausalLM"
        if d.get("head_dim") not in (None, natural):
            d["head_dim_override"] = int(d["head_dim"])
    else:
        raise CheckpointError(f"{where}: LLM {arch} ({model_type}) is not supported; supported: Qwen2ForCausalLM, "
                              "InternLM2ForCausalLM, LlamaForCausalLM, InternLM3ForCausalLM")
    if d.get("hidden_act", "silu") != "silu":
        refuse(f"hidden_act {d['hidden_act']!r}")
    d["architecture"] = arch
    known = set(TextConfig.__dataclass_fields__)
    try:
        return TextConfig(**{k: v for k, v in d.items() if k in known})
    except ValueError as e:
        raise CheckpointError(f"{where}: {e}") from None


# What the original `InternVLChatConfig` assumes for a field its config.json leaves out; these differ from
# InternVL3's values (a missing ps_version means the transposed v1 grid).
ORIGINAL_DEFAULTS = {
    "ps_version": "v1",
    "max_dynamic_patch": 6,
    "min_dynamic_patch": 1,
    "use_thumbnail": False,
    "dynamic_image_size": False,
    "template": None,
    "select_layer": -1,
    "downsample_ratio": 0.5,
}


def config_from_dict(raw: dict[str, Any], where: str = "config.json") -> tuple[ModelConfig, str]:
    """Parse either layout's config.json; returns the config and the layout name."""
    model_type = raw.get("model_type")
    top_known = set(ModelConfig.__dataclass_fields__) - {"vision", "text"}
    if model_type == "internvl_chat":
        vision = _vision_from(raw.get("vision_config") or {}, hf=False)
        text = _text_from(raw.get("llm_config") or {}, where)
        top = {**ORIGINAL_DEFAULTS, **{k: v for k, v in raw.items() if k in top_known}}
        forced = raw.get("force_image_size")
        if forced and int(forced) != vision.image_size:
            raise CheckpointError(f"{where}: force_image_size {forced} differs from vision_config.image_size "
                                  f"{vision.image_size}; resize the position embeddings first")
        return ModelConfig(vision=vision, text=text, **top), "original"
    if model_type == "internvl":
        vision = _vision_from(raw.get("vision_config") or {}, hf=True)
        text_raw = raw.get("text_config") or {}
        text = _text_from(text_raw, where)
        # transformers decides tying by the top-level flag (default True); a stored lm_head that differs from
        # the embedding unties it again (see load_model).
        text.tie_word_embeddings = bool(raw.get("tie_word_embeddings", text_raw.get("tie_word_embeddings", True)))
        if not isinstance(raw.get("vision_feature_layer", -1), int):
            raise CheckpointError(f"{where}: vision_feature_layer must be one layer index, got "
                                  f"{raw['vision_feature_layer']!r}")
        if raw.get("vision_feature_select_strategy", "default") != "default":
            raise CheckpointError(f"{where}: vision_feature_select_strategy must be 'default' (CLS dropped)")
        if raw.get("projector_hidden_act", "gelu") != "gelu":
            raise CheckpointError(f"{where}: projector_hidden_act {raw['projector_hidden_act']!r} is not supported")
        top = {k: v for k, v in raw.items() if k in top_known}
        cfg = ModelConfig(vision=vision, text=text, **top)
        cfg.select_layer = int(raw.get("vision_feature_layer", -1))
        cfg.img_context_token_id = int(raw.get("image_token_id", cfg.img_context_token_id))
        cfg.downsample_ratio = float(raw.get("downsample_ratio", 0.5))
        return cfg, "transformers"
    raise CheckpointError(f"{where}: model_type {model_type!r} is neither 'internvl_chat' nor 'internvl'")


def _text_dict(t: TextConfig, dtype: str, layout: str = "original") -> dict[str, Any]:
    """The LLM's config as its own config class writes it; transformers has no InternLM2, so the transformers
    layout writes an InternLM2 decoder as the Llama it is."""
    d = {k: v for k, v in t.__dict__.items() if k not in ("architecture", "attention_bias", "head_dim_override")}
    d["torch_dtype"] = dtype
    arch = "LlamaForCausalLM" if layout == "transformers" and t.architecture == "InternLM2ForCausalLM" else t.architecture
    if arch == "Qwen2ForCausalLM":
        d.update(architectures=[arch], model_type="qwen2", head_dim=t.head_dim, use_sliding_window=False,
                 sliding_window=None, max_window_layers=t.num_hidden_layers)
    elif arch == "InternLM2ForCausalLM":
        d.update(architectures=[arch], model_type="internlm2", bias=False, attn_implementation="eager")
    else:
        d.update(architectures=[arch], model_type="llama", head_dim=t.head_dim, attention_bias=False, mlp_bias=False)
        if t.architecture != arch:  # transformers ignores the extra key; converting back restores the packing
            d["original_architecture"] = t.architecture
    return d


def config_to_dict(cfg: ModelConfig, layout: str, dtype: str = "float32") -> dict[str, Any]:
    v, t = cfg.vision, cfg.text
    if layout == "original":
        vision = dict(v.__dict__, architectures=["InternVisionModel"], model_type="intern_vit_6b", use_flash_attn=False)
        return {
            "architectures": ["InternVLChatModel"],
            "model_type": "internvl_chat",
            "vision_config": vision,
            "llm_config": _text_dict(t, dtype),
            "downsample_ratio": cfg.downsample_ratio,
            "ps_version": cfg.ps_version,
            "select_layer": cfg.select_layer,
            "force_image_size": v.image_size,
            "template": cfg.template,
            "system_message": cfg.system_message,
            "dynamic_image_size": cfg.dynamic_image_size,
            "use_thumbnail": cfg.use_thumbnail,
            "min_dynamic_patch": cfg.min_dynamic_patch,
            "max_dynamic_patch": cfg.max_dynamic_patch,
            "pad2square": False,
            "use_backbone_lora": 0,
            "use_llm_lora": 0,
            "hidden_size": t.hidden_size,
            "tie_word_embeddings": False,
            # Not an original field (the original reads it from the tokenizer); its config ignores extra keys.
            "img_context_token_id": cfg.img_context_token_id,
            "torch_dtype": dtype,
        }
    if layout == "transformers":
        if cfg.ps_version != "v2":
            raise CheckpointError("the transformers layout only knows pixel shuffle v2; this model uses v1")
        vision = {k: v.__dict__[k] for k in ("hidden_size", "num_hidden_layers", "num_attention_heads")}
        vision.update({theirs: getattr(v, ours) for ours, theirs in _VISION_TO_HF.items()})
        vision.update(
            model_type="internvl_vision",
            intermediate_size=v.intermediate_size,
            norm_type=v.norm_type,
            layer_norm_eps=v.layer_norm_eps,
            hidden_act=v.hidden_act,
            image_size=[v.image_size, v.image_size],
            patch_size=[v.patch_size, v.patch_size],
            num_channels=v.num_channels,
            attention_dropout=v.attention_dropout,
            projection_dropout=0.0,
            initializer_range=v.initializer_range,
            use_absolute_position_embeddings=True,
            use_mean_pooling=True,
            use_mask_token=False,
        )
        text = _text_dict(t, dtype, layout)
        kind = (t.rope_scaling or {}).get("type", "default")
        text["rope_parameters"] = {"rope_type": kind, "rope_theta": t.rope_theta}
        if kind != "default":
            text["rope_parameters"]["factor"] = t.rope_scaling["factor"]
        return {
            "architectures": ["InternVLForConditionalGeneration"],
            "model_type": "internvl",
            "vision_config": vision,
            "text_config": text,
            "image_token_id": cfg.img_context_token_id,
            "image_seq_length": cfg.num_image_token,
            "downsample_ratio": cfg.downsample_ratio,
            "projector_hidden_act": "gelu",
            "vision_feature_layer": cfg.select_layer,
            "vision_feature_select_strategy": "default",
            "tie_word_embeddings": t.tie_word_embeddings,
            "dtype": dtype,
        }
    raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")


# --- reading ---------------------------------------------------------------------------------------------------


def read_config(path: str | Path) -> tuple[ModelConfig, str]:
    folder = Path(path)
    file = folder / "config.json"
    if not folder.exists():
        raise CheckpointError(f"{folder}: no such checkpoint folder")
    if not folder.is_dir():
        raise CheckpointError(f"{folder}: a checkpoint is a folder (config.json, *.safetensors, tokenizer files), "
                              "not a file")
    if not file.is_file():
        raise CheckpointError(f"{folder}: no config.json (is this a checkpoint folder?)")
    try:
        raw = json.loads(file.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{file}: not valid JSON ({e})") from None
    cfg, layout = config_from_dict(raw, str(file))
    if layout == "original" and "img_context_token_id" not in raw:
        cfg.img_context_token_id = _tokenizer_token_id(folder, "<IMG_CONTEXT>", cfg.img_context_token_id)
    return cfg, layout


def _tokenizer_token_id(folder: Path, token: str, default: int) -> int:
    """The id of an added token in tokenizer.json (the original reads `<IMG_CONTEXT>`'s id from the tokenizer)."""
    file = folder / "tokenizer.json"
    if not file.is_file():
        return default
    for added in json.loads(file.read_text()).get("added_tokens", []):
        if added.get("content") == token:
            return int(added["id"])
    return default


def weight_files(folder: Path) -> dict[str, Path]:
    """Tensor name -> the safetensors file that holds it (from the shard index, or the single file)."""
    index = folder / INDEX_FILE
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError) as e:
            raise CheckpointError(f"{index}: not a valid shard index ({e})") from None
        files = {name: folder / shard for name, shard in weight_map.items()}
        for shard in sorted(set(files.values())):
            if not shard.is_file():
                raise CheckpointError(f"{index} names {shard.name}, which does not exist")
        return files
    single = folder / SINGLE_FILE
    if single.is_file():
        with safe_open(single, framework="pt") as f:
            return {name: single for name in f.keys()}
    pickled = sorted(p.name for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES)
    if pickled:
        raise CheckpointError(
            f"{folder}: only pickle weights found ({', '.join(pickled)}). nativevl never unpickles files. "
            "Convert them once, in an environment you trust, with:\n"
            "  python -c \"import torch, safetensors.torch as st; "
            "sd = torch.load('pytorch_model.bin', weights_only=True); "
            "st.save_file({k: v.contiguous() for k, v in sd.items()}, 'model.safetensors')\""
        )
    raise CheckpointError(f"{folder}: no {SINGLE_FILE} or {INDEX_FILE}")


def _shapes(files: dict[str, Path]) -> dict[str, tuple[int, ...]]:
    shapes: dict[str, tuple[int, ...]] = {}
    by_file: dict[Path, list[str]] = {}
    for name, file in files.items():
        by_file.setdefault(file, []).append(name)
    for file, names in by_file.items():
        with safe_open(file, framework="pt") as f:
            present = set(f.keys())
            for name in names:
                if name not in present:
                    raise CheckpointError(f"{file.name}: the shard index lists {name!r} but the file lacks it")
                shapes[name] = tuple(f.get_slice(name).get_shape())
    return shapes


def _check(expected: dict[str, torch.Tensor], found: dict[str, tuple[int, ...]], folder: Path) -> None:
    """One error listing every missing, unexpected and mis-shaped tensor by its name in the files."""
    problems = []
    for name in sorted(set(expected) - set(found)):
        problems.append(f"missing {name} (expected shape {tuple(expected[name].shape)})")
    for name in sorted(set(found) - set(expected)):
        problems.append(f"unexpected {name} (shape {found[name]})")
    for name in sorted(set(expected) & set(found)):
        if tuple(expected[name].shape) != found[name]:
            problems.append(f"shape mismatch {name}: model expects {tuple(expected[name].shape)}, file has {found[name]}")
    if problems:
        listing = "\n  ".join(problems[:50]) + ("\n  …" if len(problems) > 50 else "")
        raise CheckpointError(f"{folder}: the weights do not fit the config ({len(problems)} problems):\n  {listing}")


def _expected_in_layout(model: InternVL, layout: str) -> dict[str, torch.Tensor]:
    return _to_layout(own_state_dict(model), model.config, layout)


def _to_layout(state: dict[str, torch.Tensor], cfg: ModelConfig, layout: str) -> dict[str, torch.Tensor]:
    """nativevl names -> the names (and packing) a folder of `layout` stores for this model."""
    if layout == "transformers":
        return to_transformers(state)
    return to_internlm2(state, cfg.text) if cfg.text.architecture == "InternLM2ForCausalLM" else state


def _normalise_names(files: dict[str, Path], layout: str) -> dict[str, str]:
    """File name -> the name the model's expected state uses for that layout (in-memory HF names -> legacy)."""
    if layout != "transformers":
        return {name: name for name in files}
    return {name: _rename(name, _FROM_IN_MEMORY) or name for name in files}


def load_model(
    path: str | Path, dtype: torch.dtype | None = None, device: torch.device | str | None = None
) -> InternVL:
    """Read a checkpoint folder of either layout. dtype None keeps the stored dtype."""
    device = check_device(device)
    folder = Path(path)
    cfg, layout = read_config(folder)
    with torch.device("meta"):
        model = InternVL(cfg)
    files = weight_files(folder)
    names = _normalise_names(files, layout)
    if cfg.text.tie_word_embeddings:
        cfg.text.tie_word_embeddings = _stored_head_is_tied(files, names)
        if not cfg.text.tie_word_embeddings:
            with torch.device("meta"):
                model = InternVL(cfg)
    expected = _expected_in_layout(model, layout)
    if cfg.text.tie_word_embeddings:  # a stored copy of a tied head is not read
        for name in [n for n, legacy in names.items() if legacy == "language_model.lm_head.weight"]:
            del files[name], names[name]
    _check(expected, {names[n]: s for n, s in _shapes(files).items()}, folder)

    state = {names[name]: tensor for name, tensor in _read(files, device)}
    if layout == "transformers":
        state = from_transformers(state)
    elif cfg.text.architecture == "InternLM2ForCausalLM":
        state = from_internlm2(state, cfg.text)
    if dtype is not None:
        state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
    model.load_state_dict(state, strict=False, assign=True)  # keys were checked above; a tied head is absent
    model.language_model.tie_weights()
    left = [name for name, p in model.named_parameters() if p.is_meta]
    if left:
        raise CheckpointError(f"{folder}: no weights were read for {', '.join(left)}")
    return model


def _stored_head_is_tied(files: dict[str, Path], names: dict[str, str]) -> bool:
    """A config that ties the head stays tied unless the files hold an lm_head different from the embedding
    (transformers unties such checkpoints too, with a warning)."""
    by_legacy = {legacy: name for name, legacy in names.items()}
    head, embed = by_legacy.get("language_model.lm_head.weight"), by_legacy.get("language_model.model.embed_tokens.weight")
    if head is None or embed is None:
        return True
    with safe_open(files[head], framework="pt") as f, safe_open(files[embed], framework="pt") as g:
        return torch.equal(f.get_tensor(head), g.get_tensor(embed))


def _read(files: dict[str, Path], device: torch.device | str | None) -> Iterator[tuple[str, torch.Tensor]]:
    by_file: dict[Path, list[str]] = {}
    for name, file in files.items():
        by_file.setdefault(file, []).append(name)
    for file, names in by_file.items():
        with safe_open(file, framework="pt", device=str(device or "cpu")) as f:
            for name in names:
                yield name, f.get_tensor(name)


def read_state(path: str | Path) -> dict[str, torch.Tensor]:
    """Every tensor of an original-layout folder under its own name (single file or shards)."""
    return dict(_read(weight_files(Path(path)), "cpu"))


# --- writing ---------------------------------------------------------------------------------------------------


def own_state_dict(model: InternVL) -> dict[str, torch.Tensor]:
    """The model's tensors under their original names, without a tied lm_head (it is the embedding)."""
    state = model.state_dict()
    if model.config.text.tie_word_embeddings:
        state.pop("language_model.lm_head.weight", None)
    return state


def parse_size(size: str | int) -> int:
    """A size with its unit (5GB, 500MB, 1.5GiB, 1048576B; K/M/G are powers of 1024) in bytes; an int is bytes.
    A bare number is refused: `--max-shard-size 5` meant 5 bytes (115 shards) where 5GB was meant."""
    if isinstance(size, int):
        return size
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMG]?)(?:I?B)\s*", size.upper())
    if not m:
        raise ValueError(f"cannot read size {size!r}: give a number with its unit, e.g. 5GB, 500MB or 1048576B")
    return int(float(m.group(1)) * {"": 1, "K": 2**10, "M": 2**20, "G": 2**30}[m.group(2)])


def save_model(model: InternVL, path: str | Path, layout: str = "original", max_shard_size: str | int = "5GB") -> None:
    """Write config.json and safetensors (sharded with an index past `max_shard_size`)."""
    save_state(own_state_dict(model), model.config, path, layout, max_shard_size)


def save_state(state: dict[str, torch.Tensor], config: ModelConfig, path: str | Path, layout: str = "original",
               max_shard_size: str | int = "5GB") -> None:
    """Write a full state dict under nativevl's (original) names, e.g. one gathered from FSDP2 shards."""
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    if config.text.tie_word_embeddings:
        state = {k: v for k, v in state.items() if k != "language_model.lm_head.weight"}
    dtype = str(next(iter(state.values())).dtype).removeprefix("torch.")
    state = _to_layout(state, config, layout)
    state = {k: v.detach().contiguous().cpu() for k, v in state.items()}
    (folder / "config.json").write_text(json.dumps(config_to_dict(config, layout, dtype), indent=2) + "\n")
    for stale in [*folder.glob("model-*-of-*.safetensors"), folder / INDEX_FILE, folder / SINGLE_FILE]:
        stale.unlink(missing_ok=True)
    _write_shards(state, folder, parse_size(max_shard_size))


def _write_shards(state: dict[str, torch.Tensor], folder: Path, limit: int) -> None:
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for name, tensor in state.items():
        nbytes = tensor.numel() * tensor.element_size()
        if shards[-1] and size + nbytes > limit:
            shards.append({})
            size = 0
        shards[-1][name] = tensor
        size += nbytes
    metadata = {"format": "pt"}
    if len(shards) == 1:
        save_file(shards[0], folder / SINGLE_FILE, metadata=metadata)
        return
    weight_map = {}
    for i, shard in enumerate(shards, start=1):
        name = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, folder / name, metadata=metadata)
        weight_map.update({key: name for key in shard})
    total = sum(t.numel() * t.element_size() for t in state.values())
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (folder / INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n")


def convert(src: str | Path, dst: str | Path, layout: str, dtype: torch.dtype | None = None,
            max_shard_size: str | int = "5GB") -> InternVL:
    """Rewrite a checkpoint folder in another layout (and optionally dtype), carrying the tokenizer along."""
    src, dst = Path(src), Path(dst)
    if src.resolve() == dst.resolve():
        raise ValueError("convert: SRC and DST must be different folders")
    model = load_model(src, dtype=dtype)
    save_model(model, dst, layout=layout, max_shard_size=max_shard_size)
    for name in SIDECAR_FILES:
        if (src / name).is_file():
            shutil.copy2(src / name, dst / name)
    source = json.loads((src / "config.json").read_text())
    if layout == "original" and source.get("model_type") == "internvl_chat" and "auto_map" in source:
        # keep an original folder usable with its remote code (trust_remote_code) after, e.g., a dtype change
        for code in src.glob("*.py"):
            shutil.copy2(code, dst / code.name)
        config = json.loads((dst / "config.json").read_text())
        config["auto_map"] = source["auto_map"]
        (dst / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    return model
