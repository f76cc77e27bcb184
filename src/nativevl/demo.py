"""`make demo` / `nativevl demo`: the whole recipe on the embedded world, on a laptop CPU.

1. generate the world (images, conversations, preference pairs, held-out splits) and its tokenizer;
2. natively pre-train a tiny InternVL3-architecture model: ViT, projector and LLM together, text and images
   mixed 1:3, square-averaged loss, packed rows (V2PE off at this toy scale: see `train/recipes.py`);
3. fine-tune it (SFT) on the world's conversations;
4. score it on held-out questions per question type, next to a most-frequent-answer baseline;
5. print the `nativevl chat` command that asks it about a held-out picture;
6. align it with MPO on the world's preference pairs;
7. label solutions of the SFT policy by the Monte-Carlo rule and train a process reward model on them;
8. answer held-out step-by-step questions greedily (SFT, MPO) and by majority vote / Best-of-N with the PRM.

Command: `nativevl demo [--out demo_out] [--pretrain-steps N] [--sft-steps N] [--no-align]`.
"""

from __future__ import annotations

import json
import shlex
import shutil
import time
from pathlib import Path

from nativevl.data.world import generate_world
from nativevl.eval.world import evaluate_world, format_table
from nativevl.infer.prm import ProcessRewardModel
from nativevl.tokenizer import load_tokenizer
from nativevl.train.prm_data import build_prm_data
from nativevl.train.recipes import demo_mpo, demo_pretrain, demo_prm, demo_sft
from nativevl.train.trainer import train
from nativevl.weights import load_model


def _stage(cfg, out: Path, world: Path, steps: int | None, start: Path | None = None,  # noqa: ANN001, ANN202
           meta: Path | None = None):
    cfg.out = str(out)
    cfg.data.meta = str(meta or world / Path(cfg.data.meta).name)
    cfg.data.tokenizer = str(world / "tokenizer")
    cfg.progress = True
    cfg.resume = False
    if steps is not None:
        cfg.steps = steps
    if start is not None:
        cfg.model.checkpoint = str(start)
    shutil.rmtree(out, ignore_errors=True)
    return train(cfg)


def _align(out: Path, world: Path, sft: Path, best_of: int, questions: int, steps: dict[str, int],
           limit: int | None) -> dict:
    """MPO on the world's preference pairs, a PRM on Monte-Carlo labelled solutions of the SFT policy, and the
    held-out step-by-step questions answered greedily (SFT, MPO) and by Best-of-N / majority vote (MPO policy)."""
    mpo = _stage(demo_mpo(), out / "mpo", world, steps.get("mpo"), start=sft)
    last = mpo[-10:]
    print(f"6. MPO: {len(mpo)} steps, loss {mpo[0]['loss']:.3f} -> {mpo[-1]['loss']:.3f}, chosen preferred to "
          f"rejected in {100 * sum(r['reward_accuracy'] for r in last) / len(last):.0f}% of the last "
          f"{len(last)} steps' pairs ({mpo[-1]['elapsed']:.0f} s)")
    t = time.perf_counter()
    labels = build_prm_data(sft, world, out / "prm_data", questions=questions, samples=2, k=4, max_new_tokens=128)
    print(f"7. PRM data: {labels.solutions} solutions of {labels.questions} questions, {labels.good_steps} of "
          f"{labels.steps} steps good by the Monte-Carlo rule ({time.perf_counter() - t:.0f} s)")
    prm = _stage(demo_prm(), out / "prm", world, steps.get("prm"), start=sft, meta=out / "prm_data" / "meta_prm.json")
    print(f"   PRM training: {len(prm)} steps, loss {prm[0]['loss']:.3f} -> {prm[-1]['loss']:.3f} "
          f"({prm[-1]['elapsed']:.0f} s)")
    t = time.perf_counter()
    meta_eval, meta_sft = world / "meta_eval.json", world / "meta_sft.json"
    only = {"groups": ("reasoning",), "limit": limit}
    rows = {"SFT greedy": evaluate_world(sft, meta_eval, meta_sft, **only)["reasoning"],
            "MPO greedy": evaluate_world(out / "mpo" / "final", meta_eval, meta_sft, **only)["reasoning"]}
    policy = load_model(out / "mpo" / "final").eval()
    scored = evaluate_world(policy, meta_eval, meta_sft, best_of=best_of, tokenizer=load_tokenizer(sft),
                            prm=ProcessRewardModel(str(out / "prm" / "final")), **only)
    rows[f"MPO majority of {best_of}"] = scored[f"reasoning vote@{best_of}"]
    rows[f"MPO Best-of-{best_of} (PRM)"] = scored["reasoning"]
    print(f"8. held-out step-by-step questions, {time.perf_counter() - t:.0f} s:")
    print(format_table(rows, title="policy"))
    return rows


def run_demo(out: Path, steps: dict[str, int] | None = None, align: bool = True, best_of: int = 8,
             prm_questions: int = 32, scale: float = 1.0, eval_limit: int | None = None) -> dict:
    """The demo; `steps` overrides a stage's steps ({"pretrain", "sft", "mpo", "prm"}); `scale` and `eval_limit`
    shrink the world and the held-out sets (per split) for a quick look."""
    steps = steps or {}
    t0 = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    world = out / "world"
    if world.exists() and not (world / ".nativevl-world").exists():
        raise ValueError(f"{world} exists and was not written by the demo")
    summary = generate_world(world, seed=0, scale=scale)
    print(f"1. world: {summary['records']} records, {summary['images']} images, tokenizer of "
          f"{summary['vocab_size']} tokens ({summary['seconds']} s) -> {world}")

    pre = _stage(demo_pretrain(), out / "pretrain", world, steps.get("pretrain"))
    print(f"2. native pre-training: {len(pre)} steps, loss {pre[0]['loss']:.3f} -> {pre[-1]['loss']:.3f} "
          f"({pre[-1]['elapsed']:.0f} s)")
    sft = _stage(demo_sft(), out / "sft", world, steps.get("sft"), start=out / "pretrain" / "final")
    print(f"3. SFT: {len(sft)} steps, loss {sft[0]['loss']:.3f} -> {sft[-1]['loss']:.3f} ({sft[-1]['elapsed']:.0f} s)")

    model = out / "sft" / "final"
    t = time.perf_counter()
    results = evaluate_world(model, world / "meta_eval.json", world / "meta_sft.json", limit=eval_limit)
    print(f"4. held-out questions (val + test), {time.perf_counter() - t:.0f} s:")
    print(format_table(results))

    # an object picture: one tile, as in training and evaluation (the checkpoint's default would tile it)
    lines = (world / "annotations/eval/objects_vqa_test.jsonl").read_text().splitlines()
    record = next(r for r in map(json.loads, lines) if r["meta"]["qa"][0]["task"] == "object_colour")
    question = record["conversations"][0]["value"].replace("<image>\n", "")
    picture = world / "images" / record["image"]
    print(f"5. loss curves: {out / 'pretrain' / 'loss_curve.png'}, {out / 'sft' / 'loss_curve.png'}")
    print("   ask the model about a held-out picture (gold answer: " + str(record["answer"]) + "):")
    print(f"   .venv/bin/nativevl chat {model} --image {picture} --max-num 1 {shlex.quote(question)}")
    if align:
        results = {**results, "alignment": _align(out, world, model, best_of, prm_questions, steps, eval_limit)}
    (out / "results.json").write_text(json.dumps(results, indent=2))
    print(f"done in {(time.perf_counter() - t0) / 60:.1f} min")
    return results
