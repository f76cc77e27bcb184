"""Training configuration: typed dataclasses (every field documented), overridable from a TOML file or
`--set section.field=value`, and saved, resolved, beside every checkpoint.
"""

from __future__ import annotations

import dataclasses
import tomllib
import types
import typing
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class ModelSpec:
    preset: str = "tiny"  # a preset name (nativevl.config.PRESETS), used when `checkpoint` is empty
    checkpoint: str = ""  # start from this checkpoint folder instead (either layout)
    overrides: dict[str, Any] = field(default_factory=dict)  # ModelConfig fields, e.g. {"text.hidden_size": 128}
    vocab_from_tokenizer: bool = True  # a preset's vocabulary and <IMG_CONTEXT> id follow the tokenizer


@dataclass
class DataSpec:
    meta: str = ""  # meta.json of the training datasets
    tokenizer: str = ""  # tokenizer folder (default: the checkpoint's)
    max_seq_length: int = 16384  # longest sample; text past it is cut, images never
    max_dynamic_patch: int = 12  # tiles per image unless a dataset says otherwise
    image_size: int = 448  # tile size (must match the ViT's image_size)
    v2pe: str = "off"  # "off" (integer positions), "fixed" (v2pe_delta) or "random" (δ per image, 1 … 1/256)
    v2pe_delta: float = 1.0
    system_message: str | None = None  # None: the template's default
    text_ratio: float | None = None  # share of text-only samples (native pre-training ≈ 0.25); None: by size
    max_tokens: int = 16384  # packing budget: tokens per row
    max_tiles: int = 48  # packing budget: tiles per row
    num_workers: int = 1  # DataLoader worker processes per data shard
    min_num_frame: int = 8
    max_num_frame: int = 32


@dataclass
class OptimSpec:
    lr: float = 2e-5  # peak learning rate
    weight_decay: float = 0.05  # not applied to biases, norms, LayerScale and embeddings' position tables
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    warmup_ratio: float = 0.03  # linear warm-up over this share of the steps, then cosine decay
    min_lr_ratio: float = 0.0  # the cosine ends at lr * min_lr_ratio
    max_grad_norm: float = 1.0  # gradient clipping (0: off)
    grad_accum: int = 1  # micro-batches per step and rank; each is its own data shard
    vision_lr_scale: float = 1.0  # the ViT's learning rate is lr times this (same schedule)


@dataclass
class FreezeSpec:
    vit: bool = False  # freeze the vision tower
    projector: bool = False  # freeze mlp1
    llm: bool = False  # freeze the language model (embeddings and head included)
    unfreeze_vit_layers: int | None = None  # with vit frozen, train layers[k:] again (a Python slice, as the original)


@dataclass
class MPOSpec:
    """Mixed preference optimisation (spec §9.4): w_p · DPO sigmoid + w_q · BCO pair + w_g · chosen-answer NLL."""

    beta: float = 0.1  # TRL's default; the InternVL3 scripts do not set it
    dpo_weight: float = 0.8  # `sigmoid_loss_weight`
    bco_weight: float = 0.2  # `bco_pair_loss_weight`
    sft_weight: float = 1.0  # `rpo_alpha`


@dataclass
class TrainConfig:
    name: str = "run"
    # "pretrain" or "sft" (the same loop; the recipe sets the data and freezing), or "mpo" (preference pairs
    # against a frozen reference loaded from model.checkpoint)
    stage: str = "pretrain"
    out: str = "runs/run"  # checkpoints, metrics.jsonl, loss_curve.png, config.toml
    steps: int = 1000  # optimizer steps
    seed: int = 0
    precision: str = "bf16"  # "bf16" (autocast) or "fp32"
    activation_checkpointing: bool = False  # recompute ViT and LLM layers in the backward pass
    loss_chunk: int = 4096  # positions per chunk of output logits (never all at once; 0: all at once)
    drop_path_rate: float = 0.0  # ViT stochastic depth at the last layer (rises linearly from 0)
    loss_reduction: str = "square"  # "token", "sample" or "square" (spec §5)
    save_every: int = 100  # steps between checkpoints (the last step is always saved)
    keep_last: int = 2  # checkpoints kept
    log_every: int = 1
    max_nonfinite: int = 10  # consecutive non-finite losses that stop the run
    resume: bool = True  # continue from the newest valid checkpoint in `out`
    progress: bool = True  # a progress bar on stderr
    model: ModelSpec = field(default_factory=ModelSpec)
    data: DataSpec = field(default_factory=DataSpec)
    optim: OptimSpec = field(default_factory=OptimSpec)
    freeze: FreezeSpec = field(default_factory=FreezeSpec)
    mpo: MPOSpec = field(default_factory=MPOSpec)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_toml(self) -> str:
        return dumps_toml(self.to_dict())


# --- overrides -------------------------------------------------------------------------------------------------


def _coerce(value: Any, hint: Any, key: str) -> Any:
    origin = typing.get_origin(hint)
    if origin in (types.UnionType, typing.Union):
        options = [a for a in typing.get_args(hint) if a is not type(None)]
        if value is None:
            return None
        for option in options:
            try:
                return _coerce(value, option, key)
            except (TypeError, ValueError):
                continue
        raise ValueError(f"{key}: {value!r} does not fit {hint}")
    if hint is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if origin is tuple:
        return tuple(value)
    if hint in (int, str, bool) and not isinstance(value, hint) or (hint is int and isinstance(value, bool)):
        raise ValueError(f"{key}: expected {hint.__name__}, got {value!r}")
    return value


def set_field(cfg: Any, dotted: str, value: Any) -> None:
    """Set `section.field` (or a top-level field), checking the name and coercing the value to its type."""
    *path, name = dotted.split(".")
    target = cfg
    for part in path:
        if not dataclasses.is_dataclass(target) or part not in {f.name for f in dataclasses.fields(target)}:
            raise KeyError(f"unknown config section {dotted!r}")
        target = getattr(target, part)
    hints = typing.get_type_hints(type(target))
    if name not in hints:
        known = ", ".join(f.name for f in dataclasses.fields(target))
        raise KeyError(f"unknown config field {dotted!r} (known here: {known})")
    if dataclasses.is_dataclass(getattr(target, name)):
        if not isinstance(value, dict):
            raise ValueError(f"{dotted} is a section; give its fields")
        for k, v in value.items():
            set_field(cfg, f"{dotted}.{k}", v)
        return
    setattr(target, name, _coerce(value, hints[name], dotted))


def parse_value(text: str) -> Any:
    """A --set value as TOML (numbers, booleans, strings in quotes, lists, inline tables); bare words stay text."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def apply_overrides(cfg: TrainConfig, toml_text: str | None = None, sets: list[str] = ()) -> TrainConfig:
    if toml_text:
        data = tomllib.loads(toml_text)
        data.pop("recipe", None)
        for key, value in data.items():
            set_field(cfg, key, value)
    for item in sets:
        if "=" not in item:
            raise ValueError(f"--set needs key=value, got {item!r}")
        key, text = item.split("=", 1)
        set_field(cfg, key.strip(), parse_value(text.strip()))
    return cfg


def load_config(recipe_or_toml: str, sets: list[str] = ()) -> TrainConfig:
    """A named recipe, or a TOML file whose optional `recipe = "…"` line names the recipe it starts from."""
    from nativevl.train.recipes import RECIPES

    path = Path(recipe_or_toml)
    toml_text = None
    if path.suffix == ".toml":
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such config file")
        toml_text = path.read_text(encoding="utf-8")
        try:
            name = tomllib.loads(toml_text).get("recipe", "")
        except tomllib.TOMLDecodeError as e:
            raise ValueError(f"{path}: {e}") from None
    else:
        name = recipe_or_toml
    if name and name not in RECIPES:
        raise KeyError(f"unknown recipe {name!r}; known: {', '.join(RECIPES)}")
    cfg = RECIPES[name]() if name else TrainConfig()
    return apply_overrides(cfg, toml_text, list(sets))


def dumps_toml(data: dict[str, Any], prefix: str = "") -> str:
    """A small TOML writer for the config (scalars, lists, None as a comment-free omission)."""
    lines, tables = [], []
    for key, value in data.items():
        if isinstance(value, dict) and key != "overrides":
            tables.append((key, value))
        elif value is not None:
            lines.append(f"{key} = {_toml_value(value)}")
    out = "\n".join(lines)
    for key, value in tables:
        name = f"{prefix}{key}"
        out += f"\n\n[{name}]\n" + dumps_toml(value, name + ".")
    return out.strip() + "\n"


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f'"{k}" = {_toml_value(v)}' for k, v in value.items()) + "}"
    raise TypeError(f"cannot write {value!r} as TOML")
