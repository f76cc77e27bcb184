"""MMMU prompt, answer reading and scoring (spec §12) on hand-worked cases, and the local MMMU layout."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from nativevl.eval.answer import accuracy_table
from nativevl.eval.mmmu import (
    DatasetError,
    Question,
    build_prompt,
    eval_multi_choice,
    eval_open,
    extract_numbers,
    is_correct,
    normalize_str,
    parse_open_response,
    post_process,
    read_questions,
)


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
    assert is_correct(mc, "blue") and not is_correct(mc, "A")
    open_q = Question("2", "Q", {}, ["7", "seven"], "open")
    assert is_correct(open_q, "There are seven.") and is_correct(open_q, "so the total = 7")


def test_accuracy_is_per_subject_and_instance_weighted_overall():
    a, b = "Art", "Math"
    table = accuracy_table([(a, True), (a, False), (b, True), (b, True), (b, True), (b, False)])
    assert table["Art"] == {"n": 2, "accuracy": 0.5} and table["Math"] == {"n": 4, "accuracy": 0.75}
    assert table["overall"] == {"n": 6, "accuracy": 4 / 6}


def test_reads_the_local_mmmu_layout_and_names_bad_lines(tmp_path):
    Image.new("RGB", (32, 32), (255, 0, 0)).save(tmp_path / "red.png")
    records = [
        {"id": "validation_Art_1", "question": "<image 1> What colour?", "options": "['red', 'blue']",
         "answer": "A", "question_type": "multiple-choice", "image_1": "red.png"},
        {"id": "validation_Art_2", "question": "How many?", "options": "[]", "answer": "3",
         "question_type": "open"},
    ]
    (tmp_path / "Art.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    questions = read_questions(tmp_path)
    assert [q.subject for q in questions] == ["Art", "Art"]
    assert questions[0].options == {"A": "red", "B": "blue"} and questions[0].images == [tmp_path / "red.png"]
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

    from nativevl.infer.chat import Pipeline, chat

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
    for row, q in zip(saved["results"], read_questions(data), strict=True):
        # the same greedy reply as the Python API gives for the original prompt, scored by the same rules
        tiles = pipe.prepare(q.prompt, q.images)[1]
        assert row["reply"] == chat(pipe.model, pipe.tokenizer, tiles, q.prompt,
                                    {"max_new_tokens": 10, "min_new_tokens": 1})
        assert row["correct"] == is_correct(q, row["reply"])
    assert saved["accuracy"]["overall"]["accuracy"] == pytest.approx(sum(r["correct"] for r in saved["results"]) / 3)
    (data / "Art.jsonl").write_text("{not json\n")
    bad = subprocess.run([sys.executable, "-m", "nativevl", "eval", str(folder), "--mmmu", str(data)],
                         check=False, capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "Art.jsonl:1: not JSON" in bad.stderr
