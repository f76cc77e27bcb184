"""The three ways `nativevl eval --mmmu` can score a reply (`--scoring`), each the semantics of one public
implementation, re-implemented from reading it (docs/evaluation.md lists the differences):

- `mmmu`: the MMMU benchmark's own code (MMMU-Benchmark/MMMU `mmmu/utils/eval_utils.py`, as driven by
  `mmmu/main_parse_and_eval.py`): `parse_multi_choice_response` (a bracketed letter, else a letter standing alone,
  else, in a reply of more than 5 words, an option's text; the last one in the reply when several are found; a
  seeded random letter when none is) and `parse_open_response` / `eval_open`.
- `vlmevalkit`: VLMEvalKit's MMMU_DEV_VAL scoring with its `exact_matching` judge (`ImageMCQDataset.evaluate` ->
  `mcq_vanilla_eval`, `MMMU_preproc`, `extract_answer_from_item`, `can_infer`): an open question becomes the
  choice pair `A. <gold answer>` / `B. Other Answers` with gold `A`; a reply it cannot read is option `Z`, wrong.
  VLMEvalKit asks a judge model (GPT) to read such replies; nativevl has none and counts them wrong.
- `internvl`: InternVL's `internvl_chat/eval/mmmu` (`evaluate_mmmu.py::post_process`, then `main_eval_only.py`
  with its copy of the MMMU `eval_utils.py`): multiple choice by the reply's first character or the first option
  text inside it, compared with the gold letter; open questions by the official MMMU rules.

Read at MMMU-Benchmark/MMMU bb0b95a9, open-compass/VLMEvalKit e8e78f05, OpenGVLab/InternVL 2410d1db.
"""

from __future__ import annotations

import random
import re
import string
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

SCORINGS = ("mmmu", "vlmevalkit", "internvl")
# The scoring code the benchmark's authors publish: self-contained (no judge model), and it reads `(B)`,
# `Answer: C`, `The answer is C.`, which InternVL's first-character rule scores wrong.
DEFAULT_SCORING = "mmmu"
# MMMU's eval_utils.py calls random.seed(42) once, at import; main_parse_and_eval.py then draws random.choice(letters)
# for each multiple-choice reply that does not parse, subject by subject (its CAT_SHORT2LONG order), in file order.
MMMU_SEED = 42

DESCRIPTIONS = {
    "mmmu": "the MMMU benchmark's parse_multi_choice_response / parse_open_response (a random letter, seed 42, "
            "when a multiple-choice reply does not parse)",
    "vlmevalkit": "VLMEvalKit's exact matching (can_infer; an open question is 'A. <answer>' / 'B. Other Answers'); "
                  "no judge model: a reply it cannot read counts wrong",
    "internvl": "InternVL's eval/mmmu script (post_process: first character, else first option text; official "
                "open-answer rules)",
}


def check_scoring(scoring: str) -> str:
    if scoring not in SCORINGS:
        raise ValueError(f"unknown MMMU scoring {scoring!r}; one of {', '.join(SCORINGS)}")
    return scoring


def describe_scoring(scoring: str) -> str:
    """One line naming the metric, for a report's header."""
    return f"{check_scoring(scoring)}: {DESCRIPTIONS[scoring]}"


@dataclass(frozen=True)
class Verdict:
    correct: bool
    parsed: Any  # the letter or string compared with the gold answer, the open-answer candidates, or None
    note: str = ""  # set when the verdict is not a plain reading (a random pick, a case the original raises on)


# --- the official open-answer rules (MMMU eval_utils.py; InternVL's copy is the same code) ----------------------

_INDICATORS = ("could be ", "so ", "is ", "thus ", "therefore ", "final ", "answer ", "result ")
_TRIVIAL = (":", ",", ".", "!", "?", ";", "'")


def extract_numbers(text: str) -> list[str]:
    """Numbers with thousands commas, then scientific ones, then plain ones (an integer must end at a word
    boundary, so `12m` or `2nd` give none; a decimal need not: `12.5m` gives 12.5)."""
    commas = re.findall(r"-?\b\d{1,3}(?:,\d{3})+\b", text)
    scientific = re.findall(r"-?\d+(?:\.\d+)?[eE][+-]?\d+", text)
    simple = re.findall(r"-?(?:\d+\.\d+|\.\d+|\d+\b)(?![eE][+-]?\d+)(?![,\d])", text)
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
    # the sentence split looks for a capital after lower-casing, so only newlines split in practice
    parts = re.split(r"\.\s(?=[A-Z])|\n", response)
    keys = []
    for index, part in enumerate(parts):
        indicators = _INDICATORS + ("=",) if index == len(parts) - 1 else _INDICATORS
        shortest: str | None = None
        for indicator in indicators:
            if indicator in part:
                tail = part.split(indicator)[-1].strip()
                # as the original: an empty tail so far is falsy, so the next indicator's tail replaces it even
                # when longer ("the answer is \n42": "is " leaves "", then "answer " leaves "is")
                if not shortest or len(tail) < len(shortest):
                    shortest = tail
        if shortest and shortest.strip() not in _TRIVIAL:
            keys.append(shortest)
    return keys or [response]


def parse_open_response(response: str) -> list[str | float]:
    """Candidate answers of an open reply: the text after indicator words, the numbers in it, normalised, each
    once (the original returns them as a set; only membership matters to `eval_open`)."""
    keys = _key_subresponses(response)
    candidates: list[str] = list(keys)
    for key in keys:
        candidates += extract_numbers(key)
    normalised: list[str | float] = []
    for c in candidates:
        normalised += normalize_str(c)
    return list(dict.fromkeys(normalised))


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


# --- internvl: evaluate_mmmu.py::post_process --------------------------------------------------------------------


def post_process(pred: str, options: dict[str, str]) -> str:
    """InternVL's reading of a multiple-choice reply: a 1-character reply as is; else its first character when
    that is an option letter; else the letter of the first option whose text it contains; else the reply.
    (The original fails with IndexError on a reply that is empty once stripped; `score` counts that wrong.)"""
    pred = pred.strip()
    if len(pred) == 1:
        return pred
    if pred and pred[0] in options:
        return pred[0]
    for letter, text in options.items():
        if text in pred:
            return letter
    return pred


# --- mmmu: parse_multi_choice_response ------------------------------------------------------------------------


def _mmmu_choice(response: str, all_choices: list[str], index2ans: dict[str, str],
                 rng: random.Random) -> tuple[str, str]:
    """(letter, how it was found: "bracket" | "letter" | "text" | "random")."""
    for char in ",.!?;:'":  # one character at a time, in this order, from both ends
        response = response.strip(char)
    response = f" {response} "
    candidates = [c for c in all_choices if f"({c})" in response]
    how, marks = "bracket", {c: f"({c})" for c in candidates}
    if not candidates:
        candidates = [c for c in all_choices if f" {c} " in response]
        how, marks = "letter", {c: f" {c} " for c in candidates}
    if not candidates and len(response.split()) > 5:
        low = response.lower()
        candidates = [k for k, text in index2ans.items() if text.lower() in low]
        how, marks = "text", {k: index2ans[k].lower() for k in candidates}
        response = low
    if not candidates:
        return rng.choice(all_choices), "random"
    if len(candidates) == 1:
        return candidates[0], how
    # several: the one found last in the reply (ties: the first listed, as numpy's argmax)
    return max(candidates, key=lambda c: response.rfind(marks[c])), how


def parse_multi_choice_response(response: str, all_choices: list[str], index2ans: dict[str, str],
                                rng: random.Random | None = None) -> str:
    """MMMU's letter for a multiple-choice reply; `rng` draws the random fallback (a fresh Random(42) if none)."""
    return _mmmu_choice(response, all_choices, index2ans, rng or random.Random(MMMU_SEED))[0]


# --- vlmevalkit: can_infer (vlmeval/utils/matching_util.py) ------------------------------------------------------

_REFUSALS = ("Sorry, I can't help with images of people yet.", "I can't process this file.",
             "I'm sorry, but without the image provided", "Cannot determine the answer")
_VERBOSE_ANSWER = re.compile(r"(?i)(?:correct\s+)?answer\s+is\s+\**([ABCD])\**")
_SEPARATORS = str.maketrans({c: " " for c in ".()[],:;!*#{}"})


def can_infer_option(answer: str, choices: dict[str, Any]) -> str | bool:
    """A choice letter standing as a word (brackets and punctuation count as spaces) when exactly one does and it
    is among the last 4 words; `Z` for a refusal, or for a lone `Z` when no letter stands; else an
    `answer is X` phrase (X in A-D, any case); else False. (VLMEvalKit's `VERBOSE` logging branch is left out: it
    applies only when that environment variable is set.)"""
    if "Failed to obtain answer via API" in answer:
        return False
    if any(refusal in answer for refusal in _REFUSALS):
        return "Z"
    words = answer.translate(_SEPARATORS).split()
    found = [c for c in choices if c in words]
    if len(found) == 1:
        if words.index(found[0]) > len(words) - 5:
            return found[0]
    elif not found and "Z" in words:
        return "Z"
    match = _VERBOSE_ANSWER.search(answer)
    if match and match.group(1).upper() in choices:
        return match.group(1).upper()
    return False


def can_infer_text(answer: str, choices: dict[str, Any]) -> str | bool:
    """The one choice whose text (lower-cased) is inside the reply (lower-cased), unless the reply is longer than
    twice all the choice texts together."""
    answer = answer.lower()
    if len(answer) > 2 * sum(len(str(v)) for v in choices.values()):
        return False
    found = [k for k, v in choices.items() if str(v).lower() in answer]
    return found[0] if len(found) == 1 else False


def can_infer(answer: Any, choices: dict[str, Any]) -> str | bool:
    answer = str(answer)
    return can_infer_option(answer, choices) or can_infer_text(answer, choices)


def vlmevalkit_choices(option_texts: dict[str, str], gold: str | list[str]) -> tuple[dict[str, str], list[str]]:
    """(choices, gold letters) as VLMEvalKit scores MMMU: a question without options becomes `A. <gold>` /
    `B. Other Answers` (`MMMU_preproc`; a list answer, which its files never hold, as its Python repr); a gold
    answer that is not one capital letter becomes `A`."""
    choices = dict(option_texts) or {"A": gold if isinstance(gold, str) else str(gold), "B": "Other Answers"}
    golds = gold if isinstance(gold, list) else [gold]
    return choices, [g if g in string.ascii_uppercase and len(g) == 1 else "A" for g in golds]


# --- one reply, one question ---------------------------------------------------------------------------------


def option_texts(q: Any) -> dict[str, str]:
    """The option texts as the record has them (MMMU and VLMEvalKit read these; InternVL strips them)."""
    return getattr(q, "option_texts", None) or q.options


def score(q: Any, reply: str, scoring: str = DEFAULT_SCORING, rng: random.Random | None = None) -> Verdict:
    """The verdict on one reply to question `q` (`question_type`, `options`, `option_texts`, `answer`).
    `rng` draws MMMU's random fallback; without one a fresh `random.Random(MMMU_SEED)` does (see `score_all`)."""
    check_scoring(scoring)
    if scoring == "internvl":
        if q.options:  # as evaluate_mmmu.py: post_process whenever the question has options
            if not reply.strip():
                return Verdict(False, None, "empty reply: InternVL's post_process raises IndexError on it; "
                                            "counted wrong")
            reply = post_process(reply, q.options)
        if q.question_type == "multiple-choice":
            return Verdict(eval_multi_choice(q.answer, reply), reply)
        candidates = parse_open_response(reply)
        return Verdict(eval_open(q.answer, candidates), candidates)
    if scoring == "vlmevalkit":
        choices, golds = vlmevalkit_choices(option_texts(q), q.answer)
        letter = can_infer(reply, choices)
        if not letter:  # exact matching gives `Z`; VLMEvalKit's judge model would read the reply instead
            return Verdict("Z" in golds, "Z", "not read by exact matching (VLMEvalKit would ask a judge model)")
        return Verdict(letter in golds, letter)
    if q.question_type == "multiple-choice":
        texts = option_texts(q)
        if not texts:
            return Verdict(False, None, "no options: MMMU's random pick has nothing to pick from (it raises); "
                                        "counted wrong")
        letter, how = _mmmu_choice(reply, list(texts), texts, rng or random.Random(MMMU_SEED))
        return Verdict(eval_multi_choice(q.answer, letter), letter, "random pick" if how == "random" else "")
    candidates = parse_open_response(reply)
    return Verdict(eval_open(q.answer, candidates), candidates)


def score_all(questions: Iterable[Any], replies: Iterable[str], scoring: str = DEFAULT_SCORING) -> list[Verdict]:
    """Verdicts in order, one `random.Random(MMMU_SEED)` drawing MMMU's fallback picks in that order: the same
    picks as MMMU's main_parse_and_eval.py (global random seeded 42 at import) for the same replies in the same
    order (its order: subjects alphabetically, each in dataset order)."""
    rng = random.Random(MMMU_SEED)
    return [score(q, reply, scoring, rng) for q, reply in zip(questions, replies, strict=True)]
