"""The `nativevl` command. It only parses arguments; each command is a Python function you can call.

  nativevl convert SRC DST --layout transformers [--dtype bfloat16] [--max-shard-size 5GB]
  nativevl demo [--out DIR]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
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


def cmd_demo(args: argparse.Namespace) -> None:
    from nativevl.demo import run_demo

    if args.out:
        run_demo(Path(args.out))
    else:
        with tempfile.TemporaryDirectory(prefix="nativevl-demo-") as tmp:
            run_demo(Path(tmp))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nativevl", description="InternVL3 in plain PyTorch.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("convert", help="rewrite a checkpoint in the original or the transformers layout")
    p.add_argument("src", help="checkpoint folder (either layout, single file or sharded safetensors)")
    p.add_argument("dst", help="output folder")
    p.add_argument("--layout", choices=["original", "transformers"], required=True)
    p.add_argument("--dtype", choices=sorted(DTYPES), help="cast floating tensors (default: keep)")
    p.add_argument("--max-shard-size", default="5GB", help="shard past this size (default 5GB)")
    p.set_defaults(func=cmd_convert)

    p = sub.add_parser("demo", help="the smallest end-to-end run: build, save, convert, load, generate")
    p.add_argument("--out", help="keep the checkpoints in this folder (default: a temporary one)")
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except (ValueError, KeyError, FileNotFoundError) as e:
        print(f"nativevl {args.command}: error: {e}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
