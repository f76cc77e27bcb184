"""The `nativevl` command. It only parses arguments; each command is a Python function you can call.

  nativevl chat MODEL [--image P]... [--video P] [--max-num N] [--dtype bfloat16] [PROMPT]
  nativevl chat MODEL --image P --best-of 8 --prm PRM_MODEL PROMPT
  nativevl convert SRC DST --layout transformers [--dtype bfloat16] [--max-shard-size 5GB]
  nativevl demo [--out DIR]
  nativevl eval MODEL (--mmmu DIR | --world WORLD_DIR) [--best-of N --prm PRM] [--out results.json]
  nativevl world generate OUT [--seed 0] [--scale 1.0]
  nativevl train RECIPE_OR_TOML [--set key=value]...
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def cmd_convert(args: argparse.Namespace) -> None:
    from nativevl.weights import convert, read_config

    _, layout = read_config(args.src)
    t0 = time.perf_counter()
    model = convert(args.src, args.dst, args.layout, DTYPES.get(args.dtype), args.max_shard_size)
    n = sum(p.numel() for p in model.parameters())
    print(f"converted {args.src} ({layout}) -> {args.dst} ({args.layout}): {n:,} parameters, "
          f"{time.perf_counter() - t0:.1f} s")


def best_of(pipe, args: argparse.Namespace) -> None:  # noqa: ANN001 - a Pipeline
    """Best-of-N: the best of N sampled answers by the PRM's score; every candidate's scores on stderr."""
    from nativevl.infer.prm import ProcessRewardModel, best_of_n, final_answer, majority_vote

    if args.prompt is None or not args.prm:
        raise ValueError("--best-of needs --prm PRM_MODEL and a PROMPT")
    prm = ProcessRewardModel(args.prm, aggregation=args.prm_aggregation)
    question, pixels, patches = pipe.prepare(args.prompt, args.image, args.video, args.num_segments)
    candidates = best_of_n(pipe.model, pipe.tokenizer, question, pixels, prm, n=args.best_of,
                           temperature=args.temperature or 0.7, top_p=args.top_p if args.top_p < 1 else 0.95,
                           max_new_tokens=args.max_new_tokens, num_patches_list=patches, seed=args.seed)
    print(candidates[0].response)
    for i, c in enumerate(candidates):
        steps = " ".join(f"{s:.3f}" for s in c.step_scores)
        print(f"# candidate {i + 1}: score {c.score:.4f}, answer {final_answer(c.response)!r}, steps [{steps}]",
              file=sys.stderr)
    vote = final_answer(majority_vote([c.response for c in candidates]))
    print(f"# majority vote: {vote!r}", file=sys.stderr)


def cmd_chat(args: argparse.Namespace) -> None:
    from nativevl.infer.chat import Pipeline, stream_chat

    pipe = Pipeline(args.model, dtype=DTYPES.get(args.dtype), device=args.device, max_num=args.max_num,
                    v2pe_delta=args.v2pe_delta)
    if args.system is not None:
        pipe.model.config.system_message = args.system
    settings = dict(max_new_tokens=args.max_new_tokens, do_sample=args.temperature > 0,
                    temperature=args.temperature or 1.0, top_p=args.top_p, top_k=args.top_k,
                    repetition_penalty=args.repetition_penalty, stop_strings=args.stop, seed=args.seed)
    history: list[tuple[str, str]] = []
    if args.best_of:
        best_of(pipe, args)
        return

    def answer(prompt: str) -> None:
        question, pixels, patches = pipe.prepare(prompt, args.image, args.video, args.num_segments, history)
        pieces = []
        for piece in stream_chat(pipe.model, pipe.tokenizer, pixels, question, settings, history, patches,
                                 args.v2pe_delta):
            pieces.append(piece)
            print(piece, end="", flush=True)
        print()
        if pixels is not None and not history and "<image>" not in question:
            question = "<image>\n" + question
        history.append((question, "".join(pieces).strip()))

    if args.prompt is not None:
        answer(args.prompt)
        return
    print("nativevl chat: type a question; /reset forgets the conversation, /quit or Ctrl-D ends it.",
          file=sys.stderr)
    while True:
        try:
            line = input("user> ").strip()
        except EOFError:
            print(file=sys.stderr)
            return
        if line in ("/quit", "/exit"):
            return
        if line == "/reset":
            history.clear()
            continue
        if line:
            try:
                answer(line)
            except ValueError as e:  # a bad turn does not end the session
                print(f"error: {e}", file=sys.stderr)


def cmd_train(args: argparse.Namespace) -> None:
    import logging

    from nativevl.train.config import load_config
    from nativevl.train.trainer import TrainingError, train

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    cfg = load_config(args.recipe, args.set)
    try:
        history = train(cfg)
    except TrainingError as e:
        raise ValueError(str(e)) from None
    if history:
        last = history[-1]
        print(f"trained {cfg.name} to step {int(last['step'])}: loss {last['loss']:.4f}; "
              f"model in {Path(cfg.out) / 'final'}, curve in {Path(cfg.out) / 'loss_curve.png'}")


def cmd_world(args: argparse.Namespace) -> None:
    from nativevl.data.world import generate_world

    summary = generate_world(Path(args.out), seed=args.seed, scale=args.scale)
    print(f"wrote the embedded world to {args.out} (seed {args.seed}, scale {args.scale}):")
    for key, value in summary.items():
        print(f"  {key}: {value}")


def cmd_eval(args: argparse.Namespace) -> None:
    import json

    if bool(args.mmmu) == bool(args.world):
        raise ValueError("give one of --mmmu DIR or --world WORLD_DIR")
    if args.best_of > 1 and not args.prm:
        raise ValueError("--best-of needs --prm PRM_MODEL")
    if args.world:
        from nativevl.eval.world import evaluate_world, format_table

        world = Path(args.world)
        table = evaluate_world(args.model, world / "meta_eval.json", world / "meta_sft.json", limit=args.limit)
        print(format_table(table))
        rows: list = []
    else:
        from nativevl.eval.mmmu import evaluate_mmmu, read_questions
        from nativevl.infer.chat import Pipeline
        from nativevl.infer.prm import ProcessRewardModel

        questions = read_questions(args.mmmu)[: args.limit]
        pipe = Pipeline(args.model, dtype=DTYPES.get(args.dtype), device=args.device)
        prm = ProcessRewardModel(args.prm) if args.prm else None
        table, rows = evaluate_mmmu(pipe.model, pipe.tokenizer, questions, args.max_num, args.max_new_tokens, prm,
                                    args.best_of, progress=True)
        print(f"{'subject':<32} {'n':>5} {'accuracy':>9}")
        for subject, r in table.items():
            print(f"{subject:<32} {r['n']:>5} {100 * r['accuracy']:>8.1f}%")
    if args.out:
        Path(args.out).write_text(json.dumps({"accuracy": table, "results": rows}, indent=2, default=str))
        print(f"results -> {args.out}")


def cmd_demo(args: argparse.Namespace) -> None:
    import logging

    from nativevl.demo import run_demo

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    run_demo(Path(args.out), args.pretrain_steps, args.sft_steps)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nativevl", description="InternVL3 in plain PyTorch.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("chat", help="answer questions about images or a video with a checkpoint folder",
                       description="One answer when PROMPT is given, otherwise an interactive session with "
                       "history. Answers stream as they are generated.")
    p.add_argument("model", help="checkpoint folder (original or transformers layout) with its tokenizer files")
    p.add_argument("prompt", nargs="?", help="the question; leave out for an interactive session")
    p.add_argument("--image", action="append", default=[], metavar="PATH",
                   help="an image file; repeat for several images (written as Image-1: <image>, …)")
    p.add_argument("--video", metavar="PATH", help="a video file; its frames become one tile each")
    p.add_argument("--num-segments", type=int, default=8, help="frames sampled from the video (default 8)")
    p.add_argument("--max-num", type=int, help="most tiles per image (default: the checkpoint's, 12)")
    p.add_argument("--dtype", choices=sorted(DTYPES), help="weights dtype (default: as stored)")
    p.add_argument("--device", help="cpu, cuda, cuda:1, … (default cpu)")
    p.add_argument("--max-new-tokens", type=int, default=1024, help="answer length limit (default 1024)")
    p.add_argument("--temperature", type=float, default=0.0, help="sampling temperature; 0 = greedy (default)")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass (default 1: off)")
    p.add_argument("--top-k", type=int, default=0, help="sample among the k most likely tokens (default 0: off)")
    p.add_argument("--repetition-penalty", type=float, default=1.0, help="penalty on repeated tokens (default 1)")
    p.add_argument("--stop", action="append", default=[], metavar="TEXT", help="stop at this text; repeatable")
    p.add_argument("--seed", type=int, help="seed for sampling")
    p.add_argument("--v2pe-delta", type=float, help="V2PE: position step of visual tokens (default: integer "
                   "positions, as the released models were run)")
    p.add_argument("--system", help="system message (default: the checkpoint's, else the template's)")
    p.add_argument("--best-of", type=int, metavar="N", help="sample N answers (temperature default 0.7, top-p "
                   "0.95) and print the one the process reward model (--prm) scores highest")
    p.add_argument("--prm", metavar="PATH", help="process reward model checkpoint folder for --best-of")
    p.add_argument("--prm-aggregation", choices=["mean", "min", "last"], default="mean",
                   help="how step scores make a solution's score (default mean, as VisualPRM)")
    p.set_defaults(func=cmd_chat)

    p = sub.add_parser("eval", help="score a checkpoint on a local MMMU-layout folder or the embedded world",
                       description="MMMU: InternVL's prompt, answer reading and the official scoring; a table per "
                       "subject (instance-weighted overall). World: accuracy per question type vs a baseline.")
    p.add_argument("model", help="checkpoint folder with its tokenizer files")
    p.add_argument("--mmmu", metavar="DIR", help="folder of MMMU-layout .jsonl files (image_1..image_7 paths)")
    p.add_argument("--world", metavar="DIR", help="an embedded world folder: its held-out val and test splits")
    p.add_argument("--max-num", type=int, default=6, help="most tiles per image (default 6, as the original)")
    p.add_argument("--max-new-tokens", type=int, default=10, help="answer length (default 10, as the original)")
    p.add_argument("--best-of", type=int, default=1, help="Best-of-N with --prm instead of greedy answers")
    p.add_argument("--prm", metavar="PATH", help="process reward model for --best-of")
    p.add_argument("--limit", type=int, help="only the first N questions (per world split)")
    p.add_argument("--dtype", choices=sorted(DTYPES), help="weights dtype (default: as stored)")
    p.add_argument("--device", help="cpu, cuda, … (default cpu)")
    p.add_argument("--out", metavar="FILE", help="write the table and every reply as JSON")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("convert", help="rewrite a checkpoint in the original or the transformers layout")
    p.add_argument("src", help="checkpoint folder (either layout, single file or sharded safetensors)")
    p.add_argument("dst", help="output folder")
    p.add_argument("--layout", choices=["original", "transformers"], required=True)
    p.add_argument("--dtype", choices=sorted(DTYPES), help="cast floating tensors (default: keep)")
    p.add_argument("--max-shard-size", default="5GB", help="shard past this size (default 5GB)")
    p.set_defaults(func=cmd_convert)

    p = sub.add_parser("train", help="train a recipe (pretrain, sft, demo_pretrain, …) or a TOML config",
                       description="Runs under torchrun too (FSDP2 across the processes).")
    p.add_argument("recipe", help="a recipe name or a .toml file (whose `recipe = \"…\"` names its base)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override any field, e.g. --set steps=200 --set optim.lr=1e-4; repeatable")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("world", help="the embedded synthetic multimodal world")
    world = p.add_subparsers(dest="action", required=True)
    g = world.add_parser("generate", help="write images, jsonl annotations, meta files and a tokenizer to OUT")
    g.add_argument("out", help="output folder")
    g.add_argument("--seed", type=int, default=0, help="same seed, same bytes (default 0)")
    g.add_argument("--scale", type=float, default=1.0, help="multiply the number of records (default 1.0)")
    g.set_defaults(func=cmd_world)

    p = sub.add_parser("demo", help="the whole recipe on the embedded world: pre-train, SFT, evaluate (CPU)")
    p.add_argument("--out", default="demo_out", help="world, checkpoints, curves and results (default demo_out)")
    p.add_argument("--pretrain-steps", type=int, help="override the recipe's pre-training steps")
    p.add_argument("--sft-steps", type=int, help="override the recipe's SFT steps")
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # argparse binds an optional positional at its first chance, so `chat MODEL --image X PROMPT` leaves the
    # prompt over; take it here.
    if extra and args.command == "chat" and args.prompt is None and len(extra) == 1 and not extra[0].startswith("-"):
        args.prompt, extra = extra[0], []
    if extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        args.func(args)
    except (ValueError, KeyError, FileNotFoundError) as e:
        print(f"nativevl {args.command}: error: {e}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
