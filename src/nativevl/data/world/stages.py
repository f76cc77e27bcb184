"""The records of every stage: pretraining, SFT and the held-out eval sets drawn from the families here, MPO and the
long sets from theirs; one random stream per stage (and split), so that changing one leaves the others as they
were."""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

from .charts import chart_caption, chart_qa
from .common import (
    COT_PROMPT,
    QA,
    SHORT_PROMPT,
    SPLITS,
    SYSTEM_PROMPT,
    Cot,
    Img,
    Record,
    Scene,
    image_record,
    stream,
    text_record,
    with_prompt,
)
from .long import long_eval_sets, long_sets
from .multi import multi_group
from .objects import OBJECT_QUESTIONS, object_caption
from .ocr import ocr_qa
from .preference import mpo_sets
from .reasoning import cot_chart, cot_count
from .shapes import SHAPE_QUESTIONS, ask, caption
from .text import HELDOUT_TEXT, text_conversation


@dataclass
class Datasets:
    """Records per stage and dataset name, in the order they are written."""

    pretrain: dict[str, list[Record]]
    sft: dict[str, list[Record]]
    mpo: dict[str, list[Record]]
    eval: dict[str, list[Record]]
    # for the ablations (`nativevl ablate`), outside the tokenizer's corpus so that adding them left the
    # tokenizer, and so every other record's token ids, as they were
    long: dict[str, list[Record]]  # long-context questions and long text at the training context length
    long_eval: dict[str, list[Record]]  # long-context questions at 1x, 2x and 4x that length
    text_eval: dict[str, list[Record]]  # held-out text conversations (text perplexity)


def pretrain_sets(images: dict[str, list[Img]], rng: random.Random) -> dict[str, list[Record]]:
    """Captions, short QA with sentence answers, OCR and chart descriptions, plus world text at ~1:3."""
    sets: dict[str, list[Record]] = {"objects_text": [], "shapes_caption": [], "shapes_qa": [], "ocr_text": [],
                                     "chart_text": []}
    prompts = ("Describe the image.", "What is in this picture?", "Describe the image briefly.",
               "Write a caption for this image.")
    for i, im in enumerate(images["objects"]):
        if rng.random() < 0.5:
            turn, meta = (rng.choice(prompts), object_caption(im.scene, rng)), {"task": "caption"}
        else:
            qa = rng.choice(OBJECT_QUESTIONS)(im.scene, rng)
            turn, meta = (qa.question, qa.sentence), qa.meta()
        sets["objects_text"].append(image_record(f"objects_text-{i:06d}", [im], [turn], [meta]))
    for i, im in enumerate(images["shapes"]):
        sets["shapes_caption"].append(image_record(f"shapes_caption-{i:06d}", [im],
                                                   [(rng.choice(prompts), caption(im.scene, rng))],
                                                   [{"task": "caption"}]))
        qa = ask(rng, im.scene, SHAPE_QUESTIONS)
        sets["shapes_qa"].append(image_record(f"shapes_qa-{i:06d}", [im], [(qa.question, qa.sentence)],
                                              [qa.meta()]))
    for i, im in enumerate(images["ocr"]):
        text = " ".join(line["text"] for line in im.scene["lines"])
        q = rng.choice(("What is written in the image?", "Read the text in the image."))
        sets["ocr_text"].append(image_record(f"ocr_text-{i:06d}", [im], [(q, text)],
                                             [{"task": "ocr_read", "answer": text}]))
    for i, im in enumerate(images["charts"]):
        if rng.random() < 0.5:
            turn, meta = ("Describe the chart.", chart_caption(im.scene)), {"task": "chart_caption"}
        else:
            qa = chart_qa(im.scene, rng)
            turn, meta = (qa.question, qa.sentence), qa.meta()
        sets["chart_text"].append(image_record(f"chart_text-{i:06d}", [im], [turn], [meta]))
    n_text = round(sum(len(v) for v in sets.values()) / 3)
    return {"world_text": [text_record(f"world_text-{i:06d}", text_conversation(rng)) for i in range(n_text)],
            **sets}


def shapes_turns(scene: Scene, rng: random.Random) -> tuple[list[tuple[str, str]], list[dict[str, Any]]]:
    """1-3 turns about one shapes scene: short-phrase or sentence answers, sometimes a description."""
    turns, metas = [], []
    for _ in range(rng.choice((1, 2, 2, 3))):
        if rng.random() < 0.15:
            turns.append(("Describe the image.", caption(scene, rng)))
            metas.append({"task": "caption"})
            continue
        qa = ask(rng, scene, SHAPE_QUESTIONS)
        short = rng.random() < 0.5
        turns.append((with_prompt(qa.question, SHORT_PROMPT) if short else qa.question,
                      qa.answer if short else qa.sentence))
        metas.append(qa.meta())
    return turns, metas


def sft_sets(images: dict[str, list[Img]], rng: random.Random, n_text: int) -> dict[str, list[Record]]:
    sets: dict[str, list[Record]] = {"objects_vqa": [], "shapes_vqa": [], "ocr_vqa": [], "chart_vqa": [],
                                     "multi_image": [], "reasoning": []}
    for i, im in enumerate(images["objects"]):
        turns, metas = [], []
        for maker in rng.sample(OBJECT_QUESTIONS, rng.choice((1, 2))):
            qa, short = maker(im.scene, rng), rng.random() < 0.5
            turns.append((with_prompt(qa.question, SHORT_PROMPT), qa.answer) if short else (qa.question, qa.sentence))
            metas.append(qa.meta())
        sets["objects_vqa"].append(image_record(f"objects_vqa-{i:06d}", [im], turns, metas))
    for i, im in enumerate(images["shapes"]):
        turns, metas = shapes_turns(im.scene, rng)
        system = SYSTEM_PROMPT if rng.random() < 0.05 else None  # a few records carry a system turn
        sets["shapes_vqa"].append(image_record(f"shapes_vqa-{i:06d}", [im], turns, metas, system))
    for kind, name, maker in (("ocr", "ocr_vqa", ocr_qa), ("charts", "chart_vqa", chart_qa)):
        for i, im in enumerate(images[kind]):
            qa = maker(im.scene, rng)
            short = rng.random() < 0.5
            turn = (with_prompt(qa.question, SHORT_PROMPT), qa.answer) if short else (qa.question, qa.sentence)
            sets[name].append(image_record(f"{name}-{i:06d}", [im], [turn], [qa.meta()]))
    for i in range(len(images["shapes"]) // 2):
        group, q = multi_group(images["shapes"], rng)
        turn = (with_prompt(q.question, COT_PROMPT), q.text()) if isinstance(q, Cot) else (q.question, q.sentence)
        sets["multi_image"].append(image_record(f"multi_image-{i:06d}", group, [turn],
                                                [{**q.meta(), "cot": isinstance(q, Cot)}]))
    for i, im in enumerate(images["shapes"][::2] + images["charts"]):
        cot = (cot_count if im.scene["kind"] == "shapes" else cot_chart)(im.scene, rng)
        sets["reasoning"].append(image_record(f"reasoning-{i:06d}", [im],
                                              [(with_prompt(cot.question, COT_PROMPT), cot.text())],
                                              [{**cot.meta(), "cot": True}]))
    sets["text_qa"] = [text_record(f"text_qa-{i:06d}", text_conversation(rng)) for i in range(n_text)]
    return sets


def eval_sets(split: str, images: dict[str, list[Img]], rng: random.Random) -> dict[str, list[Record]]:
    """Held-out questions with a short gold `answer`: short-phrase prompts, or step-by-step ones."""
    sets: dict[str, list[Record]] = {f"{k}_{split}": [] for k in ("objects_vqa", "shapes_vqa", "ocr_vqa",
                                                                   "chart_vqa", "multi_image", "reasoning")}

    def add(name: str, group: list[Img], q: QA | Cot) -> None:
        records = sets[f"{name}_{split}"]
        cot = isinstance(q, Cot)
        turn = (with_prompt(q.question, COT_PROMPT), q.text()) if cot else \
            (with_prompt(q.question, SHORT_PROMPT), q.answer)
        records.append(image_record(f"{name}_{split}-{len(records):06d}", group, [turn],
                                    [{**q.meta(), "cot": cot}], answer=q.answer))

    for im in images["objects"]:
        add("objects_vqa", [im], rng.choice(OBJECT_QUESTIONS)(im.scene, rng))
    for im in images["shapes"]:
        add("shapes_vqa", [im], ask(rng, im.scene, SHAPE_QUESTIONS))
    for im in images["ocr"]:
        add("ocr_vqa", [im], ocr_qa(im.scene, rng))
    for im in images["charts"]:
        add("chart_vqa", [im], chart_qa(im.scene, rng))
    for _ in range(max(2, len(images["shapes"]) // 2)):
        add("multi_image", *multi_group(images["shapes"], rng))
    for im in images["shapes"][::2] + images["charts"][::2]:
        add("reasoning", [im], (cot_count if im.scene["kind"] == "shapes" else cot_chart)(im.scene, rng))
    return sets


def build_datasets(images: dict[str, dict[str, list[Img]]], seed: int, scale: float = 1.0) -> Datasets:
    pretrain = pretrain_sets(images["train"], stream(seed, "pretrain"))
    sft = sft_sets(images["train"], stream(seed, "sft"), n_text=len(images["train"]["shapes"]) // 2)
    mpo = mpo_sets(images["train"], stream(seed, "mpo"))
    evals: dict[str, list[Record]] = {}
    long_evals: dict[str, list[Record]] = {}
    texts: dict[str, list[Record]] = {}
    for split in SPLITS[1:]:
        evals |= eval_sets(split, images[split], stream(seed, "eval", split))
        long_evals |= long_eval_sets(split, images[split], stream(seed, "long_eval", split), scale)
        rng = stream(seed, "text_eval", split)
        texts[f"text_{split}"] = [text_record(f"text_{split}-{i:06d}", text_conversation(rng))
                                  for i in range(max(4, round(HELDOUT_TEXT * scale)))]
    long = long_sets(images["train"], stream(seed, "long"), scale)
    return Datasets(pretrain, sft, mpo, evals, long, long_evals, texts)
