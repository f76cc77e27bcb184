"""MMMU prompt, answer reading and the three scoring metrics (spec §12; docs/evaluation.md) on cases worked by
hand from the rules of each original implementation, and the local MMMU layout."""

from __future__ import annotations

import json
import random

import pytest
from PIL import Image

from nativevl.eval.answer import accuracy_table
from nativevl.eval.mmmu import (
    DEFAULT_SCORING,
    MMMU_SEED,
    SCORINGS,
    DatasetError,
    Question,
    build_prompt,
    describe_scoring,
    eval_multi_choice,
    eval_open,
    evaluate_mmmu,
    extract_numbers,
    is_correct,
    normalize_str,
    parse_multi_choice_response,
    parse_open_response,
    post_process,
    read_questions,
    score,
    score_all,
)
from nativevl.eval.mmmu_scoring import can_infer

CAPITALS = {"A": "London", "B": "Paris", "C": "Berlin", "D": "Rome"}


def test_prompt_lists_options_then_the_instruction():
    assert build_prompt(" What is <image 1>? ", [" cat", "dog "], "multiple-choice") == (
        "What is <image 1>?\nA. cat\nB. dog\nAnswer with the option's letter from the given choices directly.")
    assert build_prompt("How many?", [], "open") == "How many?\nAnswer the question using a single word or phrase."


def test_post_process_reads_a_letter_like_internvl():
    options = {"A": "london", "B": "paris"}
    assert post_process(" B ", options) == "B"
    assert post_process("B. paris", options) == "B"
    assert post_process("It is paris.", options) == "B"  # 'I' is no option: the first option text found
    assert post_process("A cat", options) == "A"  # the first character wins when it is a letter
    assert post_process("no idea", options) == "no idea"
    assert eval_multi_choice("B", "B") and eval_multi_choice(["A", "B"], "B") and not eval_multi_choice("A", "B")


def test_open_answers_follow_the_official_rules():
    # "the answer is 42": after "is " comes "42", after "answer " comes "is 42": the shorter wins
    assert parse_open_response("The answer is 42.") == [42.0]
    assert eval_open("42", parse_open_response("The answer is 42.")) is True
    assert eval_open("42.001", [42.0]) is True  # numbers compare rounded to 2 decimals
    assert eval_open("41", [42.0]) is False
    assert eval_open("Paris", parse_open_response("I think it is Paris")) is True
    # one letter matches only as a word: padded with a space
    assert normalize_str("a") == [" a", "a "]
    assert eval_open("a", parse_open_response("the answer is banana")) is False  # "a" alone would be inside
    assert eval_open("b", parse_open_response("so the option is b")) is True
    assert normalize_str("1,234.567") == [1234.57]
    assert extract_numbers("1,000 and -7") == ["1,000", "000", "-7"]
    assert extract_numbers("pi is 3.14") == ["3.14"]


def test_is_correct_dispatches_on_the_question_type():
    mc = Question("1", "Q", {"A": "red", "B": "blue"}, "B", "multiple-choice")
    assert is_correct(mc, "blue", "internvl") and not is_correct(mc, "A", "internvl")
    assert is_correct(mc, "(B)", "mmmu") and is_correct(mc, "blue", "vlmevalkit")
    open_q = Question("2", "Q", {}, ["7", "seven"], "open")
    for scoring in ("mmmu", "internvl"):
        assert is_correct(open_q, "There are seven.", scoring) and is_correct(open_q, "so the total = 7", scoring)


def test_the_metrics_are_named_and_checked():
    assert SCORINGS == ("mmmu", "vlmevalkit", "internvl") and DEFAULT_SCORING == "mmmu" and MMMU_SEED == 42
    for name in SCORINGS:
        assert describe_scoring(name).startswith(name + ": ")
    q = Question("1", "Q", CAPITALS, "B", "multiple-choice")
    with pytest.raises(ValueError, match="unknown MMMU scoring 'gpt'"):
        is_correct(q, "B", "gpt")
    with pytest.raises(ValueError, match="unknown MMMU scoring"):  # refused before any model is touched
        evaluate_mmmu(None, None, [q], scoring="official")


def test_mmmu_reads_letters_the_way_the_benchmark_does():
    q = Question("1", "Q", CAPITALS, "C", "multiple-choice")
    # the issue's replies: a bracketed letter anywhere, a letter between spaces after ',.!?;:\'' are stripped
    # from the ends (one character kind at a time, in that order), so all of these read as C
    for reply in ("(C)", "'C'", "The answer is C.", "Answer: (C)", " (C) ", "\\text{(C)}", "Answer: C", "C'.",
                  "C", "c (C)"):
        assert score(q, reply, "mmmu").parsed == "C", reply
        assert is_correct(q, reply, "mmmu"), reply
    # brackets first: a bracketed letter wins over a bare one; among several the last one in the reply
    assert parse_multi_choice_response("C (B)", list(CAPITALS), CAPITALS) == "B"
    assert parse_multi_choice_response("(A) is wrong, (C) is right", list(CAPITALS), CAPITALS) == "C"
    assert parse_multi_choice_response("A or C", list(CAPITALS), CAPITALS) == "C"
    # an option's text counts only in a reply of more than 5 words; the last one found wins
    assert score(q, "I am fairly sure that it is Berlin", "mmmu").parsed == "C"
    assert score(q, "Between Berlin and London I pick London, not Berlin at all", "mmmu").parsed == "C"
    assert score(q, "Between Berlin and London I pick Berlin, not London at all", "mmmu").parsed == "A"


def test_mmmu_picks_a_seeded_random_letter_when_nothing_parses():
    q = Question("1", "Q", CAPITALS, "B", "multiple-choice")
    first = random.Random(42).choice(list(CAPITALS))  # the official: random.seed(42), then random.choice(letters)
    for reply in ("Berlin", "It is Paris", "", "no idea"):  # option text in 5 words or fewer does not count
        verdict = score(q, reply, "mmmu")
        assert verdict.parsed == first and verdict.note == "random pick", reply
    # one sequence over a run: the n-th unreadable reply gets the n-th draw of one Random(42), readable ones draw none
    draws = random.Random(42)
    replies = ["x", "(D)", "y", "z", "w", "Answer: B", "v"]
    readable = {"(D)": "D", "Answer: B": "B"}
    expected = [readable[r] if r in readable else draws.choice(list(CAPITALS)) for r in replies]
    verdicts = score_all([q] * len(replies), replies, "mmmu")
    assert [v.parsed for v in verdicts] == expected
    assert [v.correct for v in verdicts] == [e == "B" for e in expected]
    assert [v.note == "random pick" for v in verdicts] == [r not in readable for r in replies]


def test_mmmu_reads_the_option_texts_as_the_record_has_them():
    q = Question("1", "Q", {"A": "cat", "B": "dog"}, "A", "multiple-choice", option_texts={"A": " cat", "B": "dog"})
    # " cat" (with its space) is not inside "bobcat", so nothing parses and the letter is random
    assert score(q, "the animal in the picture is a bobcat", "mmmu").note == "random pick"
    stripped = Question("1", "Q", {"A": "cat", "B": "dog"}, "A", "multiple-choice")
    assert score(stripped, "the animal in the picture is a bobcat", "mmmu").parsed == "A"


def test_internvl_takes_the_first_character():
    q = Question("1", "Q", CAPITALS, "C", "multiple-choice")
    assert score(q, "Answer: C", "internvl").parsed == "A"  # 'A' of "Answer" is an option letter
    assert not is_correct(q, "Answer: C", "internvl")
    for reply in ("(C)", "'C'", "The answer is C.", "\\text{(C)}"):  # nothing matches: the reply itself, wrong
        assert score(q, reply, "internvl").parsed == reply.strip() and not is_correct(q, reply, "internvl")
    assert is_correct(q, " C ", "internvl") and is_correct(q, "It is Berlin.", "internvl")
    empty = score(q, "  ", "internvl")  # the original's post_process raises IndexError here
    assert not empty.correct and empty.parsed is None and "IndexError" in empty.note
    no_options = Question("2", "Q", {}, "B", "multiple-choice")  # the script compares the raw reply
    assert is_correct(no_options, "B", "internvl") and not is_correct(no_options, " B", "internvl")
    assert not is_correct(no_options, "B", "mmmu") and "no options" in score(no_options, "B", "mmmu").note


def test_vlmevalkit_exact_matching():
    q = Question("1", "Q", CAPITALS, "C", "multiple-choice")
    # a choice letter standing as a word once brackets and '.,:;!*#{}' are spaces, among the last 4 words
    for reply in ("C", "(C)", "Answer: C", "The answer is C.", "\\text{(C)}", "**C**", "C. Berlin", "Berlin"):
        assert score(q, reply, "vlmevalkit").parsed == "C" and is_correct(q, reply, "vlmevalkit"), reply
    # an "answer is X" phrase, X in A-D in any case
    assert score(q, "I think the answer is **c** here, because of the figure", "vlmevalkit").parsed == "C"
    # what it cannot read is option Z: wrong (VLMEvalKit would ask a judge model)
    for reply in ("'C'", "A or C", "C (B)", "C is the answer I would give here", "Berlin or London", "",
                  "Z", "Cannot determine the answer"):
        verdict = score(q, reply, "vlmevalkit")
        assert verdict.parsed == "Z" and not verdict.correct, reply
    assert can_infer("Z", dict(CAPITALS)) == "Z" and can_infer("'C'", dict(CAPITALS)) is False


def test_vlmevalkit_turns_open_questions_into_two_choices():
    # 'A. <gold answer>' / 'B. Other Answers', gold A: a reply containing the gold text reads as A
    q = Question("1", "Q", {}, "12", "open")
    for reply in ("12", "12m", "112", "A"):
        assert is_correct(q, reply, "vlmevalkit"), reply
    for reply in ("13", "B", "Other Answers"):
        assert not is_correct(q, reply, "vlmevalkit"), reply
    assert is_correct(q, "12m", "vlmevalkit") and not is_correct(q, "12m", "mmmu")
    # a one-capital-letter gold stays the gold letter, which is not among A/B: never right
    letter = Question("2", "Q", {}, "C", "open")
    assert not any(is_correct(letter, r, "vlmevalkit") for r in ("C", "A", "The answer is C"))


def test_open_answers_glued_to_units_are_not_numbers():
    # the official integer pattern ends at a word boundary: 12m, 5kg, 3x, 2nd give no number (12.5m gives 12.5)
    for scoring in ("mmmu", "internvl"):
        for gold, reply in (("12", "12m"), ("5", "5kg"), ("3", "3x"), ("2", "2nd"), ("12", "12cm^2")):
            assert not is_correct(Question("o", "Q", {}, gold, "open"), reply, scoring), (reply, scoring)
        for gold, reply in (("12.5", "12.5m"), ("2", "12cm^2"), ("12", "12"), ("12", "The answer is 12.")):
            assert is_correct(Question("o", "Q", {}, gold, "open"), reply, scoring), (reply, scoring)
    assert extract_numbers("12m 5kg 3x 2nd") == [] and extract_numbers("12cm^2") == ["2"]


def test_open_answers_stop_at_an_empty_tail():
    # "the answer is \n42": the line "the answer is " leaves "" after "is " and "is" after "answer "; the
    # original keeps "is" (an empty tail so far is replaced), so 42 is never read
    assert parse_open_response("The answer is \n42") == ["is"]
    assert not is_correct(Question("o", "Q", {}, "42", "open"), "The answer is \n42", "mmmu")
    # with "is " alone the line gives no key and no other line has one: the whole reply is read, 42 with it
    assert set(parse_open_response("It is \n42")) == {"it is \n42", 42.0}
    assert is_correct(Question("o", "Q", {}, "42", "open"), "It is \n42", "internvl")


def test_accuracy_is_per_subject_and_instance_weighted_overall():
    a, b = "Art", "Math"
    table = accuracy_table([(a, True), (a, False), (b, True), (b, True), (b, True), (b, False)])
    assert table["Art"] == {"n": 2, "accuracy": 0.5} and table["Math"] == {"n": 4, "accuracy": 0.75}
    assert table["overall"] == {"n": 6, "accuracy": 4 / 6}


def test_reads_the_local_mmmu_layout_and_names_bad_lines(tmp_path):
    Image.new("RGB", (32, 32), (255, 0, 0)).save(tmp_path / "red.png")
    records = [
        {"id": "validation_Art_1", "question": "<image 1> What colour?", "options": "['red', ' blue']",
         "answer": "A", "question_type": "multiple-choice", "image_1": "red.png"},
        {"id": "validation_Art_2", "question": "How many?", "options": "[]", "answer": "3",
         "question_type": "open"},
    ]
    (tmp_path / "Art.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    questions = read_questions(tmp_path)
    assert [q.subject for q in questions] == ["Art", "Art"]
    assert questions[0].options == {"A": "red", "B": "blue"} and questions[0].images == [tmp_path / "red.png"]
    assert questions[0].option_texts == {"A": "red", "B": " blue"}  # as written, for MMMU's and VLMEvalKit's rules
    assert questions[0].prompt.endswith("A. red\nB. blue\nAnswer with the option's letter from the given choices "
                                        "directly.")
    assert questions[1].question_type == "open" and questions[1].options == {}

    (tmp_path / "Art.jsonl").write_text(json.dumps(records[1]) + "\n" + '{"id": "x", "question": "q"}\n')
    with pytest.raises(DatasetError, match=r"Art.jsonl:2: missing answer"):
        read_questions(tmp_path)
    (tmp_path / "Art.jsonl").write_text(json.dumps({**records[0], "image_1": "gone.png"}) + "\n")
    with pytest.raises(DatasetError, match=r"Art.jsonl:1: image_1 .*gone.png does not exist"):
        read_questions(tmp_path)
    (tmp_path / "Art.jsonl").write_text(json.dumps({**records[0], "options": "not a list ("}) + "\n")
    with pytest.raises(DatasetError, match=r"Art.jsonl:1: 'options' is not a list"):
        read_questions(tmp_path)


def test_nativevl_eval_on_a_local_mmmu_folder(tmp_path):
    import subprocess
    import sys

    from reference import tiny_checkpoint

    from nativevl.api import Pipeline
    from nativevl.infer.chat import chat

    folder = tiny_checkpoint(tmp_path / "ckpt")
    data = tmp_path / "mmmu"
    data.mkdir()
    Image.new("RGB", (60, 40), (0, 0, 255)).save(data / "blue.png")
    records = [{"id": f"validation_Art_{i}", "question": f"<image 1> Question {i}?", "options": "['red', 'blue']",
                "answer": "B", "question_type": "multiple-choice", "image_1": "blue.png"} for i in range(2)]
    records.append({"id": "validation_Art_3", "question": "How many?", "options": "[]", "answer": "3",
                    "question_type": "open"})
    (data / "Art.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    out = tmp_path / "results.json"
    done = subprocess.run([sys.executable, "-m", "nativevl", "eval", str(folder), "--mmmu", str(data), "--out",
                           str(out)], check=False, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    saved = json.loads(out.read_text())
    assert saved["accuracy"]["overall"]["n"] == 3 and "Art" in done.stdout
    pipe = Pipeline(folder, max_num=6)  # nativevl eval's default, as the original script
    questions = read_questions(data)
    verdicts = score_all(questions, [row["reply"] for row in saved["results"]], DEFAULT_SCORING)
    for row, q, verdict in zip(saved["results"], questions, verdicts, strict=True):
        # the same greedy reply as the Python API gives for the original prompt, scored by the same rules
        tiles = pipe.prepare(q.prompt, q.images)[1]
        assert row["reply"] == chat(pipe.model, pipe.tokenizer, tiles, q.prompt,
                                    {"max_new_tokens": 10, "min_new_tokens": 1})
        assert row["scoring"] == DEFAULT_SCORING and row["correct"] == verdict.correct
    assert saved["accuracy"]["overall"]["accuracy"] == pytest.approx(sum(r["correct"] for r in saved["results"]) / 3)
    (data / "Art.jsonl").write_text("{not json\n")
    bad = subprocess.run([sys.executable, "-m", "nativevl", "eval", str(folder), "--mmmu", str(data)],
                         check=False, capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "Art.jsonl:1: not JSON" in bad.stderr
