"""v2pe: does a small visual position step δ help on multimodal contexts longer than those trained on?

Per seed, one base model learns to see (object pictures: captions and questions) and to read text, including
text conversations as long as the longest training prompt, so every position up to the training context length
is trained. From it, one model per δ (1, 1/4, 1/16, and δ drawn per image from {1, 1/2, …, 1/256}) continues on
the long-context task at the training length (2-8 pictures: "what colour is the object in the first picture?")
with that δ, as the V2PE paper fine-tunes a model pre-trained with integer positions. Each is asked the same
question over 8, 16 and 32 held-out pictures (prompts about 1x, 2x and 4x the training length), with the δ it
was trained with; the random-δ model with the largest δ whose positions stay within the training length (the
paper's "δ chosen by context length"), and with δ = 1.
"""

from __future__ import annotations

import json
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
from nativevl.data.dataset import read_lines, read_meta
from nativevl.data.v2pe import V2PE_DELTAS, v2pe_positions_row
from nativevl.data.world import COLOURS, LONG_EVAL_PICTURES, LONG_TRAIN_PICTURES
from nativevl.eval.world import evaluate_world
from nativevl.infer.chat import question_ids
from nativevl.model.internvl import InternVLModel
from nativevl.tokenizer import load_tokenizer
from nativevl.train.config import ModelSpec
from nativevl.train.recipes import demo_pretrain
from nativevl.weights import load_model

BASE_STEPS = 400
ARM_STEPS = 400
ARM_TOKENS = 1024  # tokens per packed row while the arms train (32 tiles): twice the updates of 2048-token rows
# The toy LLM's RoPE base. With InternVL3's θ = 1e6 this 4-layer model answered 4x-length prompts as well as 1x
# ones even at δ = 1 (measured: 100% at 8 and at 32 pictures), so its context is not yet "long" at this scale;
# with θ = 1e4, as in short-context LLMs, positions past the training length are new to it (δ = 1: 100% at 1x,
# 48% at 4x after 300 steps), the situation V2PE is for.
ROPE_THETA = 1e4
# the model's name -> (its folder, DataSpec.v2pe, DataSpec.v2pe_delta)
ARMS = {"δ = 1": ("delta-1", "off", 1.0), "δ = 1/4": ("delta-1_4", "fixed", 0.25),
        "δ = 1/16": ("delta-1_16", "fixed", 1 / 16), "random δ": ("delta-random", "random", 1.0)}
TITLE = "V2PE: a small visual position step on long multimodal contexts"


def _cfg(world: Path, seed: int, steps: int, meta: Path, v2pe: str = "off", delta: float = 1.0,
         checkpoint: Path | None = None):  # noqa: ANN202
    cfg = demo_pretrain()
    cfg.stage = "sft"
    cfg.seed, cfg.steps = seed, steps
    cfg.data.meta, cfg.data.tokenizer, cfg.data.text_ratio = str(meta), str(world / "tokenizer"), None
    cfg.data.v2pe, cfg.data.v2pe_delta = v2pe, delta
    if checkpoint is not None:
        cfg.model = ModelSpec(checkpoint=str(checkpoint))
        cfg.data.max_tokens, cfg.data.max_tiles = ARM_TOKENS, ARM_TOKENS // 32
    else:
        cfg.model.overrides["text.rope_theta"] = ROPE_THETA
    return cfg


def span(ids: list[int], img_context_id: int, delta: float) -> float:
    """The position after a prompt's last token: how far into the positions a prompt reaches with this δ."""
    return v2pe_positions_row(ids, img_context_id, delta)[-1] + 1


def prompts(model: InternVLModel, tokenizer: Any, specs: list[Any]) -> list[list[int]]:
    """The prompt ids of every record of `specs`, as the evaluation decodes them (one tile per picture)."""
    out = []
    for spec in specs:
        for _, line in read_lines(spec):
            record = json.loads(line)
            out.append(question_ids(model, tokenizer, record["conversations"][0]["value"], [1] * len(record["image"])))
    return out


def delta_for(ids: list[list[int]], img_context_id: int, limit: float) -> float:
    """The largest δ of the paper's choices that keeps every prompt within `limit` positions (else the smallest)."""
    return next((d for d in V2PE_DELTAS if max(span(p, img_context_id, d) for p in ids) <= limit), V2PE_DELTAS[-1])


def run(ctx: Context) -> dict[str, Any]:
    world = ctx.world()
    per_seed: list[dict[str, Any]] = []
    long_eval = read_meta(world / "meta_long_eval.json")
    for seed in ctx.seeds:
        out = ctx.seed_dir(seed)
        base_meta = sub_meta(world, ["meta_pretrain.json", "meta_sft.json", "meta_long.json"],
                             lambda n: n in ("objects_text", "objects_vqa", "world_text", "text_long"),
                             out / "meta_base.json")
        arm_meta = sub_meta(world, ["meta_sft.json", "meta_long.json"],
                            lambda n: n in ("objects_vqa", "long_context", "text_long"), out / "meta_arm.json")
        base = stage(_cfg(world, seed, ctx.steps(BASE_STEPS), base_meta), out / "base", ctx.progress)
        found: dict[str, Any] = {"seed": seed, "base_seconds": train_seconds(base), "arms": {}}
        for arm, (name, mode, delta) in ARMS.items():
            metrics = stage(_cfg(world, seed, ctx.steps(ARM_STEPS), arm_meta, mode, delta, out / "base" / "final"),
                            out / name, ctx.progress)
            final = out / name / "final"
            model, tokenizer = load_model(final).eval(), load_tokenizer(final)
            img = model.config.img_context_token_id
            train_length = max(span(p, img, 1.0) for p in prompts(model, tokenizer, _specs(long_eval, "1x")))
            evals: dict[str, Any] = {}
            for length in LONG_EVAL_PICTURES:
                specs = _specs(long_eval, length)
                ids = prompts(model, tokenizer, specs)
                deltas = {"trained": delta} if mode != "random" else \
                    {"by length": delta_for(ids, img, train_length), "δ = 1": 1.0}
                for how, d in deltas.items():
                    table = evaluate_world(model, specs, world / "meta_long.json", tokenizer=tokenizer,
                                           limit=ctx.eval_limit,
                                           v2pe_delta=None if mode == "off" else d)["long-context"]
                    evals.setdefault(how, {})[length] = {
                        "accuracy": table["accuracy"], "baseline": table["baseline"], "n": table["n"], "delta": d,
                        "tokens": max(len(p) for p in ids), "span": max(span(p, img, d) for p in ids)}
            found["arms"][arm] = {"seconds": train_seconds(metrics), "train_length": train_length, "evals": evals}
        per_seed.append(found)
        (out / "results.json").write_text(json.dumps(found, indent=1))
        print(f"v2pe: seed {seed} done ({ctx.elapsed():.1f} min)", flush=True)
    return report(ctx, per_seed)


def _specs(specs: list[Any], length: str) -> list[Any]:
    return [s for s in specs if s.name.startswith(f"long_{length}_")]


def rows_of(per_seed: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """(arm, how it was evaluated) in table order."""
    first = per_seed[0]["arms"]
    order = ("trained", "by length", "δ = 1")
    return [(arm, how) for arm in ARMS if arm in first for how in order if how in first[arm]["evals"]]


def report(ctx: Context, per_seed: list[dict[str, Any]]) -> dict[str, Any]:
    lengths = list(LONG_EVAL_PICTURES)

    def acc(arm: str, how: str, length: str) -> list[float]:
        return [s["arms"][arm]["evals"][how][length]["accuracy"] for s in per_seed]

    first = per_seed[0]["arms"]
    header = ["model (trained with)", "evaluated with", *[f"{n} pictures ({k})" for k, n in LONG_EVAL_PICTURES.items()]]
    rows = []
    for arm, how in rows_of(per_seed):
        e = first[arm]["evals"][how]
        chosen = ", ".join(f"1/{round(1 / e[k]['delta'])}" if e[k]["delta"] < 1 else "1" for k in lengths)
        label = {"trained": "its δ", "by length": f"δ by length: {chosen}"}.get(how, how)
        rows.append([arm, label, *[cell(acc(arm, how, k)) for k in lengths]])
    baseline = first["δ = 1"]["evals"]["trained"]
    rows.append(["most frequent training answer", "", *[f"{100 * baseline[k]['baseline']:.1f}" for k in lengths]])
    rows.append([f"chance (1 of {len(COLOURS)} colours)", "", *[f"{100 / len(COLOURS):.1f}" for _ in lengths]])
    print(text_table(header, rows))
    spans = markdown_table(
        ["model", *[f"{n} pictures" for n in LONG_EVAL_PICTURES.values()]],
        [[arm, *[f"{round(first[arm]['evals'][how][k]['span'])}" for k in lengths]]
         for arm, how in rows_of(per_seed) if how == "trained"])
    per_seed_table = markdown_table(
        ["model", "evaluated with", *[f"seed {s['seed']}" for s in per_seed]],
        [[arm, "its δ" if how == "trained" else how,
          *[" / ".join(f"{100 * s['arms'][arm]['evals'][how][k]['accuracy']:.0f}" for k in lengths) for s in per_seed]]
         for arm, how in rows_of(per_seed)])
    low, high = LONG_TRAIN_PICTURES
    tokens = ", ".join(str(first["δ = 1"]["evals"]["trained"][k]["tokens"]) for k in lengths)
    body = f"""
**Claim (paper §2.2, Table 12):** V2PE, which advances the position by δ < 1 for visual tokens, helps on long
multimodal contexts; δ can be chosen at inference by the context's length.

**Setup.** The demo's toy model (112-px tiles: 16 tokens a picture) with a RoPE base θ = {ROPE_THETA:g} (see
below), per seed a base trained {ctx.steps(BASE_STEPS)} steps with integer positions on object pictures and text
(long text conversations included, so positions up to the training length are trained), then one model per δ
trained {ctx.steps(ARM_STEPS)} more steps on "what colour is the object in the first picture?" over {low}-{high}
pictures (`meta_long.json`), object questions and long text, with that δ. The
training context length: {round(first['δ = 1']['train_length'])} positions (the longest prompt, {high} pictures,
at δ = 1). Held-out questions over 8, 16 and 32 pictures ({tokens}
prompt tokens), greedy; accuracy in % (mean ± sd (min..max) over seeds).

{markdown_table(header, rows)}

Per seed (accuracy at 8 / 16 / 32 pictures, %):

{per_seed_table}

How far each prompt reaches into the positions (the longest prompt's last position + 1) for each δ:

{spans}
"""

    def plot(png: Path) -> None:
        with canvas(png, "V2PE: accuracy beyond the training length (mean, min..max over seeds)") as ax:
            xs = list(LONG_EVAL_PICTURES.values())
            for i, (arm, how) in enumerate(rows_of(per_seed)):  # each line a little apart, so the bars do not hide
                error_bars(ax, [x * 1.03 ** (i - 2) for x in xs], [acc(arm, how, k) for k in lengths],
                           arm if how == "trained" else f"{arm}, {how}")
            ax.axhline(100 / len(COLOURS), color="grey", linestyle=":", label="chance")
            ax.set_xscale("log", base=2)
            ax.set_xticks(xs, [f"{n} ({k})" for k, n in LONG_EVAL_PICTURES.items()])
            ax.set_xlabel("pictures in the prompt (its length against the training length)")
            ax.set_ylabel("held-out accuracy (%)")
            ax.legend(fontsize=8)

    return write_report(ctx, TITLE, body, per_seed, plot)
