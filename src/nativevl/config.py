"""Model configuration: typed dataclasses and the released InternVL3 shapes as named presets.

Field names follow the original OpenGVLab `InternVLChatConfig` (spec §1.5) so that reading and writing
its `config.json` is a plain copy; `weights.py` translates to and from the transformers names.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field, fields
from typing import Any


@dataclass
class VisionConfig:
    """InternViT. Defaults are InternViT-300M-448px-V2_5 (InternVL3-1B … 14B)."""

    hidden_size: int = 1024
    num_hidden_layers: int = 24
    num_attention_heads: int = 16
    intermediate_size: int = 4096
    image_size: int = 448
    patch_size: int = 14
    num_channels: int = 3
    qkv_bias: bool = True  # 300M: True; 6B: False
    qk_normalization: bool = False  # 6B: RMSNorm over the full width of q and k, before splitting heads
    norm_type: str = "layer_norm"  # "layer_norm" (300M) or "rms_norm" (6B)
    layer_norm_eps: float = 1e-6
    hidden_act: str = "gelu"  # exact erf GELU
    initializer_factor: float = 0.1  # LayerScale (ls1/ls2) init value
    initializer_range: float = 0.02
    drop_path_rate: float = 0.0  # rises linearly from 0 at layer 0 to this at the last layer
    attention_dropout: float = 0.0
    dropout: float = 0.0

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2


# The LLMs InternVL3 uses, all one decoder (RMSNorm, GQA with RoPE, SwiGLU MLP); they differ in biases, the
# head size and how checkpoints name and pack the weights (weights.py):
# - Qwen2ForCausalLM: q/k/v biases (1B, 2B, 8B, 14B, 38B, 78B);
# - InternLM2ForCausalLM: no biases; the original 9B folder stores InternLM3-8B's weights this way (one
#   interleaved `wqkv` per layer, `wo`, `w1/w2/w3`, `tok_embeddings`, `output`);
# - LlamaForCausalLM: no biases, explicit head size: InternLM3 as transformers (and the -hf layout) write it;
# - Qwen3ForCausalLM (InternVL3.5): no biases, an explicit head size (16 x 128 != 1024 in the 0.6B), and an
#   RMSNorm over each query and key head before RoPE (`q_norm`, `k_norm`).
# The label value the loss skips (PyTorch's cross_entropy default; the original's IGNORE_TOKEN_ID): the data
# pipeline writes it, the model's loss reads it.
IGNORE_INDEX = -100

ARCHITECTURES = ("Qwen2ForCausalLM", "InternLM2ForCausalLM", "LlamaForCausalLM", "Qwen3ForCausalLM")


@dataclass
class TextConfig:
    """The decoder. Defaults are InternVL3-1B's Qwen2.5-0.5B with the 9 InternVL tokens added."""

    architecture: str = "Qwen2ForCausalLM"  # one of ARCHITECTURES
    vocab_size: int = 151674
    hidden_size: int = 896
    intermediate_size: int = 4864
    num_hidden_layers: int = 24
    num_attention_heads: int = 14
    num_key_value_heads: int = 2
    max_position_embeddings: int = 32768
    rope_theta: float = 1_000_000.0
    # None, or {"type": "dynamic", "factor": f} (dynamic NTK, as the released InternVL3 configs carry).
    rope_scaling: dict[str, Any] | None = field(default_factory=lambda: {"type": "dynamic", "factor": 2.0})
    rms_norm_eps: float = 1e-6
    hidden_act: str = "silu"
    attention_bias: bool = True  # Qwen2: q/k/v projections carry a bias, o_proj does not; InternLM: none
    head_dim_override: int | None = None  # None: hidden_size / num_attention_heads (Llama-style configs set it)
    tie_word_embeddings: bool = False  # InternVL forces False for every released size
    initializer_range: float = 0.02
    attention_dropout: float = 0.0
    bos_token_id: int | None = 151643
    eos_token_id: int | None = 151643  # as the released llm_config; chat stops on <|im_end|> (151645)
    pad_token_id: int | None = None

    def __post_init__(self) -> None:
        self.rope_scaling = normalize_rope_scaling(self.rope_scaling)
        if self.architecture not in ARCHITECTURES:
            raise ValueError(f"LLM architecture {self.architecture!r} is not supported; supported: "
                             f"{', '.join(ARCHITECTURES)}")

    @property
    def head_dim(self) -> int:
        return self.head_dim_override or self.hidden_size // self.num_attention_heads

    @property
    def qk_norm(self) -> bool:
        """Whether each query and key head is RMS-normed before RoPE (Qwen3)."""
        return self.architecture == "Qwen3ForCausalLM"


ROPE_TYPES = ("default", "dynamic")


def normalize_rope_scaling(scaling: dict[str, Any] | None) -> dict[str, Any] | None:
    """One form for RoPE scaling: None (plain RoPE) or {"type": "dynamic", "factor": f}.

    Configs spell the kind `type` (transformers 4) or `rope_type` (transformers 5); both are read.
    """
    if not scaling:
        return None
    kind = scaling.get("type", scaling.get("rope_type", "default"))
    if kind not in ROPE_TYPES:
        raise ValueError(f"rope_scaling type {kind!r} is not supported (supported: {', '.join(ROPE_TYPES)})")
    if kind == "default":
        return None
    return {"type": kind, "factor": float(scaling["factor"])}


@dataclass
class ModelConfig:
    """The whole InternVL model: ViT, pixel shuffle, `mlp1` projector and the LLM."""

    vision: VisionConfig = field(default_factory=VisionConfig)
    text: TextConfig = field(default_factory=TextConfig)
    downsample_ratio: float = 0.5
    ps_version: str = "v2"  # "v1" (older checkpoints) yields a transposed token grid
    select_layer: int = -1  # which ViT hidden state feeds the projector (-1: the last layer)
    img_context_token_id: int = 151667  # <IMG_CONTEXT> in the Qwen2.5-based InternVL3 tokenizers
    template: str | None = "internvl2_5"
    system_message: str | None = None  # None: the template's default (spec §3.1)
    dynamic_image_size: bool = True
    use_thumbnail: bool = True
    min_dynamic_patch: int = 1
    max_dynamic_patch: int = 12

    @property
    def num_image_token(self) -> int:
        """Tokens per tile after pixel shuffle: (448/14)^2 * 0.5^2 = 256."""
        return int(self.vision.num_patches * self.downsample_ratio**2)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ModelConfig":
        d = dict(d)
        vision = _build(VisionConfig, d.pop("vision", {}), "vision")
        text = _build(TextConfig, d.pop("text", {}), "text")
        return _build(cls, d, "model", vision=vision, text=text)

    def replace(self, **changes: Any) -> "ModelConfig":
        """A copy with top-level fields, or `vision.x` / `text.x` fields, changed."""
        new = copy.deepcopy(self)
        for key, value in changes.items():
            target, name = new, key
            if "." in key:
                part, name = key.split(".", 1)
                target = getattr(new, part)
            if name not in {f.name for f in fields(target)}:
                raise KeyError(f"unknown config field {key!r}")
            setattr(target, name, value)
            if hasattr(target, "__post_init__"):
                target.__post_init__()  # re-normalise (e.g. rope_scaling spellings)
        return new


def _build(cls: type, d: dict[str, Any], where: str, **extra: Any) -> Any:
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(d) - known)
    if unknown:
        raise KeyError(f"unknown {where} config field(s): {', '.join(unknown)}")
    return cls(**d, **extra)


# --- presets ---------------------------------------------------------------------------------------------
# LLM shapes are those of the Qwen2.5 base models each size was initialised from (spec §1.1), with the
# vocabulary shrunk to 151674 rows (spec pitfall 13) and lm_head untied.

VIT_300M = VisionConfig()
VIT_6B = VisionConfig(
    hidden_size=3200,
    num_hidden_layers=45,
    num_attention_heads=25,
    intermediate_size=12800,
    qkv_bias=False,
    qk_normalization=True,
    norm_type="rms_norm",
)


def _text(hidden: int, inter: int, layers: int, heads: int, kv: int, **kw: Any) -> TextConfig:
    return TextConfig(
        hidden_size=hidden,
        intermediate_size=inter,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv,
        **kw,
    )


def _qwen3(hidden: int, inter: int, layers: int, heads: int, kv: int) -> TextConfig:
    """A Qwen3 base (InternVL3.5's LLMs): head_dim 128 at every size, θ 1e6, 40960 positions, no RoPE scaling."""
    return _text(hidden, inter, layers, heads, kv, architecture="Qwen3ForCausalLM", vocab_size=151936,
                 head_dim_override=128, attention_bias=False, max_position_embeddings=40960, rope_scaling=None,
                 bos_token_id=151643, eos_token_id=151645)


PRESETS: dict[str, ModelConfig] = {
    "internvl3-1b": ModelConfig(VIT_300M, _text(896, 4864, 24, 14, 2)),
    "internvl3-2b": ModelConfig(VIT_300M, _text(1536, 8960, 28, 12, 2)),
    "internvl3-8b": ModelConfig(VIT_300M, _text(3584, 18944, 28, 28, 4)),
    # InternLM3-8B's shape, as the original 9B folder stores it (InternLM2 layout); vocabulary, RoPE and token
    # ids are those of internlm3-8b-instruct (docs/internvl3-9b.md says which values are confirmed)
    "internvl3-9b": ModelConfig(VIT_300M, _text(
        4096, 10240, 48, 32, 2, architecture="InternLM2ForCausalLM", vocab_size=128512, rope_theta=50_000_000.0,
        rope_scaling={"type": "dynamic", "factor": 6.0}, rms_norm_eps=1e-5, attention_bias=False, bos_token_id=1,
        eos_token_id=2, pad_token_id=2), img_context_token_id=128514),
    "internvl3-14b": ModelConfig(VIT_300M, _text(5120, 13824, 48, 40, 8)),
    "internvl3-38b": ModelConfig(VIT_6B, _text(5120, 27648, 64, 40, 8)),
    "internvl3-78b": ModelConfig(VIT_6B, _text(8192, 29568, 80, 64, 8)),
    # InternVL3.5 (docs/internvl3.5.md gives each value's source): the Qwen3 base of each size with its
    # vocabulary (151936), the head untied at every size (the model card's LLM parameter counts, 0.8B / 2.0B /
    # 4.4B for the 0.6B / 1.7B / 4B bases that Qwen3 ties, are the untied counts), `<IMG_CONTEXT>` at 151671
    # (Qwen3's tokenizer holds <think> at 151667); a checkpoint's own config and tokenizer override these.
    **{f"internvl3.5-{size}": ModelConfig(vit, _qwen3(*shape), img_context_token_id=151671)
       for size, vit, shape in (
           ("1b", VIT_300M, (1024, 3072, 28, 16, 8)),
           ("2b", VIT_300M, (2048, 6144, 28, 16, 8)),
           ("4b", VIT_300M, (2560, 9728, 36, 32, 8)),
           ("8b", VIT_300M, (4096, 12288, 36, 32, 8)),
           ("14b", VIT_300M, (5120, 17408, 40, 40, 8)),
           ("38b", VIT_6B, (5120, 25600, 64, 64, 8)))},
    # Tiny shapes for tests and the demo: 448 px tiles, 256 tokens per tile, a 1,000-token vocabulary.
    "tiny": ModelConfig(
        VisionConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=256),
        _text(64, 128, 2, 4, 2, vocab_size=1000, bos_token_id=None, eos_token_id=2),
        img_context_token_id=5,
    ),
    "tiny-6b": ModelConfig(
        VisionConfig(
            hidden_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=256,
            qkv_bias=False,
            qk_normalization=True,
            norm_type="rms_norm",
        ),
        _text(64, 128, 2, 4, 2, vocab_size=1000, bos_token_id=None, eos_token_id=2, tie_word_embeddings=True),
        img_context_token_id=5,
    ),
    "tiny-internlm": ModelConfig(  # the 9B's decoder and checkpoint layout at a toy size
        VisionConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=256),
        _text(64, 128, 2, 4, 2, architecture="InternLM2ForCausalLM", vocab_size=1000, attention_bias=False,
              rope_theta=50_000_000.0, rope_scaling={"type": "dynamic", "factor": 6.0}, rms_norm_eps=1e-5,
              bos_token_id=1, eos_token_id=2),
        img_context_token_id=5,
    ),
}


def preset(name: str) -> ModelConfig:
    """A fresh copy of a named preset (`internvl3-1b` … `internvl3-78b`, `internvl3.5-1b` … `internvl3.5-38b`,
    `tiny`, `tiny-6b`, `tiny-internlm`)."""
    try:
        return copy.deepcopy(PRESETS[name])
    except KeyError:
        raise KeyError(f"unknown preset {name!r}; known: {', '.join(PRESETS)}") from None
