"""A trained model (the demo's) in bf16, int8, int4 and int4 with its ViT and projector too: the embedded world's held-out accuracy per question type,
and how often greedy decoding agrees with bf16's on held-out questions with their images (docs/benchmarks.md).

    nativevl demo --no-align --out demo_out
    python -m benchmarks.quant_world demo_out/sft/final --world demo_out/world --group-size 64 --out quant_world.md

Agreement, per format against bf16, on `--questions` held-out questions spread over the world's datasets:
the share of bf16's `--continuation` greedy tokens (decoded past the end of the answer, no stop token) that the
format also picks at each position given bf16's tokens before it (teacher-forced), and the share of questions
whose free-running greedy continuation equals bf16's token for token, and the share whose reply (up to its stop
token, what chat returns) equals bf16's. Nothing is timed.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from dataclasses import replace
from pathlib import Path

import torch

from benchmarks.common import table
from nativevl.data.dataset import read_lines, read_meta
from nativevl.eval.answer import load_tiles
from nativevl.eval.world import evaluate_world
from nativevl.infer.chat import build_query, chat_generation_config
from nativevl.infer.generate import generate
from nativevl.model.internvl import InternVLModel
from nativevl.model.quant import PARTS, QuantConfig, quantize
from nativevl.tokenizer import InternVLTokenizer, load_tokenizer
from nativevl.weights import load_model

FORMATS = ("bf16", "int8", "int4", "int4-all")  # -all: the ViT and the projector on int4 too


def held_out_prompts(model: InternVLModel, tokenizer: InternVLTokenizer, world: Path, count: int
                     ) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
    """(prompt ids (1, L), tiles) of `count` held-out questions, taken in turn from each held-out dataset."""
    specs = [s for s in read_meta(world / "meta_eval.json") if s.name.endswith(("_val", "_test"))]
    lines = [[json.loads(line) for _, line in read_lines(s)[:count]] for s in specs]
    out = []
    for i in range(count):
        for spec, records in zip(specs, lines, strict=True):
            if i < len(records) and len(out) < count:
                record = records[i]
                images = record.get("image") or []
                images = images if isinstance(images, list) else [images]
                max_num = spec.max_dynamic_patch or model.config.max_dynamic_patch
                pixels, patches = load_tiles(model, [spec.root / p for p in images], max(1, max_num // max(1, len(images))))
                _, query = build_query(model, record["conversations"][0]["value"], pixels, None, patches or None)
                out.append((torch.tensor([tokenizer.prompt_ids(query)]), pixels))
    return out


@torch.inference_mode()
def agreement(ref: InternVLModel, model: InternVLModel, prompts: list[tuple[torch.Tensor, torch.Tensor | None]],
              length: int, eos: list[int]) -> tuple[float, float, float]:
    """Against `ref`: (teacher-forced token agreement, share of whole continuations equal, share of replies equal
    up to and including the first stop token of `eos`, as chat returns them)."""
    same, whole, reply = [], [], []

    def upto_eos(tokens: torch.Tensor) -> list[int]:
        out = []
        for t in tokens.tolist():
            out.append(t)
            if t in eos:
                break
        return out

    for ids, pixels in prompts:
        want = generate(ref, ids, pixel_values=pixels, max_new_tokens=length)
        full = torch.cat([ids, want], dim=1)
        cont = slice(ids.shape[1] - 1, full.shape[1] - 1)
        picked = model(full, pixel_values=pixels).logits[:, cont].argmax(-1)
        same.append((picked == want).float().mean().item())
        got = generate(model, ids, pixel_values=pixels, max_new_tokens=length)
        whole.append(float(torch.equal(got, want)))
        reply.append(float(upto_eos(got[0]) == upto_eos(want[0])))
    return sum(same) / len(same), sum(whole) / len(whole), sum(reply) / len(reply)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.quant_world", description=__doc__.split("\n")[0])
    p.add_argument("checkpoint", type=Path, help="a trained checkpoint folder with its tokenizer")
    p.add_argument("--world", type=Path, required=True, help="the world it was trained on (its held-out splits)")
    p.add_argument("--questions", type=int, default=32, help="held-out questions for the agreement table")
    p.add_argument("--continuation", type=int, default=64, help="greedy tokens compared with bf16's")
    p.add_argument("--limit", type=int, help="held-out records per dataset for the accuracy table (default all)")
    p.add_argument("--group-size", type=int, default=128, help="int4's group (it must divide every layer's inputs: "
                   "64 for the demo's 192-wide model)")
    p.add_argument("--out", type=Path, help="also write the report (markdown) here")
    args = p.parse_args(argv)
    tokenizer = load_tokenizer(args.checkpoint)
    base = load_model(args.checkpoint, dtype=torch.bfloat16).eval()
    int4 = replace(QuantConfig.named("int4"), group_size=args.group_size)
    configs = {"int8": QuantConfig.named("int8"), "int4": int4, "int4-all": replace(int4, parts=PARTS)}
    models = {"bf16": base, **{name: quantize(copy.deepcopy(base), configs[name]) for name in FORMATS[1:]}}
    lines = [f"# python -m benchmarks.quant_world {' '.join(sys.argv[1:] if argv is None else argv)}".rstrip(), ""]
    scores = {name: evaluate_world(m, args.world / "meta_eval.json", args.world / "meta_sft.json",
                                   tokenizer=tokenizer, limit=args.limit) for name, m in models.items()}
    groups = list(scores["bf16"])
    rows = [[g, str(int(scores["bf16"][g]["n"])), *(f"{scores[f][g]['accuracy']:.1%}" for f in models),
             *(f"{(scores[f][g]['accuracy'] - scores['bf16'][g]['accuracy']) * 100:+.1f}" for f in FORMATS[1:])]
            for g in groups]
    lines += ["## Held-out accuracy", "", table(["question type", "n", *models, *(f"{f} - bf16 (points)"
                                                                                  for f in FORMATS[1:])], rows), ""]
    print("\n".join(lines), flush=True)
    shown = len(lines)
    prompts = held_out_prompts(base, tokenizer, args.world, args.questions)
    eos = chat_generation_config(base, tokenizer, None).eos_token_id
    rows = []
    for name in FORMATS[1:]:
        same, whole, reply = agreement(base, models[name], prompts, args.continuation, eos)
        rows.append([name, str(len(prompts)), f"{same:.1%}", f"{whole:.0%}", f"{reply:.0%}"])
    lines += [f"## Greedy tokens against bf16 ({args.continuation}-token continuations)", "",
              table(["format", "questions", "token = bf16's (teacher-forced)", "whole continuation = bf16's",
                     "reply up to its stop token = bf16's"], rows), ""]
    print("\n".join(lines[shown:]), flush=True)
    if args.out:
        args.out.write_text("\n".join(lines))


if __name__ == "__main__":
    main()
