"""config.json in both layouts: the original `internvl_chat` config (`vision_config`, `llm_config`) and
transformers' `internvl` config (`vision_config`, `text_config`), to and from nativevl's `ModelConfig`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from nativevl.config import ModelConfig, TextConfig, VisionConfig
from nativevl.weights.errors import LAYOUTS, CheckpointError

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
                "internlm3": "InternLM3ForCausalLM", "qwen3": "Qwen3ForCausalLM"}


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
    elif arch == "Qwen3ForCausalLM":  # InternVL3.5
        if d.get("use_sliding_window"):
            refuse("sliding-window attention (use_sliding_window=true)")
        if d.get("attention_bias"):
            refuse("attention_bias=true (biases on q/k/v and o_proj)")
        d["attention_bias"] = False
        d["head_dim_override"] = int(d.get("head_dim") or natural)
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
                              "Qwen3ForCausalLM, InternLM2ForCausalLM, LlamaForCausalLM, InternLM3ForCausalLM")
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
    elif arch == "Qwen3ForCausalLM":
        d.update(architectures=[arch], model_type="qwen3", head_dim=t.head_dim, attention_bias=False,
                 use_sliding_window=False, sliding_window=None, max_window_layers=t.num_hidden_layers)
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
