"""Image preprocessing: decoded RGB images -> normalised tiles (InternVL's dynamic tiling, up to 12 tiles plus
the thumbnail), nativevl's `dynamic_preprocess` + `normalize` against transformers' GotOcr2ImageProcessorPil
with InternVL's settings, on a fixed set of photo-like images of mixed sizes. Outputs must be bit-identical.

The photos are made here (no download): smooth colour fields with texture and noise, JPEG-encoded and decoded
as a photo would be, in common camera, phone, screenshot and web sizes.
"""

from __future__ import annotations

import io

import numpy as np
import torch
from PIL import Image

from benchmarks.common import measure_turns, show, table

SIZES = [(4032, 3024), (3024, 4032), (1920, 1080), (1280, 720), (1080, 1350), (800, 600), (640, 480),
         (500, 375), (448, 448), (1200, 300), (300, 1200), (2048, 1536)]


def photos(seed: int = 0) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    out = []
    for w, h in SIZES:
        y, x = np.mgrid[0:h, 0:w].astype(np.float32)
        f = rng.uniform(2, 12, size=3)
        base = np.stack([127 + 100 * np.sin(x / w * f[c] + y / h * f[(c + 1) % 3] + c) for c in range(3)], -1)
        base += rng.normal(0, 12, size=(h, w, 3))
        data = io.BytesIO()
        Image.fromarray(base.clip(0, 255).astype(np.uint8)).save(data, "JPEG", quality=90)
        out.append(Image.open(io.BytesIO(data.getvalue())).convert("RGB"))
    return out


def theirs_processor():  # noqa: ANN201
    from transformers import GotOcr2ImageProcessorPil

    return GotOcr2ImageProcessorPil(size={"height": 448, "width": 448}, image_mean=[0.485, 0.456, 0.406],
                                    image_std=[0.229, 0.224, 0.225], crop_to_patches=True, min_patches=1,
                                    max_patches=12, do_convert_rgb=True)


def run(repeats: int) -> str:
    from nativevl.data.image import dynamic_preprocess, normalize

    images = photos()
    processor = theirs_processor()

    def mine() -> list[torch.Tensor]:
        return [normalize(dynamic_preprocess(im)) for im in images]

    def their() -> list[torch.Tensor]:
        return [processor(images=im, return_tensors="pt")["pixel_values"] for im in images]

    a, b = mine(), their()
    exact = all(x.shape == y.shape and torch.equal(x, y) for x, y in zip(a, b, strict=True))
    diff = max(float((x - y).abs().max()) if x.shape == y.shape else float("inf") for x, y in zip(a, b, strict=True))
    tiles = sum(x.shape[0] for x in a)
    found = measure_turns({"nativevl": mine, "transformers": their}, repeats)
    ta, tb = found["nativevl"], found["transformers"]
    rows = [["nativevl", show(ta.rate(len(images))), show(ta.rate(tiles)), f"{tb.median / ta.median:.2f}x"],
            ["transformers GotOcr2ImageProcessorPil", show(tb.rate(len(images))), show(tb.rate(tiles)), "1.00x"]]
    head = (f"{len(images)} images ({', '.join(f'{w}x{h}' for w, h in SIZES)}), {tiles} tiles in all; "
            f"outputs bit-identical: {'yes' if exact else f'NO (max |diff| {diff:.3g})'}\n\n")
    return head + table(["engine", "images/s", "tiles/s", "speed-up"], rows)
