"""`make demo` / `nativevl demo`: the whole recipe on the embedded world, on a laptop CPU.

1. generate the world (images, conversations, preference pairs, held-out splits) and its tokenizer;
2. natively pre-train a tiny InternVL3-architecture model: ViT, projector and LLM together, text and images
   mixed 1:3, square-averaged loss, packed rows (V2PE off at this toy scale: see `train/recipes.py`);
3. fine-tune it (SFT) on the world's conversations;
4. score it on held-out questions per question type, next to a most-frequent-answer baseline;
5. print the `nativevl chat` command that asks it about a held-out picture.

Command: `nativevl demo [--out demo_out] [--pretrain-steps N] [--sft-steps N]` (about 12 minutes on 2 cores).
"""

from __future__ import annotations

import json
import shlex
import shutil
import time
from pathlib import Path

from nativevl.data.world import generate_world
from nativevl.eval.world import evaluate_world, format_table
from nativevl.train.recipes import demo_pretrain, demo_sft
from nativevl.train.trainer import train


def _stage(cfg, out: Path, world: Path, steps: int | None, start: Path | None = None):  # noqa: ANN001, ANN202
    cfg.out = str(out)
    cfg.data.meta = str(world / Path(cfg.data.meta).name)
    cfg.data.tokenizer = str(world / "tokenizer")
    cfg.progress = True
    cfg.resume = False
    if steps is not None:
        cfg.steps = steps
    if start is not None:
        cfg.model.checkpoint = str(start)
    shutil.rmtree(out, ignore_errors=True)
    return train(cfg)


def run_demo(out: Path, pretrain_steps: int | None = None, sft_steps: int | None = None) -> dict:
    t0 = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    world = out / "world"
    if world.exists() and not (world / ".nativevl-world").exists():
        raise ValueError(f"{world} exists and was not written by the demo")
    summary = generate_world(world, seed=0)
    print(f"1. world: {summary['records']} records, {summary['images']} images, tokenizer of "
          f"{summary['vocab_size']} tokens ({summary['seconds']} s) -> {world}")

    pre = _stage(demo_pretrain(), out / "pretrain", world, pretrain_steps)
    print(f"2. native pre-training: {len(pre)} steps, loss {pre[0]['loss']:.3f} -> {pre[-1]['loss']:.3f} "
          f"({pre[-1]['elapsed']:.0f} s)")
    sft = _stage(demo_sft(), out / "sft", world, sft_steps, start=out / "pretrain" / "final")
    print(f"3. SFT: {len(sft)} steps, loss {sft[0]['loss']:.3f} -> {sft[-1]['loss']:.3f} ({sft[-1]['elapsed']:.0f} s)")

    model = out / "sft" / "final"
    t = time.perf_counter()
    results = evaluate_world(model, world / "meta_eval.json", world / "meta_sft.json")
    print(f"4. held-out questions (val + test), {time.perf_counter() - t:.0f} s:")
    print(format_table(results))
    (out / "results.json").write_text(json.dumps(results, indent=2))

    # an object picture: one tile, as in training and evaluation (the checkpoint's default would tile it)
    lines = (world / "annotations/eval/objects_vqa_test.jsonl").read_text().splitlines()
    record = next(r for r in map(json.loads, lines) if r["meta"]["qa"][0]["task"] == "object_colour")
    question = record["conversations"][0]["value"].replace("<image>\n", "")
    picture = world / "images" / record["image"]
    print(f"5. loss curves: {out / 'pretrain' / 'loss_curve.png'}, {out / 'sft' / 'loss_curve.png'}")
    print("   ask the model about a held-out picture (gold answer: " + str(record["answer"]) + "):")
    print(f"   .venv/bin/nativevl chat {model} --image {picture} --max-num 1 {shlex.quote(question)}")
    print(f"done in {(time.perf_counter() - t0) / 60:.1f} min")
    return results
