"""Peak memory of one training step with the loss over whole logits against the chunked loss (`loss_chunk`),
each in a fresh process (peak resident memory on CPU, max allocated on CUDA):

    python -m benchmarks.loss_memory [--tokens 8192] [--chunk 4096] [--device cpu]

The model has InternVL3-1B's vocabulary (151,674) and hidden size (896) but 2 layers, so the output layer
dominates as it does at 16k tokens at full depth.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import torch


def step(tokens: int, chunk: int, device: str) -> dict[str, float]:
    from nativevl.config import preset
    from nativevl import InternVL

    torch.manual_seed(0)
    config = preset("internvl3-1b").replace(**{"text.num_hidden_layers": 2, "vision.num_hidden_layers": 1})
    model = InternVL.from_config(config).to(device).train()
    ids = torch.randint(1, 150_000, (1, tokens), device=device)
    start = time.perf_counter()
    with torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=device.startswith("cuda")):
        loss = model(ids, labels=ids, loss_chunk=chunk).loss
    loss.backward()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() / 2**30
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB
    return {"loss": float(loss), "peak_gib": peak, "seconds": time.perf_counter() - start}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--tokens", type=int, default=8192)
    p.add_argument("--chunk", type=int, default=4096)
    p.add_argument("--device", default="cpu")
    p.add_argument("--one", type=int, help=argparse.SUPPRESS)  # run one setting in this process
    args = p.parse_args()
    if args.one is not None:
        print(json.dumps(step(args.tokens, args.one, args.device)))
        return
    print("| loss | tokens | peak memory (GiB) | step (s) | loss value |\n| --- | --- | --- | --- | --- |")
    for chunk in (0, args.chunk):
        out = subprocess.run([sys.executable, "-m", "benchmarks.loss_memory", "--tokens", str(args.tokens),
                              "--device", args.device, "--one", str(chunk)], capture_output=True, text=True,
                             check=True)
        r = json.loads(out.stdout.strip().splitlines()[-1])
        name = "whole logits" if chunk == 0 else f"chunks of {chunk}"
        print(f"| {name} | {args.tokens} | {r['peak_gib']:.2f} | {r['seconds']:.1f} | {r['loss']:.6f} |")


if __name__ == "__main__":
    main()
