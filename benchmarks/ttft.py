"""Time to first token for a prompt with one image of 1 tile and of 13 tiles (a 12-tile grid plus the
thumbnail): the ViT over every tile, the projector, the language model's prefill and the first greedy token,
for nativevl and transformers on the same weights and the same pixel values.

The ceiling is the prefill's floating-point work over the measured matmul FLOP/s: the ViT and projector per
tile, the language model per prompt token, and attention's quadratic terms (the ViT's full, the LLM's causal).
"""

from __future__ import annotations

import torch

from benchmarks.common import fmt, free, measure_turns, show, table, text_ids, transformers_twin

TEXT = 40  # text tokens around the image (system prompt, question, template)


def prompt(model, tiles: int, device: str) -> tuple[torch.Tensor, torch.Tensor]:  # noqa: ANN001
    """input ids (1, L) with `tiles` x num_image_token <IMG_CONTEXT> slots, and pixel values for the tiles."""
    cfg = model.config
    g = torch.Generator().manual_seed(tiles)
    text = text_ids(model, (TEXT,), seed=tiles)
    image = torch.full((tiles * model.num_image_token,), cfg.img_context_token_id)
    ids = torch.cat([text[:30], image, text[30:]])[None].to(device)
    size = cfg.vision.image_size
    pixels = torch.randn(tiles, 3, size, size, generator=g).to(device)
    return ids, pixels


def _linear_params(module: torch.nn.Module) -> int:
    return sum(m.weight.numel() for m in module.modules() if isinstance(m, torch.nn.Linear))


def prefill_flops(model, tiles: int, length: int) -> float:  # noqa: ANN001
    """Multiply-adds x 2 of the ViT, projector and LLM prefill (plus one row of the output head)."""
    v, t = model.config.vision, model.config.text
    patches = (v.image_size // v.patch_size) ** 2
    seq = patches + 1  # the class token
    vit = 2 * seq * _linear_params(model.vision_model.encoder) + 4 * seq**2 * v.hidden_size * v.num_hidden_layers
    vit += 2 * patches * v.num_channels * v.patch_size**2 * v.hidden_size  # the patch embedding
    projector = 2 * model.num_image_token * _linear_params(model.mlp1)
    llm = 2 * length * _linear_params(model.language_model.model.layers)
    llm += 2 * length**2 * t.num_attention_heads * t.head_dim * t.num_hidden_layers  # causal: half of 4 L^2 d
    head = 2 * t.vocab_size * t.hidden_size
    return tiles * (vit + projector) + llm + head


def run(model, dtype: torch.dtype, tile_counts: list[int], repeats: int, flops: dict[torch.dtype, float],  # noqa: ANN001
        device: str) -> str:
    """`model` is cast in place to `dtype`; `flops` holds the measured matmul FLOP/s per dtype. The ceiling of
    `--prepack` is float32's: on a CPU without native bf16 products it multiplies bf16 layers in float32."""
    from benchmarks.decode import prepacked_forwards, with_packs
    from nativevl.infer.generate import generate
    from nativevl.kernels import cpu_multiplies_bf16

    ours = model.to(dtype)
    theirs = transformers_twin(ours, dtype, device)
    packs = prepacked_forwards(ours) if device == "cpu" else {}
    widened = dtype == torch.bfloat16 and not cpu_multiplies_bf16()
    rows, notes = [], []
    for i, tiles in enumerate(tile_counts):
        ids, pixels = prompt(ours, tiles, device)
        pixels = pixels.to(dtype)
        mask = torch.ones_like(ids)

        def mine(_: int = 1) -> torch.Tensor:
            return generate(ours, ids, pixel_values=pixels, max_new_tokens=1)

        @torch.inference_mode()
        def their() -> torch.Tensor:
            out = theirs.generate(input_ids=ids, attention_mask=mask, pixel_values=pixels, max_new_tokens=1,
                                  do_sample=False, pad_token_id=0)
            return out[:, ids.shape[1]:]

        engines = {"nativevl": mine, "transformers": their}
        if packs:
            engines["nativevl --prepack"] = lambda: with_packs(mine, packs)(1)
        warmup = 1 if i == 0 else 0  # the first case warms the engines up; later ones are long enough alone
        found = measure_turns(engines, repeats, warmup=warmup, device=device)
        if i == 0 and not torch.equal(mine(), their()):  # checked on the cheapest case only
            notes.append(f"{tiles} tile(s): the first tokens differ")
        work = prefill_flops(ours, tiles, ids.shape[1])
        for engine, t in found.items():
            ceiling = work / flops[torch.float32 if widened and engine.endswith("--prepack") else dtype]
            rows.append([str(dtype).removeprefix("torch."), str(tiles), str(ids.shape[1]), engine, show(t, 1e3),
                         f"{found['transformers'].median / t.median:.2f}x", fmt(ceiling * 1e3),
                         f"{ceiling / t.median:.0%}"])
        free()
    del theirs
    free()
    header = ["dtype", "tiles", "prompt tokens", "engine", "ms", "vs transformers", "FLOP ceiling ms", "of ceiling"]
    return table(header, rows) + "".join(f"\n\n{n}" for n in notes)
