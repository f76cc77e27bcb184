"""MMMU as InternVL's `eval/mmmu` scripts ask it (spec §12): the prompt, the local data layout, greedy or Best-of-N
replies, scored by one of three metrics (`mmmu`, the default; `vlmevalkit`; `internvl`: see mmmu_scoring), with
per-subject and instance-weighted accuracy.

A local MMMU-layout dataset is a folder of JSONL files (one per subject, or one in all), a record per line:
`{"id", "question", "options": [..] or "['..', ..]", "answer", "question_type": "multiple-choice" | "open",
"image_1": "relative/path.png", ..., "image_7"}`; images resolve against the file's folder.
"""

from __future__ import annotations

import ast
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nativevl.eval.answer import DatasetError, jsonl_records
from nativevl.eval.mmmu_scoring import (  # noqa: F401  (re-exported: the rules live in mmmu_scoring)
    DEFAULT_SCORING,
    MMMU_SEED,
    SCORINGS,
    Verdict,
    check_scoring,
    describe_scoring,
    eval_multi_choice,
    eval_open,
    extract_numbers,
    normalize_str,
    parse_multi_choice_response,
    parse_open_response,
    post_process,
    score,
    score_all,
)

LETTERS = "ABCDEFGHIJKLM"
MC_PROMPT = "Answer with the option's letter from the given choices directly."
OPEN_PROMPT = "Answer the question using a single word or phrase."
MAX_IMAGES = 7


@dataclass
class Question:
    id: str
    question: str
    options: dict[str, str]  # letter -> option text, stripped (the prompt and InternVL's reading); {} when open
    answer: str | list[str]
    question_type: str
    images: list[Path] = field(default_factory=list)
    subject: str = ""
    source: str = ""  # file:line
    # the option texts as the record has them, unstripped (MMMU's and VLMEvalKit's rules read these); {}: `options`
    option_texts: dict[str, str] = field(default_factory=dict)

    @property
    def prompt(self) -> str:
        return build_prompt(self.question, list(self.options.values()), self.question_type)


def build_prompt(question: str, options: list[str], question_type: str) -> str:
    """question, then `A. option` lines, then the instruction (`<image k>` references stay as they are)."""
    text = question.strip()
    if options:
        text += "\n" + "\n".join(f"{LETTERS[i]}. {o.strip()}" for i, o in enumerate(options))
    return text + "\n" + (MC_PROMPT if question_type == "multiple-choice" else OPEN_PROMPT)


def is_correct(q: Question, reply: str, scoring: str = DEFAULT_SCORING, rng: random.Random | None = None) -> bool:
    """Whether `reply` answers `q` by the metric `scoring` (one of SCORINGS; see mmmu_scoring). Under `mmmu` a
    multiple-choice reply that does not parse gets a random letter drawn from `rng`, a fresh
    `random.Random(MMMU_SEED)` when none is given; `score_all` draws one sequence over many questions."""
    return score(q, reply, scoring, rng).correct


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
                                  r["answer"], kind, images, r.get("subject") or path.stem, where,
                                  dict(zip(LETTERS, options))))
    return questions


def evaluate_mmmu(model: Any, tokenizer: Any, questions: list[Question], max_num: int = 6,
                  max_new_tokens: int = 10, prm: Any = None, best_of: int = 1, progress: bool = False,
                  batch_size: int = 16, scoring: str = DEFAULT_SCORING,
                  ) -> tuple[dict[str, dict[str, float]], list[dict[str, Any]]]:
    """Greedy (min 1 new token) or Best-of-N answers, scored by the metric `scoring` (one of SCORINGS); (table,
    one result row per question, each naming the metric, what was read from the reply and any note).
    As the original script: every image's tiles go under one `<image>`, at most `max_num` tiles per image.
    Under `mmmu` the random picks for unreadable multiple-choice replies come from one `random.Random(MMMU_SEED)`
    in the order of `questions` (see score_all)."""
    from nativevl.eval.answer import accuracy_table, load_tiles, replies

    check_scoring(scoring)  # before any reply is generated

    def item(q: Question) -> tuple[Any, str, list[int]]:
        pixels, _ = load_tiles(model, q.images, max_num)  # all under one <image>, as the original script
        return pixels, q.prompt, [pixels.shape[0]] if pixels is not None else []

    texts = replies(model, tokenizer, map(item, questions), max_new_tokens=max_new_tokens, min_new_tokens=1,
                    prm=prm, best_of=best_of, total=len(questions), batch_size=batch_size,
                    progress="mmmu" if progress else None)
    results, rows = [], []
    for q, text, verdict in zip(questions, texts, score_all(questions, texts, scoring), strict=True):
        results.append((q.subject, verdict.correct))
        rows.append({"id": q.id, "subject": q.subject, "reply": text, "answer": q.answer, "correct": verdict.correct,
                     "scoring": scoring, "parsed": verdict.parsed, **({"note": verdict.note} if verdict.note else {})})
    return accuracy_table(results), rows
