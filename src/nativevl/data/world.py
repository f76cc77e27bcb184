"""The embedded synthetic multimodal world: a small, seeded world of shapes, words and bar charts written in the
original InternVL training formats, so that a tiny InternVL can be pre-trained, fine-tuned (SFT), preference-tuned
(MPO) and evaluated in minutes on a CPU.

Call `generate_world(out, seed=0, scale=1.0)`. It writes, under `out`:

- `images/{train,val,test}/{objects,shapes,ocr,charts}/NNNNNN.png`: PIL-drawn PNGs of varied sizes (64..512 px)
  and aspect ratios (1:4..4:1): one large shape (an "object", for colour and shape recognition), coloured shapes
  in a 3x3 grid of places, rendered words / numbers, bar charts.
- `annotations/{pretrain,sft,mpo,eval}/*.jsonl`: one JSON object per line, InternVL's chat format
  (`id`, `image` / `width` / `height` or `image` list / `width_list` / `height_list`, `conversations`), MMPR's
  preference format (`image`, `question`, `chosen`, `rejected`, `answer_gt`) for MPO, and the chat format plus a
  short gold `answer` for the held-out `val` / `test` splits.
- for the ablations (`nativevl ablate`): `annotations/long/` (questions over 2-8 object pictures, "what colour is
  the object in the first picture?", and text conversations of 8-16 turns, both at the training context length),
  `annotations/long_eval/` (the same question over 8, 16 and 32 held-out pictures: prompts about 1x, 2x and 4x as
  long) and `annotations/text_eval/` (held-out text conversations, for perplexity).
- `meta_pretrain.json`, `meta_sft.json`, `meta_mpo.json`, `meta_eval.json`, `meta_long.json`,
  `meta_long_eval.json`, `meta_text_eval.json`: InternVL meta files
  `{name: {root, annotation, data_augment, repeat_time, length, max_dynamic_patch}}`. `root` and `annotation` are
  relative to the meta file's folder (`out`), so the world can be moved and two worlds compare byte for byte; an
  image's full path is `<meta folder>/<root>/<record image>`.
- `tokenizer/`: a Qwen2-style byte-level BPE trained on the world's text (asked for 2000 tokens; the world's
  small vocabulary runs out of merges at about 1150), with InternVL's special tokens at ids 0..12
  (`<IMG_CONTEXT>` = 5); loads with `nativevl.tokenizer.load_tokenizer`.
- `README.md`: what was generated.

Every record with an image keeps a `meta` field with the generator's scene spec and, per question, its task and
gold answer, so answers can be re-derived from the scene (and images re-rendered with `render_scene`). Loaders
ignore extra keys. The same seed gives byte-identical files; val/test scenes never appear in train.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import shutil
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw, ImageFont
from tokenizers import Tokenizer, pre_tokenizers
from tokenizers.models import BPE
from tokenizers.trainers import BpeTrainer

from nativevl.conversation import IMAGE_PLACEHOLDER, INTERNVL2_5_SYSTEM
from nativevl.tokenizer import IM_END, IM_START, INTERNVL_TOKENS, load_tokenizer, qwen2_pipeline

Scene = dict[str, Any]
Record = dict[str, Any]
RGB = tuple[int, int, int]

# ids 0..12, in this order: the Qwen2 specials first, then InternVL's (`<IMG_CONTEXT>` lands on id 5).
SPECIAL_TOKENS = ["<|endoftext|>", IM_START, IM_END, *INTERNVL_TOKENS, "<video>"]
VOCAB_SIZE = 2000
MODEL_MAX_LENGTH = 4096

COLOURS: dict[str, RGB] = {
    "red": (220, 30, 30), "green": (30, 160, 50), "blue": (30, 70, 220), "yellow": (240, 210, 20),
    "purple": (130, 50, 170), "orange": (245, 130, 20), "black": (20, 20, 20), "white": (255, 255, 255),
}
SHAPES = ("circle", "square", "triangle", "star")
# Light backgrounds, none of them white, so that every palette colour (white included) stays visible.
BACKGROUNDS: dict[str, RGB] = {
    "grey": (200, 200, 200), "beige": (226, 214, 188), "pale blue": (186, 206, 228),
    "pale green": (200, 226, 196), "pink": (232, 200, 212),
}
TEXTURES = ("plain", "plain", "stripes", "dots", "grid")
# (row, col) of the 3x3 grid -> place name; every shape of a scene has its own cell, so a place names one shape.
PLACES: dict[tuple[int, int], str] = {
    (0, 0): "top-left", (0, 1): "top", (0, 2): "top-right",
    (1, 0): "left", (1, 1): "center", (1, 2): "right",
    (2, 0): "bottom-left", (2, 1): "bottom", (2, 2): "bottom-right",
}
PLACE_PHRASES = {"left": "on the left", "right": "on the right", "center": "in the center"}
SHAPE_FACTS = {
    "circle": ("round", "A circle is round and has no corners."),
    "square": ("square with four equal sides", "A square has four equal sides and four corners."),
    "triangle": ("pointy with three corners", "A triangle has three sides and three corners."),
    "star": ("shaped like a star with five points", "A star has five points."),
}
CORNERS = {"circle": 0, "square": 4, "triangle": 3}
FRUITS = ("apple", "banana", "cherry", "grape", "lemon", "mango", "melon", "peach", "pear", "plum", "kiwi", "lime")
CHART_TITLES = ("Fruit sold", "Fruit picked", "Votes", "Boxes", "Fruit in store", "Points")
WORDS = (
    "cat", "dog", "sun", "moon", "tree", "house", "river", "apple", "bread", "chair", "table", "book", "lamp",
    "cloud", "rain", "snow", "star", "ship", "train", "road", "green", "happy", "quick", "small", "large",
    "hello", "world", "paper", "stone", "water", "light", "music", "garden", "window", "yellow", "circle",
    "square", "number", "letter", "orange", "purple", "silver", "forest", "bridge", "market", "planet",
    "rocket", "pencil", "castle", "island", "summer", "winter", "spring", "autumn", "vision", "model",
)
INKS = ("black", "blue", "red", "purple", "green")
PAPERS: dict[str, RGB] = {"white": (255, 255, 255), "cream": (248, 240, 220), "light grey": (228, 228, 228),
                          "pale blue": (220, 232, 246)}
NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")
RATIOS = (1 / 4, 1 / 3, 1 / 2, 2 / 3, 3 / 4, 1.0, 4 / 3, 3 / 2, 2.0, 3.0, 4.0)

SPLITS = ("train", "val", "test")
# Images per split at scale 1.0; records are derived from these (several thousand in all). Object pictures are
# many because shape recognition needs many examples and each costs one tile.
BASE_IMAGES = {"objects": (1200, 60, 60), "shapes": (600, 60, 60), "ocr": (300, 30, 30), "charts": (300, 30, 30)}
MIN_IMAGES = 4  # per split and kind, so that multi-image groups can always be drawn
SHORT_PROMPT = "Answer the question using a single word or phrase."
COT_PROMPT = "Answer step by step, then give the final answer on the last line as \"Answer: \" and the answer."
SYSTEM_PROMPT = "You are a helpful assistant who answers questions about simple pictures of shapes, words and charts."
# Tiles per image: images are at most 512 px, so a few 448-px tiles already keep their detail, and every tile
# costs 256 image tokens in CPU training. Multi-image records split the budget between their images.
# Object pictures are cheap (one tile) and recognition needs many of them: their datasets repeat 3 times.
REPEAT = {"objects": 3}
MAX_PATCH = {"objects": 1, "shapes": 4, "ocr": 4, "charts": 4, "multi": 2}  # one large object needs no tiling


@dataclass(frozen=True)
class QA:
    """One question about a scene, with its short gold answer and a natural-language answer."""

    task: str
    question: str
    answer: str
    sentence: str
    args: dict[str, Any]

    def meta(self) -> dict[str, Any]:
        return {"task": self.task, "answer": self.answer, **self.args}


@dataclass(frozen=True)
class Cot:
    """A step-by-step answer: reasoning steps and the final answer, plus a wrong version for preference data."""

    task: str
    question: str
    answer: str
    steps: list[str]
    wrong_steps: list[str]
    wrong_answer: str
    args: dict[str, Any]

    def text(self, wrong: bool = False) -> str:
        steps, answer = (self.wrong_steps, self.wrong_answer) if wrong else (self.steps, self.answer)
        return "\n\n".join([*steps, f"Answer: {answer}"])

    def meta(self) -> dict[str, Any]:
        return {"task": self.task, "answer": self.answer, "wrong_answer": self.wrong_answer, **self.args}


@dataclass(frozen=True)
class Img:
    """A written image: its path relative to the images root, its size and the scene it was drawn from."""

    path: str
    width: int
    height: int
    scene: Scene


# ---------------------------------------------------------------------------------------------- words helpers


def plural(shape: str, n: int = 2) -> str:
    return shape if n == 1 else shape + "s"


def place_phrase(place: str) -> str:
    """'top-left' -> 'at the top-left', 'left' -> 'on the left', 'center' -> 'in the center'."""
    return PLACE_PHRASES.get(place, f"at the {place}")


def number_word(n: int) -> str:
    return NUMBER_WORDS[n] if 0 <= n < len(NUMBER_WORDS) else str(n)


def join_words(items: list[str]) -> str:
    """'a', 'a and b', 'a, b and c'."""
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def a(noun: str) -> str:
    """The noun with its indefinite article: 'a red circle', 'an orange star'."""
    return f"{'an' if noun[:1] in 'aeiou' else 'a'} {noun}"


def capital(text: str) -> str:
    return text[:1].upper() + text[1:]


def shape_name(s: dict[str, Any]) -> str:
    return f"{s['colour']} {s['shape']}"


# ---------------------------------------------------------------------------------------------- scenes


def random_size(rng: random.Random, min_short: int, min_long: int, max_long: int = 512,
                ratios: tuple[float, ...] = RATIOS) -> tuple[int, int]:
    """(width, height) with an aspect ratio from `ratios` (1:4 to 4:1) and sides in [min_short, max_long]."""
    ratio = rng.choice(ratios)
    long = rng.randint(min_long, max_long)
    short = max(min_short, round(long * min(ratio, 1 / ratio)))
    return (long, short) if ratio >= 1 else (short, long)


def random_texture(rng: random.Random) -> dict[str, Any]:
    return {"kind": rng.choice(TEXTURES), "step": rng.randint(6, 16)}


def shapes_scene(rng: random.Random) -> Scene:
    """1-6 shapes with distinct (colour, shape) pairs, one per cell of the 3x3 grid, sorted in reading order."""
    width, height = random_size(rng, 96, 160)
    n = rng.randint(1, 6)
    cells = sorted(rng.sample(sorted(PLACES), n))
    kinds = rng.sample([(c, s) for c in COLOURS for s in SHAPES], n)
    cw, ch = width / 3, height / 3
    shapes = []
    for (row, col), (colour, shape) in zip(cells, kinds, strict=True):
        r = max(4, round(min(cw, ch) * rng.uniform(0.24, 0.4)))
        # jitter inside the cell, keeping the whole shape in it, so the place name stays true
        jx, jy = max(0.0, cw / 2 - r - 1), max(0.0, ch / 2 - r - 1)
        x = round(col * cw + cw / 2 + rng.uniform(-jx, jx) * 0.7)
        y = round(row * ch + ch / 2 + rng.uniform(-jy, jy) * 0.7)
        shapes.append({"shape": shape, "colour": colour, "place": PLACES[row, col], "row": row, "col": col,
                       "x": x, "y": y, "r": r})
    return {"kind": "shapes", "width": width, "height": height, "background": rng.choice(sorted(BACKGROUNDS)),
            "texture": random_texture(rng), "shapes": shapes}


def object_scene(rng: random.Random) -> Scene:
    """One large shape anywhere on a (possibly textured) background: colour and shape recognition without the
    binding to a place that the 3x3 scenes ask for."""
    width, height = random_size(rng, 96, 128, 384, ratios=(3 / 4, 1.0, 4 / 3))  # one tile: little squashing
    # a large object: most image tokens hold a piece of its outline (measured on 112-px tiles: a ViT trained with a
    # linear head on its mean-pooled features reached 91% held-out shape accuracy in 400 steps, 56% with radii
    # of 0.25-0.4)
    r = max(12, round(min(width, height) * rng.uniform(0.38, 0.48)))
    x, y = rng.randint(r + 1, width - r - 1), rng.randint(r + 1, height - r - 1)
    colour, shape = rng.choice(sorted(COLOURS)), rng.choice(SHAPES)
    return {"kind": "object", "width": width, "height": height, "background": rng.choice(sorted(BACKGROUNDS)),
            "texture": random_texture(rng), "shapes": [{"shape": shape, "colour": colour, "x": x, "y": y, "r": r}]}


@lru_cache(maxsize=64)
def font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    """Pillow's embedded font at `size` (Pillow >= 10.1 with FreeType); else the fixed bitmap default."""
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, ImportError, OSError):
        return ImageFont.load_default()


def text_box(text: str, size: int) -> tuple[int, int, int, int]:
    return tuple(int(v) for v in font(size).getbbox(text))  # type: ignore[return-value]


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


def chart_scene(rng: random.Random) -> Scene:
    """2-6 bars with distinct values 1..20 (so highest/lowest are unique), labels below and values above."""
    n = rng.randint(2, 6)
    labels = rng.sample(FRUITS, n)
    values = rng.sample(range(1, 21), n)
    size = rng.randint(11, 14)
    one_colour = rng.random() < 0.5
    palette = [c for c in COLOURS if c != "white"]
    colours = [rng.choice(palette)] * n if one_colour else [rng.choice(palette) for _ in range(n)]
    label_w = max(text_box(label, size)[2] for label in labels)
    slot = min(label_w + 8 + rng.randint(0, 40), (512 - 40) // n)
    left, line_h = 28, size + 6
    title = rng.choice(CHART_TITLES)
    width = max(left + n * slot + 12, left + text_box(title, size)[2] + 8)
    plot_h = rng.randint(60, 260)
    top = 2 * line_h + 4  # title, then room for the tallest bar's value
    height = max(top + plot_h + line_h + 6, math.ceil(width / 4))
    plot_h = height - top - line_h - 6
    return {"kind": "chart", "width": width, "height": height, "title": title, "size": size,
            "left": left, "top": top, "plot_h": plot_h, "slot": slot,
            "bar_w": max(6, round(slot * rng.uniform(0.45, 0.8))), "scale": max(values),
            "paper": rng.choice(("white", "cream")),
            "bars": [{"label": label, "value": value, "colour": colour}
                     for label, value, colour in zip(labels, values, colours, strict=True)]}


# ---------------------------------------------------------------------------------------------- rendering


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


def shape_points(shape: str, x: float, y: float, r: float) -> list[tuple[float, float]]:
    if shape == "triangle":
        return [(x + r * math.cos(a), y + r * math.sin(a)) for a in (-math.pi / 2, math.pi / 6, 5 * math.pi / 6)]
    # star: ten points alternating between the outer and an inner radius, the first pointing up
    return [(x + (r if i % 2 == 0 else 0.45 * r) * math.cos(-math.pi / 2 + i * math.pi / 5),
             y + (r if i % 2 == 0 else 0.45 * r) * math.sin(-math.pi / 2 + i * math.pi / 5)) for i in range(10)]


def render_shapes(scene: Scene) -> Image.Image:
    image = Image.new("RGB", (scene["width"], scene["height"]), BACKGROUNDS[scene["background"]])
    draw = ImageDraw.Draw(image)
    draw_texture(draw, image.size, BACKGROUNDS[scene["background"]], scene["texture"])
    for s in scene["shapes"]:
        x, y, r, fill = s["x"], s["y"], s["r"], COLOURS[s["colour"]]
        # a thin dark outline keeps white and yellow shapes visible on light backgrounds
        outline, width = (60, 60, 60), max(1, r // 10)
        if s["shape"] == "circle":
            draw.ellipse([x - r, y - r, x + r, y + r], fill=fill, outline=outline, width=width)
        elif s["shape"] == "square":
            half = round(r * 0.85)
            draw.rectangle([x - half, y - half, x + half, y + half], fill=fill, outline=outline, width=width)
        else:
            draw.polygon(shape_points(s["shape"], x, y, r), fill=fill, outline=outline, width=width)
    return image


def render_ocr(scene: Scene) -> Image.Image:
    image = Image.new("RGB", (scene["width"], scene["height"]), PAPERS[scene["paper"]])
    draw = ImageDraw.Draw(image)
    for line in scene["lines"]:
        draw.text((line["x"], line["y"]), line["text"], font=font(scene["size"]), fill=COLOURS[scene["ink"]])
    return image


def render_chart(scene: Scene) -> Image.Image:
    image = Image.new("RGB", (scene["width"], scene["height"]), PAPERS[scene["paper"]])
    draw = ImageDraw.Draw(image)
    f, left, top, plot_h, slot = font(scene["size"]), scene["left"], scene["top"], scene["plot_h"], scene["slot"]
    base = top + plot_h
    draw.text((left, 2), scene["title"], font=f, fill=(0, 0, 0))
    draw.line([(left - 4, top - 4), (left - 4, base)], fill=(0, 0, 0))  # value axis
    draw.line([(left - 4, base), (scene["width"] - 6, base)], fill=(0, 0, 0))  # baseline
    for i, bar in enumerate(scene["bars"]):
        cx = left + i * slot + slot // 2
        h = max(1, round(plot_h * bar["value"] / scene["scale"]))
        half = scene["bar_w"] // 2
        draw.rectangle([cx - half, base - h, cx + half, base - 1], fill=COLOURS[bar["colour"]])
        # centred by hand rather than with `anchor=`, which the bitmap fallback font does not support
        value, label = str(bar["value"]), bar["label"]
        vl, _, vr, vb = text_box(value, scene["size"])
        ll, lt, lr, _ = text_box(label, scene["size"])
        draw.text((cx - (vr - vl) // 2 - vl, base - h - 2 - vb), value, font=f, fill=(0, 0, 0))
        draw.text((cx - (lr - ll) // 2 - ll, base + 3 - lt), label, font=f, fill=(0, 0, 0))
    return image


def render_scene(scene: Scene) -> Image.Image:
    """The RGB image a scene spec describes (deterministic: the same spec always gives the same pixels)."""
    renderers: dict[str, Callable[[Scene], Image.Image]] = {
        "object": render_shapes, "shapes": render_shapes, "ocr": render_ocr, "chart": render_chart}
    return renderers[scene["kind"]](scene)


# ---------------------------------------------------------------------------------------------- object questions


def object_caption(scene: Scene, rng: random.Random) -> str:
    s, bg = scene["shapes"][0], scene["background"]
    return rng.choice((f"{capital(a(shape_name(s)))} on a {bg} background.", f"The picture shows {a(shape_name(s))}.",
                       f"There is {a(shape_name(s))} in this image."))


def qa_object_colour(scene: Scene, rng: random.Random) -> QA:
    s = scene["shapes"][0]
    q = rng.choice(("What colour is the shape?", "What colour is the object in the picture?"))
    return QA("object_colour", q, s["colour"], f"The {s['shape']} is {s['colour']}.", {})


def qa_object_shape(scene: Scene, rng: random.Random) -> QA:
    s = scene["shapes"][0]
    q = rng.choice(("What shape is in the picture?", "What shape is this?"))
    return QA("object_shape", q, s["shape"], f"It is {a(s['shape'])}.", {})


OBJECT_QUESTIONS = (qa_object_colour, qa_object_shape)


# ---------------------------------------------------------------------------------------------- shapes questions


def count_where(scene: Scene, key: str, value: str) -> list[dict[str, Any]]:
    return [s for s in scene["shapes"] if s[key] == value]


def caption(scene: Scene, rng: random.Random) -> str:
    shapes = scene["shapes"]
    n = len(shapes)
    items = [f"{a(shape_name(s))} {place_phrase(s['place'])}" for s in shapes]
    bg = scene["background"] + ("" if scene["texture"]["kind"] == "plain" else f" {scene['texture']['kind']}")
    style = rng.randrange(3)
    if style == 0:
        return f"{capital(number_word(n))} {plural('shape', n)} on a {bg} background: {join_words(items)}."
    if style == 1:
        return f"The picture shows {join_words(items)} on a {bg} background."
    verb = "is" if n == 1 else "are"
    sentences = " ".join(f"{capital(i.split(' ', 1)[0])} {i.split(' ', 1)[1]}." for i in items)
    return f"There {verb} {number_word(n)} {plural('shape', n)} in this image. {sentences}"


def qa_colour_at(scene: Scene, rng: random.Random) -> QA | None:
    s = rng.choice(scene["shapes"])
    q = f"What colour is the shape {place_phrase(s['place'])}?"
    return QA("colour_at", q, s["colour"], f"The {s['shape']} {place_phrase(s['place'])} is {s['colour']}.",
              {"place": s["place"]})


def qa_colour_of(scene: Scene, rng: random.Random) -> QA | None:
    s = rng.choice(scene["shapes"])
    if len(count_where(scene, "shape", s["shape"])) != 1:
        return None  # "the circle" must name one shape
    return QA("colour_of", f"What colour is the {s['shape']}?", s["colour"],
              f"The {s['shape']} is {s['colour']}.", {"shape": s["shape"]})


def qa_shape_at(scene: Scene, rng: random.Random) -> QA | None:
    s = rng.choice(scene["shapes"])
    return QA("shape_at", f"What shape is {place_phrase(s['place'])}?", s["shape"],
              f"There is {a(shape_name(s))} {place_phrase(s['place'])}.", {"place": s["place"]})


def qa_what_at(scene: Scene, rng: random.Random) -> QA | None:
    place = rng.choice(list(PLACES.values()))
    found = [s for s in scene["shapes"] if s["place"] == place]
    if not found:
        return QA("what_at", f"What is {place_phrase(place)}?", "nothing",
                  f"There is nothing {place_phrase(place)}.", {"place": place})
    s = found[0]
    return QA("what_at", f"What is {place_phrase(place)}?", shape_name(s),
              f"{capital(a(shape_name(s)))} is {place_phrase(place)}.", {"place": place})


def qa_where(scene: Scene, rng: random.Random) -> QA | None:
    s = rng.choice(scene["shapes"])
    return QA("where", f"Where is the {shape_name(s)}?", s["place"],
              f"The {shape_name(s)} is {place_phrase(s['place'])}.", {"colour": s["colour"], "shape": s["shape"]})


def qa_count_shape(scene: Scene, rng: random.Random) -> QA | None:
    shape = rng.choice(SHAPES)
    n = len(count_where(scene, "shape", shape))
    verb = "is" if n == 1 else "are"
    return QA("count_shape", f"How many {plural(shape)} are there?", str(n),
              f"There {verb} {number_word(n)} {plural(shape, n)}.", {"shape": shape})


def qa_count_colour(scene: Scene, rng: random.Random) -> QA | None:
    colour = rng.choice(sorted({s["colour"] for s in scene["shapes"]}) + [rng.choice(sorted(COLOURS))])
    n = len(count_where(scene, "colour", colour))
    verb = "is" if n == 1 else "are"
    return QA("count_colour", f"How many {colour} shapes are there?", str(n),
              f"There {verb} {number_word(n)} {colour} {plural('shape', n)}.", {"colour": colour})


def qa_count_all(scene: Scene, rng: random.Random) -> QA | None:
    n = len(scene["shapes"])
    return QA("count_all", "How many shapes are there in the image?", str(n),
              f"There {'is' if n == 1 else 'are'} {number_word(n)} {plural('shape', n)}.", {})


def qa_further_left(scene: Scene, rng: random.Random) -> QA | None:
    if len(scene["shapes"]) < 2:
        return None
    a, b = rng.sample(scene["shapes"], 2)
    if a["col"] == b["col"]:
        return None
    first = a if a["col"] < b["col"] else b
    q = f"Which is further left, the {shape_name(a)} or the {shape_name(b)}?"
    return QA("further_left", q, shape_name(first), f"The {shape_name(first)} is further left.",
              {"a": shape_name(a), "b": shape_name(b)})


def qa_above(scene: Scene, rng: random.Random) -> QA | None:
    if len(scene["shapes"]) < 2:
        return None
    a, b = rng.sample(scene["shapes"], 2)
    if a["row"] == b["row"]:
        return None
    yes = a["row"] < b["row"]
    sentence = f"{'Yes' if yes else 'No'}, the {shape_name(a)} is {'above' if yes else 'below'} the {shape_name(b)}."
    return QA("above", f"Is the {shape_name(a)} above the {shape_name(b)}?", "yes" if yes else "no", sentence,
              {"a": shape_name(a), "b": shape_name(b)})


def qa_exists(scene: Scene, rng: random.Random) -> QA | None:
    colour, shape = rng.choice(sorted(COLOURS)), rng.choice(SHAPES)
    if rng.random() < 0.5:  # half the time ask about a shape that is there, so "yes" is not rare
        picked = rng.choice(scene["shapes"])
        colour, shape = picked["colour"], picked["shape"]
    yes = any(s["colour"] == colour and s["shape"] == shape for s in scene["shapes"])
    sentence = f"Yes, there is {a(colour)} {shape}." if yes else f"No, there is no {colour} {shape}."
    return QA("exists", f"Is there {a(colour)} {shape} in the image?", "yes" if yes else "no", sentence,
              {"colour": colour, "shape": shape})


SHAPE_QUESTIONS = (qa_colour_at, qa_colour_of, qa_shape_at, qa_what_at, qa_where, qa_count_shape,
                   qa_count_colour, qa_count_all, qa_further_left, qa_above, qa_exists)


def ask(rng: random.Random, scene: Scene, makers: Iterable[Callable[[Scene, random.Random], QA | None]]) -> QA:
    """A random question that applies to the scene (some need two shapes in different columns, ...)."""
    makers = list(makers)
    while True:
        qa = rng.choice(makers)(scene, rng)
        if qa is not None:
            return qa


def cot_count(scene: Scene, rng: random.Random) -> Cot:
    """'How many circles / red shapes?' reasoned as: list the shapes, pick the matching ones, count."""
    key = rng.choice(("shape", "colour"))
    value = rng.choice(SHAPES) if key == "shape" else rng.choice(sorted(COLOURS))
    if rng.random() < 0.6:  # mostly ask about something present, so counts are not mostly zero
        value = rng.choice(scene["shapes"])[key]
    what = plural(value) if key == "shape" else f"{value} shapes"
    targets = count_where(scene, key, value)
    others = [s for s in scene["shapes"] if s[key] != value]
    listing = join_words([f"{a(shape_name(s))} {place_phrase(s['place'])}" for s in scene["shapes"]])

    def steps(chosen: list[dict[str, Any]], total: int) -> list[str]:
        picked = (f"The {what} among them are: {join_words(['the ' + shape_name(s) for s in chosen])}."
                  if chosen else f"None of them is {'a ' + value if key == 'shape' else value}.")
        return [f"First, I list the shapes in the image: {listing}.", picked,
                f"Counting them gives {total}."]

    n = len(targets)
    mistakes = ["arithmetic"] + ["missed"] * bool(targets) + ["extra"] * bool(others)
    mistake = rng.choice(mistakes)
    if mistake == "missed":  # overlooks one matching shape
        wrong = targets[:]
        wrong.pop(rng.randrange(len(wrong)))
        wrong_n = len(wrong)
    elif mistake == "extra":  # takes a non-matching shape for a matching one
        wrong = sorted([*targets, rng.choice(others)], key=lambda s: (s["row"], s["col"]))
        wrong_n = len(wrong)
    else:  # picks the right shapes but miscounts them
        wrong, wrong_n = targets, n + 1 if n == 0 or rng.random() < 0.5 else n - 1
    return Cot("count_" + key, f"How many {what} are there?", str(n), steps(targets, n), steps(wrong, wrong_n),
               str(wrong_n), {key: value, "mistake": mistake})


# ---------------------------------------------------------------------------------------------- OCR and charts


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


def chart_bars(scene: Scene) -> list[tuple[str, int]]:
    return [(b["label"], b["value"]) for b in scene["bars"]]


def chart_caption(scene: Scene) -> str:
    parts = [f"{label} is {value}" for label, value in chart_bars(scene)]
    return f"A bar chart titled \"{scene['title']}\" with {len(parts)} bars: {join_words(parts)}."


def chart_qa(scene: Scene, rng: random.Random) -> QA:
    bars = chart_bars(scene)
    label, value = rng.choice(bars)
    top = max(bars, key=lambda b: b[1])
    low = min(bars, key=lambda b: b[1])
    options = [
        QA("chart_value", f"What is the value of {label}?", str(value), f"The value of {label} is {value}.",
           {"label": label}),
        QA("chart_highest", "Which category has the highest value?", top[0],
           f"{capital(top[0])} has the highest value, {top[1]}.", {}),
        QA("chart_lowest", "Which category has the lowest value?", low[0],
           f"{capital(low[0])} has the lowest value, {low[1]}.", {}),
        QA("chart_bars", "How many bars are in the chart?", str(len(bars)),
           f"There are {number_word(len(bars))} bars.", {}),
        QA("chart_title", "What is the title of the chart?", scene["title"],
           f"The chart is titled \"{scene['title']}\".", {}),
    ]
    return rng.choice(options)


def misread(rng: random.Random, value: int) -> int:
    """A wrong reading of a bar value, off by 1..3 but never negative."""
    return rng.choice([v for v in range(value - 3, value + 4) if v != value and v >= 0])


def cot_chart(scene: Scene, rng: random.Random) -> Cot:
    """Chart arithmetic: difference of two bars, total of all bars, or highest minus lowest."""
    bars = chart_bars(scene)
    task = rng.choice(("chart_difference", "chart_total", "chart_range"))
    if task == "chart_difference":
        (a, va), (b, vb) = sorted(rng.sample(bars, 2), key=lambda x: -x[1])
        question = f"What is the difference between the values of {a} and {b}?"
        chosen = {a: va, b: vb}

        def solve(vals: dict[str, int]) -> tuple[list[str], int]:
            hi, lo = (a, b) if vals[a] >= vals[b] else (b, a)
            d = vals[hi] - vals[lo]
            return ([f"The bar for {a} shows {vals[a]}.", f"The bar for {b} shows {vals[b]}.",
                     f"The difference is {vals[hi]} - {vals[lo]} = {d}."], d)
    elif task == "chart_total":
        question = "What is the total of all the bars?"
        chosen = dict(bars)

        def solve(vals: dict[str, int]) -> tuple[list[str], int]:
            total = sum(vals.values())
            reads = join_words([f"{k} {v}" for k, v in vals.items()])
            return ([f"The bars show {reads}.",
                     f"Adding them: {' + '.join(str(v) for v in vals.values())} = {total}."], total)
    else:
        question = "What is the difference between the highest and the lowest bar?"
        top, low = max(bars, key=lambda b: b[1]), min(bars, key=lambda b: b[1])
        chosen = {top[0]: top[1], low[0]: low[1]}

        def solve(vals: dict[str, int]) -> tuple[list[str], int]:
            (h, vh), (lw, vl) = list(vals.items())
            return ([f"The highest bar is {h} with {vh}.", f"The lowest bar is {lw} with {vl}.",
                     f"{vh} - {vl} = {vh - vl}."], vh - vl)
    steps, answer = solve(chosen)
    wrong_vals = dict(chosen)
    key = rng.choice(list(wrong_vals))
    wrong_vals[key] = misread(rng, wrong_vals[key])
    wrong_steps, wrong = solve(wrong_vals)
    if wrong == answer:  # a misread that cancels out (|a - b| symmetric): slip in the arithmetic instead
        wrong_steps, wrong = steps[:-1] + [steps[-1].rsplit("=", 1)[0] + f"= {answer + 1}."], answer + 1
    return Cot(task, question, str(answer), steps, wrong_steps, str(wrong), {"values": chosen})


# ---------------------------------------------------------------------------------------------- multi-image


def multi_question(scenes: list[Scene], rng: random.Random) -> QA | Cot | None:
    """A question over 2-3 shapes scenes; None when the drawn group does not fit the drawn question."""
    names = [f"Image-{i + 1}" for i in range(len(scenes))]
    kind = rng.choice(("more", "shared", "total", "same"))
    shape = rng.choice(SHAPES)
    counts = [len(count_where(s, "shape", shape)) for s in scenes]
    if kind == "more":
        best = max(counts)
        if counts.count(best) != 1:
            return None
        winner = names[counts.index(best)]
        return QA("multi_more", f"Which image has more {plural(shape)}?", winner,
                  f"{winner} has more {plural(shape)}: {best}.", {"shape": shape, "counts": counts})
    if kind == "shared":
        shared = set.intersection(*({sh["colour"] for sh in s["shapes"]} for s in scenes))
        if len(shared) != 1:
            return None
        colour = shared.pop()
        every = "both images" if len(scenes) == 2 else "all the images"
        return QA("multi_shared", f"What colour is shared by {every}?", colour,
                  f"The colour {colour} appears in {every}.", {})
    if kind == "same":
        if len(scenes) != 2:
            return None
        a, b = (len(s["shapes"]) for s in scenes)
        yes = a == b
        return QA("multi_same", "Do both images have the same number of shapes?", "yes" if yes else "no",
                  f"{'Yes' if yes else 'No'}, Image-1 has {a} and Image-2 has {b}.", {"counts": [a, b]})
    steps = [f"{name} has {c} {plural(shape, c)}." for name, c in zip(names, counts, strict=True)]
    total = sum(counts)
    wrong_counts = counts[:]
    i = rng.randrange(len(counts))
    wrong_counts[i] = counts[i] + 1 if counts[i] == 0 or rng.random() < 0.5 else counts[i] - 1
    wrong_steps = [f"{name} has {c} {plural(shape, c)}." for name, c in zip(names, wrong_counts, strict=True)]
    add = " + ".join(str(c) for c in counts)
    wrong_add = " + ".join(str(c) for c in wrong_counts)
    return Cot("multi_total", f"How many {plural(shape)} are there in all the images together?", str(total),
               [*steps, f"Together: {add} = {total}."], [*wrong_steps, f"Together: {wrong_add} = {sum(wrong_counts)}."],
               str(sum(wrong_counts)), {"shape": shape, "counts": counts})


def multi_group(shapes: list[Img], rng: random.Random) -> tuple[list[Img], QA | Cot]:
    while True:
        group = rng.sample(shapes, rng.choice((2, 2, 3)))
        q = multi_question([im.scene for im in group], rng)
        if q is not None:
            return group, q


# ---------------------------------------------------------------------------------------------- text corpus


def text_fact(rng: random.Random) -> list[tuple[str, str]]:
    colour, shape = rng.choice(sorted(COLOURS)), rng.choice(SHAPES)
    prop, fact = SHAPE_FACTS[shape]
    options = [
        (f"Tell me about {colour} {plural(shape)}.", f"{capital(colour)} {plural(shape)} are {prop} and {colour}."),
        (f"What does a {shape} look like?", fact),
        ("Name the colours of the shapes world.", f"The colours are {join_words(list(COLOURS))}."),
        ("Name the shapes of the shapes world.", f"The shapes are {join_words([plural(s) for s in SHAPES])}."),
    ]
    if shape in CORNERS:
        n = CORNERS[shape]
        options.append((f"How many corners does a {shape} have?",
                        f"A {shape} has {number_word(n)} corners." if n else "A circle has no corners."))
    return [rng.choice(options)]


def text_scene(rng: random.Random) -> list[tuple[str, str]]:
    """A scene described in words; the question is answered from the description alone."""
    scene = shapes_scene(rng)
    description = join_words([f"{a(shape_name(s))} {place_phrase(s['place'])}" for s in scene["shapes"]])
    if rng.random() < 0.4:
        return [("Describe a picture from the shapes world.", caption(scene, rng))]
    qa = ask(rng, scene, (qa_count_shape, qa_count_colour, qa_count_all, qa_further_left, qa_above, qa_where))
    return [(f"A picture has {description}. {qa.question}", qa.sentence)]


def text_arithmetic(rng: random.Random) -> list[tuple[str, str]]:
    (a, va), (b, vb) = zip(rng.sample(FRUITS, 2), rng.sample(range(1, 21), 2), strict=True)
    hi, lo = ((a, va), (b, vb)) if va > vb else ((b, vb), (a, va))
    if rng.random() < 0.5:
        return [(f"A bar chart shows {a} at {va} and {b} at {vb}. Which is higher, and by how much?",
                 f"{capital(hi[0])} is higher by {hi[1] - lo[1]}, because {hi[1]} - {lo[1]} = {hi[1] - lo[1]}.")]
    shape = rng.choice(SHAPES)
    c1, c2 = rng.sample(sorted(COLOURS), 2)
    n1, n2 = rng.randint(0, 5), rng.randint(0, 5)
    question = (f"There are {n1} {c1} {plural(shape, n1)} and {n2} {c2} {plural(shape, n2)}. "
                f"How many {plural(shape)} are there?")
    return [(question,
             f"There are {n1 + n2} {plural(shape, n1 + n2)}, because {n1} + {n2} = {n1 + n2}.")]


def text_conversation(rng: random.Random) -> list[tuple[str, str]]:
    """One to three turns drawn from facts, scenes in words and bar arithmetic."""
    makers = (text_fact, text_scene, text_scene, text_arithmetic)
    turns: list[tuple[str, str]] = []
    for _ in range(rng.choice((1, 1, 1, 2, 3))):
        turns += rng.choice(makers)(rng)
    return turns


# ---------------------------------------------------------------------------------------------- long contexts

# The V2PE ablation's task: many one-tile object pictures, one question about one of them. Training questions show
# 2-8 pictures (the training context length); held-out ones 8, 16 and 32 (prompts about 1x, 2x and 4x as long).
# The question asks for the colour of the first picture's object, so the answer must reach back across the whole
# prompt, further the more pictures follow. (Measured with the toy model: a lookup by tag, "which of these
# pictures shows a blue object?", stayed at chance after 800 steps, a binding it does not learn in its budget;
# "what colour are most of the objects?" was learnt, but needs no position at all.)
LONG_TRAIN_PICTURES = (2, 8)
LONG_EVAL_PICTURES = {"1x": 8, "2x": 16, "4x": 32}
LONG_TRAIN_QUESTIONS = 2400  # at scale 1.0
LONG_EVAL_QUESTIONS = 30  # per split and length, at scale 1.0
HELDOUT_TEXT = 100  # held-out text conversations per split (text perplexity), at scale 1.0


def long_question(objects: list[Img], n: int, rng: random.Random) -> tuple[list[Img], QA]:
    """'What colour is the object in the first picture?' over `n` distinct object pictures (a small world, in
    the tests, may hold fewer: then some repeat)."""
    group = rng.sample(objects, n) if len(objects) >= n else rng.choices(objects, k=n)
    s = group[0].scene["shapes"][0]
    question = rng.choice(("What colour is the object in the first picture?",
                           "What colour is the first picture's object?"))
    return group, QA("long_colour", question, s["colour"], f"The object in the first picture is {s['colour']}.",
                     {"pictures": n})


def text_long(rng: random.Random, turns: int) -> list[tuple[str, str]]:
    """A text conversation of `turns` or more turns, so that text alone reaches the training context length."""
    out: list[tuple[str, str]] = []
    while len(out) < turns:
        out += text_conversation(rng)
    return out


def long_sets(images: dict[str, list[Img]], rng: random.Random, scale: float) -> dict[str, list[Record]]:
    """Training data at the training context length: long-context questions and long text conversations."""
    sets: dict[str, list[Record]] = {"long_context": [], "text_long": []}
    low, high = LONG_TRAIN_PICTURES
    for i in range(max(4, round(LONG_TRAIN_QUESTIONS * scale))):
        group, qa = long_question(images["objects"], rng.randint(low, high), rng)
        short = rng.random() < 0.5
        turn = (with_prompt(qa.question, SHORT_PROMPT), qa.answer) if short else (qa.question, qa.sentence)
        sets["long_context"].append(image_record(f"long_context-{i:06d}", group, [turn], [qa.meta()]))
    n_text = max(4, round(LONG_TRAIN_QUESTIONS * scale / 4))
    sets["text_long"] = [text_record(f"text_long-{i:06d}", text_long(rng, rng.randint(8, 16))) for i in range(n_text)]
    return sets


def long_eval_sets(split: str, images: dict[str, list[Img]], rng: random.Random,
                   scale: float) -> dict[str, list[Record]]:
    sets: dict[str, list[Record]] = {}
    for length, n in LONG_EVAL_PICTURES.items():
        name = f"long_{length}_{split}"
        sets[name] = []
        for i in range(max(2, round(LONG_EVAL_QUESTIONS * scale))):
            group, qa = long_question(images["objects"], n, rng)
            sets[name].append(image_record(f"{name}-{i:06d}", group, [(with_prompt(qa.question, SHORT_PROMPT),
                                           qa.answer)], [{**qa.meta(), "cot": False}], answer=qa.answer))
    return sets


# ---------------------------------------------------------------------------------------------- records


def conversations(turns: list[tuple[str, str]], system: str | None = None) -> list[dict[str, str]]:
    conv = [{"from": "system", "value": system}] if system else []
    for human, gpt in turns:
        conv += [{"from": "human", "value": human}, {"from": "gpt", "value": gpt}]
    return conv


def image_record(rid: str, images: list[Img], turns: list[tuple[str, str]], qa: list[dict[str, Any]],
                 system: str | None = None, **extra: Any) -> Record:
    """InternVL's one-image (`image`, `width`, `height`) or multi-image (`image` list, `width_list`,
    `height_list`) record; the first human turn carries the `<image>` placeholders."""
    if len(images) == 1:
        prefix = IMAGE_PLACEHOLDER + "\n"
        record: Record = {"image": images[0].path, "width": images[0].width, "height": images[0].height,
                          "meta": {"scene": images[0].scene, "qa": qa}}
    else:
        prefix = "".join(f"Image-{i + 1}: {IMAGE_PLACEHOLDER}\n" for i in range(len(images)))
        record = {"image": [im.path for im in images], "width_list": [im.width for im in images],
                  "height_list": [im.height for im in images],
                  "meta": {"scenes": [im.scene for im in images], "qa": qa}}
    turns = [(prefix + turns[0][0], turns[0][1]), *turns[1:]]
    return {"id": rid, **record, "conversations": conversations(turns, system), **extra}


def text_record(rid: str, turns: list[tuple[str, str]]) -> Record:
    return {"id": rid, "conversations": conversations(turns)}


def with_prompt(question: str, prompt: str) -> str:
    return f"{question}\n{prompt}"


# ---------------------------------------------------------------------------------------------- datasets


@dataclass
class Datasets:
    """Records per stage and dataset name, in the order they are written."""

    pretrain: dict[str, list[Record]]
    sft: dict[str, list[Record]]
    mpo: dict[str, list[Record]]
    eval: dict[str, list[Record]]
    # for the ablations (`nativevl ablate`), outside the tokenizer's corpus so that adding them left the
    # tokenizer, and so every other record's token ids, as they were
    long: dict[str, list[Record]]  # long-context questions and long text at the training context length
    long_eval: dict[str, list[Record]]  # long-context questions at 1x, 2x and 4x that length
    text_eval: dict[str, list[Record]]  # held-out text conversations (text perplexity)


def stream(seed: int, *names: str) -> random.Random:
    """An independent, seeded RNG per part of the world (str seeds hash with SHA-512: stable across runs), so
    that changing one part does not reshuffle the others."""
    return random.Random("/".join([str(seed), *names]))


def make_images(out: Path, seed: int, scale: float) -> dict[str, dict[str, list[Img]]]:
    """Draws and writes every image; split -> kind -> images. A scene seen in an earlier split is redrawn, so
    val/test never repeat a train image."""
    makers = {"objects": object_scene, "shapes": shapes_scene, "ocr": ocr_scene, "charts": chart_scene}
    seen: set[str] = set()
    images: dict[str, dict[str, list[Img]]] = {split: {} for split in SPLITS}
    for kind, counts in BASE_IMAGES.items():
        for split, base in zip(SPLITS, counts, strict=True):
            rng = stream(seed, "images", split, kind)
            folder = out / "images" / split / kind
            folder.mkdir(parents=True, exist_ok=True)
            items = []
            for i in range(max(MIN_IMAGES, round(base * scale))):
                scene = makers[kind](rng)
                while (key := json.dumps(scene, sort_keys=True)) in seen:
                    scene = makers[kind](rng)
                seen.add(key)
                path = f"{split}/{kind}/{i:06d}.png"
                render_scene(scene).save(out / "images" / path, format="PNG")
                items.append(Img(path, scene["width"], scene["height"], scene))
            images[split][kind] = items
    return images


def pretrain_sets(images: dict[str, list[Img]], rng: random.Random) -> dict[str, list[Record]]:
    """Captions, short QA with sentence answers, OCR and chart descriptions, plus world text at ~1:3."""
    sets: dict[str, list[Record]] = {"objects_text": [], "shapes_caption": [], "shapes_qa": [], "ocr_text": [],
                                     "chart_text": []}
    prompts = ("Describe the image.", "What is in this picture?", "Describe the image briefly.",
               "Write a caption for this image.")
    for i, im in enumerate(images["objects"]):
        if rng.random() < 0.5:
            turn, meta = (rng.choice(prompts), object_caption(im.scene, rng)), {"task": "caption"}
        else:
            qa = rng.choice(OBJECT_QUESTIONS)(im.scene, rng)
            turn, meta = (qa.question, qa.sentence), qa.meta()
        sets["objects_text"].append(image_record(f"objects_text-{i:06d}", [im], [turn], [meta]))
    for i, im in enumerate(images["shapes"]):
        sets["shapes_caption"].append(image_record(f"shapes_caption-{i:06d}", [im],
                                                   [(rng.choice(prompts), caption(im.scene, rng))],
                                                   [{"task": "caption"}]))
        qa = ask(rng, im.scene, SHAPE_QUESTIONS)
        sets["shapes_qa"].append(image_record(f"shapes_qa-{i:06d}", [im], [(qa.question, qa.sentence)],
                                              [qa.meta()]))
    for i, im in enumerate(images["ocr"]):
        text = " ".join(line["text"] for line in im.scene["lines"])
        q = rng.choice(("What is written in the image?", "Read the text in the image."))
        sets["ocr_text"].append(image_record(f"ocr_text-{i:06d}", [im], [(q, text)],
                                             [{"task": "ocr_read", "answer": text}]))
    for i, im in enumerate(images["charts"]):
        if rng.random() < 0.5:
            turn, meta = ("Describe the chart.", chart_caption(im.scene)), {"task": "chart_caption"}
        else:
            qa = chart_qa(im.scene, rng)
            turn, meta = (qa.question, qa.sentence), qa.meta()
        sets["chart_text"].append(image_record(f"chart_text-{i:06d}", [im], [turn], [meta]))
    n_text = round(sum(len(v) for v in sets.values()) / 3)
    return {"world_text": [text_record(f"world_text-{i:06d}", text_conversation(rng)) for i in range(n_text)],
            **sets}


def shapes_turns(scene: Scene, rng: random.Random) -> tuple[list[tuple[str, str]], list[dict[str, Any]]]:
    """1-3 turns about one shapes scene: short-phrase or sentence answers, sometimes a description."""
    turns, metas = [], []
    for _ in range(rng.choice((1, 2, 2, 3))):
        if rng.random() < 0.15:
            turns.append(("Describe the image.", caption(scene, rng)))
            metas.append({"task": "caption"})
            continue
        qa = ask(rng, scene, SHAPE_QUESTIONS)
        short = rng.random() < 0.5
        turns.append((with_prompt(qa.question, SHORT_PROMPT) if short else qa.question,
                      qa.answer if short else qa.sentence))
        metas.append(qa.meta())
    return turns, metas


def sft_sets(images: dict[str, list[Img]], rng: random.Random, n_text: int) -> dict[str, list[Record]]:
    sets: dict[str, list[Record]] = {"objects_vqa": [], "shapes_vqa": [], "ocr_vqa": [], "chart_vqa": [],
                                     "multi_image": [], "reasoning": []}
    for i, im in enumerate(images["objects"]):
        turns, metas = [], []
        for maker in rng.sample(OBJECT_QUESTIONS, rng.choice((1, 2))):
            qa, short = maker(im.scene, rng), rng.random() < 0.5
            turns.append((with_prompt(qa.question, SHORT_PROMPT), qa.answer) if short else (qa.question, qa.sentence))
            metas.append(qa.meta())
        sets["objects_vqa"].append(image_record(f"objects_vqa-{i:06d}", [im], turns, metas))
    for i, im in enumerate(images["shapes"]):
        turns, metas = shapes_turns(im.scene, rng)
        system = SYSTEM_PROMPT if rng.random() < 0.05 else None  # a few records carry a system turn
        sets["shapes_vqa"].append(image_record(f"shapes_vqa-{i:06d}", [im], turns, metas, system))
    for kind, name, maker in (("ocr", "ocr_vqa", ocr_qa), ("charts", "chart_vqa", chart_qa)):
        for i, im in enumerate(images[kind]):
            qa = maker(im.scene, rng)
            short = rng.random() < 0.5
            turn = (with_prompt(qa.question, SHORT_PROMPT), qa.answer) if short else (qa.question, qa.sentence)
            sets[name].append(image_record(f"{name}-{i:06d}", [im], [turn], [qa.meta()]))
    for i in range(len(images["shapes"]) // 2):
        group, q = multi_group(images["shapes"], rng)
        turn = (with_prompt(q.question, COT_PROMPT), q.text()) if isinstance(q, Cot) else (q.question, q.sentence)
        sets["multi_image"].append(image_record(f"multi_image-{i:06d}", group, [turn],
                                                [{**q.meta(), "cot": isinstance(q, Cot)}]))
    for i, im in enumerate(images["shapes"][::2] + images["charts"]):
        cot = (cot_count if im.scene["kind"] == "shapes" else cot_chart)(im.scene, rng)
        sets["reasoning"].append(image_record(f"reasoning-{i:06d}", [im],
                                              [(with_prompt(cot.question, COT_PROMPT), cot.text())],
                                              [{**cot.meta(), "cot": True}]))
    sets["text_qa"] = [text_record(f"text_qa-{i:06d}", text_conversation(rng)) for i in range(n_text)]
    return sets


def mpo_sets(images: dict[str, list[Img]], rng: random.Random) -> dict[str, list[Record]]:
    """MMPR preference pairs: the correct step-by-step answer against one with a wrong step and answer."""
    sets: dict[str, list[Record]] = {}
    for kind, name, maker in (("shapes", "count_pref", cot_count), ("charts", "chart_pref", cot_chart)):
        sets[name] = []
        for i, im in enumerate(images[kind]):
            cot = maker(im.scene, rng)
            sets[name].append({
                "id": f"{name}-{i:06d}", "image": im.path, "width": im.width, "height": im.height,
                "question": f"{IMAGE_PLACEHOLDER}\n{with_prompt(cot.question, COT_PROMPT)}",
                "chosen": cot.text(), "rejected": cot.text(wrong=True), "answer_gt": cot.answer,
                "meta": {"scene": im.scene, "qa": [{**cot.meta(), "cot": True}]}})
    return sets


def eval_sets(split: str, images: dict[str, list[Img]], rng: random.Random) -> dict[str, list[Record]]:
    """Held-out questions with a short gold `answer`: short-phrase prompts, or step-by-step ones."""
    sets: dict[str, list[Record]] = {f"{k}_{split}": [] for k in ("objects_vqa", "shapes_vqa", "ocr_vqa",
                                                                   "chart_vqa", "multi_image", "reasoning")}

    def add(name: str, group: list[Img], q: QA | Cot) -> None:
        records = sets[f"{name}_{split}"]
        cot = isinstance(q, Cot)
        turn = (with_prompt(q.question, COT_PROMPT), q.text()) if cot else \
            (with_prompt(q.question, SHORT_PROMPT), q.answer)
        records.append(image_record(f"{name}_{split}-{len(records):06d}", group, [turn],
                                    [{**q.meta(), "cot": cot}], answer=q.answer))

    for im in images["objects"]:
        add("objects_vqa", [im], rng.choice(OBJECT_QUESTIONS)(im.scene, rng))
    for im in images["shapes"]:
        add("shapes_vqa", [im], ask(rng, im.scene, SHAPE_QUESTIONS))
    for im in images["ocr"]:
        add("ocr_vqa", [im], ocr_qa(im.scene, rng))
    for im in images["charts"]:
        add("chart_vqa", [im], chart_qa(im.scene, rng))
    for _ in range(max(2, len(images["shapes"]) // 2)):
        add("multi_image", *multi_group(images["shapes"], rng))
    for im in images["shapes"][::2] + images["charts"][::2]:
        add("reasoning", [im], (cot_count if im.scene["kind"] == "shapes" else cot_chart)(im.scene, rng))
    return sets


def build_datasets(images: dict[str, dict[str, list[Img]]], seed: int, scale: float = 1.0) -> Datasets:
    pretrain = pretrain_sets(images["train"], stream(seed, "pretrain"))
    sft = sft_sets(images["train"], stream(seed, "sft"), n_text=len(images["train"]["shapes"]) // 2)
    mpo = mpo_sets(images["train"], stream(seed, "mpo"))
    evals: dict[str, list[Record]] = {}
    long_evals: dict[str, list[Record]] = {}
    texts: dict[str, list[Record]] = {}
    for split in SPLITS[1:]:
        evals |= eval_sets(split, images[split], stream(seed, "eval", split))
        long_evals |= long_eval_sets(split, images[split], stream(seed, "long_eval", split), scale)
        rng = stream(seed, "text_eval", split)
        texts[f"text_{split}"] = [text_record(f"text_{split}-{i:06d}", text_conversation(rng))
                                  for i in range(max(4, round(HELDOUT_TEXT * scale)))]
    long = long_sets(images["train"], stream(seed, "long"), scale)
    return Datasets(pretrain, sft, mpo, evals, long, long_evals, texts)


# ---------------------------------------------------------------------------------------------- writing


def dumps(obj: Any) -> str:
    """Stable JSON: sorted keys, real UTF-8 (the system prompt is Chinese)."""
    return json.dumps(obj, sort_keys=True, ensure_ascii=False)


def max_patch(name: str) -> int:
    """The `max_dynamic_patch` of a dataset, by the kind of image its name says it holds."""
    for prefix, kind in (("multi", "multi"), ("ocr", "ocr"), ("chart", "charts"), ("objects", "objects"),
                         ("long", "objects")):
        if name.startswith(prefix):
            return MAX_PATCH[kind]
    return MAX_PATCH["shapes"]


def write_stage(out: Path, stage: str, sets: dict[str, list[Record]], augment: bool) -> dict[str, Any]:
    """`annotations/<stage>/<name>.jsonl` per dataset and `meta_<stage>.json` describing them."""
    folder = out / "annotations" / stage
    folder.mkdir(parents=True, exist_ok=True)
    meta: dict[str, Any] = {}
    for name, records in sets.items():
        path = folder / f"{name}.jsonl"
        path.write_text("".join(dumps(r) + "\n" for r in records), encoding="utf-8")
        has_images = any("image" in r for r in records)
        entry: dict[str, Any] = {"root": "images", "annotation": path.relative_to(out).as_posix(),
                                 "data_augment": augment and has_images, "length": len(records),
                                 "repeat_time": REPEAT.get(name.split("_")[0], 1) if stage != "eval" else 1}
        if has_images:
            entry["max_dynamic_patch"] = max_patch(name)
        meta[name] = entry
    (out / f"meta_{stage}.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return meta


def record_texts(record: Record) -> Iterator[str]:
    """The text of a record as the model sees it, image placeholders removed (they become <img> tokens)."""
    for turn in record.get("conversations", []):
        yield turn["value"].replace(IMAGE_PLACEHOLDER, "")
    for key in ("question", "chosen", "rejected"):
        if key in record:
            yield record[key].replace(IMAGE_PLACEHOLDER, "")


def tokenizer_corpus(data: Datasets) -> Iterator[str]:
    """All the world's text, plus the chat template's frame and the InternVL system prompt repeated often
    enough for BPE to merge it into a few tokens (it opens every prompt the model will see)."""
    n = 0
    for stage in (data.pretrain, data.sft, data.mpo, data.eval):  # not the ablations' sets (see Datasets)
        for records in stage.values():
            for record in records:
                n += 1
                yield from record_texts(record)
    frame = f"system\n{INTERNVL2_5_SYSTEM}\nuser\n\nassistant\n"
    for _ in range(max(200, n // 2)):
        yield frame
    yield SYSTEM_PROMPT


def train_tokenizer(texts: Iterable[str]) -> Tokenizer:
    tok = qwen2_pipeline(Tokenizer(BPE()))
    trainer = BpeTrainer(vocab_size=VOCAB_SIZE, special_tokens=SPECIAL_TOKENS,
                         initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer)
    return tok


def write_tokenizer(out: Path, data: Datasets) -> int:
    """tokenizer.json + tokenizer_config.json (the fields a released InternVL3 folder has); returns the
    vocabulary size after checking that `load_tokenizer` reads it with `<IMG_CONTEXT>` at id 5."""
    folder = out / "tokenizer"
    folder.mkdir(parents=True, exist_ok=True)
    tok = train_tokenizer(tokenizer_corpus(data))
    (folder / "tokenizer.json").write_text(tok.to_str(pretty=True) + "\n", encoding="utf-8")
    config = {
        "added_tokens_decoder": {str(i): {"content": t, "lstrip": False, "normalized": False, "rstrip": False,
                                          "single_word": False, "special": True}
                                 for i, t in enumerate(SPECIAL_TOKENS)},
        "bos_token": None, "clean_up_tokenization_spaces": False, "eos_token": IM_END,
        "model_max_length": MODEL_MAX_LENGTH, "pad_token": "<|endoftext|>", "tokenizer_class": "Qwen2Tokenizer",
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n",
                                                  encoding="utf-8")
    loaded = load_tokenizer(folder)
    ids = [loaded.token_to_id(t) for t in SPECIAL_TOKENS]
    if ids != list(range(len(SPECIAL_TOKENS))) or loaded.img_context_id != 5:
        raise RuntimeError(f"{folder}: special tokens got ids {ids}, expected 0..{len(SPECIAL_TOKENS) - 1}")
    return len(loaded)


def write_readme(out: Path, seed: int, scale: float, counts: dict[str, dict[str, int]], n_images: int,
                 vocab: int) -> None:
    lines = [
        "# nativevl synthetic world",
        "",
        f"Generated by `nativevl.data.world.generate_world(out, seed={seed}, scale={scale})`; "
        + "the same seed gives the same bytes.",
        "",
        f"- `images/{{train,val,test}}/{{shapes,ocr,charts}}/`: {n_images} PNG images "
        + "(shapes scenes, rendered words and numbers, bar charts).",
        "- `meta_{pretrain,sft,mpo,eval,long,long_eval,text_eval}.json`: InternVL meta files (the last three for "
        + "`nativevl ablate`). `root` and `annotation` are relative to "
        + "this folder; an image is `<this folder>/<root>/<record image>`.",
        "- `annotations/<stage>/<dataset>.jsonl`: InternVL chat records (`conversations` with `<image>` "
        + "placeholders), MMPR preference records (`question`, `chosen`, `rejected`, `answer_gt`) and "
        + "held-out val/test records with a short gold `answer`. `meta` keeps the scene spec and gold answers.",
        f"- `tokenizer/`: byte-level BPE, {vocab} tokens, InternVL special tokens at ids 0..12.",
        "",
        "| stage | dataset | records |",
        "|---|---|---|",
    ]
    lines += [f"| {stage} | {name} | {n} |" for stage, sets in counts.items() for name, n in sets.items()]
    (out / "README.md").write_text("\n".join(lines) + "\n", encoding="utf-8")


MARKER = ".nativevl-world"  # written last; only folders holding it are ever cleared
STAGES = ("pretrain", "sft", "mpo", "eval", "long", "long_eval", "text_eval")  # one meta_<stage>.json each


def clear(out: Path) -> None:
    """Remove what an earlier run wrote here, so that a smaller world leaves no stale files behind. A folder with
    other content and no marker is refused rather than cleared: the names below are common ones."""
    if any(out.iterdir()) and not (out / MARKER).is_file():
        raise ValueError(f"{out} is not empty and was not written by `nativevl world generate`; "
                         "give an empty or new folder")
    for name in ("images", "annotations", "tokenizer"):
        if (out / name).is_dir():
            shutil.rmtree(out / name)
    for stage in STAGES:
        (out / f"meta_{stage}.json").unlink(missing_ok=True)
    (out / "README.md").unlink(missing_ok=True)


def file_digest(out: str | Path) -> dict[str, str]:
    """relative path -> SHA-256 of every file under `out` (to compare two worlds)."""
    root = Path(out)
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def generate_world(out: str | Path, seed: int = 0, scale: float = 1.0) -> dict[str, Any]:
    """Write the synthetic world under `out` (see the module docstring) and return a summary: records per
    stage and dataset, images per split, total files, tokenizer vocabulary size and seconds taken."""
    if scale <= 0:
        raise ValueError(f"scale must be positive, got {scale}")
    start = time.perf_counter()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    clear(out)
    images = make_images(out, seed, scale)
    data = build_datasets(images, seed, scale)
    counts: dict[str, dict[str, int]] = {}
    for stage, sets in (("pretrain", data.pretrain), ("sft", data.sft), ("mpo", data.mpo), ("eval", data.eval),
                        ("long", data.long), ("long_eval", data.long_eval), ("text_eval", data.text_eval)):
        write_stage(out, stage, sets, augment=stage in ("pretrain", "sft", "mpo"))
        counts[stage] = {name: len(records) for name, records in sets.items()}
    vocab = write_tokenizer(out, data)
    per_split = {split: sum(len(v) for v in images[split].values()) for split in SPLITS}
    write_readme(out, seed, scale, counts, sum(per_split.values()), vocab)
    (out / MARKER).write_text("written by nativevl world generate\n")
    return {
        "out": str(out), "seed": seed, "scale": scale, "datasets": counts,
        "records": sum(sum(c.values()) for c in counts.values()),
        "images": sum(per_split.values()), "images_per_split": per_split,
        "files": sum(1 for p in out.rglob("*") if p.is_file()), "vocab_size": vocab,
        "seconds": round(time.perf_counter() - start, 2),
    }
