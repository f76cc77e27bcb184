"""LoRA SFT against full SFT on the embedded world, from the same natively pre-trained demo checkpoint:
held-out accuracy per question type (docs/training.md shows the output).

    python -m benchmarks.lora_world [--work runs/lora_world] [--rank 16] [--lora-lr 1e-3,3e-3]

Pre-trains as `make demo` does (the demo_pretrain recipe, reused when --work already holds it), then runs the
demo's SFT (every part trained, 200 steps) and LoRA SFT as the original's LoRA script sets it (ViT, projector
and LLM frozen, LoRA on the LLM at --rank, alpha 2 x rank), the same steps, data and schedule, at each
--lora-lr; each is scored on the world's held-out val + test questions.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from nativevl.data.world import generate_world
from nativevl.eval.world import evaluate_world, format_table
from nativevl.train.config import FreezeSpec, LoraSpec
from nativevl.train.recipes import demo_pretrain, demo_sft
from nativevl.train.trainer import train


def _run(cfg, out: Path, world: Path, start: Path | None = None) -> float:  # noqa: ANN001
    """Train `cfg` into `out` on `world` (from `start`); the seconds it took."""
    cfg.out, cfg.resume, cfg.progress = str(out), False, True
    cfg.data.meta = str(world / Path(cfg.data.meta).name)
    cfg.data.tokenizer = str(world / "tokenizer")
    if start is not None:
        cfg.model.checkpoint = str(start)
    t = time.perf_counter()
    train(cfg)
    return time.perf_counter() - t


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.lora_world", description=__doc__.split("\n")[0])
    p.add_argument("--work", default="runs/lora_world")
    p.add_argument("--rank", type=int, default=16)
    p.add_argument("--lora-lr", default="1e-3,3e-3", help="LoRA learning rates, comma-separated")
    p.add_argument("--sft-steps", type=int, default=200)
    args = p.parse_args(argv)
    work = Path(args.work)
    world = work / "world"
    generate_world(world, seed=0, scale=1.0)
    pretrained = work / "pretrain" / "final"
    if not (pretrained / "config.json").is_file():
        _run(demo_pretrain(), work / "pretrain", world)
    runs: dict[str, Path] = {}
    seconds: dict[str, float] = {}
    full = demo_sft()
    full.steps = args.sft_steps
    seconds["full SFT"] = _run(full, work / "sft_full", world, pretrained)
    runs["full SFT"] = work / "sft_full" / "final"
    for lr in args.lora_lr.split(","):
        cfg = demo_sft()
        cfg.steps = args.sft_steps
        cfg.freeze = FreezeSpec(vit=True, projector=True, llm=True)
        cfg.lora = LoraSpec(llm_rank=args.rank)
        cfg.optim.lr = float(lr)
        name = f"LoRA r{args.rank} lr {lr}"
        seconds[name] = _run(cfg, work / f"sft_lora_{lr}", world, pretrained)
        runs[name] = work / f"sft_lora_{lr}" / "final"
    results = {}
    for name, folder in runs.items():
        results[name] = evaluate_world(folder, world / "meta_eval.json", world / "meta_sft.json")
        print(f"\n{name} ({seconds[name]:.0f} s of training):\n{format_table(results[name])}", flush=True)
    (work / "results.json").write_text(json.dumps({"seconds": seconds, "results": results}, indent=2))


if __name__ == "__main__":
    main()
