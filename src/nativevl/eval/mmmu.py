"""MMMU scoring as InternVL's `eval/mmmu` scripts do it (spec §12): the prompt, the answer post-processing, and the
official MMMU rules for multiple-choice and open questions, with per-subject and instance-weighted accuracy.

A local MMMU-layout dataset is a folder of JSONL files (one per subject, or one in all), a record per line:
`{"id", "question", "options": [..] or "['..', ..]", "answer", "question_type": "multiple-choice" | "open",
"image_1": "relative/path.png", ..., "image_7"}`; images resolve against the file's folder.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nativevl.eval.answer import DatasetError, jsonl_records

LETTERS = "ABCDEFGHIJKLM"
MC_PROMPT = "Answer with the option's letter from the given choices directly."
OPEN_PROMPT = "Answer the question using a single word or phrase."
MAX_IMAGES = 7


@dataclass
class Question:
    id: str
    question: str
    options: dict[str, str]  # letter -> option text; empty for open questions
    answer: str | list[str]
    question_type: str
    images: list[Path] = field(default_factory=list)
    subject: str = ""
    source: str = ""  # file:line

    @property
    def prompt(self) -> str:
        return build_prompt(self.question, list(self.options.values()), self.question_type)


def build_prompt(question: str, options: list[str], question_type: str) -> str:
    """question, then `A. option` lines, then the instruction (`<image k>` references stay as they are)."""
    text = question.strip()
    if options:
        text += "\n" + "\n".join(f"{LETTERS[i]}. {o.strip()}" for i, o in enumerate(options))
    return text + "\n" + (MC_PROMPT if question_type == "multiple-choice" else OPEN_PROMPT)


def post_process(pred: str, options: dict[str, str]) -> str:
    """InternVL's reading of a multiple-choice reply: a 1-character reply as is; else its first character when
    that is an option letter; else the letter of the first option whose text it contains; else the reply."""
    pred = pred.strip()
    if len(pred) == 1:
        return pred
    if pred and pred[0] in options:
        return pred[0]
    for letter, text in options.items():
        if text in pred:
            return letter
    return pred


# --- the official MMMU rules (eval_utils.py) ---------------------------------------------------------------------


def extract_numbers(text: str) -> list[str]:
    commas = re.findall(r"-?\b\d{1,3}(?:,\d{3})+\b", text)
    scientific = re.findall(r"-?\d+(?:\.\d+)?[eE][+-]?\d+", text)
    simple = re.findall(r"-?(?:\d+\.\d+|\.\d+|\d+)(?![eE][+-]?\d+)(?![,\d])", text)
    return commas + scientific + simple


def _is_number(text: str) -> bool:
    try:
        float(text.replace(",", ""))
        return True
    except ValueError:
        return False


def normalize_str(text: str) -> list[str | float]:
    """A number becomes a float rounded to 2 decimals; other text is lower-cased (a single character is padded
    with a space on either side, so that it only matches as a word)."""
    text = text.strip()
    if _is_number(text):
        return [round(float(text.replace(",", "")), 2)]
    text = text.lower()
    return [" " + text, text + " "] if len(text) == 1 else [text]


def _key_subresponses(response: str) -> list[str]:
    response = response.strip().strip(".").lower()
    # as the official code: the text is lower-cased first, so only newlines split it in practice
    parts = re.split(r"\.\s(?=[A-Z])|\n", response)
    indicators = ["could be ", "so ", "is ", "thus ", "therefore ", "final ", "answer ", "result "]
    keys = []
    for index, part in enumerate(parts):
        if index == len(parts) - 1:
            indicators = [*indicators, "="]
        shortest = None
        for indicator in indicators:
            if indicator in part:
                tail = part.split(indicator)[-1].strip()
                if shortest is None or len(tail) < len(shortest):
                    shortest = tail
        if shortest and shortest.strip() not in (":", ",", ".", "!", "?", ";", "'"):
            keys.append(shortest)
    return keys or [response]


def parse_open_response(response: str) -> list[str | float]:
    """Candidate answers of an open reply: the text after indicator words, the numbers in it, normalised."""
    keys = _key_subresponses(response)
    candidates: list[str] = list(keys)
    for key in keys:
        candidates += extract_numbers(key)
    normalised: list[str | float] = []
    for c in candidates:
        normalised += normalize_str(c)
    return list(dict.fromkeys(normalised))  # unique, first occurrence first


def eval_open(gold: str | list[str], preds: list[str | float]) -> bool:
    """Right when a normalised gold string is inside a predicted string, or a predicted number equals a gold one."""
    answers: list[str | float] = []
    for g in gold if isinstance(gold, list) else [gold]:
        answers += normalize_str(g)
    for pred in preds:
        if isinstance(pred, str):
            if any(isinstance(a, str) and a in pred for a in answers):
                return True
        elif pred in answers:
            return True
    return False


def eval_multi_choice(gold: str | list[str], pred: str) -> bool:
    return pred in gold if isinstance(gold, list) else pred == gold


def is_correct(q: Question, reply: str) -> bool:
    if q.question_type == "multiple-choice":
        return eval_multi_choice(q.answer, post_process(reply, q.options))
    return eval_open(q.answer, parse_open_response(reply))


# --- local data and results ------------------------------------------------------------------------------------


def _options(value: Any, where: str) -> list[str]:
    if isinstance(value, str):  # the HF dataset stores the list as its Python repr
        try:
            value = ast.literal_eval(value) if value.strip() else []
        except (ValueError, SyntaxError) as e:
            raise DatasetError(f"{where}: 'options' is not a list: {e}") from None
    if not isinstance(value, list) or not all(isinstance(o, str) for o in value):
        raise DatasetError(f"{where}: 'options' must be a list of strings")
    if len(value) > len(LETTERS):
        raise DatasetError(f"{where}: {len(value)} options, at most {len(LETTERS)}")
    return value


def read_questions(folder: str | Path) -> list[Question]:
    """Every record of every `*.jsonl` under `folder` (the subject is the file name unless a record says)."""
    questions = []
    for path, where, r in jsonl_records(folder):
        missing = [k for k in ("id", "question", "answer") if k not in r]
        if missing:
            raise DatasetError(f"{where}: missing {', '.join(missing)}")
        options = _options(r.get("options", []), where)
        kind = r.get("question_type") or ("multiple-choice" if options else "open")
        if kind not in ("multiple-choice", "open"):
            raise DatasetError(f"{where}: question_type must be 'multiple-choice' or 'open', got {kind!r}")
        images = []
        for k in range(1, MAX_IMAGES + 1):
            if r.get(f"image_{k}"):
                image = path.parent / r[f"image_{k}"]
                if not image.is_file():
                    raise DatasetError(f"{where}: image_{k} {image} does not exist")
                images.append(image)
        questions.append(Question(str(r["id"]), r["question"], dict(zip(LETTERS, (o.strip() for o in options))),
                                  r["answer"], kind, images, r.get("subject") or path.stem, where))
    return questions


def evaluate_mmmu(model: Any, tokenizer: Any, questions: list[Question], max_num: int = 6,
                  max_new_tokens: int = 10, prm: Any = None, best_of: int = 1, progress: bool = False,
                  batch_size: int = 16) -> tuple[dict[str, dict[str, float]], list[dict[str, Any]]]:
    """Greedy (min 1 new token) or Best-of-N answers, scored; (table, one result row per question).
    As the original script: every image's tiles go under one `<image>`, at most `max_num` tiles per image."""
    from nativevl.eval.answer import accuracy_table, load_tiles, replies

    def item(q: Question) -> tuple[Any, str, list[int]]:
        pixels, _ = load_tiles(model, q.images, max_num)  # all under one <image>, as the original script
        return pixels, q.prompt, [pixels.shape[0]] if pixels is not None else []

    texts = replies(model, tokenizer, map(item, questions), max_new_tokens=max_new_tokens, min_new_tokens=1,
                    prm=prm, best_of=best_of, total=len(questions), batch_size=batch_size,
                    progress="mmmu" if progress else None)
    results, rows = [], []
    for q, text in zip(questions, texts, strict=True):
        ok = is_correct(q, text)
        results.append((q.subject, ok))
        rows.append({"id": q.id, "subject": q.subject, "reply": text, "answer": q.answer, "correct": ok})
    return accuracy_table(results), rows
