"""Full fine-tuning against LoRA and QLoRA: trainable parameters, peak memory and tokens/s of one training step
as the trainer takes it (bf16 autocast, AdamW, chunked loss, activation checkpointing), on random weights of a
preset's shape (docs/training.md shows the output).

    python -m benchmarks.lora                                     # InternVL3-1B shape: full, lora, qlora
    python -m benchmarks.lora --preset internvl3-8b --modes lora,qlora --steps 2
    python -m benchmarks.lora --preset internvl3-8b --layers 2 --modes lora,qlora   # and --layers 4: per layer

Each mode runs in its own process, so that its peak resident memory is its own; the peak is reset after the
model is built, so "in training" is the steps' own (VmHWM) and "after building" the build's (QLoRA's float
model before it is quantized, which a saved quantized checkpoint loads without). full: every
parameter trains, float32 masters (the trainer's way). lora: the sft_lora recipe (ViT, projector and LLM frozen,
LoRA rank --rank on the LLM), frozen Linear weights in bf16 as a bf16 LoRA run keeps them. qlora: the same with
the LLM's Linear layers on int4 (model.quantize = "int4"). A step is one packed row of --tokens tokens with one
448-pixel tile (256 image tokens); the figure is the median over --steps steps after one warm-up step.
--dtype float32 runs without autocast and keeps the frozen weights in float32: on a CPU without AVX-512 BF16 (AVX2
only), bf16 products are emulated and run at a fifth of float32's rate, so there float32 is how users would train.
--layers N cuts the language model to N layers: two depths give the memory of one layer, and the full depth's
figure follows by scaling where the whole model does not fit in memory.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import torch

from nativevl.config import preset
from nativevl.model.internvl import InternVLModel
from nativevl.train.recipes import load_config
from nativevl.train.trainable import frozen_linears_to_bf16, make_trainable, quantize_base

MODES = ("full", "lora", "qlora")
# glibc keeps freed memory in its heap once its mmap threshold has grown, so the resident size would still count
# the float weights QLoRA quantized away; a fixed threshold maps every large tensor on its own and unmaps it when
# freed, so the resident size is what is alive
MALLOC = {"MALLOC_MMAP_THRESHOLD_": "65536"}


def build(mode: str, name: str, rank: int, bf16: bool, layers: int | None) -> InternVLModel:
    """The model as the trainer would hold it for `mode` (random weights; a frozen model is built in bf16 so
    that the 8B shape never needs its float32 copy)."""
    torch.manual_seed(0)
    config = preset(name)
    if layers:
        config.text.num_hidden_layers = layers
    if mode == "full":
        model = InternVLModel.from_config(config)
        model.requires_grad_(True)
        return model
    torch.set_default_dtype(torch.bfloat16 if bf16 else torch.float32)
    model = InternVLModel.from_config(config)
    torch.set_default_dtype(torch.float32)
    for module in model.modules():  # what the trainer holds in float32: everything but the Linear layers
        if not isinstance(module, torch.nn.Linear):
            for p in module.parameters(recurse=False):
                p.data = p.data.float()
    cfg = load_config("sft_lora", [f"lora.llm_rank={rank}"] + (['model.quantize="int4"'] if mode == "qlora" else []))
    if mode == "qlora":
        quantize_base(model, cfg)
    make_trainable(model, cfg)
    for p in model.parameters():
        if p.requires_grad:
            p.data = p.data.float()
    if bf16:
        frozen_linears_to_bf16(model)
    return model


def _reset_peak() -> None:
    """Linux: writing 5 to clear_refs resets the process's peak resident size (VmHWM) to its current size."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def _peak_gib() -> float:
    """The peak resident size since the last reset (VmHWM), GiB."""
    with open("/proc/self/status") as f:
        kib = next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
    return kib / 2**20


def one(mode: str, name: str, rank: int, tokens: int, steps: int, dtype: str, layers: int | None) -> dict:
    bf16 = dtype == "bfloat16"
    model = build(mode, name, rank, bf16, layers).train()
    model.vision_model.activation_checkpointing = model.language_model.activation_checkpointing = True
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-5)
    g = torch.Generator().manual_seed(0)
    vocab = model.config.text.vocab_size
    ids = torch.randint(vocab // 10, vocab - vocab // 10, (1, tokens), generator=g)  # clear of special tokens
    ids[0, 8:8 + model.num_image_token] = model.config.img_context_token_id
    size = model.config.vision.image_size
    pixels = torch.randn(1, 3, size, size, generator=g)
    load_peak = _peak_gib()
    _reset_peak()  # from here the peak is the training's own, not the build's (the float copy QLoRA quantizes)
    times = []
    for _ in range(steps + 1):
        t = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = model(ids, pixel_values=pixels, labels=ids, loss_chunk=4096).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - t)
    step = statistics.median(times[1:])
    return {"mode": mode, "preset": name, "dtype": dtype, "layers": model.config.text.num_hidden_layers,
            "trainable": sum(p.numel() for p in trainable),
            "params": sum(p.numel() for p in model.parameters()) + sum(b.numel() for b in model.buffers()),
            "load_peak_gib": load_peak, "peak_gib": _peak_gib(), "step_s": step,
            "tokens_per_s": tokens / step, "loss": loss.item()}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.lora", description=__doc__.split("\n")[0])
    p.add_argument("--preset", default="internvl3-1b")
    p.add_argument("--modes", default=",".join(MODES))
    p.add_argument("--rank", type=int, default=16)
    p.add_argument("--tokens", type=int, default=1024)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--dtype", choices=("bfloat16", "float32"), default="bfloat16")
    p.add_argument("--layers", type=int, help="the language model's depth (default: the preset's)")
    p.add_argument("--one", choices=MODES, help=argparse.SUPPRESS)  # a mode in this process (the runner's child)
    args = p.parse_args(argv)
    if args.one:
        print(json.dumps(one(args.one, args.preset, args.rank, args.tokens, args.steps, args.dtype, args.layers)))
        return
    rows = []
    for mode in args.modes.split(","):
        run = subprocess.run([sys.executable, "-m", "benchmarks.lora", "--one", mode, "--preset", args.preset,
                              "--rank", str(args.rank), "--tokens", str(args.tokens), "--steps", str(args.steps),
                              "--dtype", args.dtype] + (["--layers", str(args.layers)] if args.layers else []),
                             capture_output=True, text=True, env=os.environ | MALLOC)
        if run.returncode:
            print(f"{mode}: failed (exit {run.returncode}): {run.stderr[-600:]}", flush=True)
            continue
        rows.append(json.loads(run.stdout.strip().splitlines()[-1]))
        print(json.dumps(rows[-1]), flush=True)
    depth = f" cut to {args.layers} LLM layers" if args.layers else ""
    print(f"\n{args.preset}{depth}, one step of {args.tokens} tokens (one tile), {args.dtype}, "
          f"{torch.get_num_threads()} threads; median of {args.steps}\n")
    print("| mode | trainable parameters | of all | peak memory in training | after building | step | tokens/s |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['mode']} | {r['trainable'] / 1e6:.1f} M | {100 * r['trainable'] / r['params']:.2f}% | "
              f"{r['peak_gib']:.2f} GiB | {r['load_peak_gib']:.2f} GiB | {r['step_s']:.2f} s | {r['tokens_per_s']:.0f} |")


if __name__ == "__main__":
    main()
