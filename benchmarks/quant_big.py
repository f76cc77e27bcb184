"""A quantized checkpoint of a large shape (random weights) made, saved, loaded and decoded within this machine's
memory: the InternVL3-8B shape at int4 in 24 GiB, where its bf16 weights alone would be 16 GB.

    python -m benchmarks.quant_big --preset internvl3-8b --quantize int4 --out /tmp/q8b
    python -m benchmarks.quant_big --preset tiny --quantize int4 --out /tmp/qtiny --steps 2

The model is never whole in float: it is built on the meta device, and each decoder layer (and the head) is
given random weights in float32, quantized, and its float copy dropped before the next one. The checkpoint is
then read back by `InternVL.from_pretrained` in a fresh process, which decodes a few greedy steps; its peak
resident memory is the figure that matters.
"""

from __future__ import annotations

import argparse
import gc
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

from nativevl import InternVL, preset
from nativevl.model.quant import QuantConfig, QuantLinear, layers_to_quantize


def peak_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # ru_maxrss is in KiB on Linux


@torch.no_grad()
def quantized_random(name: str, config: QuantConfig, dtype: torch.dtype = torch.bfloat16) -> InternVL:
    """A random-weight model of preset `name` with `config`'s layers quantized, one layer at a time."""
    cfg = preset(name)
    with torch.device("meta"):
        model = InternVL(cfg)
    lm = model.language_model
    later = [*lm.model.layers, lm.lm_head] if config.head else list(lm.model.layers)
    kept = {id(m) for layer in later for m in layer.modules()}
    for module in model.modules():  # everything but the layers quantized below, in float now
        if id(module) not in kept:
            for key, p in list(module.named_parameters(recurse=False)):
                module.register_parameter(key, nn.Parameter(torch.empty_like(p, device="cpu"), p.requires_grad))
            for key, b in list(module.named_buffers(recurse=False)):
                module.register_buffer(key, torch.empty_like(b, device="cpu"))
    lm.tie_weights()
    model.init_weights()  # the meta layers are left as they are (an op on meta tensors does nothing)
    model.to(dtype)
    targets = {id(layer): (layer_name, how) for layer_name, layer, how in layers_to_quantize(model, config)}
    std = cfg.text.initializer_range
    for block in later:
        block.to_empty(device="cpu")
        for sub_name, m in list(block.named_modules()):
            if isinstance(m, nn.Linear):
                m.weight.normal_(0.0, std)
                if m.bias is not None:
                    m.bias.zero_()
                full, how = targets[id(m)]
                q = QuantLinear.from_linear(m, how)
                parent, _, child = full.rpartition(".")
                setattr(model.get_submodule(parent), child, q)
            elif hasattr(m, "eps"):
                m.weight.fill_(1.0)
        gc.collect()
    model.quantization = config
    if config.head:  # as quantize does: a head on codes is not the embedding
        model.config.text.tie_word_embeddings = False
    assert not any(t.is_meta for t in [*model.parameters(), *model.buffers()])
    return model


def load_and_decode(folder: Path, steps: int) -> dict:
    """In this process (run as a fresh one): load `folder`, decode `steps` greedy tokens at batch 1."""
    from nativevl.infer.generate import generate

    start = time.perf_counter()
    model = InternVL.from_pretrained(folder).eval()
    loaded = time.perf_counter() - start
    ids = torch.randint(0, model.config.text.vocab_size, (1, 32))
    with torch.inference_mode():
        generate(model, ids, max_new_tokens=2)  # warm (the kernel's packing happens on first use)
        start = time.perf_counter()
        out = generate(model, ids, max_new_tokens=steps)
        took = time.perf_counter() - start
    return {"load_s": round(loaded, 1), "decode_ms_per_token": round(took / steps * 1e3, 1),
            "tokens": out.shape[1], "peak_rss_gb": round(peak_gb(), 2)}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.quant_big", description=__doc__.split("\n")[0])
    p.add_argument("--preset", default="internvl3-8b")
    p.add_argument("--quantize", default="int4", choices=["int8", "int4"])
    p.add_argument("--out", type=Path, help="the checkpoint folder, written then read back (default: a temporary "
                   "folder, removed at the end)")
    p.add_argument("--steps", type=int, default=8, help="greedy tokens decoded after loading")
    p.add_argument("--load-only", action="store_true", help=argparse.SUPPRESS)  # the fresh process's part
    args = p.parse_args(argv)
    if args.load_only:
        print(json.dumps(load_and_decode(args.out, args.steps)))
        return
    if args.out is None:
        with tempfile.TemporaryDirectory() as folder:
            return main([*(argv if argv is not None else sys.argv[1:]), "--out", folder])
    start = time.perf_counter()
    model = quantized_random(args.preset, QuantConfig.named(args.quantize))
    made = time.perf_counter() - start
    model.save_pretrained(args.out)
    size = sum(f.stat().st_size for f in args.out.glob("*.safetensors")) / 1e9
    print(f"# {args.preset} {args.quantize}: made in {made:.0f} s at peak {peak_gb():.2f} GB resident; "
          f"{size:.2f} GB of safetensors in {args.out}", flush=True)
    del model
    gc.collect()
    done = subprocess.run([sys.executable, "-m", "benchmarks.quant_big", "--out", str(args.out), "--steps",
                           str(args.steps), "--load-only"], capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"loading {args.out} failed:\n{done.stderr[-3000:]}")
    got = json.loads(done.stdout.strip().splitlines()[-1])
    print(f"# loaded in {got['load_s']} s, {got['tokens']} tokens at {got['decode_ms_per_token']} ms each, "
          f"peak {got['peak_rss_gb']} GB resident (of {int(Path('/proc/meminfo').read_text().split()[1]) / 2**20:.1f} "
          "GB here)")


if __name__ == "__main__":
    main()
