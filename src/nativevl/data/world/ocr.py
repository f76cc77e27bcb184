"""The OCR family: a word, a number, or a word above a number, in one ink on plain paper; drawing it and the
questions that read it."""

from __future__ import annotations

import math
import random

from PIL import Image, ImageDraw

from .canvas import font, text_box
from .common import COLOURS, INKS, PAPERS, QA, WORDS, Scene


def ocr_scene(rng: random.Random) -> Scene:
    """A word, a number, or a word above a number, in one ink on plain paper."""
    kind = rng.choice(("word", "word", "number", "number", "both"))
    word = rng.choice(WORDS)
    word = {0: word.upper(), 1: word.capitalize()}.get(rng.randrange(6), word)
    digits = rng.randint(1, 4)
    number = str(rng.randint(0 if digits == 1 else 10 ** (digits - 1), 10**digits - 1))
    texts = {"word": [word], "number": [number], "both": [word, number]}[kind]
    size = rng.randint(14, 40)
    boxes = [text_box(t, size) for t in texts]
    while max(b[2] - b[0] for b in boxes) > 440:  # keep room for margins inside 512 px
        size -= 2
        boxes = [text_box(t, size) for t in texts]
    gap = size // 3
    text_w = max(b[2] - b[0] for b in boxes)
    text_h = sum(b[3] - b[1] for b in boxes) + gap * (len(texts) - 1)
    width = min(512, max(64, text_w + 2 * rng.randint(6, 60)))
    height = min(512, max(64, text_h + 2 * rng.randint(6, 60)))
    width, height = max(width, math.ceil(height / 4)), max(height, math.ceil(width / 4))
    y = rng.randint(0, height - text_h)
    x0 = rng.randint(0, width - text_w)
    lines = []
    for text, (left, top, right, bottom) in zip(texts, boxes, strict=True):
        # draw origin such that the ink's box starts at (x0, y)
        lines.append({"text": text, "x": x0 - left, "y": y - top})
        y += bottom - top + gap
    return {"kind": "ocr", "width": width, "height": height, "paper": rng.choice(sorted(PAPERS)),
            "ink": rng.choice(INKS), "size": size, "lines": lines,
            "word": word if kind != "number" else None, "number": number if kind != "word" else None}


def render_ocr(scene: Scene) -> Image.Image:
    image = Image.new("RGB", (scene["width"], scene["height"]), PAPERS[scene["paper"]])
    draw = ImageDraw.Draw(image)
    for line in scene["lines"]:
        draw.text((line["x"], line["y"]), line["text"], font=font(scene["size"]), fill=COLOURS[scene["ink"]])
    return image


def ocr_qa(scene: Scene, rng: random.Random) -> QA:
    options = []
    if scene["word"] is not None:
        options.append(QA("ocr_word", rng.choice(("What word is written?", "What word is written in the image?")),
                          scene["word"], f"The word is \"{scene['word']}\".", {}))
    if scene["number"] is not None:
        options.append(QA("ocr_number", rng.choice(("What number is shown?", "What number is written?")),
                          scene["number"], f"The number is {scene['number']}.", {}))
    text = " ".join(line["text"] for line in scene["lines"])
    options.append(QA("ocr_read", "Read the text in the image.", text, text, {}))
    return rng.choice(options)
