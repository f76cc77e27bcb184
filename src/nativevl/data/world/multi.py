"""The multi-image family: a question over 2-3 shapes scenes (which has more, the colour they share, the same
count, or a step-by-step total)."""

from __future__ import annotations

import random

from .common import QA, SHAPES, Cot, Img, Scene, plural
from .shapes import count_where


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
