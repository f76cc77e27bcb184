"""The long-context family (the V2PE ablation's data): "what colour is the object in the first picture?" over
many object pictures, and text conversations of 8-16 turns."""

from __future__ import annotations

import random

from .common import (
    QA,
    SHORT_PROMPT,
    Img,
    Record,
    image_record,
    text_record,
    with_prompt,
)
from .text import text_conversation

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
