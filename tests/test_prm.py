"""The process reward model's format and scoring, Best-of-N and the majority-vote baseline."""

from __future__ import annotations

import math

import pytest
import torch

from nativevl.conversation import expand_images
from nativevl.data.image import load_image
from nativevl.infer.prm import (
    PRM_SYSTEM_PROMPT,
    ProcessRewardModel,
    best_of_n,
    best_of_n_batch,
    final_answer,
    majority_vote,
    prm_record,
    prm_turns,
    split_steps,
)
from nativevl import InternVL
from nativevl.tokenizer import load_tokenizer


def test_steps_split_on_blank_lines_and_group_to_max_steps():
    text = "a\n\nb\n\n\n\nc\n\nd\n\ne"
    assert split_steps(text) == ["a", "b", "c", "d", "e"]
    # 5 pieces, at most 2 steps: chunks of ceil(5 / 2) = 3 pieces
    assert split_steps(text, max_steps=2) == ["a\n\nb\n\nc", "d\n\ne"]
    assert split_steps(text, max_steps=5) == ["a", "b", "c", "d", "e"]


def test_prm_conversation_format():
    turns = prm_turns("What is 2 + 2?", ["2 + 2 = 4.", "Answer: 4"], labels=[True, False])
    assert turns == [("### Question:\n<image>\nWhat is 2 + 2?\n\n### Solution Process:\n2 + 2 = 4.", "+"),
                     ("Answer: 4", "-")]
    record = prm_record("<image>\nQ?", "s1\n\ns2", [True, True], image="a.png")
    assert record["image"] == "a.png" and record["conversations"][0] == {"from": "system",
                                                                         "value": PRM_SYSTEM_PROMPT}
    assert [t["value"] for t in record["conversations"][1:]] == [
        "### Question:\n<image>\nQ?\n\n### Solution Process:\ns1", "+", "s2", "+"]
    with pytest.raises(ValueError, match="2 labels for 1 steps"):
        prm_turns("Q", ["s"], labels=[True, False])


def test_final_answer_and_majority_vote():
    assert final_answer("x\n\nAnswer: 12.") == "12"
    assert final_answer("just a line\nSeven") == "seven"
    responses = ["s\n\nAnswer: 3", "t\n\nAnswer: 4", "u\n\nAnswer: 4", "v\n\nAnswer: 3"]
    assert majority_vote(responses) == "s\n\nAnswer: 3"  # a tie goes to the first such answer
    assert majority_vote(responses[1:]) == "t\n\nAnswer: 4"


@pytest.fixture(scope="module")
def start(tmp_path_factory):
    from reference import world_checkpoint

    world, checkpoint = world_checkpoint(tmp_path_factory.mktemp("prm"), seed=3)
    model = InternVL.from_pretrained(checkpoint).eval()
    tok = load_tokenizer(checkpoint)
    image = sorted((world / "images" / "train" / "charts").glob("*.png"))[0]
    return model, tok, load_image(image, input_size=224, max_num=2)


def test_one_pass_scores_equal_one_prefix_pass_per_step(start):
    """Each step's score, read from one forward pass, equals the next-token distribution of the conversation cut
    just before that step's `+`, computed separately; normalised over {+, -} or over the vocabulary."""
    model, tok, tiles = start
    question = "<image>\nWhat is the total of all the bars?"
    response = "The bars show 3 and 4.\n\nAdding them: 3 + 4 = 7.\n\nAnswer: 7"
    plus, minus = tok.encode("+")[0], tok.encode("-")[0]
    for normalize in ("pair", "vocab"):
        prm = ProcessRewardModel(model, tok, normalize=normalize, aggregation="mean")
        scores = prm.step_scores(question, response, tiles)
        steps = response.split("\n\n")
        assert len(scores) == 3
        expected = []
        for k in range(3):
            text = f"<|im_start|>system\n{PRM_SYSTEM_PROMPT}<|im_end|>\n"
            for i, (user, _) in enumerate(prm_turns(question, steps)):
                text += f"<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n"
                if i == k:
                    break
                text += "+<|im_end|>\n"
            ids = torch.tensor([tok.encode(expand_images(text, [tiles.shape[0]], model.num_image_token))])
            with torch.no_grad():
                logits = model(ids, pixel_values=tiles).logits[0, -1]
            p = torch.softmax(logits, -1)
            expected.append(float(p[plus] / (p[plus] + p[minus])) if normalize == "pair" else float(p[plus]))
        assert scores == pytest.approx(expected, abs=1e-5)
        total, _ = prm.score(question, response, tiles)
        assert total == pytest.approx(sum(expected) / 3, abs=1e-5)
    assert ProcessRewardModel(model, tok, aggregation="min").aggregate([0.5, 0.2, 0.9]) == 0.2
    assert ProcessRewardModel(model, tok, aggregation="last").aggregate([0.5, 0.2, 0.9]) == 0.9


def test_scoring_many_responses_in_one_forward_equals_one_by_one(start):
    """Right-padded rows of different lengths in one forward give each response its own scores."""
    model, tok, tiles = start
    question = "<image>\nWhat is the total of all the bars?"
    responses = ["Answer: 7", "The bars show 3 and 4.\n\nAdding them: 3 + 4 = 7.\n\nAnswer: 7",
                 "The bars show 5 and 4.\n\nAnswer: 9"]
    prm = ProcessRewardModel(model, tok)
    alone = [prm.step_scores(question, r, tiles) for r in responses]
    assert [len(s) for s in alone] == [1, 3, 2]
    together = prm.score_many(question, responses, tiles)
    for (total, steps), expected in zip(together, alone, strict=True):
        assert steps == pytest.approx(expected, abs=1e-5) and total == pytest.approx(sum(expected) / len(expected))
    prm.LOGITS_BUDGET = 1  # one row per forward
    for (_, steps), expected in zip(prm.score_many(question, responses, tiles), alone, strict=True):
        assert steps == pytest.approx(expected, abs=1e-5)


def test_best_of_n_returns_every_sample_scored_best_first(start):
    model, tok, tiles = start
    prm = ProcessRewardModel(model, tok)
    question = "What is the total of all the bars?"
    candidates = best_of_n(model, tok, question, tiles, prm, n=4, max_new_tokens=12, seed=0)
    assert len(candidates) == 4
    assert [c.score for c in candidates] == sorted((c.score for c in candidates), reverse=True)
    for c in candidates:
        score, steps = prm.score(question, c.response, tiles)
        assert math.isclose(score, c.score, abs_tol=1e-6) and steps == pytest.approx(c.step_scores, abs=1e-6)
    assert len({c.response for c in candidates}) > 1  # sampled, not greedy


def test_best_of_n_batch_keeps_each_questions_samples_apart(start, monkeypatch):
    """Two questions' samples decoded in one batch: each question gets its own n samples, scored against it."""
    import nativevl.infer.chat as chat_module

    model, tok, tiles = start
    prm = ProcessRewardModel(model, tok)
    asked = []
    real = chat_module.batch_chat

    def spy(policy, tokenizer, pixels, questions, settings, num_patches_list=None, prefixes=None):  # noqa: ANN001, ANN202
        asked.append((list(questions), pixels.shape[0], num_patches_list))
        return real(policy, tokenizer, pixels, questions, settings, num_patches_list=num_patches_list)

    monkeypatch.setattr(chat_module, "batch_chat", spy)
    items = [("What is the total of all the bars?", tiles, []), ("Which bar is the lowest?", tiles, [])]
    found = best_of_n_batch(model, tok, items, prm, n=3, max_new_tokens=12, seed=0)
    k = tiles.shape[0]
    assert asked == [([items[0][0]] * 3 + [items[1][0]] * 3, 6 * k, [[k]] * 6)]
    assert [len(c) for c in found] == [3, 3]
    for (question, _, _), candidates in zip(items, found, strict=True):
        assert sorted(c.index for c in candidates) == [0, 1, 2]
        for c in candidates:
            assert math.isclose(prm.score(question, c.response, tiles)[0], c.score, abs_tol=1e-6)


def test_batch_chat_prefix_continues_the_assistant_turn(start, monkeypatch):
    """A prefix is appended after `<|im_start|>assistant\\n` and only the continuation comes back."""
    import nativevl.infer.chat as chat_module

    model, tok, tiles = start
    seen = []
    real = chat_module.generate

    def spy(model, ids, **kw):  # noqa: ANN001, ANN202
        seen.append(ids)
        return real(model, ids, **kw)

    monkeypatch.setattr(chat_module, "generate", spy)
    prefix = "The bars show 3 and 4.\n\n"
    out = chat_module.batch_chat(model, tok, tiles.repeat(2, 1, 1, 1), ["Total?", "Total?"],
                                 {"max_new_tokens": 4}, num_patches_list=[tiles.shape[0]] * 2,
                                 prefixes=[prefix, ""])
    assert len(out) == 2
    rows = [tok.decode(r, skip_special_tokens=False) for r in seen[0].tolist()]
    assert rows[0].endswith("<|im_start|>assistant\n" + prefix) and rows[1].endswith("<|im_start|>assistant\n")
    with pytest.raises(ValueError, match="2 questions but 1 prefixes"):
        chat_module.batch_chat(model, tok, None, ["a", "b"], prefixes=["x"])


def test_monte_carlo_rule_labels_a_step_by_its_continuations(start, monkeypatch):
    """Step i is + iff one of the k continuations from steps 1..i reaches the gold answer; the last step is + iff
    the solution's own answer is right. A stub policy answers 7 only after a step that mentions 'good'."""
    import nativevl.train.prm_data as prm_data

    model, tok, tiles = start
    calls = []

    def fake_batch_chat(policy, tokenizer, pixels, questions, settings, num_patches_list=None, prefixes=None):  # noqa: ANN001, ANN202
        calls.append(prefixes)
        return [("Answer: 7" if p.rstrip().endswith("good") and i % 3 == 2 else "Answer: 5")
                for i, p in enumerate(prefixes)]

    monkeypatch.setattr(prm_data, "batch_chat", fake_batch_chat)
    steps = ["a good", "b bad", "c good", "Answer: 5"]
    labels = prm_data.mc_step_labels(model, tok, "Q?", tiles, steps, "7", k=3, settings=None)
    assert labels == [True, False, True, False]
    assert calls[0] == [p for p in ("a good\n\n", "a good\n\nb bad\n\n", "a good\n\nb bad\n\nc good\n\n")
                        for _ in range(3)]
    assert prm_data.mc_step_labels(model, tok, "Q?", tiles, ["Answer: 7."], "7", k=3, settings=None) == [True]
    assert len(calls) == 1  # a one-step solution needs no sampling


def test_prm_data_from_a_world_trains_as_sft_conversations(tmp_path):
    """`build_prm_data` writes VisualPRM conversations (one +/- turn per step, the gold solution's last step +)
    that the SFT data pipeline reads with every mark supervised."""
    import json
    import random

    from reference import world_checkpoint

    from nativevl.data.dataset import DataConfig, build_sample, read_meta
    from nativevl.train.prm_data import build_prm_data

    world, checkpoint = world_checkpoint(tmp_path, seed=3)
    summary = build_prm_data(checkpoint, world, tmp_path / "prm", questions=2, samples=1, k=2, max_new_tokens=24)
    assert summary.questions == 2 and summary.solutions >= 2 and summary.right_solutions >= 2  # the gold ones
    lines = [json.loads(x) for x in (tmp_path / "prm" / "prm.jsonl").read_text().splitlines()]
    assert len(lines) == summary.solutions
    gold = lines[0]["conversations"]  # the first record of a question is its gold solution
    assert gold[0] == {"from": "system", "value": PRM_SYSTEM_PROMPT}
    assert gold[1]["value"].startswith("### Question:\n<image>\n") and gold[-1] == {"from": "gpt", "value": "+"}
    marks = [t["value"] for line in lines for t in line["conversations"] if t["from"] == "gpt"]
    assert set(marks) <= {"+", "-"} and len(marks) == summary.steps and marks.count("+") == summary.good_steps
    (spec,) = read_meta(tmp_path / "prm" / "meta_prm.json")
    tok = load_tokenizer(checkpoint)
    cfg = DataConfig(max_dynamic_patch=spec.max_dynamic_patch, image_size=224, num_image_token=64)
    sample = build_sample(lines[0], spec, tok, cfg, random.Random(0))
    supervised = [t for t, lab in zip(sample.input_ids.tolist(), sample.labels.tolist(), strict=True) if lab != -100]
    plus = tok.encode("+")[0]
    assert supervised.count(plus) == sum(t["value"] == "+" for t in gold if t["from"] == "gpt")

    # The PRM recipe with LoRA: its final folder is an adapter, which the PRM loads merged into its base.
    from nativevl.infer.prm import ProcessRewardModel
    from nativevl.train.recipes import load_config
    from nativevl.train.trainer import train

    values = {"steps": 2, "out": str(tmp_path / "prm_lora"), "progress": False, "precision": "fp32",
              "model.checkpoint": str(checkpoint), "data.meta": str(tmp_path / "prm" / "meta_prm.json"),
              "data.image_size": 224, "data.max_dynamic_patch": 2, "data.max_tokens": 1024, "data.max_tiles": 6,
              "data.max_seq_length": 1024, "data.num_workers": 0, "lora.llm_rank": 4, "optim.lr": 1e-2}
    history = train(load_config("prm", [f"{k}={json.dumps(v)}" for k, v in values.items()]))
    assert len(history) == 2
    final = tmp_path / "prm_lora" / "final"
    assert (final / "adapter_config.json").is_file() and not (final / "model.safetensors").exists()
    scores = ProcessRewardModel(str(final)).step_scores("What is 3 + 4?", "3 + 4 = 7.\n\nAnswer: 7.")
    assert len(scores) == 2 and all(0.0 <= s <= 1.0 for s in scores)
