"""Quantized weights against bf16 on the same random weights: decode ms/step at batch 1 and 8, prompt tokens/s,
time to first token with one tile, each beside the read-bandwidth bound of its format's bytes, and how far the
quantized model's logits and greedy tokens land from bf16's (docs/quantization.md, docs/benchmarks.md).

    python -m benchmarks.quant                          # InternVL3-1B shape: bf16 --prepack, int8, int4
    python -m benchmarks.quant --preset tiny --repeats 1 --steps 1 --prompt 16 --continuation 4

Engines take turns within every repeat (this shared CPU's speed drifts); each figure is the median of
--repeats with its spread. llama.cpp's figures on the same weights: benchmarks/llamacpp.py.
"""

from __future__ import annotations

import argparse
import copy
import sys
from dataclasses import replace
import time
from pathlib import Path

import torch

from benchmarks.common import build_ours, fmt, free, machine, measure_turns, show, table, text_ids
from benchmarks.decode import PROMPT, per_step
from benchmarks.roofline import read_runner
from nativevl.infer.chat import speed_up
from nativevl.infer.generate import generate
from nativevl.model.quant import PARTS, QuantConfig, QuantLinear

FORMATS = ("bf16", "int8", "int4")  # and -all (the ViT and the projector too), -fhead (the head kept in bf16)


def step_bytes(model: torch.nn.Module) -> int:
    """The bytes a decode step reads: every decoder layer's weights and the output head as stored (codes plus
    their scales and zero points for a QuantLinear)."""
    def stored(m: torch.nn.Module) -> int:
        tensors = (m.qweight, m.scales, m.qzeros) if isinstance(m, QuantLinear) else (m.weight,)
        return sum(t.numel() * t.element_size() for t in tensors)

    lm = model.language_model
    return stored(lm.lm_head) + sum(stored(m) for m in lm.model.layers.modules()
                                    if isinstance(m, (QuantLinear, torch.nn.Linear)))


def quant_config(name: str) -> QuantConfig | None:
    """`bf16` (none), `int8`, `int4`, each optionally with `-all` (every part: ViT, projector, language model)
    and `-fhead` (the output head kept in bf16, as AWQ files keep it)."""
    if name == "bf16":
        return None
    width, *options = name.split("-")
    config = QuantConfig.named(width)
    unknown = set(options) - {"all", "fhead"}
    if unknown:
        raise SystemExit(f"--formats: {name!r} has unknown option(s) {', '.join(sorted(unknown))}")
    return replace(config, parts=PARTS if "all" in options else config.parts, head=0 if "fhead" in options else 8)


def engines(base: torch.nn.Module, formats: list[str]) -> dict[str, torch.nn.Module]:
    """Each format of the same bf16 weights, with the CPU switches a user would turn on (--prepack)."""
    out = {}
    for name in formats:
        model = copy.deepcopy(base)
        out[name] = speed_up(model, prepack=True, quantize=quant_config(name))
    return out


@torch.inference_mode()
def agreement(ref: torch.nn.Module, model: torch.nn.Module, prompts: torch.Tensor, length: int
              ) -> tuple[float, float, float]:
    """Against bf16 on the same prompts: the logits' relative L2 distance along bf16's greedy continuation; the
    share of its positions where the model's own greedy choice is bf16's (teacher-forced, so one early
    difference does not decide the rest); the share of rows whose free-running greedy continuation equals
    bf16's token for token."""
    want = generate(ref, prompts, max_new_tokens=length)
    full = torch.cat([prompts, want], dim=1)
    a, b = ref(full).logits.float(), model(full).logits.float()
    cont = slice(prompts.shape[1] - 1, full.shape[1] - 1)
    distance = ((a[:, cont] - b[:, cont]).norm() / a[:, cont].norm()).item()
    same = (a[:, cont].argmax(-1) == b[:, cont].argmax(-1)).float().mean().item()
    whole = (generate(model, prompts, max_new_tokens=length) == want).all(dim=1).float().mean().item()
    return distance, same, whole


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.quant", description=__doc__.split("\n")[0])
    p.add_argument("--preset", default="internvl3-1b")
    p.add_argument("--formats", default=",".join(FORMATS),
                   help=f"some of {', '.join(FORMATS)}, each optionally -all and/or -fhead, e.g. int4-all, int4-fhead "
                        "(bf16 first for the accuracy table)")
    p.add_argument("--batches", default="1,8")
    p.add_argument("--steps", type=int, default=16, help="decode steps timed per run")
    p.add_argument("--prompt", type=int, default=296, help="prompt tokens for the prefill rate")
    p.add_argument("--continuation", type=int, default=64, help="greedy tokens compared with bf16's")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--out", type=Path, help="also write the report (markdown) here")
    args = p.parse_args(argv)
    formats = args.formats.split(",")
    base = build_ours(args.preset, torch.bfloat16)
    models = engines(base, formats)
    del base
    free()
    lines = [f"# python -m benchmarks.quant {' '.join(sys.argv[1:] if argv is None else argv)}".rstrip(),
             f"# {machine()}; preset {args.preset}, random weights; median of {args.repeats} (min..max)", ""]
    first = models[formats[0]]
    rows = []
    for batch in map(int, args.batches.split(",")):
        ids = text_ids(first, (batch, PROMPT), seed=batch)
        runners = {name: (lambda m: lambda n: generate(m, ids, max_new_tokens=n))(m) for name, m in models.items()}
        runners.update({f"read {name}": read_runner(step_bytes(m), "cpu") for name, m in models.items()})
        got = per_step(runners, args.steps, args.repeats, "cpu")
        for name in models:
            t, bound = got[name], got[f"read {name}"].median
            rows.append([name, str(batch), show(t, 1e3), f"{batch / t.median:.1f}", f"{step_bytes(models[name]) / 1e6:.0f}",
                         f"{bound / t.median:.0%}"])
    lines += ["## Decode", "", table(["format", "batch", "ms/step", "tok/s", "MB read a step", "of bandwidth bound"],
                                      rows), ""]
    print("\n".join(lines), flush=True)
    shown = len(lines)
    prompt = text_ids(first, (1, args.prompt), seed=7)
    tiles = torch.randn(1, 3, first.config.vision.image_size, first.config.vision.image_size, dtype=torch.bfloat16)
    image_ids = torch.cat([torch.full((1, first.config.num_image_token), first.config.img_context_token_id),
                           text_ids(first, (1, 16), seed=8)], dim=1)
    with torch.inference_mode():
        prefill = measure_turns({n: (lambda m: lambda: m(prompt, logits_to_keep=1))(m) for n, m in models.items()},
                                args.repeats)
        ttft = measure_turns({n: (lambda m: lambda: generate(m, image_ids, pixel_values=tiles, max_new_tokens=1))(m)
                              for n, m in models.items()}, args.repeats)
    rows = [[n, f"{args.prompt / prefill[n].median:.0f}", show(ttft[n], 1e3)] for n in models]
    lines += ["## Prompts", "", table(["format", f"prompt tok/s ({args.prompt} tokens)", "TTFT ms (1 tile)"], rows), ""]
    print("\n".join(lines[shown:]), flush=True)
    shown = len(lines)
    ref = models.get("bf16")
    if ref is not None:
        prompts = text_ids(ref, (4, 16), seed=11)
        rows = []
        for name, m in models.items():
            if name != "bf16":
                distance, same, whole = agreement(ref, m, prompts, args.continuation)
                rows.append([name, fmt(distance), f"{same:.1%}", f"{whole:.0%}"])
        lines += ["## Against bf16", "", table(["format", "logits distance (relative L2)",
                                                "greedy token = bf16's (teacher-forced)",
                                                f"whole {args.continuation}-token continuation = bf16's"], rows), ""]
    report = "\n".join(lines)
    print("\n".join(lines[shown:]), flush=True)
    if args.out:
        args.out.write_text(report + "\n")


if __name__ == "__main__":
    start = time.perf_counter()
    main()
    print(f"# {time.perf_counter() - start:.0f} s")
