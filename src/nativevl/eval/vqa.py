"""Exact-match VQA from local JSON-lines files.

One question per line:

    {"id": "q1", "question": "What colour is the car?", "answer": "red", "image": "img/car.jpg",
     "category": "colour"}

`answer` may be a list of accepted answers (`answers` is read too, as VQAv2 names it), `image` a list of paths
(shown as `Image-1: <image>` …) or absent for a text-only question; paths are relative to the file. `id` falls
back to `question_id`, then to file:line; `category` to the file's name. The prompt is the question plus
InternVL's short-answer instruction ("Answer the question using a single word or phrase.", as its VQA scripts
add); a reply is right when, normalised (case, surrounding spaces and punctuation, inner runs of spaces), it
equals one of the normalised answers.
"""

from __future__ import annotations

import re
import string
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nativevl.eval.answer import DatasetError, jsonl_records

SHORT_ANSWER_PROMPT = "Answer the question using a single word or phrase."


@dataclass
class VQAQuestion:
    id: str
    question: str
    answers: list[str]
    images: list[Path] = field(default_factory=list)
    category: str = ""
    source: str = ""  # file:line


def normalize_answer(text: str) -> str:
    return re.sub(r"\s+", " ", text.strip().strip(string.punctuation + " ").lower())


def is_match(reply: str, answers: list[str]) -> bool:
    return normalize_answer(reply) in {normalize_answer(a) for a in answers}


def _strings(value: Any, key: str, where: str) -> list[str]:
    values = value if isinstance(value, list) else [value]
    if not values or not all(isinstance(v, str | int | float) and not isinstance(v, bool) for v in values):
        raise DatasetError(f"{where}: '{key}' must be a string or a list of strings")
    return [str(v) for v in values]


def read_vqa(path: str | Path) -> list[VQAQuestion]:
    """Every record of a `.jsonl` file, or of every `.jsonl` file under a folder."""
    questions = []
    for file, where, r in jsonl_records(path):
        answer = r.get("answer", r.get("answers"))
        if not isinstance(r.get("question"), str) or answer is None:
            raise DatasetError(f"{where}: needs a 'question' string and an 'answer'")
        images = [file.parent / p for p in (_strings(r["image"], "image", where) if r.get("image") else [])]
        for image in images:
            if not image.is_file():
                raise DatasetError(f"{where}: image {image} does not exist")
        questions.append(VQAQuestion(str(r.get("id", r.get("question_id", where))), r["question"],
                                     _strings(answer, "answer", where), images,
                                     str(r.get("category") or file.stem), where))
    return questions


def vqa_prompt(q: VQAQuestion, suffix: str = SHORT_ANSWER_PROMPT) -> str:
    from nativevl.conversation import IMAGE_PLACEHOLDER, image_prefix

    text = q.question if not suffix else f"{q.question}\n{suffix}"
    if len(q.images) > 1 and IMAGE_PLACEHOLDER not in text:
        text = image_prefix(len(q.images)) + text
    return text


def evaluate_vqa(model: Any, tokenizer: Any, questions: list[VQAQuestion], max_num: int = 6,
                 max_new_tokens: int = 10, prm: Any = None, best_of: int = 1, suffix: str = SHORT_ANSWER_PROMPT,
                 progress: bool = False, batch_size: int = 16
                 ) -> tuple[dict[str, dict[str, float]], list[dict[str, Any]]]:
    """Greedy or Best-of-N replies, exact-match scored; (per-category table, one row per question)."""
    from nativevl.eval.answer import accuracy_table, load_tiles, replies

    def item(q: VQAQuestion) -> tuple[Any, str, list[int]]:
        pixels, patches = load_tiles(model, q.images, max_num)
        return pixels, vqa_prompt(q, suffix), patches

    texts = replies(model, tokenizer, map(item, questions), max_new_tokens=max_new_tokens, min_new_tokens=1,
                    prm=prm, best_of=best_of, total=len(questions), batch_size=batch_size,
                    progress="vqa" if progress else None)
    results, rows = [], []
    for q, text in zip(questions, texts, strict=True):
        ok = is_match(text, q.answers)
        results.append((q.category, ok))
        rows.append({"id": q.id, "category": q.category, "reply": text, "answers": q.answers, "correct": ok})
    return accuracy_table(results), rows
