"""The step-by-step family: `Cot` answers that list, pick and count the shapes of a scene or do a chart's
arithmetic, each with a wrong twin (a missed or extra shape, a misread bar, a slip in the sum) for the preference
pairs."""

from __future__ import annotations

import random
from typing import Any

from .charts import chart_bars
from .common import (
    COLOURS,
    SHAPES,
    Cot,
    Scene,
    a,
    join_words,
    place_phrase,
    plural,
    shape_name,
)
from .shapes import count_where


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
