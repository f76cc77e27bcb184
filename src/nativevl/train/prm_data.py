"""Training data for a process reward model, labelled by the Monte-Carlo rule of VisualPRM (spec §11).

For each step-by-step question, the policy samples solutions; each solution is split into steps, and from the
prefix that ends with step i the policy samples k continuations: step i is good (`+`) when at least one of them
reaches the gold answer. The last step needs no sampling: it is good when the solution's own final answer is
right. The original's settings are the defaults: 4 sampled solutions, 16 continuations, temperature 1.0, at
most 16 steps; the gold solution is labelled too. Each labelled solution becomes a VisualPRM conversation (`prm_record`), trained by the ordinary SFT stage.

    nativevl prm-data POLICY WORLD_DIR OUT_DIR [--questions 64 --samples 4 --k 16]
    nativevl train prm --set model.checkpoint=POLICY --set data.meta=OUT_DIR/meta_prm.json
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from nativevl.data.dataset import read_lines, read_meta
from nativevl.data.image import load_image
from nativevl.infer.chat import batch_chat
from nativevl.infer.generate import GenerationConfig
from nativevl.infer.prm import final_answer, prm_record, split_steps
from nativevl.model.internvl import InternVLModel
from nativevl.tokenizer import InternVLTokenizer, load_tokenizer
from nativevl.weights import load_model


def _normal(answer: str) -> str:
    return answer.strip().strip(".").strip().lower()


@torch.inference_mode()
def mc_step_labels(policy: InternVLModel, tokenizer: InternVLTokenizer, question: str, pixel_values: torch.Tensor,
                   steps: list[str], gold: str, k: int, settings: GenerationConfig) -> list[bool]:
    """One label per step: some continuation of the prefix ending with it reaches `gold` (all prefixes' k
    continuations are sampled as one batch)."""
    prefixes = ["\n\n".join(steps[: i + 1]) + "\n\n" for i in range(len(steps) - 1)]
    labels = []
    if prefixes:
        repeated = [p for p in prefixes for _ in range(k)]
        tiles = pixel_values.shape[0]
        endings = batch_chat(policy, tokenizer, pixel_values.repeat(len(repeated), 1, 1, 1),
                             [question] * len(repeated), settings, num_patches_list=[tiles] * len(repeated),
                             prefixes=repeated)
        reached = [final_answer(p + e) == _normal(gold) for p, e in zip(repeated, endings, strict=True)]
        labels = [any(reached[i * k:(i + 1) * k]) for i in range(len(prefixes))]
    return [*labels, final_answer("\n\n".join(steps)) == _normal(gold)]


@dataclass
class PRMDataSummary:
    questions: int
    solutions: int
    steps: int
    good_steps: int
    right_solutions: int
    seconds: float


def build_prm_data(policy_dir: str | Path, world: str | Path, out: str | Path, questions: int = 64,
                   samples: int = 4, k: int = 16, max_steps: int = 16, temperature: float = 1.0, top_p: float = 1.0,
                   max_new_tokens: int = 160, seed: int = 0, progress: bool = False) -> PRMDataSummary:
    """Label `samples` sampled solutions and the gold one for `questions` training questions of the world's
    `reasoning` set; write `out/prm.jsonl` and `out/meta_prm.json` (images read from the world's folder)."""
    import time

    t0 = time.perf_counter()
    world, out = Path(world).resolve(), Path(out)
    spec = next((s for s in read_meta(world / "meta_sft.json") if s.name == "reasoning"), None)
    if spec is None:
        raise ValueError(f"{world / 'meta_sft.json'} has no 'reasoning' dataset")
    records = [json.loads(line) for _, line in read_lines(spec)]
    random.Random(seed).shuffle(records)
    tokenizer = load_tokenizer(policy_dir)
    policy = load_model(policy_dir).eval()
    size, max_num = policy.config.vision.image_size, spec.max_dynamic_patch or policy.config.max_dynamic_patch
    settings = GenerationConfig(do_sample=True, temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens)
    torch.manual_seed(seed)
    out.mkdir(parents=True, exist_ok=True)
    lines, n_steps, n_good, n_right = [], 0, 0, 0
    for record in tqdm(records[:questions], disable=not progress, desc="prm labels"):
        pixels = load_image(spec.root / record["image"], input_size=size, max_num=max_num)
        question, gold_solution = (t["value"] for t in record["conversations"][:2])
        gold = str(record["meta"]["qa"][0]["answer"])
        sampled = batch_chat(policy, tokenizer, pixels.repeat(samples, 1, 1, 1), [question] * samples, settings,
                             num_patches_list=[pixels.shape[0]] * samples) if samples else []
        for solution in [gold_solution, *sampled]:
            steps = split_steps(solution, max_steps)
            if not steps:
                continue
            labels = mc_step_labels(policy, tokenizer, question, pixels, steps, gold, k, settings)
            lines.append(json.dumps(prm_record(question, solution, labels, record["image"], max_steps)))
            n_steps, n_good, n_right = n_steps + len(labels), n_good + sum(labels), n_right + labels[-1]
    (out / "prm.jsonl").write_text("\n".join(lines) + "\n")
    meta = {"prm": {"root": str(spec.root), "annotation": str((out / "prm.jsonl").resolve()),
                    "data_augment": False, "max_dynamic_patch": max_num, "repeat_time": 1, "length": len(lines)}}
    (out / "meta_prm.json").write_text(json.dumps(meta, indent=2))
    summary = PRMDataSummary(min(questions, len(records)), len(lines), n_steps, n_good, n_right,
                             round(time.perf_counter() - t0, 1))
    (out / "summary.json").write_text(json.dumps(asdict(summary), indent=2))
    return summary
