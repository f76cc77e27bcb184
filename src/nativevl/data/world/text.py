"""The text-only family: conversations of facts about the shapes, scenes told in words and bar arithmetic (the
pretraining text, SFT's text_qa, the held-out text for perplexity and the long text of `long`)."""

from __future__ import annotations

import random

from .common import (
    COLOURS,
    CORNERS,
    FRUITS,
    SHAPE_FACTS,
    SHAPES,
    a,
    capital,
    join_words,
    number_word,
    place_phrase,
    plural,
    shape_name,
)
from .shapes import (
    ask,
    caption,
    qa_above,
    qa_count_all,
    qa_count_colour,
    qa_count_shape,
    qa_further_left,
    qa_where,
    shapes_scene,
)

HELDOUT_TEXT = 100  # held-out text conversations per split (text perplexity), at scale 1.0


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
