"""Process reward model (VisualPRM's format, spec §11) and Best-of-N.

A solution is split into steps on blank lines (grouped to at most `max_steps`). The PRM sees a multi-turn chat:
the first user turn holds the question and step 1, each later user turn one more step, and every assistant turn
is `+` (this step is right so far) or `-`. Scoring renders every assistant turn as `+`, runs one forward pass,
and reads, at the position that predicts each assistant turn's token, P(`+`) normalised over {`+`, `-`}
(`normalize="vocab"`: over the whole vocabulary, as a third-party VisualPRM script does). A solution's score
aggregates its step scores: mean (VisualPRM's choice), min or last.

    prm = ProcessRewardModel("runs/prm/final")
    best = best_of_n(policy, tokenizer, question, pixel_values, prm, n=8)   # best.response, best.score
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from nativevl.conversation import IMAGE_PLACEHOLDER, Conversation, expand_images, get_template
from nativevl.infer.chat import _device
from nativevl.infer.generate import GenerationConfig
from nativevl.model.internvl import InternVLModel
from nativevl.tokenizer import InternVLTokenizer, load_tokenizer
from nativevl.weights import load_model

# tools/reasoning_data_pipeline/utils/constants.py::PRM_SYSTEM_PROMPT, in substance
PRM_SYSTEM_PROMPT = (
    "You are an advanced AI assistant, designed to serve as a process supervision model. In this task, I will "
    "provide a problem statement followed by the first step of the solution process. For each subsequent turn, "
    "I will give you a new step in the solution. Your role is to assess whether the solution process is correct "
    "up to the current step.\n\n"
    "- In the **first round**, I will input the problem and the first step of the solution process.\n"
    "- In **each subsequent round**, I will provide the next step in the solution.\n\n"
    "For each step, you should:\n"
    "- Respond with **\"+\"** if you believe the solution process is correct up to this step.\n"
    "- Respond with **\"-\"** if you detect any issues or errors in the process up to this step.\n\n"
    "Please note:\n"
    "- Only respond with **\"+\"** or **\"-\"**. Do not provide any additional explanations, comments, or "
    "justifications.\n\n"
    "Your task is to verify the accuracy and correctness of each step in the given solution process."
)
GOOD, BAD = "+", "-"
AGGREGATIONS = ("mean", "min", "last")
ANSWER_LINE = re.compile(r"Answer:\s*(.+?)\s*$", re.MULTILINE)


def split_steps(response: str, max_steps: int | None = None) -> list[str]:
    """Steps of a solution: its blank-line separated pieces, consecutive pieces grouped into chunks of
    ceil(n / max_steps) when there are more than `max_steps` (VisualPRM's `split_response`)."""
    pieces = [p.strip() for p in response.split("\n\n") if p.strip()]
    if max_steps and len(pieces) > max_steps:
        size = math.ceil(len(pieces) / max_steps)
        pieces = ["\n\n".join(pieces[i:i + size]) for i in range(0, len(pieces), size)]
    return pieces


def prm_turns(question: str, steps: Sequence[str], labels: Sequence[bool] | None = None) -> list[tuple[str, str]]:
    """(user, assistant) turns: `### Question:` + step 1 first, then one step per turn; `+`/`-` answers (all `+`
    when scoring). The question keeps its `<image>` placeholder (prepended when missing)."""
    if not steps:
        raise ValueError("a solution needs at least one step")
    if labels is not None and len(labels) != len(steps):
        raise ValueError(f"{len(labels)} labels for {len(steps)} steps")
    if IMAGE_PLACEHOLDER not in question:
        question = f"{IMAGE_PLACEHOLDER}\n{question}"
    users = [f"### Question:\n{question}\n\n### Solution Process:\n{steps[0]}", *steps[1:]]
    marks = [GOOD if labels is None or ok else BAD for ok in (labels or [True] * len(steps))]
    return list(zip(users, marks, strict=True))


def prm_record(question: str, response: str, labels: Sequence[bool], image: str | None = None,
               max_steps: int | None = None) -> dict:
    """A PRM training record in InternVL's chat format (trained by the ordinary SFT stage)."""
    steps = split_steps(response, max_steps)
    conv = [{"from": "system", "value": PRM_SYSTEM_PROMPT}]
    for user, mark in prm_turns(question, steps, labels):
        conv += [{"from": "human", "value": user}, {"from": "gpt", "value": mark}]
    return {"conversations": conv, **({"image": image} if image else {})}


class ProcessRewardModel:
    """Scores the steps of candidate solutions with one forward pass each."""

    def __init__(self, model: InternVLModel | str, tokenizer: InternVLTokenizer | None = None,
                 normalize: str = "pair", aggregation: str = "mean", max_steps: int | None = 16) -> None:
        if normalize not in ("pair", "vocab"):
            raise ValueError(f"normalize must be 'pair' or 'vocab', got {normalize!r}")
        if aggregation not in AGGREGATIONS:
            raise ValueError(f"aggregation must be one of {AGGREGATIONS}, got {aggregation!r}")
        if isinstance(model, str):
            tokenizer = tokenizer or load_tokenizer(model)
            model = load_model(model).eval()
        if tokenizer is None:
            raise ValueError("give the PRM's tokenizer")
        self.model, self.tokenizer = model, tokenizer
        self.normalize, self.aggregation, self.max_steps = normalize, aggregation, max_steps
        ids = [tokenizer.encode(mark) for mark in (GOOD, BAD)]
        if any(len(i) != 1 for i in ids):
            raise ValueError(f"'+' and '-' must be single tokens, got {ids}")
        self.good_id, self.bad_id = ids[0][0], ids[1][0]

    def _prompt(self, question: str, steps: Sequence[str], num_patches: list[int]) -> tuple[str, int]:
        template = get_template(self.model.config.template)
        conv = Conversation(template, PRM_SYSTEM_PROMPT)
        for user, mark in prm_turns(question, steps):
            conv.append(template.roles[0], user)
            conv.append(template.roles[1], mark)
        prompt = conv.prompt()
        if num_patches:
            prompt = expand_images(prompt, num_patches, self.model.num_image_token)
        return prompt, len(steps)

    LOGITS_BUDGET = 1 << 28  # logits elements per scoring forward (1 GiB in float32): rows are batched up to it

    @torch.inference_mode()
    def step_scores(self, question: str, response: str, pixel_values: torch.Tensor | None = None,
                    num_patches_list: list[int] | None = None) -> list[float]:
        """P(`+`) for every step of `response`."""
        return self.step_scores_many(question, [response], pixel_values, num_patches_list)[0]

    @torch.inference_mode()
    def step_scores_many(self, question: str, responses: Sequence[str], pixel_values: torch.Tensor | None = None,
                         num_patches_list: list[int] | None = None) -> list[list[float]]:
        """`step_scores` of several responses to one question, in as few forwards as `LOGITS_BUDGET` allows:
        rows are right-padded, and under causal attention no real token sees the padding after it."""
        if pixel_values is not None and num_patches_list is None:
            num_patches_list = [pixel_values.shape[0]]
        assistant = self.tokenizer.encode(get_template(self.model.config.template).roles[1])
        width = len(assistant)
        rows, marks = [], []
        for response in responses:
            steps = split_steps(response, self.max_steps) or [response.strip()]
            prompt, n = self._prompt(question, steps, num_patches_list or [])
            row = self.tokenizer.prompt_ids(prompt)
            # positions of the `+` placeholders: right after each `<|im_start|>assistant\n`
            found = [i + width for i in range(len(row) - width) if row[i:i + width] == assistant]
            if len(found) != n:
                raise RuntimeError(f"found {len(found)} assistant turns for {n} steps")
            rows.append(row)
            marks.append(found)
        device, dtype = _device(self.model), next(self.model.parameters()).dtype
        pv = pixel_values.to(device, dtype) if pixel_values is not None else None
        per_forward = max(1, self.LOGITS_BUDGET // (max(map(len, rows)) * self.model.config.text.vocab_size))
        scores = []
        for start in range(0, len(rows), per_forward):
            chunk = rows[start:start + per_forward]
            ids = torch.full((len(chunk), max(map(len, chunk))), self.tokenizer.pad_token_id, dtype=torch.long)
            for r, row in enumerate(chunk):
                ids[r, :len(row)] = torch.tensor(row)
            tiles = pv.repeat(len(chunk), 1, 1, 1) if pv is not None else None
            logits = self.model(ids.to(device), pixel_values=tiles).logits.float()
            for r, found in enumerate(marks[start:start + len(chunk)]):
                at = logits[r, [m - 1 for m in found]]  # the token before each `+` predicts it
                if self.normalize == "pair":
                    probs = torch.softmax(at[:, [self.good_id, self.bad_id]], dim=-1)[:, 0]
                else:
                    probs = torch.softmax(at, dim=-1)[:, self.good_id]
                scores.append(probs.tolist())
        return scores

    def aggregate(self, scores: Sequence[float]) -> float:
        if self.aggregation == "min":
            return min(scores)
        if self.aggregation == "last":
            return scores[-1]
        return sum(scores) / len(scores)

    def score(self, question: str, response: str, pixel_values: torch.Tensor | None = None,
              num_patches_list: list[int] | None = None) -> tuple[float, list[float]]:
        steps = self.step_scores(question, response, pixel_values, num_patches_list)
        return self.aggregate(steps), steps

    def score_many(self, question: str, responses: Sequence[str], pixel_values: torch.Tensor | None = None,
                   num_patches_list: list[int] | None = None) -> list[tuple[float, list[float]]]:
        return [(self.aggregate(steps), steps)
                for steps in self.step_scores_many(question, responses, pixel_values, num_patches_list)]


@dataclass
class Candidate:
    response: str
    score: float
    step_scores: list[float] = field(default_factory=list)
    index: int = 0  # order of sampling (majority vote breaks ties by it, not by the PRM)


def final_answer(response: str) -> str:
    """The value of the last `Answer:` line, else the last line; normalised (case, spaces, final full stop)."""
    found = ANSWER_LINE.findall(response)
    text = found[-1] if found else (response.strip().splitlines() or [""])[-1]
    return text.strip().strip(".").strip().lower()


def majority_vote(responses: Sequence[str]) -> str:
    """The response whose final answer is the most frequent (the first such one): Best-of-N's baseline."""
    counts = Counter(final_answer(r) for r in responses)
    best = max(counts.values())
    return next(r for r in responses if counts[final_answer(r)] == best)


def best_of_n(policy: InternVLModel, tokenizer: InternVLTokenizer, question: str, pixel_values: torch.Tensor | None,
              prm: ProcessRewardModel, n: int = 8, temperature: float = 0.7, top_p: float = 0.95,
              max_new_tokens: int = 512, num_patches_list: list[int] | None = None,
              seed: int | None = None) -> list[Candidate]:
    """Sample n answers from the policy, score each with the PRM; candidates best first."""
    return best_of_n_batch(policy, tokenizer, [(question, pixel_values, num_patches_list or [])], prm, n,
                           temperature, top_p, max_new_tokens, seed)[0]


def best_of_n_batch(policy: InternVLModel, tokenizer: InternVLTokenizer,
                    items: Sequence[tuple[str, torch.Tensor | None, list[int]]], prm: ProcessRewardModel, n: int = 8,
                    temperature: float = 0.7, top_p: float = 0.95, max_new_tokens: int = 512,
                    seed: int | None = None) -> list[list[Candidate]]:
    """`best_of_n` for several (question, tiles, tiles per image) at once: all their samples are decoded in one
    batch (a small policy's decode step costs about the same for 8 rows as for 16)."""
    from nativevl.infer.chat import batch_chat

    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if seed is not None:
        torch.manual_seed(seed)
    settings = GenerationConfig(do_sample=True, temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens)
    questions, tiles, patches = [], [], []
    for question, pixels, counts in items:
        questions += [question] * n
        patches += [counts or ([pixels.shape[0]] if pixels is not None else [])] * n
        tiles += [pixels] * n if pixels is not None else []
    responses = batch_chat(policy, tokenizer, torch.cat(tiles) if tiles else None, questions, settings,
                           num_patches_list=patches)
    found = []
    for k, (question, pixels, _) in enumerate(items):
        texts = responses[k * n:(k + 1) * n]
        scored = prm.score_many(question, texts, pixels, patches[k * n] or None)
        candidates = [Candidate(text, score, steps, i)
                      for i, (text, (score, steps)) in enumerate(zip(texts, scored, strict=True))]
        found.append(sorted(candidates, key=lambda c: -c.score))
    return found
