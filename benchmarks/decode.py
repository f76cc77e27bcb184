"""Decode speed: milliseconds per new token for nativevl and transformers on the same weights, at batch 1 and
8, next to the kernel floor (the step's matrix products alone) and the read-bandwidth bound (a plain read of the
step's weight bytes, timed in turns with the engines like the floors: this shared machine's bandwidth drifts).

A step's time is measured as (time to generate 1 + n tokens - time to generate 1 token) / n, both timed in
every repeat, so the prefill cancels out. Random weights rarely emit an end token; min_new_tokens makes sure.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from functools import partial

import torch

from benchmarks.common import (
    Timing,
    fmt,
    free,
    show,
    sync,
    table,
    text_ids,
    transformers_twin,
)
from benchmarks.roofline import decode_weights, floor_runner, packed_floor_runner, read_runner, weight_bytes

PROMPT = 32  # prompt tokens per row


def per_step(runners: dict[str, Callable[[int], object]], steps: int, repeats: int, device: str
             ) -> dict[str, Timing]:
    """Median (and spread) over repeats of each runner's extra time per generated token. The runners take
    turns within every repeat, so a drift of this shared machine's speed falls on all of them alike."""
    for run in runners.values():
        run(1 + steps)  # warm-up at the longest length (a static cache keeps the largest size it has seen)
    values: dict[str, list[float]] = {name: [] for name in runners}
    for _ in range(repeats):
        for name, run in runners.items():
            times = []
            for n in (1, 1 + steps):
                sync(device)
                start = time.perf_counter()
                run(n)
                sync(device)
                times.append(time.perf_counter() - start)
            values[name].append((times[1] - times[0]) / steps)
    return {name: Timing(statistics.median(v), min(v), max(v), repeats) for name, v in values.items()}


def per_step_and_bound(group: dict[str, Callable[[int], object]], reader: Callable[[int], object], batch: int,
                       bounds: dict[tuple[int, str], float], steps: int, repeats: int, device: str
                       ) -> dict[str, Timing]:
    """`per_step` of a group of engines in turns with `reader` (a plain read of the step's weight bytes); the
    read's median goes into bounds[batch, engine] for each engine of the group."""
    got = per_step({**group, "bandwidth bound": reader}, steps, repeats, device)
    read = got.pop("bandwidth bound").median
    bounds.update({(batch, engine): read for engine in got})
    return got


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


def prepacked_forwards(module: torch.nn.Module) -> dict[torch.nn.Module, dict[str, object]]:
    """What `prepack_linears` set on each module (a linear layer's packed `forward`, a q/k/v or gate/up group's
    `packed` product, an attention layer's `kernel_attention`), taken off again so the plain layers run until
    `with_packs` switches the packed copies on (nothing on a torch without oneDNN or for an unpacked dtype)."""
    from nativevl import InternVL
    from nativevl.infer.chat import prepack_model
    from nativevl.model.layers import prepack_linears

    if not torch.backends.mkldnn.is_available():
        return {}
    prepack_model(module) if isinstance(module, InternVL) else prepack_linears(module)
    packs = {}
    for m in module.modules():
        found = {name: m.__dict__[name] for name in ("forward", "packed", "kernel_attention") if m.__dict__.get(name)}
        if found:
            packs[m] = found
    _switch(packs, on=False)
    return packs


def _switch(packs: dict[torch.nn.Module, dict[str, object]], on: bool) -> None:
    for m, attributes in packs.items():
        for name, value in attributes.items():
            if name == "packed":
                m.packed = value if on else None
            elif name == "kernel_attention":
                m.kernel_attention = on
            elif on:
                m.forward = value  # an instance attribute shadows the class's forward
            else:
                del m.forward


def packed_products(packs: dict[torch.nn.Module, dict[str, object]]) -> list:
    """The `PackedLinear`s behind `packs`, in forward order: a group's `packed`, a lone layer's packed forward's
    (`partial(linear_forward, packed, layer)`, nativevl/kernels/packed.py)."""
    return [value if name == "packed" else value.args[0] for found in packs.values() for name, value in found.items()
            if name in ("packed", "forward")]  # an attention layer's `kernel_attention` flag is no product


def with_packs(run: Callable[[int], object], packs: dict[torch.nn.Module, dict[str, object]]
               ) -> Callable[[int], object]:
    """`run` with each layer's packed copies switched on (`prepack_linears`), then off again."""
    def packed(n: int) -> object:
        _switch(packs, on=True)
        try:
            return run(n)
        finally:
            _switch(packs, on=False)

    return packed


def run(model, dtypes: list[torch.dtype], batches: list[int], steps: int, repeats: int,  # noqa: ANN001
        compiled: bool, device: str) -> str:
    """`model`: nativevl's InternVL in float32 on `device`, cast in place to each dtype in turn (so float32
    must come first); transformers' twin is rebuilt from its weights for each dtype.

    Engines: nativevl as loaded; `--prepack` (on CPU: oneDNN-packed weights, q/k/v and gate/up as one
    product, a decode step's rows on nativevl's few-row kernel where the CPU has AVX2 or AVX-512);
    `--compile` (the language model under torch.compile, dynamic shapes: one compilation for every batch size
    and cache length), alone and with `--prepack`; transformers' plain `generate`, and with `--compile` its static
    cache + torch.compile path. Floors: torch's default products on the model's weights ("kernel floor") and,
    on a CPU, the products `--prepack` makes ("packed floor"); the bandwidth bound is a plain read of the
    step's weight bytes in turns with each group of engines."""
    rows, notes = [], []
    for dtype in dtypes:
        ours = model.to(dtype)
        theirs = transformers_twin(ours, dtype, device)
        weights = decode_weights(ours)
        reader = read_runner(weight_bytes(weights), device)
        name = str(dtype).removeprefix("torch.")
        lm = ours.language_model
        packs = prepacked_forwards(lm) if device == "cpu" else {}
        found: dict[int, dict[str, Timing]] = {}
        bounds: dict[tuple[int, str], float] = {}  # (batch, engine): the weight bytes' read time in its turns
        timed = partial(per_step_and_bound, reader=reader, bounds=bounds, steps=steps, repeats=repeats, device=device)
        for batch in batches:
            ids = text_ids(ours, (batch, PROMPT), seed=batch, device=device)
            mine, their = ours_runner(ours, ids), theirs_runner(theirs, ids)
            if not torch.equal(mine(8), their(8)):
                notes.append(f"{name} batch {batch}: the two engines' first 8 greedy tokens differ")
            runners = {"kernel floor": floor_runner(weights, batch), "nativevl": mine,
                       "transformers generate": their}
            if packs:
                runners["nativevl --prepack"] = with_packs(mine, packs)
                packed_floor = packed_floor_runner(packed_products(packs), batch)
                if packed_floor is not None:
                    runners["packed floor"] = packed_floor
            found[batch] = timed(batch=batch, group=runners)
            free()
        # every compiled path last: torch.compile leaves worker processes and threads behind that slow what follows
        if compiled:
            for batch in batches:
                ids = text_ids(ours, (batch, PROMPT), seed=batch, device=device)
                compiled_theirs = {"transformers static cache + compile": theirs_runner(theirs, ids, True)}
                found[batch].update(timed(batch=batch, group=compiled_theirs))
            if device.startswith("cuda"):  # the decode step over a fixed-size cache, replayed as a CUDA graph
                from nativevl.infer.generate import GraphDecoder

                ours.graph_decoder = GraphDecoder(ours)
                try:
                    for batch in batches:
                        ids = text_ids(ours, (batch, PROMPT), seed=batch, device=device)
                        graph = {"nativevl GraphDecoder": ours_runner(ours, ids)}
                        found[batch].update(timed(batch=batch, group=graph))
                except Exception as e:  # noqa: BLE001 - not yet run on a GPU: report it, time the rest
                    notes.append(f"GraphDecoder failed: {type(e).__name__}: {str(e)[:300]}")
                del ours.graph_decoder
            lm.forward = torch.compile(lm.forward, dynamic=True)  # what `--compile` does (infer/chat.py)
            for batch in batches:
                ids = text_ids(ours, (batch, PROMPT), seed=batch, device=device)
                found[batch].update(timed(batch=batch, group={"nativevl --compile": ours_runner(ours, ids)}))
            del lm.forward  # the class's eager forward again
            if packs:  # both switches: the packed products as one opaque operation between fused small ones
                torch._dynamo.reset()
                _switch(packs, on=True)
                lm.forward = torch.compile(lm.forward, dynamic=True)
                for batch in batches:
                    ids = text_ids(ours, (batch, PROMPT), seed=batch, device=device)
                    both = {"nativevl --prepack --compile": ours_runner(ours, ids)}
                    found[batch].update(timed(batch=batch, group=both))
                del lm.forward
                _switch(packs, on=False)
        for batch, engines in found.items():
            base, floor = engines["transformers generate"].median, engines.pop("kernel floor")
            packed_floor = engines.pop("packed floor", None)
            for engine, t in engines.items():
                rows.append([name, str(batch), engine, show(t, 1e3), f"{batch / t.median:.1f}",
                             f"{base / t.median:.2f}x", f"{t.median / floor.median:.2f}x",
                             f"{t.median / packed_floor.median:.2f}x" if packed_floor else "",
                             f"{bounds[batch, engine] / t.median:.0%}"])
            read = sorted({bounds[batch, engine] for engine in engines})
            notes.append(f"{name} batch {batch}: kernel floor {show(floor, 1e3)} ms"
                         + (f", packed floor {show(packed_floor, 1e3)} ms" if packed_floor else "")
                         + f", bandwidth bound {fmt(read[0] * 1e3)}"
                         + (f"..{fmt(read[-1] * 1e3)}" if len(read) > 1 else "") + " ms")
        del theirs, reader
        free()
    header = ["dtype", "batch", "engine", "ms/step", "tok/s", "vs transformers generate", "/ kernel floor",
              "/ packed floor", "of bandwidth bound"]
    return table(header, rows) + "\n\n" + "; ".join(notes) + "."
