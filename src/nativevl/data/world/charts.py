"""The chart family: bar charts of fruit with values 1..20; drawing them, their captions and the questions that read
a bar, the highest, the lowest, the number of bars or the title. (Chart arithmetic, step by step, is in
`reasoning`.)"""

from __future__ import annotations

import math
import random

from PIL import Image, ImageDraw

from .canvas import font, text_box
from .common import (
    CHART_TITLES,
    COLOURS,
    FRUITS,
    PAPERS,
    QA,
    Scene,
    capital,
    join_words,
    number_word,
)


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
