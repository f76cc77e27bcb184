"""Named training recipes: Python functions returning a TrainConfig (`nativevl train RECIPE --set k=v`).

- `pretrain`: the paper's native multimodal pre-training: every parameter trainable, text-only and multimodal
  data mixed about 1:3, V2PE with a random δ per image, square-averaged loss, packed rows.
- `sft`: supervised fine-tuning: the same loop on conversation data, JPEG augmentation (per dataset), square
  averaging, packing, V2PE.
- `mpo`: mixed preference optimisation (InternVL3's scripts): 0.8 DPO + 0.2 BCO pair + 1.0 SFT loss against a
  frozen reference loaded from the same checkpoint, on MMPR-style pairs; every module trainable.
- `prm`: a process reward model: SFT on VisualPRM conversations labelled by `nativevl prm-data`.
- `posthoc_warmup`, `posthoc_vit`: the conventional post-hoc recipe as a baseline (InternVL2.5 stages 1 and 1.5):
  frozen LLM, projector warm-up, then the ViT unfrozen.
- `demo_pretrain`, `demo_sft`, `demo_mpo`, `demo_prm`: the embedded world's tiny model, sized to train in
  minutes on a 2-core CPU.
"""

from __future__ import annotations

from collections.abc import Callable

from nativevl.train.config import DataSpec, FreezeSpec, ModelSpec, OptimSpec, TrainConfig


def pretrain() -> TrainConfig:
    return TrainConfig(
        name="pretrain",
        stage="pretrain",
        out="runs/pretrain",
        data=DataSpec(text_ratio=0.25, v2pe="random"),
        optim=OptimSpec(lr=4e-5),  # InternVL2.5's full-parameter stage
        loss_reduction="square",
    )


def sft() -> TrainConfig:
    return TrainConfig(
        name="sft",
        stage="sft",
        out="runs/sft",
        data=DataSpec(v2pe="random"),
        optim=OptimSpec(lr=2e-5),
        loss_reduction="square",
    )


def mpo() -> TrainConfig:
    return TrainConfig(
        name="mpo",
        stage="mpo",
        out="runs/mpo",
        data=DataSpec(max_seq_length=12288),  # 8192 for 38B/78B
        optim=OptimSpec(lr=2e-7),  # shell/internvl3.0/mpo: 1 epoch, warm-up 0.03, cosine, wd 0.05
        drop_path_rate=0.1,  # 0.4 for 38B/78B
    )


def prm() -> TrainConfig:
    cfg = sft()
    cfg.name, cfg.out = "prm", "runs/prm"
    # VisualPRM: the SFT loss on `+`/`-` turns (data from `nativevl prm-data`); its learning rate is not public
    cfg.data = DataSpec(meta="prm/meta_prm.json", v2pe="off")
    cfg.optim = OptimSpec(lr=1e-5)
    return cfg


def posthoc_warmup() -> TrainConfig:
    cfg = pretrain()
    cfg.name, cfg.out = "posthoc_warmup", "runs/posthoc_warmup"
    cfg.data.text_ratio, cfg.data.v2pe = None, "off"
    cfg.freeze = FreezeSpec(vit=True, llm=True)
    cfg.optim.lr = 2e-4  # InternVL2.5 stage 1 (MLP warm-up)
    return cfg


def posthoc_vit() -> TrainConfig:
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
    cfg = demo_pretrain()
    cfg.name, cfg.stage, cfg.out, cfg.steps = "demo_sft", "sft", "runs/demo/sft", 200
    cfg.model = ModelSpec(checkpoint="runs/demo/pretrain/final")
    cfg.data.meta, cfg.data.text_ratio = "world/meta_sft.json", None
    cfg.optim = OptimSpec(lr=1e-3, warmup_ratio=0.05, min_lr_ratio=0.1)
    return cfg


def demo_mpo() -> TrainConfig:
    cfg = demo_sft()
    cfg.name, cfg.stage, cfg.out, cfg.steps = "demo_mpo", "mpo", "runs/demo/mpo", 40
    cfg.model = ModelSpec(checkpoint="runs/demo/sft/final")
    cfg.data.meta = "world/meta_mpo.json"
    # the paper's 2e-7 moves a 8B model pre-trained on billions of tokens; this toy one needs a larger step
    cfg.optim = OptimSpec(lr=1e-4, warmup_ratio=0.05, min_lr_ratio=0.1)
    return cfg


def demo_prm() -> TrainConfig:
    cfg = demo_sft()
    cfg.name, cfg.out, cfg.steps = "demo_prm", "runs/demo/prm", 60
    cfg.model = ModelSpec(checkpoint="runs/demo/sft/final")
    cfg.data.meta = "prm/meta_prm.json"
    cfg.optim = OptimSpec(lr=5e-4, warmup_ratio=0.05, min_lr_ratio=0.1)
    return cfg


RECIPES: dict[str, Callable[[], TrainConfig]] = {
    f.__name__: f for f in (pretrain, sft, mpo, prm, posthoc_warmup, posthoc_vit, demo_pretrain, demo_sft,
                            demo_mpo, demo_prm)
}
