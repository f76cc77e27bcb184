"""What the scene families draw with: image sizes and aspect ratios, background textures, Pillow's font and the
boxes of rendered text."""

from __future__ import annotations

import random
from functools import lru_cache
from typing import Any

from PIL import ImageDraw, ImageFont

from .common import RATIOS, RGB, TEXTURES


def random_size(rng: random.Random, min_short: int, min_long: int, max_long: int = 512,
                ratios: tuple[float, ...] = RATIOS) -> tuple[int, int]:
    """(width, height) with an aspect ratio from `ratios` (1:4 to 4:1) and sides in [min_short, max_long]."""
    ratio = rng.choice(ratios)
    long = rng.randint(min_long, max_long)
    short = max(min_short, round(long * min(ratio, 1 / ratio)))
    return (long, short) if ratio >= 1 else (short, long)


def random_texture(rng: random.Random) -> dict[str, Any]:
    return {"kind": rng.choice(TEXTURES), "step": rng.randint(6, 16)}


@lru_cache(maxsize=64)
def font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    """Pillow's embedded font at `size` (Pillow >= 10.1 with FreeType); else the fixed bitmap default."""
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, ImportError, OSError):
        return ImageFont.load_default()


def text_box(text: str, size: int) -> tuple[int, int, int, int]:
    return tuple(int(v) for v in font(size).getbbox(text))  # type: ignore[return-value]


def draw_texture(draw: ImageDraw.ImageDraw, size: tuple[int, int], base: RGB, texture: dict[str, Any]) -> None:
    """Faint stripes / dots / grid a little darker than the background."""
    w, h = size
    ink = tuple(max(0, c - 14) for c in base)
    step, kind = texture["step"], texture["kind"]
    if kind == "stripes":  # diagonal
        for x in range(0, w + h, step):
            draw.line([(x, 0), (x - h, h)], fill=ink)
    elif kind == "grid":
        for x in range(0, w, step):
            draw.line([(x, 0), (x, h)], fill=ink)
        for y in range(0, h, step):
            draw.line([(0, y), (w, y)], fill=ink)
    elif kind == "dots":
        for y in range(step // 2, h, step):
            for x in range(step // 2, w, step):
                draw.point((x, y), fill=ink)
