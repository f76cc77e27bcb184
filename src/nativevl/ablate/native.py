"""native-vs-posthoc: is native multimodal pre-training at least as good as the conventional post-hoc recipe?

At equal compute (the same steps and the same tokens of every kind, text and multimodal, for both arms):

- native: ViT, projector and a randomly initialised LLM learn together from the start on the text + multimodal
  mix (text 1:3, the demo's `demo_pretrain` recipe), then SFT;
- post-hoc: the LLM first learns from text alone (the native arm's share of text steps), then is frozen while
  the ViT and projector warm up on multimodal data, then everything trains on multimodal data, then the same SFT.

Both are scored on the world's held-out questions per question type and by text perplexity on held-out text
(after pre-training and after SFT).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from nativevl.ablate.common import (
    Context,
    canvas,
    cell,
    error_bars,
    markdown_table,
    stage,
    sub_meta,
    text_table,
    train_seconds,
    write_report,
)
from nativevl.eval.perplexity import text_perplexity
from nativevl.eval.world import GROUPS, evaluate_world
from nativevl.train.config import FreezeSpec, ModelSpec
from nativevl.train.recipes import demo_pretrain, demo_sft

PRETRAIN_STEPS = 700
SFT_STEPS = 150
# the post-hoc arm's pre-training, in shares of PRETRAIN_STEPS: the native mix's text share first, then the
# warm-up (LLM frozen), then everything on multimodal data
TEXT_SHARE, WARMUP_SHARE = 0.25, 0.125
TITLE = "Native multimodal pre-training against the post-hoc recipe"


def split(ctx: Context) -> tuple[int, int, int]:
    """The post-hoc arm's (text, warm-up, multimodal) steps, adding up to the native arm's pre-training steps."""
    total = ctx.steps(PRETRAIN_STEPS)
    n_text, n_warm = max(1, round(total * TEXT_SHARE)), max(1, round(total * WARMUP_SHARE))
    return n_text, n_warm, total - n_text - n_warm


def _pretrain_cfg(world: Path, seed: int, steps: int, meta: Path, checkpoint: Path | None = None,
                  freeze: FreezeSpec | None = None, text_ratio: float | None = None):  # noqa: ANN202
    cfg = demo_pretrain()
    cfg.seed, cfg.steps = seed, steps
    cfg.data.meta, cfg.data.tokenizer, cfg.data.text_ratio = str(meta), str(world / "tokenizer"), text_ratio
    if checkpoint is not None:
        cfg.model = ModelSpec(checkpoint=str(checkpoint))
    cfg.freeze = freeze or FreezeSpec()
    return cfg


def arms(ctx: Context, seed: int) -> dict[str, dict[str, Any]]:
    """Train both arms for one seed; {arm: {"pretrained", "final", "pretrain_steps", "seconds"}}."""
    world, out = ctx.world(), ctx.seed_dir(seed)
    mix = world / "meta_pretrain.json"
    text = sub_meta(world, ["meta_pretrain.json"], lambda n: n == "world_text", out / "meta_text.json")
    visual = sub_meta(world, ["meta_pretrain.json"], lambda n: n != "world_text", out / "meta_visual.json")
    n_text, n_warm, n_rest = split(ctx)
    total = n_text + n_warm + n_rest
    plans = {
        "native": [("pretrain", _pretrain_cfg(world, seed, total, mix, text_ratio=0.25))],
        "post-hoc": [
            ("text", _pretrain_cfg(world, seed, n_text, text, freeze=FreezeSpec(vit=True, projector=True))),
            ("warmup", _pretrain_cfg(world, seed, n_warm, visual, out / "post-hoc" / "text" / "final",
                                     freeze=FreezeSpec(llm=True))),
            ("pretrain", _pretrain_cfg(world, seed, n_rest, visual,
                                       out / "post-hoc" / "warmup" / "final")),
        ],
    }
    done: dict[str, dict[str, Any]] = {}
    for arm, plan in plans.items():
        seconds, steps, tokens = 0.0, 0, 0
        for name, cfg in plan:
            metrics = stage(cfg, out / arm / name, ctx.progress)
            seconds, steps = seconds + train_seconds(metrics), steps + len(metrics)
            tokens += sum(int(r["tokens"]) for r in metrics)
        sft = demo_sft()
        sft.seed, sft.steps = seed, ctx.steps(SFT_STEPS)
        sft.model = ModelSpec(checkpoint=str(out / arm / "pretrain" / "final"))
        sft.data.meta, sft.data.tokenizer = str(world / "meta_sft.json"), str(world / "tokenizer")
        metrics = stage(sft, out / arm / "sft", ctx.progress)
        done[arm] = {"pretrained": out / arm / "pretrain" / "final", "final": out / arm / "sft" / "final",
                     "pretrain_steps": steps, "pretrain_tokens": tokens, "seconds": seconds + train_seconds(metrics)}
    return done


def run(ctx: Context) -> dict[str, Any]:
    world = ctx.world()
    per_seed: list[dict[str, Any]] = []
    for seed in ctx.seeds:
        found: dict[str, Any] = {"seed": seed}
        for arm, run_ in arms(ctx, seed).items():
            table = evaluate_world(run_["final"], world / "meta_eval.json", world / "meta_sft.json",
                                   limit=ctx.eval_limit)
            before = text_perplexity(run_["pretrained"], world / "meta_text_eval.json")
            after = text_perplexity(run_["final"], world / "meta_text_eval.json")
            found[arm] = {
                "accuracy": {g: r["accuracy"] for g, r in table.items()},
                "baseline": {g: r["baseline"] for g, r in table.items()},
                "n": {g: r["n"] for g, r in table.items()},
                "perplexity_pretrained": before["perplexity"], "perplexity_sft": after["perplexity"],
                "text_records": after["records"], "text_tokens": after["tokens"],
                "pretrain_steps": run_["pretrain_steps"], "pretrain_tokens": run_["pretrain_tokens"],
                "train_seconds": run_["seconds"],
            }
        per_seed.append(found)
        print(f"native-vs-posthoc: seed {seed} done ({ctx.elapsed():.1f} min)", flush=True)
    return report(ctx, per_seed)


def report(ctx: Context, per_seed: list[dict[str, Any]]) -> dict[str, Any]:
    arms_ = ("native", "post-hoc")
    groups = [g for g in GROUPS if g in per_seed[0]["native"]["accuracy"]]

    def values(arm: str, key: str, group: str | None = None) -> list[float]:
        return [s[arm][key][group] if group else s[arm][key] for s in per_seed]

    rows = []
    for g in groups:
        diff = [a - b for a, b in zip(values("native", "accuracy", g), values("post-hoc", "accuracy", g),
                                      strict=True)]
        baseline = per_seed[0]["native"]["baseline"][g]
        rows.append([g, str(per_seed[0]["native"]["n"][g]), cell(values("native", "accuracy", g)),
                     cell(values("post-hoc", "accuracy", g)), cell(diff), f"{100 * baseline:.1f}"])
    for key, label in (("perplexity_pretrained", "text perplexity after pre-training"),
                       ("perplexity_sft", "text perplexity after SFT")):
        diff = [a - b for a, b in zip(values("native", key), values("post-hoc", key), strict=True)]
        rows.append([label, "", cell(values("native", key), percent=False, digits=2),
                     cell(values("post-hoc", key), percent=False, digits=2), cell(diff, percent=False, digits=2), ""])
    header = ["held-out", "n", "native", "post-hoc", "native − post-hoc", "baseline"]
    print(text_table(header, rows))
    steps = per_seed[0]["native"]["pretrain_steps"], per_seed[0]["post-hoc"]["pretrain_steps"]
    tokens = per_seed[0]["native"]["pretrain_tokens"], per_seed[0]["post-hoc"]["pretrain_tokens"]
    n_text, n_warm, n_rest = split(ctx)
    total = n_text + n_warm + n_rest

    def minutes(arm: str) -> str:
        return f"{sum(values(arm, 'train_seconds')) / len(per_seed) / 60:.1f}"

    body = f"""
**Claim (paper §2.1; its ablation in §3, Figure 3):** native multimodal pre-training, in which the ViT, the
projector and the LLM learn together from text and multimodal data in one stage, is at least as good as
adapting a text-only LLM post hoc.

**Setup.** The embedded world (`nativevl world generate`), the demo's toy model (112-px tiles, a 3-layer
ViT, a 4-layer LLM, random weights) and its recipes, at equal compute: {steps[0]} pre-training steps for the
native arm and {steps[1]} for the post-hoc one, of packed rows of up to 2048 tokens ({tokens[0]:,} and {tokens[1]:,}
tokens, seed {per_seed[0]['seed']}); each arm sees the same share of text (25%). Training took
{minutes('native')} min a seed for the native arm and {minutes('post-hoc')} for the post-hoc one (its text-only steps
are cheaper: no picture to encode but a dummy tile per sample).

- *native*: {total} steps on the pre-training mix, text 1:3 (`demo_pretrain`);
- *post-hoc*: {n_text} steps on the mix's text alone (ViT and projector frozen), {n_warm} steps of warm-up on
  its multimodal data with the LLM frozen (ViT and projector train: no pre-trained ViT exists at this scale,
  where the original's warm-up trains the MLP alone), then {n_rest} steps with everything
  trainable on the multimodal data; each stage restarts AdamW and the cosine schedule, as separate stages do;
- then the same SFT for both ({ctx.steps(SFT_STEPS)} steps, `demo_sft`).

Held-out val + test questions of the world, greedy; accuracy in % (mean ± sd (min..max) over seeds) next to the
most-frequent-answer baseline; text perplexity on the {per_seed[0]['native']['text_records']} held-out text
conversations of `meta_text_eval.json` ({per_seed[0]['native']['text_tokens']:,} answer tokens, in the training
template).

{markdown_table(header, rows)}
"""

    def plot(png: Path) -> None:
        with canvas(png, "native vs post-hoc, equal compute (mean, min..max over seeds)", cols=2, size=(11, 4),
                    width_ratios=[3, 1]) as (ax, bx):
            xs = list(range(len(groups)))
            for k, arm in enumerate(arms_):
                error_bars(ax, [x + (k - 0.5) * 0.25 for x in xs], [values(arm, "accuracy", g) for g in groups], arm,
                           linestyle="none")
            ax.scatter(xs, [100 * per_seed[0]["native"]["baseline"][g] for g in groups], marker="_", s=300, c="grey",
                       label="baseline")
            ax.set_xticks(xs, groups, rotation=30)
            ax.set_ylabel("held-out accuracy (%)")
            ax.legend()
            for k, arm in enumerate(arms_):
                error_bars(bx, [(k - 0.5) * 0.2, 1 + (k - 0.5) * 0.2],
                           [values(arm, "perplexity_pretrained"), values(arm, "perplexity_sft")], arm,
                           percent=False, linestyle="none")
            bx.set_xticks([0, 1], ["pre-trained", "after SFT"])
            bx.set_xlim(-0.5, 1.5)
            bx.set_yscale("log")
            bx.set_ylabel("held-out text perplexity")
            bx.legend()

    return write_report(ctx, TITLE, body, per_seed, plot)
