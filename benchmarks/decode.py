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
    run(1 + steps)  # warm-up at the longest length (a static cache keeps the largest size it has seen)
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
    must come first); transformers' twin is rebuilt from its weights for each dtype.

    Engines: nativevl as loaded; `--prepack` (float32 on CPU: oneDNN-packed weights); `--compile` (the language
    model under torch.compile, dynamic shapes: one compilation for every batch size and cache length);
    transformers' plain `generate`, and with `--compile` its static cache + torch.compile path."""
    from nativevl.model.layers import prepack_linears

    rows, notes = [], []
    for dtype in dtypes:
        ours = model.to(dtype)
        theirs = transformers_twin(ours, dtype, device)
        weights = decode_weights(ours)
        bound = weight_bytes(weights) / (bandwidth * 1e9)
        name = str(dtype).removeprefix("torch.")
        prompts = {b: text_ids(ours, (b, PROMPT), seed=b, device=device) for b in batches}
        found: dict[int, dict[str, Timing]] = {b: {} for b in batches}
        floors = {}
        for batch, ids in prompts.items():
            mine, their = ours_runner(ours, ids), theirs_runner(theirs, ids)
            if not torch.equal(mine(8), their(8)):
                notes.append(f"{name} batch {batch}: the two engines' first 8 greedy tokens differ")
            floors[batch] = kernel_floor(weights, batch, repeats)
            found[batch]["nativevl"] = per_step(mine, steps, repeats, device)
            found[batch]["transformers generate"] = per_step(their, steps, repeats, device)
            free()
        lm = ours.language_model
        # every compiled path last: torch.compile leaves worker processes and threads behind that slow what follows
        if dtype == torch.float32 and device == "cpu" and torch.backends.mkldnn.is_available():
            packed = [m for m in lm.modules() if isinstance(m, torch.nn.Linear)]
            prepack_linears(lm)
            for batch, ids in prompts.items():
                found[batch]["nativevl --prepack"] = per_step(ours_runner(ours, ids), steps, repeats, device)
            for m in packed:
                del m.forward  # unpacked again
        if compiled:
            for batch, ids in prompts.items():
                found[batch]["transformers static cache + compile"] = per_step(
                    theirs_runner(theirs, ids, True), steps, repeats, device)
            lm.forward = torch.compile(lm.forward, dynamic=True)
            for batch, ids in prompts.items():
                found[batch]["nativevl --compile"] = per_step(ours_runner(ours, ids), steps, repeats, device)
            del lm.forward  # the class's eager forward again
        for batch, engines in found.items():
            base = engines["transformers generate"].median
            for engine, t in engines.items():
                rows.append([name, str(batch), engine, show(t, 1e3), f"{batch / t.median:.1f}",
                             f"{base / t.median:.2f}x", f"{t.median / floors[batch].median:.2f}x",
                             f"{bound / t.median:.0%}"])
            notes.append(f"{name} batch {batch}: kernel floor {show(floors[batch], 1e3)} ms, "
                         f"bandwidth bound {fmt(bound * 1e3)} ms")
        del theirs
        free()
    header = ["dtype", "batch", "engine", "ms/step", "tok/s", "vs transformers generate", "/ kernel floor",
              "of bandwidth bound"]
    return table(header, rows) + "\n\n" + "; ".join(notes) + "."
