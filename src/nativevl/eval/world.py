"""Accuracy on the embedded world's held-out questions, per question type, next to a baseline that always
gives the most frequent training answer of that type.

Short questions are scored by exact match after normalisation (case, surrounding spaces and a final full
stop); step-by-step ones by the value on their last `Answer:` line.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import torch

from nativevl.data.dataset import read_lines, read_meta
from nativevl.data.image import load_image
from nativevl.infer.chat import chat
from nativevl.infer.prm import final_answer
from nativevl.model.internvl import InternVL
from nativevl.tokenizer import load_tokenizer

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
}


def normalize(text: str) -> str:
    return text.strip().strip(".").strip().lower()


def task_of(record: dict[str, Any]) -> str:
    qa = record.get("meta", {}).get("qa", [{}])[0]
    return "reasoning" if qa.get("cot") else qa.get("task", "unknown")


def group_of(task: str) -> str:
    return next((g for g, tasks in GROUPS.items() if task in tasks), "other")


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
def evaluate_world(model_dir: str | Path, meta_eval: str | Path, meta_sft: str | Path, splits: tuple[str, ...] =
                   ("val", "test"), limit: int | None = None) -> dict[str, dict[str, float]]:
    """{group: {"n", "accuracy", "baseline"}} over the held-out records of `splits`."""
    model = InternVL.from_pretrained(model_dir).eval()
    tok = load_tokenizer(model_dir)
    baseline = majority_answers(meta_sft)
    size = model.config.vision.image_size
    hits: dict[str, list[tuple[bool, bool]]] = defaultdict(list)
    for spec in read_meta(meta_eval):
        if not spec.name.endswith(tuple(f"_{s}" for s in splits)):
            continue
        for _, line in read_lines(spec)[:limit]:
            record = json.loads(line)
            images = record["image"] if isinstance(record["image"], list) else [record["image"]]
            max_num = spec.max_dynamic_patch or model.config.max_dynamic_patch
            tiles = [load_image(spec.root / p, input_size=size, max_num=max(1, max_num // len(images)))
                     for p in images]
            question = record["conversations"][0]["value"]
            task = task_of(record)
            settings = {"max_new_tokens": 160 if task == "reasoning" else 24}
            reply = chat(model, tok, torch.cat(tiles), question, settings,
                         num_patches_list=[t.shape[0] for t in tiles])
            gold = normalize(str(record["answer"]))
            guess = final_answer(reply) if task == "reasoning" else normalize(reply)
            hits[group_of(task)].append((guess == gold, baseline.get(task) == gold))
    return {g: {"n": len(v), "accuracy": sum(a for a, _ in v) / len(v), "baseline": sum(b for _, b in v) / len(v)}
            for g, v in sorted(hits.items(), key=lambda kv: list(GROUPS).index(kv[0]) if kv[0] in GROUPS else 99)}


def format_table(results: dict[str, dict[str, float]]) -> str:
    lines = [f"{'question type':<14} {'n':>4} {'accuracy':>9} {'baseline':>9}"]
    for group, r in results.items():
        lines.append(f"{group:<14} {r['n']:>4} {100 * r['accuracy']:>8.1f}% {100 * r['baseline']:>8.1f}%")
    return "\n".join(lines)
