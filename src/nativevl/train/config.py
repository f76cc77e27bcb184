"""Training configuration: typed dataclasses (every field documented, its allowed values declared beside it),
overridable from a TOML file or `--set section.field=value`, checked as a whole by `validate` (before a model
or data is touched), and saved, resolved, beside every checkpoint.

A field's constraints sit in its `setting(...)`: `choices` (a tuple, or a function returning one), bounds
(`ge`, `gt`, `le`, `lt`) or a `check` function returning what is wrong. `validate` reads them generically;
the few rules between fields are in `RULES`.
"""

from __future__ import annotations

import dataclasses
import difflib
import tomllib
import types
import typing
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

from nativevl.config import PRESETS, ModelConfig, TextConfig, VisionConfig
from nativevl.data.v2pe import V2PE_MODES

STAGES = ("pretrain", "sft", "mpo")
PRECISIONS = ("bf16", "fp32")
LOSS_REDUCTIONS = ("token", "sample", "square")  # how per-token losses average (train/losses.py, spec §5)


class ConfigError(ValueError):
    """A config key or value the trainer cannot use; the message names the field as the user writes it."""


def setting(default: Any = dataclasses.MISSING, *, factory: Callable[[], Any] | None = None,
            choices: tuple | Callable[[], tuple] | None = None, ge: float | None = None, gt: float | None = None,
            le: float | None = None, lt: float | None = None,
            check: Callable[[Any], str | None] | None = None) -> Any:
    """A dataclass field with its allowed values (checked by `validate`; None always passes an optional field)."""
    metadata = {k: v for k, v in {"choices": choices, "ge": ge, "gt": gt, "le": le, "lt": lt,
                                  "check": check}.items() if v is not None}
    if factory is not None:
        return field(default_factory=factory, metadata=metadata)
    return field(default=default, metadata=metadata)


def _presets() -> tuple[str, ...]:
    return tuple(PRESETS)


def _model_fields() -> list[str]:
    top = [f.name for f in dataclasses.fields(ModelConfig) if f.name not in ("vision", "text")]
    return top + [f"vision.{f.name}" for f in dataclasses.fields(VisionConfig)] + \
        [f"text.{f.name}" for f in dataclasses.fields(TextConfig)]


def _check_model_overrides(overrides: dict[str, Any]) -> str | None:
    known = _model_fields()
    for key in overrides:
        if key not in known:
            return f"unknown model field {key!r}{did_you_mean(key, known)} (fields: top-level ones such as " \
                   f"downsample_ratio, or vision.* / text.* as in nativevl/config.py)"
    return None


def _check_betas(betas: tuple[float, float]) -> str | None:
    return None if all(0 <= b < 1 for b in betas) else "each beta must be in [0, 1)"


def _not_empty(text: str) -> str | None:
    return "must not be empty" if not text.strip() else None


@dataclass
class ModelSpec:
    # a preset name (nativevl.config.PRESETS), used when `checkpoint` is empty
    preset: str = setting("tiny", choices=_presets)
    checkpoint: str = ""  # start from this checkpoint folder instead (either layout)
    # ModelConfig fields, e.g. {"text.hidden_size": 128} (presets only)
    overrides: dict[str, Any] = setting(factory=dict, check=_check_model_overrides)
    vocab_from_tokenizer: bool = True  # a preset's vocabulary and <IMG_CONTEXT> id follow the tokenizer
    # "int8" / "int4": QLoRA, the language model's linear layers quantized on load and kept packed (needs
    # lora.llm_rank); "" keeps the checkpoint's dtype
    quantize: str = setting("", choices=("", "int8", "int4"))


@dataclass
class DataSpec:
    meta: str = ""  # meta.json of the training datasets
    tokenizer: str = ""  # tokenizer folder (default: the checkpoint's)
    max_seq_length: int = setting(16384, ge=1)  # longest sample; text past it is cut, images never
    max_dynamic_patch: int = setting(12, ge=1)  # tiles per image unless a dataset says otherwise
    image_size: int = setting(448, ge=1)  # tile size (must match the ViT's image_size)
    # "off" (integer positions), "fixed" (v2pe_delta) or "random" (δ per image, 1 … 1/256)
    v2pe: str = setting("off", choices=V2PE_MODES)
    v2pe_delta: float = setting(1.0, gt=0, le=1)
    system_message: str | None = None  # None: the template's default
    # share of text-only samples (native pre-training ≈ 0.25); None: by size
    text_ratio: float | None = setting(None, ge=0, le=1)
    max_tokens: int = setting(16384, ge=1)  # packing budget: tokens per row
    max_tiles: int = setting(48, ge=1)  # packing budget: tiles per row
    num_workers: int = setting(1, ge=0)  # DataLoader worker processes per data shard (0: in-process)
    min_num_frame: int = setting(8, ge=1)
    max_num_frame: int = setting(32, ge=1)


@dataclass
class OptimSpec:
    lr: float = setting(2e-5, gt=0)  # peak learning rate
    # not applied to biases, norms, LayerScale and embeddings' position tables
    weight_decay: float = setting(0.05, ge=0)
    betas: tuple[float, float] = setting((0.9, 0.999), check=_check_betas)
    eps: float = setting(1e-8, gt=0)
    # linear warm-up over this share of the steps, then cosine decay
    warmup_ratio: float = setting(0.03, ge=0, le=1)
    min_lr_ratio: float = setting(0.0, ge=0, le=1)  # the cosine ends at lr * min_lr_ratio
    max_grad_norm: float = setting(1.0, ge=0)  # gradient clipping (0: off)
    grad_accum: int = setting(1, ge=1)  # micro-batches per step and rank; each is its own data shard
    vision_lr_scale: float = setting(1.0, ge=0)  # the ViT's learning rate is lr times this (same schedule)


@dataclass
class FreezeSpec:
    vit: bool = False  # freeze the vision tower
    projector: bool = False  # freeze mlp1
    llm: bool = False  # freeze the language model (embeddings and head included)
    unfreeze_vit_layers: int | None = None  # with vit frozen, train layers[k:] again (a Python slice, as the original)


@dataclass
class LoraSpec:
    """LoRA as the original's `use_llm_lora` / `use_backbone_lora`: alpha = 2 x rank, PEFT's layers; a wrapped
    part's base is frozen (as `get_peft_model` freezes it). Applied after `freeze.vit` / `freeze.llm`, before
    `freeze.projector` and `freeze.unfreeze_vit_layers` (the original's order)."""

    llm_rank: int = setting(0, ge=0)  # rank of the language model's adapters (0: none)
    vit_rank: int = setting(0, ge=0)  # rank of the vision tower's adapters (0: none)
    # the LLM's target modules in its family's names (default the original's: Qwen2/Llama q,k,v,o,gate,up,down
    # projections; InternLM2 attention.wqkv, attention.wo, feed_forward.w1/w2/w3)
    target_modules: list[str] = setting(factory=list)
    vit_target_modules: list[str] = setting(factory=list)  # default attn.qkv, attn.proj, mlp.fc1, mlp.fc2
    dropout: float = setting(0.05, ge=0, lt=1)
    unfreeze_lm_head: bool = False  # train the output head in full beside the adapters


@dataclass
class MPOSpec:
    """Mixed preference optimisation (spec §9.4): w_p · DPO sigmoid + w_q · BCO pair + w_g · chosen-answer NLL."""

    beta: float = setting(0.1, gt=0)  # TRL's default; the InternVL3 scripts do not set it
    dpo_weight: float = setting(0.8, ge=0)  # `sigmoid_loss_weight`
    bco_weight: float = setting(0.2, ge=0)  # `bco_pair_loss_weight`
    sft_weight: float = setting(1.0, ge=0)  # `rpo_alpha`


@dataclass
class TrainConfig:
    name: str = "run"
    # "pretrain" or "sft" (the same loop; the recipe sets the data and freezing), or "mpo" (preference pairs
    # against a frozen reference loaded from model.checkpoint)
    stage: str = setting("pretrain", choices=STAGES)
    out: str = setting("runs/run", check=_not_empty)  # checkpoints, metrics.jsonl, loss_curve.png, config.toml
    steps: int = setting(1000, ge=1)  # optimizer steps
    seed: int = setting(0, ge=0, le=2**32 - 1)
    precision: str = setting("bf16", choices=PRECISIONS)  # "bf16" (autocast) or "fp32"
    activation_checkpointing: bool = False  # recompute ViT and LLM layers in the backward pass
    # positions per chunk of output logits (never all at once; 0: all at once)
    loss_chunk: int = setting(4096, ge=0)
    drop_path_rate: float = setting(0.0, ge=0, lt=1)  # ViT stochastic depth at the last layer (rises linearly from 0)
    loss_reduction: str = setting("square", choices=LOSS_REDUCTIONS)  # "token", "sample" or "square" (spec §5)
    save_every: int = setting(100, ge=1)  # steps between checkpoints (the last step is always saved)
    keep_last: int = setting(2, ge=0)  # checkpoints kept (0: all)
    log_every: int = setting(1, ge=1)  # (not read yet: every step is written to metrics.jsonl)
    max_nonfinite: int = setting(10, ge=1)  # consecutive non-finite losses that stop the run
    resume: bool = True  # continue from the newest valid checkpoint in `out` (false: start afresh in it)
    progress: bool = True  # a progress bar on stderr
    model: ModelSpec = field(default_factory=ModelSpec)
    data: DataSpec = field(default_factory=DataSpec)
    optim: OptimSpec = field(default_factory=OptimSpec)
    freeze: FreezeSpec = field(default_factory=FreezeSpec)
    lora: LoraSpec = field(default_factory=LoraSpec)
    mpo: MPOSpec = field(default_factory=MPOSpec)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_toml(self) -> str:
        return dumps_toml(self.to_dict())

    def validate(self) -> "TrainConfig":
        return validate(self)


# --- checking values --------------------------------------------------------------------------------------------

# Rules between fields: (test, message) on the whole config; the message is shown when the test is true.
RULES: tuple[tuple[Callable[[TrainConfig], bool], Callable[[TrainConfig], str]], ...] = (
    (lambda c: c.data.min_num_frame > c.data.max_num_frame,
     lambda c: f"data.min_num_frame = {c.data.min_num_frame} is above data.max_num_frame = {c.data.max_num_frame}"),
    (lambda c: bool(c.model.checkpoint and c.model.overrides),
     lambda c: "model.overrides apply to a preset, not to model.checkpoint: drop one "
               "(--set 'model.overrides={}' or --set model.checkpoint=\"\")"),
    (lambda c: c.freeze.vit and c.freeze.projector and c.freeze.llm and c.freeze.unfreeze_vit_layers is None
     and not (c.lora.llm_rank or c.lora.vit_rank or c.lora.unfreeze_lm_head),
     lambda c: "freeze.vit, freeze.projector and freeze.llm are all true and no LoRA rank is set: nothing to train"),
    (lambda c: c.freeze.unfreeze_vit_layers is not None and not c.freeze.vit,
     lambda c: f"freeze.unfreeze_vit_layers = {c.freeze.unfreeze_vit_layers} trains layers of a frozen ViT "
               "again: it needs freeze.vit = true"),
    (lambda c: bool(c.model.quantize) and not c.lora.llm_rank,
     lambda c: f"model.quantize = {c.model.quantize!r} freezes the language model in int8/int4 (QLoRA): it "
               "needs lora.llm_rank > 0"),
    (lambda c: bool(c.lora.target_modules) and not c.lora.llm_rank,
     lambda c: "lora.target_modules is set but lora.llm_rank = 0: give the rank (the original's use_llm_lora)"),
    (lambda c: bool(c.lora.vit_target_modules) and not c.lora.vit_rank,
     lambda c: "lora.vit_target_modules is set but lora.vit_rank = 0: give the rank (use_backbone_lora)"),
    (lambda c: c.stage == "mpo" and not (c.mpo.dpo_weight or c.mpo.bco_weight or c.mpo.sft_weight),
     lambda c: "mpo.dpo_weight, mpo.bco_weight and mpo.sft_weight are all 0: the MPO loss would be 0"),
)


def validate(cfg: TrainConfig) -> TrainConfig:
    """Every field's type and allowed values, then `RULES`; raises one ConfigError naming every problem.
    Values are normalised in place (an int where a float goes, a list where a tuple goes)."""
    problems = list(_section_problems(cfg, ""))
    if not problems:
        problems = [message(cfg) for test, message in RULES if test(cfg)]
    if problems:
        raise ConfigError("; ".join(problems))
    return cfg


def _section_problems(section: Any, prefix: str) -> Iterator[str]:
    hints = typing.get_type_hints(type(section))
    for f in dataclasses.fields(section):
        key, value = prefix + f.name, getattr(section, f.name)
        if dataclasses.is_dataclass(value):
            yield from _section_problems(value, key + ".")
            continue
        try:
            value = _coerce(value, hints[f.name], key)
        except ConfigError as e:
            yield str(e)
            continue
        setattr(section, f.name, value)
        problem = _value_problem(value, f.metadata)
        if problem:
            yield f"{key}: {problem}" if isinstance(value, dict) else f"{key} = {_show(value)}: {problem}"


def _value_problem(value: Any, rules: typing.Mapping[str, Any]) -> str | None:
    if value is None:
        return None
    if "choices" in rules:
        choices = rules["choices"]() if callable(rules["choices"]) else rules["choices"]
        if value not in choices:
            return f"must be one of {', '.join(_show(c) for c in choices)}"
    low = ("[", rules["ge"]) if "ge" in rules else ("(", rules["gt"]) if "gt" in rules else None
    high = ("]", rules["le"]) if "le" in rules else (")", rules["lt"]) if "lt" in rules else None
    if (low and (value < low[1] if low[0] == "[" else value <= low[1])) or \
            (high and (value > high[1] if high[0] == "]" else value >= high[1])):
        if low and high:
            return f"must be in {low[0]}{_show(low[1])}, {_show(high[1])}{high[0]}"
        if low:
            return f"must be {'>=' if low[0] == '[' else '>'} {_show(low[1])}"
        return f"must be {'<=' if high[0] == ']' else '<'} {_show(high[1])}"
    if "check" in rules:
        return rules["check"](value)
    return None


def _show(value: Any) -> str:
    """A value as the user writes it (TOML)."""
    try:
        return _toml_value(value)
    except TypeError:
        return repr(value)


_KINDS = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}


def _describe(hint: Any) -> str:
    origin = typing.get_origin(hint)
    if origin in (types.UnionType, typing.Union):
        options = [a for a in typing.get_args(hint) if a is not type(None)]
        return " or ".join(_describe(a) for a in options) + " or none"
    if origin is tuple:
        return f"a list of {len(typing.get_args(hint))} numbers"
    if origin is dict or hint is dict:
        return 'a table, e.g. {"text.hidden_size" = 128}'
    return _KINDS.get(hint, str(hint))


def _coerce(value: Any, hint: Any, key: str) -> Any:
    """`value` as a `hint`, or a ConfigError `key = value: expected …`."""
    origin = typing.get_origin(hint)
    wrong = ConfigError(f"{key} = {_show(value)}: expected {_describe(hint)}")
    if origin in (types.UnionType, typing.Union):
        if value is None:
            return None
        for option in (a for a in typing.get_args(hint) if a is not type(None)):
            try:
                return _coerce(value, option, key)
            except ConfigError:
                continue
        raise wrong
    if origin is tuple:
        args = typing.get_args(hint)
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            raise wrong
        try:
            return tuple(_coerce(v, a, key) for v, a in zip(value, args, strict=True))
        except ConfigError:
            raise wrong from None
    if origin is dict or hint is dict:
        if not isinstance(value, dict):
            raise wrong
        return value
    if hint is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if hint in (int, float, str, bool) and (not isinstance(value, hint) or (hint is int and isinstance(value, bool))):
        raise wrong
    return value


# --- overrides -------------------------------------------------------------------------------------------------


def did_you_mean(name: str, known: list[str]) -> str:
    """"; did you mean 'x'?" for the closest of `known`, or ""."""
    close = difflib.get_close_matches(name, known, n=1)
    return f"; did you mean {close[0]!r}?" if close else ""


def _sections(target: Any) -> list[str]:
    return [f.name for f in dataclasses.fields(target) if dataclasses.is_dataclass(getattr(target, f.name))]


def _values(target: Any) -> list[str]:
    return [f.name for f in dataclasses.fields(target) if not dataclasses.is_dataclass(getattr(target, f.name))]


def set_field(cfg: Any, dotted: str, value: Any) -> None:
    """Set `section.field` (or a top-level field), checking the name and coercing the value to its type
    (ranges and choices are `validate`'s)."""
    *path, name = dotted.split(".")
    target, where = cfg, ""
    for part in path:
        if part not in _sections(target):
            if part in _values(target):
                raise ConfigError(f"{where + part} is a value, not a section: --set {where + part}=VALUE")
            known = _sections(target)
            raise ConfigError(f"unknown config section {where + part!r} in {dotted!r}"
                              f"{did_you_mean(part, known) or ';'} sections: {', '.join(known) or 'none'}")
        target, where = getattr(target, part), where + part + "."
    if name in _sections(target):
        if not isinstance(value, dict):
            example = _values(getattr(target, name))[0]
            raise ConfigError(f"{dotted} is a section; give its fields, e.g. --set {dotted}.{example}=VALUE")
        for k, v in value.items():
            set_field(cfg, f"{dotted}.{k}", v)
        return
    if name not in _values(target):
        known = [where + n for n in _values(target)]
        here = f"fields of [{where[:-1]}]" if where else "top-level fields"
        sections = f"; sections: {', '.join(_sections(target))}" if _sections(target) else ""
        raise ConfigError(f"unknown config field {dotted!r}"
                          f"{did_you_mean(dotted, known + [where + s for s in _sections(target)]) or ';'} "
                          f"{here}: {', '.join(_values(target))}{sections}")
    hint = typing.get_type_hints(type(target))[name]
    if isinstance(value, str) and value.lower() in ("none", "null") and _optional_non_text(hint):
        value = None  # `--set freeze.unfreeze_vit_layers=none` (TOML has no null)
    setattr(target, name, _coerce(value, hint, dotted))


def _optional_non_text(hint: Any) -> bool:
    args = typing.get_args(hint) if typing.get_origin(hint) in (types.UnionType, typing.Union) else ()
    return type(None) in args and str not in args


def parse_value(text: str) -> Any:
    """A --set value as TOML (numbers, booleans, strings in quotes, lists, inline tables); bare words stay text."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def apply_overrides(cfg: TrainConfig, toml_text: str | None = None, sets: list[str] = (),
                    source: str = "TOML") -> TrainConfig:
    """A TOML file's values (`source` names it in errors), then `--set key=value` items, onto `cfg`; then
    `validate`."""
    if toml_text:
        try:
            data = tomllib.loads(toml_text)
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"{source}: not valid TOML ({e})") from None
        data.pop("recipe", None)
        for key, value in data.items():
            try:
                set_field(cfg, key, value)
            except ConfigError as e:
                raise ConfigError(f"{source}: {e}") from None
    for item in sets:
        if "=" not in item:
            raise ConfigError(f"--set needs key=value, got {item!r}")
        key, text = item.split("=", 1)
        set_field(cfg, key.strip(), parse_value(text.strip()))
    return validate(cfg)


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
