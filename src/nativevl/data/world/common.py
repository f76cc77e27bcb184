"""What every task family of the world shares: its vocabulary (colours, shapes, places, words, fruit, inks and
papers), the splits and the prompts, `QA` / `Cot` (a question with its gold answer, a step-by-step answer with its
wrong twin) and `Img` (a written image), the phrase helpers, the seeded random streams and InternVL's chat
records."""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

from nativevl.conversation import IMAGE_PLACEHOLDER

Scene = dict[str, Any]
Record = dict[str, Any]
RGB = tuple[int, int, int]


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
SHORT_PROMPT = "Answer the question using a single word or phrase."
COT_PROMPT = "Answer step by step, then give the final answer on the last line as \"Answer: \" and the answer."
SYSTEM_PROMPT = "You are a helpful assistant who answers questions about simple pictures of shapes, words and charts."


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


def stream(seed: int, *names: str) -> random.Random:
    """An independent, seeded RNG per part of the world (str seeds hash with SHA-512: stable across runs), so
    that changing one part does not reshuffle the others."""
    return random.Random("/".join([str(seed), *names]))


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
