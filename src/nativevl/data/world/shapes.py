"""The shapes family: 1-6 coloured shapes in a 3x3 grid of places; drawing them, their captions and the questions
about colours, places, counts and relations (`SHAPE_QUESTIONS`, asked with `ask`)."""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterable
from typing import Any

from PIL import Image, ImageDraw

from .canvas import draw_texture, random_size, random_texture
from .common import (
    BACKGROUNDS,
    COLOURS,
    PLACES,
    QA,
    SHAPES,
    Scene,
    a,
    capital,
    join_words,
    number_word,
    place_phrase,
    plural,
    shape_name,
)


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
