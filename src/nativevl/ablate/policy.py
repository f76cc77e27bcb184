"""The SFT policy that the mpo and best-of-n ablations start from: per seed, the demo's recipes (native
pre-training, then SFT) at fewer steps. Both ablations share it (work/policy/seed<k>), so whichever runs second
reuses it."""

from __future__ import annotations

from pathlib import Path

from nativevl.ablate.common import Context, stage, train_seconds
from nativevl.train.config import ModelSpec
from nativevl.train.recipes import demo_pretrain, demo_sft

PRETRAIN_STEPS = 900
SFT_STEPS = 200


def sft_policy(ctx: Context, seed: int) -> tuple[Path, float]:
    """(the SFT checkpoint, seconds of training it took)."""
    world, out = ctx.world(), ctx.work / "policy" / f"seed{seed}"
    pre = demo_pretrain()
    pre.seed, pre.steps = seed, ctx.steps(PRETRAIN_STEPS)
    pre.data.meta, pre.data.tokenizer = str(world / "meta_pretrain.json"), str(world / "tokenizer")
    seconds = train_seconds(stage(pre, out / "pretrain", ctx.progress))
    sft = demo_sft()
    sft.seed, sft.steps = seed, ctx.steps(SFT_STEPS)
    sft.model = ModelSpec(checkpoint=str(out / "pretrain" / "final"))
    sft.data.meta, sft.data.tokenizer = str(world / "meta_sft.json"), str(world / "tokenizer")
    seconds += train_seconds(stage(sft, out / "sft", ctx.progress))
    return out / "sft" / "final", seconds


def describe(ctx: Context) -> str:
    return (f"the demo's toy model and recipes at {ctx.steps(PRETRAIN_STEPS)} native pre-training + "
            f"{ctx.steps(SFT_STEPS)} SFT steps per seed")
