"""One runner for every comparison with transformers (docs/benchmarks.md shows its output):

    python -m benchmarks                               # all suites, InternVL3-1B shape, this machine
    python -m benchmarks decode --dtypes bfloat16 --batches 1
    python -m benchmarks ttft preprocess --repeats 3 --out results.md

Suites: roofline (bandwidth, matmul FLOP/s; always measured), decode, ttft, attention (CPU bf16: one prompt
attention layer, SDPA against nativevl's kernel), preprocess, train (CPU: the demo's model, packed vs padded)
and trainstep (one training step at the preset's shape; for a GPU, see gpu.sh). Every model has random weights
of the preset's shape (nothing is downloaded); transformers loads the very same weights. Each figure is the
median of --repeats runs after a warm-up, with the spread (min..max).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from benchmarks import attention, decode, preprocess, roofline, train, trainstep, ttft
from benchmarks.common import DTYPES, build_ours, fmt, machine

SUITES = ("roofline", "decode", "ttft", "attention", "preprocess", "train", "trainstep")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.split("\n")[0])
    p.add_argument("suites", nargs="*", metavar="SUITE", help=f"any of {', '.join(SUITES)} (default: all)")
    p.add_argument("--preset", default="internvl3-1b")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtypes", default="float32,bfloat16", help="decode dtypes, float32 first")
    p.add_argument("--ttft-dtype", default=None, help="default: bfloat16 on CUDA, float32 on CPU")
    p.add_argument("--batches", default="1,8")
    p.add_argument("--tiles", default="1,13")
    p.add_argument("--steps", type=int, default=16, help="decode steps timed per run")
    p.add_argument("--train-steps", type=int, default=6)
    p.add_argument("--seq", type=int, default=8192, help="trainstep: tokens in the packed row")
    p.add_argument("--train-tiles", type=int, default=13, help="trainstep: tiles of the row's image")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--compile", action="store_true",
                   help="also time transformers' static cache + torch.compile path (minutes of compiling)")
    p.add_argument("--out", type=Path, help="also write the report (markdown) here")
    args = p.parse_args(argv)
    dev, repeats = args.device, args.repeats
    dtypes = [DTYPES[d] for d in args.dtypes.split(",")]
    ttft_dtype = DTYPES[args.ttft_dtype or ("bfloat16" if dev.startswith("cuda") else "float32")]
    suites = args.suites or [s for s in SUITES if s != "trainstep"]  # trainstep: on a GPU, by name
    unknown = set(suites) - set(SUITES)
    if unknown:
        p.error(f"unknown suite(s) {', '.join(sorted(unknown))}; choose from {', '.join(SUITES)}")

    lines = [f"# python -m benchmarks {' '.join(sys.argv[1:] if argv is None else argv)}",
             f"# {machine(dev)}; preset {args.preset}, random weights; median of {repeats} (min..max)", ""]

    def emit(text: str) -> None:
        print(text, flush=True)
        lines.append(text)

    for line in lines:
        print(line)
    start = time.perf_counter()
    bandwidth = roofline.read_bandwidth(dev, repeats)
    flops = {d: roofline.matmul_flops(d, dev, repeats) for d in {*dtypes, ttft_dtype, torch.float32, torch.bfloat16}}
    emit(f"read bandwidth {bandwidth:.1f} GB/s; matmul " +
         ", ".join(f"{str(d).removeprefix('torch.')} {fmt(f / 1e9)} GFLOP/s" for d, f in flops.items()) + "\n")
    needs_model = {"decode", "ttft"} & set(suites)
    model = build_ours(args.preset, torch.float32, dev) if needs_model else None
    if "ttft" in suites:
        emit("## Time to first token (one image)\n")
        emit(ttft.run(build_ours(args.preset, torch.float32, dev) if "decode" in suites else model, ttft_dtype,
                      [int(t) for t in args.tiles.split(",")], repeats, flops, dev) + "\n")
    if "decode" in suites:
        emit("## Decode\n")
        emit(decode.run(model, dtypes, [int(b) for b in args.batches.split(",")], args.steps, repeats,
                        args.compile, dev) + "\n")
    if "attention" in suites and dev == "cpu":
        emit("## One attention layer of a bf16 prompt (CPU)\n")
        emit(attention.run(args.preset, [int(t) for t in args.tiles.split(",")], repeats, flops[torch.bfloat16])
             + "\n")
    if "preprocess" in suites:
        emit("## Image preprocessing\n")
        emit(preprocess.run(repeats) + "\n")
    if "train" in suites:
        emit("## Training, packed vs padded (CPU, the demo's model)\n")
        emit(train.run(args.train_steps, repeats) + "\n")
    if "trainstep" in suites:
        emit(f"## One training step at the {args.preset} shape\n")
        emit(trainstep.run(args.preset, args.seq, args.train_tiles, repeats, flops[torch.bfloat16], dev) + "\n")
    emit(f"(all suites: {time.perf_counter() - start:.0f} s)")
    if args.out:
        args.out.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
