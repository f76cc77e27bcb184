"""Accuracy on the embedded world's held-out questions, per question type, next to a baseline that always
gives the most frequent training answer of that type.

Short questions are scored by exact match after normalisation (case, surrounding spaces and a final full
stop); step-by-step ones by the value on their last `Answer:` line.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from functools import partial
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from nativevl.data.dataset import DatasetSpec, read_lines, read_meta
from nativevl.eval.answer import load_tiles, replies
from nativevl.infer.prm import ProcessRewardModel, best_of_n_batch, final_answer, majority_vote
from nativevl.model.internvl import InternVLModel
from nativevl.tokenizer import InternVLTokenizer, load_tokenizer
from nativevl.weights import load_model

# question types grouped the way the demo reports them
GROUPS = {
    "colour": ("object_colour",),  # recognition: the colour of a picture's one object
    "shape": ("object_shape",),
    "binding": ("colour_at", "colour_of", "shape_at", "what_at"),  # an attribute tied to a place or a shape

    "count": ("count_all", "count_shape", "count_colour"),
    "position": ("where", "further_left", "above", "exists"),
    "ocr": ("ocr_word", "ocr_read", "ocr_number"),
    "chart": ("chart_value", "chart_lowest", "chart_highest", "chart_title", "chart_bars"),
    "multi-image": ("multi_same", "multi_shared", "multi_more", "multi_total"),
    "reasoning": ("reasoning",),
    "long-context": ("long_colour",),  # the first of many pictures' colour (the V2PE ablation)
}


def normalize(text: str) -> str:
    return text.strip().strip(".").strip().lower()


def task_of(record: dict[str, Any]) -> str:
    qa = record.get("meta", {}).get("qa", [{}])[0]
    return "reasoning" if qa.get("cot") else qa.get("task", "unknown")


def group_of(task: str) -> str:
    return next((g for g, tasks in GROUPS.items() if task in tasks), "other")


def check_groups(groups: tuple[str, ...]) -> tuple[str, ...]:
    """The question-type groups as written (any case, spaces trimmed), or a ValueError naming the unknown ones,
    the closest known name and the whole list."""
    import difflib

    wanted = tuple(g.strip().lower() for g in groups if g.strip())
    unknown = [g for g in wanted if g not in GROUPS]
    if unknown or not wanted:
        close = difflib.get_close_matches(unknown[0], GROUPS, n=1) if unknown else []
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"unknown question type(s) {', '.join(map(repr, unknown)) or '(none given)'}{hint} "
                         f"groups: {', '.join(GROUPS)}")
    return wanted


def majority_answers(meta_sft: str | Path) -> dict[str, str]:
    """The most frequent gold answer per question type in the training conversations."""
    counts: dict[str, Counter[str]] = defaultdict(Counter)
    for spec in read_meta(meta_sft):
        for _, line in read_lines(spec):
            record = json.loads(line)
            qa = record.get("meta", {}).get("qa", [])
            if qa:
                counts[task_of(record)][normalize(str(qa[0].get("answer", "")))] += 1
    return {task: c.most_common(1)[0][0] for task, c in counts.items()}


@torch.inference_mode()
def evaluate_world(model: str | Path | InternVLModel, meta_eval: str | Path | list[DatasetSpec], meta_sft: str | Path,
                   splits: tuple[str, ...] = ("val", "test"), limit: int | None = None,
                   groups: tuple[str, ...] | None = None, prm: ProcessRewardModel | None = None, best_of: int = 1,
                   tokenizer: InternVLTokenizer | None = None, progress: bool = False, seed: int = 0,
                   rows: list[dict[str, Any]] | None = None, batch_size: int = 16,
                   v2pe_delta: float | None = None) -> dict[str, dict[str, float]]:
    """{group: {"n", "accuracy", "baseline"}} over the held-out records of `splits` (only `groups` if given,
    names from GROUPS in any case) of `meta_eval` (a meta file, or some of its datasets), the first `limit`
    records of each dataset if given (the world writes one dataset per task family and split). Greedy, or Best-of-`best_of` with `prm`, which adds a
    `GROUP vote@N` row: the majority final answer of the same samples; greedy replies are decoded `batch_size` at
    a time, with V2PE positions when `v2pe_delta` is given. `model` is a checkpoint folder or a loaded model with
    its `tokenizer`. Given a `rows` list, one dict per reply is appended to it (id, row of the table, reply, gold
    answer, correct; with Best-of-N also every candidate: response, PRM score, sampling order, correct)."""
    groups = check_groups(groups) if groups is not None else None
    if not isinstance(model, InternVLModel):
        tokenizer = load_tokenizer(model)
        model = load_model(model).eval()
    elif tokenizer is None:
        raise ValueError("a loaded model needs its tokenizer")
    baseline = majority_answers(meta_sft)
    hits: dict[str, list[tuple[bool, bool]]] = defaultdict(list)
    specs = read_meta(meta_eval) if isinstance(meta_eval, (str, Path)) else meta_eval
    records = [(spec, json.loads(line)) for spec in specs
               if spec.name.endswith(tuple(f"_{s}" for s in splits)) for _, line in read_lines(spec)[:limit]]
    records = [(spec, r) for spec, r in records if groups is None or group_of(task_of(r)) in groups]
    if not records:
        raise ValueError(f"{meta_eval if isinstance(meta_eval, (str, Path)) else 'meta_eval'}: no held-out "
                         f"questions of the splits {', '.join(splits)}" + (f" in {', '.join(groups)}" if groups else ""))
    if best_of > 1 and prm is None:
        raise ValueError("Best-of-N needs a process reward model")
    if best_of > 1 and v2pe_delta is not None:
        raise ValueError("Best-of-N samples with integer positions; v2pe_delta is for greedy replies")

    def item(i: int) -> tuple[torch.Tensor | None, str, list[int]]:
        spec, record = records[i]
        images = record["image"] if isinstance(record["image"], list) else [record["image"]]
        max_num = spec.max_dynamic_patch or model.config.max_dynamic_patch
        pixels, patches = load_tiles(model, [spec.root / p for p in images], max(1, max_num // len(images)))
        return pixels, record["conversations"][0]["value"], patches

    lengths = [128 if task_of(r) == "reasoning" else 24 for _, r in records]  # the longest solution: < 100 tokens
    texts: list[dict[str, str]] = [{} for _ in records]
    found_by: dict[int, list[Any]] = {}  # record -> its Best-of-N candidates
    for length in sorted(set(lengths)):  # one decoding length per batch
        picked = [i for i, n in enumerate(lengths) if n == length]
        if best_of > 1:  # one set of samples serves Best-of-N and its baseline, the majority vote
            per_batch = max(1, batch_size // best_of)
            for start in tqdm(range(0, len(picked), per_batch), disable=not progress, desc="world eval"):
                chunk = picked[start:start + per_batch]
                found = best_of_n_batch(model, tokenizer, [(q, pixels, n) for pixels, q, n in map(item, chunk)], prm,
                                        best_of, max_new_tokens=length, seed=seed + start)
                for i, candidates in zip(chunk, found, strict=True):
                    found_by[i] = candidates
                    texts[i] = {"": candidates[0].response, f" vote@{best_of}":
                                majority_vote([c.response for c in sorted(candidates, key=lambda c: c.index)])}
        else:
            answers = replies(model, tokenizer, map(item, picked), max_new_tokens=length, total=len(picked),
                              batch_size=batch_size, progress="world eval" if progress else None,
                              v2pe_delta=v2pe_delta)
            for i, text in zip(picked, answers, strict=True):
                texts[i] = {"": text}
    for i, ((_, record), replied) in enumerate(zip(records, texts, strict=True)):
        task, gold = task_of(record), normalize(str(record["answer"]))
        right = partial(is_right, task, gold)
        for suffix, text in replied.items():
            hits[group_of(task) + suffix].append((right(text), baseline.get(task) == gold))
            if rows is not None:
                row = {"id": record.get("id"), "group": group_of(task) + suffix, "reply": text,
                       "answer": record["answer"], "correct": right(text)}
                if i in found_by and not suffix:
                    row["candidates"] = [{"response": c.response, "score": c.score, "index": c.index,
                                          "correct": right(c.response)} for c in found_by[i]]
                rows.append(row)
    return {g: {"n": len(v), "accuracy": sum(a for a, _ in v) / len(v), "baseline": sum(b for _, b in v) / len(v)}
            for g, v in sorted(hits.items(), key=lambda kv: _order(kv[0]))}


def is_right(task: str, gold: str, reply: str) -> bool:
    """A reply against a normalised gold answer: step-by-step ones by their last `Answer:` line."""
    return (final_answer(reply) if task == "reasoning" else normalize(reply)) == gold


def _order(name: str) -> tuple[int, str]:
    group = name.split(" ")[0]
    return (list(GROUPS).index(group) if group in GROUPS else 99, name)


def format_table(results: dict[str, dict[str, float]], title: str = "question type") -> str:
    width = max([14, *(len(name) for name in results)])
    lines = [f"{title:<{width}} {'n':>4} {'accuracy':>9} {'baseline':>9}"]
    for name, r in results.items():
        lines.append(f"{name:<{width}} {r['n']:>4} {100 * r['accuracy']:>8.1f}% {100 * r['baseline']:>8.1f}%")
    return "\n".join(lines)
