"""One training step at a real shape: a packed row of --seq tokens (two samples; the first holds one image of
--tiles tiles), forward, loss, backward and AdamW on float32 master weights under bf16 autocast, for
nativevl and transformers on the same weights. Reports tokens/s, model FLOP utilisation against the measured
bf16 matmul rate, and peak memory (CUDA). Meant for a GPU (`benchmarks/gpu.sh`); on a CPU use a tiny preset.

transformers' InternVL has no packed-row attention in its SDPA path, so its row is one causal sequence (the same
matrix products; attention over the whole row instead of per sample, which only adds work).
"""

from __future__ import annotations

import time

import torch

from benchmarks.common import build_ours, fmt, free, table, text_ids, transformers_twin
from benchmarks.ttft import prefill_flops


def row(model, seq: int, tiles: int, device: str) -> dict[str, torch.Tensor]:  # noqa: ANN001
    """ids, labels (image slots not learned), positions restarting per sample, cu_seqlens, pixels."""
    cfg = model.config
    image = tiles * model.num_image_token
    first = max(image + 64, seq * 5 // 8)
    if first >= seq:
        raise ValueError(f"--seq {seq} is too short for {tiles} tiles ({image} image tokens)")
    ids = text_ids(model, (seq,), seed=0)
    ids[32 : 32 + image] = cfg.img_context_token_id
    labels = ids.clone()
    labels[: 32 + image] = -100
    positions = torch.cat([torch.arange(first), torch.arange(seq - first)]).float()
    size = cfg.vision.image_size
    return {"input_ids": ids[None].to(device), "labels": labels[None].to(device),
            "position_ids": positions[None].to(device),
            "cu_seqlens": torch.tensor([0, first, seq], dtype=torch.int32, device=device),
            "pixel_values": torch.randn(tiles, 3, size, size, generator=torch.Generator().manual_seed(0)).to(device)}


def step_time(forward, params, repeats: int, device: str) -> tuple[float, float, float]:  # noqa: ANN001
    """(median s, min s, max s) of forward + backward + clip + AdamW, after two warm-up steps."""
    optimizer = torch.optim.AdamW(params, lr=1e-5, fused=device.startswith("cuda"))
    times = []
    for i in range(repeats + 2):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        start = time.perf_counter()
        with torch.autocast(torch.device(device).type, dtype=torch.bfloat16):
            loss = forward()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        if i >= 2:
            times.append(time.perf_counter() - start)
    times.sort()
    return times[len(times) // 2], times[0], times[-1]


def peak_memory(device: str) -> str:
    if not device.startswith("cuda"):
        return "n/a (CPU)"
    return f"{torch.cuda.max_memory_allocated() / 2**30:.1f} GiB"


def run(preset: str, seq: int, tiles: int, repeats: int, bf16_flops: float, device: str) -> str:
    ours = build_ours(preset, torch.float32, device).train()
    x = row(ours, seq, tiles, device)
    # 3 x the forward's matrix work (forward, and backward for inputs and weights), over the full row
    flops = 3 * prefill_flops(ours, tiles, seq) + 3 * 2 * seq * ours.config.text.vocab_size * \
        ours.config.text.hidden_size
    theirs = transformers_twin(ours, torch.float32, device).train()
    engines = {
        # the trainer's way: the loss from the final hidden states in chunks of `loss_chunk` positions, each
        # chunk's logits recomputed in the backward pass (train/config.py's default)
        "nativevl (packed row, loss in chunks of 4096)": (lambda: ours(**x, loss_chunk=4096).loss, ours),
        "nativevl (packed row, whole logits)": (lambda: ours(**x).loss, ours),
        "transformers (one causal row)": (lambda: theirs(input_ids=x["input_ids"], pixel_values=x["pixel_values"],
                                                         labels=x["labels"]).loss, theirs),
    }
    results: dict[str, tuple | None] = {}
    for name, (forward, model) in engines.items():
        free()
        if device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
        try:
            results[name] = (*step_time(forward, list(model.parameters()), repeats, device), peak_memory(device))
        except torch.OutOfMemoryError:
            results[name] = None
        for p in model.parameters():
            p.grad = None
    rows = []
    base = results["transformers (one causal row)"]
    for name, r in results.items():
        if r is None:
            rows.append([name, "out of memory", "", "", "", ""])
            continue
        median, low, high, memory = r
        rows.append([name, f"{fmt(seq / median)} ({fmt(seq / high)}..{fmt(seq / low)})",
                     f"{flops / median / bf16_flops:.0%}", memory,
                     f"{base[0] / median:.2f}x" if base else "", f"{fmt(median * 1e3)} ms"])
    head = (f"one row of {seq} tokens ({tiles}-tile image, two packed samples), bf16 autocast, float32 AdamW; "
            f"{fmt(flops / 1e12)} TFLOP a step; MFU against the measured bf16 matmul rate "
            f"{fmt(bf16_flops / 1e12)} TFLOP/s\n\n")
    return head + table(["engine", "tokens/s", "MFU", "peak memory", "speed-up", "step"], rows)
