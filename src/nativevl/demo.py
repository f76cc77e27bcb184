"""`make demo` / `nativevl demo`: the smallest real end-to-end run until the embedded world lands.

It builds a tiny random InternVL, saves it in the original OpenGVLab layout, converts that to the transformers
layout, loads both back, checks they give the same logits for a prompt with two images, and greedily generates
a few tokens. Command: `nativevl demo [--out DIR]` (CPU, a few seconds).
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from nativevl.config import preset
from nativevl.infer.generate import generate
from nativevl.model.internvl import InternVL
from nativevl.weights import convert


def _prompt(cfg_tokens: int, img_context: int, tiles: list[int]) -> torch.Tensor:
    """Token ids shaped like a real prompt: text, then <img> + 256 <IMG_CONTEXT> per tile + </img> per image."""
    ids = [10, 11, 12]
    for n in tiles:
        ids += [3] + [img_context] * (cfg_tokens * n) + [4] + [13]
    ids += [14, 15, 16]
    return torch.tensor([ids])


def run_demo(out: Path) -> None:
    torch.manual_seed(0)
    t0 = time.perf_counter()
    cfg = preset("tiny")
    model = InternVL.from_config(cfg).eval()
    n_params = sum(p.numel() for p in model.parameters())
    print(f"1. built a tiny random InternVL ({n_params:,} parameters; ViT {cfg.vision.num_hidden_layers} layers, "
          f"LLM {cfg.text.num_hidden_layers} layers)")

    original, hf = out / "original", out / "transformers"
    model.save_pretrained(original, layout="original")
    print(f"2. saved it in the original OpenGVLab layout: {original}")
    convert(original, hf, layout="transformers")
    print(f"3. converted it to the transformers layout: {hf}")

    a, b = InternVL.from_pretrained(original).eval(), InternVL.from_pretrained(hf).eval()
    tiles = [3, 1]
    pixel_values = torch.randn(sum(tiles), 3, cfg.vision.image_size, cfg.vision.image_size)
    ids = _prompt(cfg.num_image_token, cfg.img_context_token_id, tiles)
    with torch.inference_mode():
        la, lb = a(ids, pixel_values=pixel_values).logits, b(ids, pixel_values=pixel_values).logits
    diff = (la - lb).abs().max().item()
    print(f"4. loaded both back; logits for a {ids.shape[1]}-token prompt with 2 images ({sum(tiles)} tiles): "
          f"max |difference| = {diff:.1e}")
    if diff != 0.0:
        raise SystemExit("demo: the two layouts disagree")

    new = generate(a, ids, pixel_values=pixel_values, max_new_tokens=12)
    print(f"5. greedy generation, 12 tokens (random weights, so the ids mean nothing): {new[0].tolist()}")
    print(f"done in {time.perf_counter() - t0:.1f} s")
