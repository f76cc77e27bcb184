"""Decode speed: milliseconds per new token for nativevl and transformers on the same weights, at batch 1 and
8, next to the kernel floor (the step's matrix products alone) and the read-bandwidth bound (the step's weight
bytes over the measured bandwidth).

A step's time is measured as (time to generate 1 + n tokens - time to generate 1 token) / n, both timed in
every repeat, so the prefill cancels out. Random weights rarely emit an end token; min_new_tokens makes sure.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch

from benchmarks.common import Timing, fmt, free, show, sync, table, text_ids, transformers_twin
from benchmarks.roofline import decode_weights, kernel_floor, weight_bytes

PROMPT = 32  # prompt tokens per row


def per_step(run: Callable[[int], object], steps: int, repeats: int, device: str) -> Timing:
    """Median (and spread) over repeats of the extra time per generated token."""
    run(2)  # warm-up
    values = []
    for _ in range(repeats):
        times = []
        for n in (1, 1 + steps):
            sync(device)
            start = time.perf_counter()
            run(n)
            sync(device)
            times.append(time.perf_counter() - start)
        values.append((times[1] - times[0]) / steps)
    values.sort()
    return Timing(values[len(values) // 2], values[0], values[-1], repeats)


def ours_runner(model, ids: torch.Tensor) -> Callable[[int], torch.Tensor]:  # noqa: ANN001
    from nativevl.infer.generate import generate

    return lambda n: generate(model, ids, max_new_tokens=n)


def theirs_runner(model, ids: torch.Tensor, compiled: bool = False) -> Callable[[int], torch.Tensor]:  # noqa: ANN001
    settings = {}
    if compiled:
        # transformers' documented fast path: a static cache and a compiled forward. Its default CompileConfig
        # asks for fullgraph, which fails on InternVL3's dynamic-NTK rotary (a data-dependent branch), so the
        # graph is allowed to break there; `_compile_all_devices` lets it compile off CUDA.
        from transformers import CompileConfig

        config = CompileConfig(fullgraph=False)
        config._compile_all_devices = True
        settings = {"cache_implementation": "static", "compile_config": config}
    mask = torch.ones_like(ids)

    @torch.inference_mode()
    def run(n: int) -> torch.Tensor:
        out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=n, min_new_tokens=n,
                             do_sample=False, pad_token_id=0, **settings)
        return out[:, ids.shape[1]:]

    return run


def run(model, dtypes: list[torch.dtype], batches: list[int], steps: int, repeats: int, bandwidth: float,  # noqa: ANN001
        compiled: bool, device: str) -> str:
    """`model`: nativevl's InternVL in float32 on `device`, cast in place to each dtype in turn (so float32
    must come first); transformers' twin is rebuilt from its weights for each dtype."""
    rows = []
    notes = []
    for dtype in dtypes:
        ours = model.to(dtype)
        theirs = transformers_twin(ours, dtype, device)
        weights = decode_weights(ours)
        bound = weight_bytes(weights) / (bandwidth * 1e9)
        for batch in batches:
            ids = text_ids(ours, (batch, PROMPT), seed=batch, device=device)
            mine, their = ours_runner(ours, ids), theirs_runner(theirs, ids)
            same = torch.equal(mine(8), their(8))
            floor = kernel_floor(weights, batch, repeats)
            a = per_step(mine, steps, repeats, device)
            b = per_step(their, steps, repeats, device)
            c = per_step(theirs_runner(theirs, ids, compiled=True), steps, repeats, device) if compiled else None
            name = str(dtype).removeprefix("torch.")
            rows.append([
                name, str(batch), show(a, 1e3), show(b, 1e3), f"{b.median / a.median:.2f}x",
                f"{c.median / a.median:.2f}x ({fmt(c.median * 1e3)} ms)" if c else "not run",
                fmt(floor.median * 1e3), f"{a.median / floor.median:.2f}x", fmt(bound * 1e3),
                f"{bound / a.median:.0%}",
                f"{batch / a.median:.1f}",
            ])
            if not same:
                notes.append(f"{name} batch {batch}: the two engines' first 8 greedy tokens differ")
            free()
        del theirs
        free()
    header = ["dtype", "batch", "nativevl ms/step", "transformers ms/step", "speed-up",
              "vs transformers static+compile", "kernel floor ms", "nativevl / floor", "bandwidth bound ms",
              "of bandwidth bound", "nativevl tok/s"]
    return table(header, rows) + "".join(f"\n\n{n}" for n in notes)
