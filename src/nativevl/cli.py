"""The `nativevl` command. It only parses arguments; each command is a Python function you can call.

  nativevl ablate (native-vs-posthoc | v2pe | mpo | best-of-n) [--seeds 3] [--work runs/ablate]
  nativevl chat MODEL [--image P]... [--video P] [--max-num N] [--dtype bfloat16] [PROMPT]
  nativevl chat MODEL --image P --best-of 8 --prm PRM_MODEL PROMPT
  nativevl chat MODEL --adapter LORA_FOLDER [PROMPT]
  nativevl convert SRC DST --layout transformers [--dtype bfloat16] [--max-shard-size 5GB]
  nativevl merge-lora ADAPTER OUT [--base MODEL] [--layout transformers]
  nativevl demo [--out DIR] [--no-align]
  nativevl eval MODEL (--mmmu DIR [--scoring mmmu] | --vqa PATH | --world WORLD_DIR) [--best-of N --prm PRM] [--out F]
  nativevl world generate OUT [--seed 0] [--scale 1.0]
  nativevl prm-data POLICY WORLD_DIR OUT [--questions 64] [--samples 4] [--k 16]
  nativevl serve MODEL [--host 127.0.0.1] [--port 8000] [--max-batch 16] [--allowed-local-media-path DIR]
  nativevl serve MODEL --adapter NAME=LORA_FOLDER ...
  nativevl train RECIPE_OR_TOML [--set key=value]...
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from importlib.metadata import version
from pathlib import Path

import torch

from nativevl.eval.mmmu_scoring import DEFAULT_SCORING, SCORINGS
from nativevl.train.recipes import recipes_help

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def cmd_convert(args: argparse.Namespace) -> None:
    from nativevl.weights import convert, parse_size, read_config

    parse_size(args.max_shard_size)  # a bad size stops before the weights are read
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


CHAT_HELP = "/reset forgets the conversation, /help shows this, /quit, Ctrl-D or Ctrl-C ends the session"


def cmd_chat(args: argparse.Namespace) -> None:
    from nativevl.api import Pipeline
    from nativevl.infer.chat import stream_chat

    if args.prm and not args.best_of:
        raise ValueError("--prm scores Best-of-N candidates: give --best-of N too (e.g. --best-of 8)")
    pipe = Pipeline(args.model, dtype=DTYPES.get(args.dtype), device=args.device, max_num=args.max_num,
                    v2pe_delta=args.v2pe_delta, compile=args.compile, prepack=args.prepack,
                    quantize=args.quantize, adapter=args.adapter, thinking=args.thinking)
    if args.system is not None:
        pipe.model.config.system_message = args.system
    sampled = dict(do_sample=args.temperature > 0, temperature=args.temperature or 1.0)
    settings = dict(max_new_tokens=args.max_new_tokens, top_p=args.top_p, top_k=args.top_k,
                    **(pipe.defaults if args.thinking and not args.temperature else sampled),
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
    print(f"nativevl chat: type a question; {CHAT_HELP}", file=sys.stderr)
    while True:
        try:
            line = input("user> ").strip()
        except (EOFError, KeyboardInterrupt):  # Ctrl-D or Ctrl-C at the prompt ends the session
            print(file=sys.stderr)
            return
        if line in ("/quit", "/exit"):
            return
        if line == "/help":
            print(CHAT_HELP, file=sys.stderr)
        elif line == "/reset":
            history.clear()
            print("(conversation forgotten; the images stay attached)", file=sys.stderr)
        elif line.startswith("/") and " " not in line:
            print(f"unknown command {line}; {CHAT_HELP}", file=sys.stderr)
        elif line:
            try:
                answer(line)
            except ValueError as e:  # a bad turn does not end the session
                print(f"error: {e}", file=sys.stderr)
            except KeyboardInterrupt:  # Ctrl-C during an answer stops it; the turn is not kept
                print("\n(answer interrupted)", file=sys.stderr)


def cmd_train(args: argparse.Namespace) -> None:
    import logging

    from nativevl.train.recipes import load_config
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

    from nativevl.eval.answer import print_table

    if sum(map(bool, (args.mmmu, args.vqa, args.world))) != 1:
        raise ValueError("give one of --mmmu DIR, --vqa FILE_OR_DIR or --world WORLD_DIR")
    if args.scoring != DEFAULT_SCORING and not args.mmmu:
        raise ValueError("--scoring chooses the MMMU metric: it goes with --mmmu DIR")
    if args.groups and not args.world:
        raise ValueError("--groups picks the world's question types: it goes with --world WORLD_DIR")
    if args.world:
        from nativevl.eval.world import check_groups

        groups = check_groups(tuple(args.groups.split(","))) if args.groups else None  # before the model loads
    if args.best_of > 1 and not args.prm:
        raise ValueError("--best-of needs --prm PRM_MODEL")
    from nativevl.api import Pipeline
    from nativevl.infer.prm import ProcessRewardModel

    pipe = Pipeline(args.model, dtype=DTYPES.get(args.dtype), device=args.device, quantize=args.quantize,
                    adapter=args.adapter)
    prm = ProcessRewardModel(args.prm, aggregation=args.prm_aggregation) if args.prm else None
    rows: list = []
    if args.world:
        from nativevl.eval.world import evaluate_world, format_table

        world = Path(args.world)
        table = evaluate_world(pipe.model, world / "meta_eval.json", world / "meta_sft.json", limit=args.limit,
                               groups=groups, prm=prm, best_of=args.best_of, tokenizer=pipe.tokenizer,
                               progress=True, rows=rows, batch_size=args.batch_size)
        print(format_table(table))
    elif args.vqa:
        from nativevl.eval.vqa import evaluate_vqa, read_vqa

        questions = read_vqa(args.vqa)[: args.limit]
        table, rows = evaluate_vqa(pipe.model, pipe.tokenizer, questions, args.max_num, args.max_new_tokens, prm,
                                   args.best_of, progress=True, batch_size=args.batch_size)
        print_table(table)
    else:
        from nativevl.eval.mmmu import describe_scoring, evaluate_mmmu, read_questions

        questions = read_questions(args.mmmu)[: args.limit]
        table, rows = evaluate_mmmu(pipe.model, pipe.tokenizer, questions, args.max_num, args.max_new_tokens, prm,
                                    args.best_of, progress=True, batch_size=args.batch_size, scoring=args.scoring)
        print(f"scoring: {describe_scoring(args.scoring)}")
        print_table(table, "subject")
    if args.out:
        report = {"accuracy": table, "results": rows}
        if args.mmmu:
            report = {"scoring": args.scoring, **report}
        Path(args.out).write_text(json.dumps(report, indent=2, default=str))
        print(f"results -> {args.out}")


def cmd_prm_data(args: argparse.Namespace) -> None:
    from dataclasses import asdict

    from nativevl.train.prm_data import build_prm_data

    summary = build_prm_data(args.policy, args.world, args.out, args.questions, args.samples, args.k, args.max_steps,
                             args.temperature, max_new_tokens=args.max_new_tokens, seed=args.seed, progress=True)
    print(f"wrote {args.out}/prm.jsonl and meta_prm.json: " + ", ".join(f"{k} {v}" for k, v in asdict(summary).items()))
    print(f"train a PRM: nativevl train prm --set model.checkpoint={args.policy} "
          f"--set data.meta={args.out}/meta_prm.json")


def cmd_demo(args: argparse.Namespace) -> None:
    import logging

    from nativevl.demo import run_demo

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    steps = {k: v for k, v in (("pretrain", args.pretrain_steps), ("sft", args.sft_steps)) if v is not None}
    run_demo(Path(args.out), steps, align=not args.no_align, best_of=args.best_of)


def cmd_ablate(args: argparse.Namespace) -> None:
    import logging

    from nativevl.ablate import run_ablation

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    run_ablation(args.name, seeds=args.seeds, work=args.work, docs=args.docs, steps_scale=args.steps_scale,
                 world_scale=args.world_scale, eval_limit=args.eval_limit, progress=not args.no_progress,
                 report_only=args.report_only)


def cmd_serve(args: argparse.Namespace) -> None:
    import logging

    from nativevl.serve.api import ServeConfig, serve

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    cfg = ServeConfig(model=args.model, model_name=args.model_name, max_batch=args.max_batch,
                      max_body_bytes=args.max_body_bytes, max_images=args.max_images, max_tiles=args.max_tiles,
                      max_model_len=args.max_model_len, default_max_tokens=args.default_max_tokens, max_n=args.max_n,
                      allowed_local_media_path=args.allowed_local_media_path,
                      allow_remote_images=args.allow_remote_images, dtype=DTYPES.get(args.dtype), device=args.device,
                      v2pe_delta=args.v2pe_delta, compile=args.compile, prepack=args.prepack,
                      quantize=args.quantize, adapters=adapter_names(args.adapter), thinking=args.thinking)
    serve(cfg, args.host, args.port, args.graceful_timeout)


def adapter_names(values: list[str]) -> dict[str, str]:
    """`--adapter [NAME=]FOLDER` values as {model id: folder}; a bare folder is served under its `model_id`."""
    from nativevl.serve.api import model_id

    named: dict[str, str] = {}
    for value in values:
        name, sep, folder = value.partition("=")
        name, folder = (name, folder) if sep and not Path(value).exists() else (model_id(value), value)
        if name in named:
            raise ValueError(f"--adapter {value}: the name {name!r} is taken by --adapter {named[name]}; "
                             "give each NAME=FOLDER")
        named[name] = folder
    return named


def cmd_merge_lora(args: argparse.Namespace) -> None:
    """Fold an adapter into its base and write the merged checkpoint (the original's tools/merge_lora.py)."""
    from nativevl.weights import SIDECAR_FILES, checkpoint_hash, load_model, save_model
    from nativevl.weights.lora import base_of, load_adapter, merge_lora

    base = Path(args.base) if args.base else base_of(args.adapter)
    model = load_model(base, dtype=torch.float32)
    merged = merge_lora(load_adapter(model, args.adapter, base_sha256=checkpoint_hash(base)))
    if args.dtype:
        merged = merged.to(DTYPES[args.dtype])
    save_model(merged, args.out, layout=args.layout)
    for name in SIDECAR_FILES:
        if (base / name).is_file():
            shutil.copy2(base / name, Path(args.out) / name)
    print(f"merged {args.adapter} into {base} -> {args.out} ({args.layout} layout)")


def _adapter_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--adapter", metavar="FOLDER", help="a LoRA adapter folder (PEFT's format, e.g. a LoRA run's "
                   "final) for MODEL, merged into it on load")


def _quantize_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quantize", choices=["int8", "int4"], help="quantize the language model's linear layers on "
                   "load: int8 per output channel, int4 in groups of 128 (AWQ's format); a quantized checkpoint "
                   "needs no flag (docs/quantization.md)")


def _speed_options(p: argparse.ArgumentParser) -> None:
    """`chat` and `serve`'s opt-in speed switches (infer/chat.py `speed_up`)."""
    _quantize_option(p)
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the language model: faster decoding after a compilation of a minute or two")
    p.add_argument("--prepack", action="store_true",
                   help="CPU, float32 or bf16: multiply with oneDNN-packed weights, q/k/v and gate/up as one "
                   "product, decode steps on nativevl's AVX2/AVX-512 few-row kernel (decoding 2.5-4.1x "
                   "transformers' speed on a 2-core AVX-512 BF16 CPU, docs/benchmarks.md; "
                   "copies of the weights in memory), bf16 prompts' attention on its AVX-512 BF16 kernel")


def _chat_parser(sub: argparse._SubParsersAction) -> None:
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
    _speed_options(p)
    _adapter_option(p)
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
    p.add_argument("--thinking", action="store_true", help="InternVL3.5's thinking mode: its system prompt and "
                   "sampling (temperature 0.6 unless --temperature); the reply opens with <think>...</think>")
    p.add_argument("--best-of", type=int, metavar="N", help="sample N answers (temperature default 0.7, top-p "
                   "0.95) and print the one the process reward model (--prm) scores highest")
    p.add_argument("--prm", metavar="PATH", help="process reward model checkpoint folder for --best-of")
    p.add_argument("--prm-aggregation", choices=["mean", "min", "last"], default="mean",
                   help="how step scores make a solution's score (default mean, as VisualPRM)")
    p.set_defaults(func=cmd_chat)


def _eval_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="score a checkpoint on local MMMU-layout or VQA files, or the embedded world",
                       description="MMMU: InternVL's prompt, then one of three metrics (--scoring; the report names "
                       "it), a table per subject (instance-weighted overall). VQA: exact match after normalisation, a "
                       "table per category. World: accuracy per question type vs a most-frequent-answer baseline.")
    p.add_argument("model", help="checkpoint folder with its tokenizer files")
    p.add_argument("--mmmu", metavar="DIR", help="folder of MMMU-layout .jsonl files (image_1..image_7 paths)")
    p.add_argument("--vqa", metavar="PATH", help="exact-match VQA: a .jsonl file or folder of them (question, "
                   "answer or list of answers, optional image path(s) and category)")
    p.add_argument("--world", metavar="DIR", help="an embedded world folder: its held-out val and test splits")
    p.add_argument("--scoring", choices=SCORINGS, default=DEFAULT_SCORING,
                   help=f"MMMU metric (default {DEFAULT_SCORING}: the benchmark's own code): mmmu, vlmevalkit "
                   "(its exact matching; no judge model) or internvl (InternVL's eval script); docs/evaluation.md")
    p.add_argument("--groups", help="world: only these question types, comma-separated (e.g. colour,reasoning)")
    p.add_argument("--max-num", type=int, default=6, help="most tiles per image (default 6, as the original)")
    p.add_argument("--max-new-tokens", type=int, default=10, help="answer length (default 10, as the original)")
    p.add_argument("--best-of", type=int, default=1, help="Best-of-N with --prm instead of greedy answers")
    p.add_argument("--prm", metavar="PATH", help="process reward model for --best-of")
    p.add_argument("--prm-aggregation", choices=["mean", "min", "last"], default="mean",
                   help="how step scores make a solution's score (default mean)")
    p.add_argument("--limit", type=int, help="only the first N questions (MMMU, VQA; world: of each of its held-out "
                   "datasets, one per task family and split)")
    p.add_argument("--batch-size", type=int, default=16, help="greedy questions decoded together (default 16; 1 "
                   "answers one at a time, as the original scripts)")
    p.add_argument("--dtype", choices=sorted(DTYPES), help="weights dtype (default: as stored)")
    p.add_argument("--device", help="cpu, cuda, … (default cpu)")
    p.add_argument("--out", metavar="FILE", help="write the table and every reply as JSON")
    _quantize_option(p)
    _adapter_option(p)
    p.set_defaults(func=cmd_eval)


def _convert_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("convert", help="rewrite a checkpoint in the original or the transformers layout",
                       description="Reads either layout (one file or sharded safetensors), writes the other (or the "
                       "same) with its config.json and tokenizer files; docs/checkpoints.md lists the key names.")
    p.add_argument("src", help="checkpoint folder (either layout, single file or sharded safetensors)")
    p.add_argument("dst", help="output folder")
    p.add_argument("--layout", choices=["original", "transformers"], required=True,
                   help="original: OpenGVLab's InternVL3 folders; transformers: the -hf folders transformers loads")
    p.add_argument("--dtype", choices=sorted(DTYPES), help="cast floating tensors (default: keep)")
    p.add_argument("--max-shard-size", default="5GB",
                   help="shard past this size, with a unit: 5GB, 500MB, 1048576B (default 5GB)")
    p.set_defaults(func=cmd_convert)


def _train_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a recipe (pretrain, sft, demo_pretrain, …) or a TOML config",
                       description="Runs under torchrun too (FSDP2 across the processes). A killed run resumes "
                       "from its last checkpoint in its out folder; docs/training.md.",
                       epilog=recipes_help(), formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("recipe", help="a recipe name or a .toml file (whose `recipe = \"…\"` names its base)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override any field, e.g. --set steps=200 --set optim.lr=1e-4; repeatable")
    p.set_defaults(func=cmd_train)


def _world_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("world", help="the embedded synthetic multimodal world")
    world = p.add_subparsers(dest="action", required=True)
    g = world.add_parser("generate", help="write images, jsonl annotations, meta files and a tokenizer to OUT")
    g.add_argument("out", help="output folder")
    g.add_argument("--seed", type=int, default=0, help="same seed, same bytes (default 0)")
    g.add_argument("--scale", type=float, default=1.0, help="multiply the number of records (default 1.0)")
    g.set_defaults(func=cmd_world)


def _prm_data_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("prm-data", help="label a world's step-by-step solutions for PRM training (Monte-Carlo)",
                       description="Samples solutions to the world's training reasoning questions from POLICY and "
                       "labels each step + when one of K continuations from it reaches the gold answer (VisualPRM).")
    p.add_argument("policy", help="the policy checkpoint folder that samples solutions and continuations")
    p.add_argument("world", help="an embedded world folder")
    p.add_argument("out", help="output folder for prm.jsonl and meta_prm.json")
    p.add_argument("--questions", type=int, default=64, help="reasoning questions to label (default 64)")
    p.add_argument("--samples", type=int, default=4, help="sampled solutions per question (default 4)")
    p.add_argument("--k", type=int, default=16, help="continuations per step (default 16, as the original)")
    p.add_argument("--max-steps", type=int, default=16, help="group a solution into at most this many steps")
    p.add_argument("--temperature", type=float, default=1.0, help="sampling temperature (default 1.0)")
    p.add_argument("--max-new-tokens", type=int, default=160, help="length limit of a solution (default 160)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_prm_data)


def _demo_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="the whole recipe on the embedded world: pre-train, SFT, evaluate, MPO, PRM, "
                       "Best-of-N (CPU)", description="Generates the embedded world, natively pre-trains a toy "
                       "InternVL3-architecture model on it, fine-tunes and evaluates it, then aligns it with MPO, "
                       "trains a process reward model and compares greedy, majority vote and Best-of-N; about 15 "
                       "minutes on a 2-core CPU. Everything lands in --out.")
    p.add_argument("--out", default="demo_out", help="world, checkpoints, curves and results (default demo_out)")
    p.add_argument("--pretrain-steps", type=int, help="override the recipe's pre-training steps")
    p.add_argument("--sft-steps", type=int, help="override the recipe's SFT steps")
    p.add_argument("--no-align", action="store_true", help="stop after SFT (no MPO, PRM or Best-of-N)")
    p.add_argument("--best-of", type=int, default=8, help="samples per question for Best-of-N (default 8)")
    p.set_defaults(func=cmd_demo)


def _ablate_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("ablate", help="measure one of the paper's claims at small scale on the embedded world",
                       description="native-vs-posthoc, v2pe, mpo or best-of-n: trains its toy models per seed, "
                       "prints a table (mean ± sd (min..max) over seeds) and writes DOCS/NAME.md, .png and .json. "
                       "Finished stages in WORK are reused; a killed run resumes.")
    p.add_argument("name", choices=["native-vs-posthoc", "v2pe", "mpo", "best-of-n"])
    p.add_argument("--seeds", type=int, default=3, help="seeds 0 … N-1 (default 3)")
    p.add_argument("--work", default="runs/ablate", help="checkpoints and the world (default runs/ablate)")
    p.add_argument("--docs", default="docs/ablations", help="where the report goes (default docs/ablations)")
    p.add_argument("--steps-scale", type=float, default=1.0, help="multiply every stage's steps (a quick look)")
    p.add_argument("--world-scale", type=float, default=1.0, help="the world's size (a quick look)")
    p.add_argument("--eval-limit", type=int, help="held-out questions per dataset (default: all)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--report-only", action="store_true",
                   help="rewrite DOCS/NAME.md and .png from the last run's DOCS/NAME.json (no training)")
    p.set_defaults(func=cmd_ablate)


def _serve_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="an OpenAI-compatible API (/v1/chat/completions) and a chat page at /",
                       description="Requests that arrive together are decoded together. Images come as data URLs; "
                       "local paths and remote URLs only where the flags below allow them.")
    p.add_argument("model", help="checkpoint folder with its tokenizer files")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000, help="port to listen on (default 8000)")
    p.add_argument("--model-name", help="the model id clients send (default: the folder's name; for a run's "
                   "final/step-N folder, the run's name: demo_out/sft/final -> sft)")
    p.add_argument("--max-batch", type=int, default=16, help="sequences decoded together (default 16)")
    p.add_argument("--max-body-bytes", type=int, default=32 * 1024 * 1024, help="request size limit (default 32 MiB)")
    p.add_argument("--max-images", type=int, default=8, help="images per request (default 8)")
    p.add_argument("--max-tiles", type=int, help="tiles per image (default: the checkpoint's max_dynamic_patch)")
    p.add_argument("--max-model-len", type=int, help="prompt + answer tokens (default: the tokenizer's limit)")
    p.add_argument("--default-max-tokens", type=int, default=1024,
                   help="answer length when a request sets no max_tokens (default 1024)")
    p.add_argument("--max-n", type=int, default=8, help="choices per request (default 8)")
    p.add_argument("--allowed-local-media-path", metavar="DIR",
                   help="let image_url name files under DIR (default: no local files)")
    p.add_argument("--allow-remote-images", action="store_true", help="let image_url be http(s) (default: off)")
    p.add_argument("--graceful-timeout", type=float, default=30.0,
                   help="seconds in-flight requests get to finish at shutdown before they are cancelled "
                   "(default 30)")
    p.add_argument("--dtype", choices=sorted(DTYPES), help="weights dtype (default: as stored)")
    p.add_argument("--device", help="cpu, cuda, … (default cpu)")
    p.add_argument("--v2pe-delta", type=float, help="V2PE position step of visual tokens (default: integer)")
    p.add_argument("--thinking", action="store_true", help="InternVL3.5's thinking mode for requests that do not "
                   "set `thinking`: its system prompt, temperature 0.6, the <think> part in reasoning_content")
    p.add_argument("--adapter", action="append", default=[], metavar="[NAME=]FOLDER",
                   help="a LoRA adapter for MODEL, served beside it under NAME (default: the folder's id); "
                   "repeatable; a request picks one by its `model` (no --prepack/--compile with adapters)")
    _speed_options(p)
    p.set_defaults(func=cmd_serve)


def _merge_lora_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("merge-lora", help="fold a LoRA adapter into its base and write the merged checkpoint",
                       description="The adapter (PEFT's format: a nativevl LoRA run's final or step folder, or one "
                       "PEFT wrote for transformers' InternVL) is added to the base's weights; the result loads "
                       "like any checkpoint. A quantized base (QLoRA) is dequantized: the merged weights are float.")
    p.add_argument("adapter", help="adapter folder (adapter_config.json, adapter_model.safetensors)")
    p.add_argument("out", help="output folder")
    p.add_argument("--base", help="base checkpoint (default: the one the adapter names)")
    p.add_argument("--layout", choices=["original", "transformers"], default="original",
                   help="layout of the merged checkpoint (default original)")
    p.add_argument("--dtype", choices=sorted(DTYPES), help="cast the merged weights (default float32)")
    p.set_defaults(func=cmd_merge_lora)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nativevl", description="InternVL3 in plain PyTorch.")
    parser.add_argument("--version", action="version", version=f"nativevl {version('nativevl')}")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (_chat_parser, _eval_parser, _convert_parser, _merge_lora_parser, _train_parser, _world_parser,
                _prm_data_parser, _demo_parser, _ablate_parser, _serve_parser):  # the order `nativevl --help` lists them in
        add(sub)
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
        message = e.args[0] if isinstance(e, KeyError) and e.args else e  # str(KeyError) would quote it
        print(f"nativevl {args.command}: error: {message}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
