"""Named training recipes: Python functions returning a TrainConfig (`nativevl train RECIPE --set k=v`).

- `pretrain`: the paper's native multimodal pre-training: every parameter trainable, text-only and multimodal
  data mixed about 1:3, V2PE with a random δ per image, square-averaged loss, packed rows.
- `sft`: supervised fine-tuning: the same loop on conversation data, JPEG augmentation (per dataset), square
  averaging, packing, V2PE.
- `sft_lora`: LoRA SFT with the original's InternVL2.5-1B LoRA script settings (`lora.llm_rank = 16`, every
  part's base frozen); `--set model.quantize=int4` makes it QLoRA.
- `mpo`: mixed preference optimisation (InternVL3's scripts): 0.8 DPO + 0.2 BCO pair + 1.0 SFT loss against a
  frozen reference loaded from the same checkpoint, on MMPR-style pairs; every module trainable.
- `prm`: a process reward model: SFT on VisualPRM conversations labelled by `nativevl prm-data`.
- `posthoc_warmup`, `posthoc_vit`: the conventional post-hoc recipe as a baseline (InternVL2.5 stages 1 and 1.5):
  frozen LLM, projector warm-up, then the ViT unfrozen.
- `demo_pretrain`, `demo_sft`, `demo_mpo`, `demo_prm`: the embedded world's tiny model, sized to train in
  minutes on a 2-core CPU.

Each recipe's docstring is its line in `nativevl train --help` (`recipe_summaries`, `recipes_help`). This module
imports the config module, never the other way: `load_config` (a recipe or TOML file plus overrides) lives here.
"""

from __future__ import annotations

import inspect
import tomllib
from collections.abc import Callable
from pathlib import Path

from nativevl.train.config import (
    ConfigError,
    DataSpec,
    FreezeSpec,
    LoraSpec,
    ModelSpec,
    OptimSpec,
    TrainConfig,
    apply_overrides,
    did_you_mean,
)


def pretrain() -> TrainConfig:
    """native multimodal pre-training: all trainable, text:multimodal 1:3, V2PE random, lr 4e-5."""
    return TrainConfig(
        name="pretrain",
        stage="pretrain",
        out="runs/pretrain",
        data=DataSpec(text_ratio=0.25, v2pe="random"),
        optim=OptimSpec(lr=4e-5),  # InternVL2.5's full-parameter stage
        loss_reduction="square",
    )


def sft() -> TrainConfig:
    """supervised fine-tuning on conversations: square averaging, packing, V2PE random, lr 2e-5."""
    return TrainConfig(
        name="sft",
        stage="sft",
        out="runs/sft",
        data=DataSpec(v2pe="random"),
        optim=OptimSpec(lr=2e-5),
        loss_reduction="square",
    )


def sft_lora() -> TrainConfig:
    """LoRA SFT as the original's InternVL2.5-1B LoRA script: ViT, projector and LLM frozen, LLM rank 16, lr 4e-5."""
    cfg = sft()
    cfg.name, cfg.out = "sft_lora", "runs/sft_lora"
    cfg.freeze = FreezeSpec(vit=True, projector=True, llm=True)
    cfg.lora = LoraSpec(llm_rank=16)
    cfg.optim = OptimSpec(lr=4e-5)
    cfg.data.max_dynamic_patch = 6
    cfg.activation_checkpointing = True  # grad_checkpoint True in the script
    return cfg


def mpo() -> TrainConfig:
    """mixed preference optimisation against a frozen reference (needs model.checkpoint), lr 2e-7."""
    return TrainConfig(
        name="mpo",
        stage="mpo",
        out="runs/mpo",
        data=DataSpec(max_seq_length=12288),  # 8192 for 38B/78B
        optim=OptimSpec(lr=2e-7),  # shell/internvl3.0/mpo: 1 epoch, warm-up 0.03, cosine, wd 0.05
        drop_path_rate=0.1,  # 0.4 for 38B/78B
    )


def prm() -> TrainConfig:
    """a process reward model: SFT on `nativevl prm-data` labels (prm/meta_prm.json), lr 1e-5."""
    cfg = sft()
    cfg.name, cfg.out = "prm", "runs/prm"
    # VisualPRM: the SFT loss on `+`/`-` turns (data from `nativevl prm-data`); its learning rate is not public
    cfg.data = DataSpec(meta="prm/meta_prm.json", v2pe="off")
    cfg.optim = OptimSpec(lr=1e-5)
    return cfg


def posthoc_warmup() -> TrainConfig:
    """post-hoc baseline step 1: ViT and LLM frozen, projector warm-up, lr 2e-4."""
    cfg = pretrain()
    cfg.name, cfg.out = "posthoc_warmup", "runs/posthoc_warmup"
    cfg.data.text_ratio, cfg.data.v2pe = None, "off"
    cfg.freeze = FreezeSpec(vit=True, llm=True)
    cfg.optim.lr = 2e-4  # InternVL2.5 stage 1 (MLP warm-up)
    return cfg


def posthoc_vit() -> TrainConfig:
    """post-hoc baseline step 2: LLM frozen, ViT and projector trained, lr 1e-5."""
    cfg = posthoc_warmup()
    cfg.name, cfg.out = "posthoc_vit", "runs/posthoc_vit"
    cfg.freeze = FreezeSpec(llm=True)
    cfg.optim.lr = 1e-5  # InternVL2.5 stage 1.5 (ViT incremental)
    return cfg


DEMO_MODEL = {
    # InternVL3's architecture at a toy size; 112-px tiles give 16 visual tokens per tile: about 3x the samples
    # per step of 224-px tiles at the same step time (measured), which the slow-to-learn shape questions need.
    "vision.image_size": 112,
    "vision.hidden_size": 96,
    "vision.intermediate_size": 384,
    "vision.num_attention_heads": 4,
    "vision.num_hidden_layers": 3,
    "text.hidden_size": 192,
    "text.intermediate_size": 512,
    "text.num_attention_heads": 6,
    "text.num_key_value_heads": 2,
    "text.num_hidden_layers": 4,
    "text.tie_word_embeddings": False,
}


def demo_pretrain() -> TrainConfig:
    """the demo's toy model pre-trained on ./world (1500 steps, CPU)."""
    cfg = pretrain()
    # Held-out shape accuracy follows the pre-training length, not SFT's (one seed each, docs/training.md):
    # 480 + 440 steps gave 53%, 720 + 200 56.5-81%, 1500 + 440 95%, and 1500 + 200 95.2% on the demo's own world
    # in 12.8 minutes, so nearly the whole budget goes to pre-training.
    cfg.name, cfg.out, cfg.steps = "demo_pretrain", "runs/demo/pretrain", 1500
    cfg.model = ModelSpec(preset="tiny", overrides=dict(DEMO_MODEL))
    # V2PE off: at this scale and length a random δ kept the model from using the image at all (held-out colour
    # 13.8% with δ random vs 86.2% off, 300 + 300 steps); the paper's setting is `v2pe="random"`.
    cfg.data = DataSpec(meta="world/meta_pretrain.json", tokenizer="world/tokenizer", max_seq_length=2048,
                        max_dynamic_patch=4, image_size=112, v2pe="off", text_ratio=0.25, max_tokens=2048,
                        max_tiles=64, num_workers=0)  # on 2 cores a loader process slows the step: 0.48 vs 0.45 s
    # 2e-3 made a from-scratch model's loss jump back up (measured); 1e-3 learns steadily
    cfg.optim = OptimSpec(lr=1e-3, warmup_ratio=0.05, min_lr_ratio=0.1)
    cfg.save_every, cfg.keep_last = 100, 1
    # Measured on the 2-core CPU: at this size bf16 autocast is 8x slower than fp32 (7.4 s vs 0.85 s a step).
    cfg.precision = "fp32"
    return cfg


def demo_sft() -> TrainConfig:
    """the demo's SFT from runs/demo/pretrain/final on ./world (200 steps)."""
    cfg = demo_pretrain()
    cfg.name, cfg.stage, cfg.out, cfg.steps = "demo_sft", "sft", "runs/demo/sft", 200
    cfg.model = ModelSpec(checkpoint="runs/demo/pretrain/final")
    cfg.data.meta, cfg.data.text_ratio = "world/meta_sft.json", None
    cfg.optim = OptimSpec(lr=1e-3, warmup_ratio=0.05, min_lr_ratio=0.1)
    return cfg


def demo_mpo() -> TrainConfig:
    """the demo's MPO from runs/demo/sft/final on ./world's pairs (40 steps)."""
    cfg = demo_sft()
    cfg.name, cfg.stage, cfg.out, cfg.steps = "demo_mpo", "mpo", "runs/demo/mpo", 40
    cfg.model = ModelSpec(checkpoint="runs/demo/sft/final")
    cfg.data.meta = "world/meta_mpo.json"
    # the paper's 2e-7 moves a 8B model pre-trained on billions of tokens; this toy one needs a larger step
    cfg.optim = OptimSpec(lr=1e-4, warmup_ratio=0.05, min_lr_ratio=0.1)
    return cfg


def demo_prm() -> TrainConfig:
    """the demo's PRM from runs/demo/sft/final on prm/meta_prm.json (60 steps)."""
    cfg = demo_sft()
    cfg.name, cfg.out, cfg.steps = "demo_prm", "runs/demo/prm", 60
    cfg.model = ModelSpec(checkpoint="runs/demo/sft/final")
    cfg.data.meta = "prm/meta_prm.json"
    cfg.optim = OptimSpec(lr=5e-4, warmup_ratio=0.05, min_lr_ratio=0.1)
    return cfg


RECIPES: dict[str, Callable[[], TrainConfig]] = {
    f.__name__: f for f in (pretrain, sft, sft_lora, mpo, prm, posthoc_warmup, posthoc_vit, demo_pretrain, demo_sft,
                            demo_mpo, demo_prm)
}


def recipe_summaries() -> list[tuple[str, str]]:
    """(name, one-line description) for every recipe, in `RECIPES` order."""
    return [(name, (inspect.getdoc(f) or "").splitlines()[0].rstrip(".")) for name, f in RECIPES.items()]


def recipes_help() -> str:
    """The recipes as an argparse epilog (keep its line breaks: `formatter_class=RawDescriptionHelpFormatter`)."""
    width = max(len(name) for name in RECIPES)
    return "recipes:\n" + "\n".join(f"  {name:<{width}}  {line}" for name, line in recipe_summaries())


def load_config(recipe_or_toml: str, sets: list[str] = ()) -> TrainConfig:
    """A named recipe, or a TOML file whose optional `recipe = "…"` line names the recipe it starts from, with
    `--set key=value` overrides; validated (config.validate) before anything is loaded."""
    path = Path(recipe_or_toml)
    toml_text = None
    if path.suffix == ".toml":
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such config file")
        toml_text = path.read_text(encoding="utf-8")
        try:
            name = tomllib.loads(toml_text).get("recipe", "")
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"{path}: not valid TOML ({e})") from None
        where = f"{path}: "
    else:
        name, where = recipe_or_toml, ""
    if name and name not in RECIPES:
        raise ConfigError(f"{where}unknown recipe {name!r}{did_you_mean(name, list(RECIPES)) or ';'} "
                          f"recipes: {', '.join(RECIPES)} (or a .toml file)")
    cfg = RECIPES[name]() if name else TrainConfig()
    return apply_overrides(cfg, toml_text, list(sets), source=str(path))


# --- where the recipes' inputs come from ----------------------------------------------------------------------

# The relative paths the demo recipes read, where `make demo` (`nativevl demo`, out demo_out) writes the same
# things, and how to make them here.
DEMO_PLACES: tuple[tuple[str, str, str], ...] = (
    ("world/", "demo_out/world/", "write ./world, where the demo recipes read their world, with "
                                  "`nativevl world generate world`"),
    ("runs/demo/", "demo_out/", "train it here first with `nativevl train {recipe}`"),
    ("prm/", "demo_out/prm_data/", "label solutions into ./prm with `nativevl prm-data runs/demo/sft/final world prm`"),
)


def missing_inputs_hint(missing: dict[str, str]) -> str:
    """For config keys whose paths do not exist ({"data.meta": "world/meta_pretrain.json", …}), where
    `make demo` put the same things (when it did) and how to make them; "" for paths that are not the recipes'."""
    sets, makes = [], []
    for key, path in missing.items():
        posix = Path(path).as_posix()
        for prefix, demo, make in DEMO_PLACES:
            if not posix.startswith(prefix):
                continue
            if Path(demo + posix[len(prefix):]).exists():
                sets.append(f"--set {key}={demo + posix[len(prefix):]}")
            recipe = next((n for n, f in RECIPES.items() if Path(f().out) == Path(posix).parent), None)
            if "{recipe}" not in make or recipe:
                line = make.format(recipe=recipe)
                if line not in makes:
                    makes.append(line)
            break
    if sets:
        return f"`make demo` wrote them under demo_out: add {' '.join(sets)}" + \
            (f" (or {'; '.join(makes)})" if makes else "")
    return "; ".join(makes)
