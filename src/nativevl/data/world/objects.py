"""The object family: one large shape anywhere on a (possibly textured) background, drawn like a shapes scene
(`shapes.render_shapes`); its captions and its colour and shape questions."""

from __future__ import annotations

import random

from .canvas import random_size, random_texture
from .common import BACKGROUNDS, COLOURS, QA, SHAPES, Scene, a, capital, shape_name


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
