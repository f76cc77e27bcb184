"""The preference family (MPO): MMPR pairs of a correct step-by-step answer and its wrong twin."""

from __future__ import annotations

import random

from nativevl.conversation import IMAGE_PLACEHOLDER

from .common import COT_PROMPT, Img, Record, with_prompt
from .reasoning import cot_chart, cot_count


def mpo_sets(images: dict[str, list[Img]], rng: random.Random) -> dict[str, list[Record]]:
    """MMPR preference pairs: the correct step-by-step answer against one with a wrong step and answer."""
    sets: dict[str, list[Record]] = {}
    for kind, name, maker in (("shapes", "count_pref", cot_count), ("charts", "chart_pref", cot_chart)):
        sets[name] = []
        for i, im in enumerate(images[kind]):
            cot = maker(im.scene, rng)
            sets[name].append({
                "id": f"{name}-{i:06d}", "image": im.path, "width": im.width, "height": im.height,
                "question": f"{IMAGE_PLACEHOLDER}\n{with_prompt(cot.question, COT_PROMPT)}",
                "chosen": cot.text(), "rejected": cot.text(wrong=True), "answer_gt": cot.answer,
                "meta": {"scene": im.scene, "qa": [{**cot.meta(), "cot": True}]}})
    return sets
