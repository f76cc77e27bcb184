"""Exact-match VQA: normalisation, the reader's errors, and `nativevl eval --vqa` end to end."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from PIL import Image

from nativevl.eval.answer import DatasetError
from nativevl.eval.vqa import SHORT_ANSWER_PROMPT, is_match, normalize_answer, read_vqa, vqa_prompt


def test_normalisation_and_any_of_several_answers():
    assert normalize_answer("  Red. ") == "red"
    assert normalize_answer('"New   York"!') == "new york"
    assert is_match("Blue.", ["red", "BLUE"]) and not is_match("light blue", ["blue"])
    assert is_match("3", ["3"]) and not is_match("3.5", ["3"])


def test_reader_defaults_aliases_and_prompts(tmp_path):
    Image.new("RGB", (20, 20)).save(tmp_path / "a.png")
    lines = [{"question_id": 7, "question": "Colour?", "answers": ["red", "crimson"], "image": "a.png"},
             {"question": "Same?", "answer": 1, "image": ["a.png", "a.png"], "category": "multi"},
             {"question": "Capital of France?", "answer": "Paris"}]
    (tmp_path / "set.jsonl").write_text("\n".join(json.dumps(r) for r in lines) + "\n\n")
    a, b, c = read_vqa(tmp_path / "set.jsonl")
    assert (a.id, a.answers, a.category, a.images) == ("7", ["red", "crimson"], "set", [tmp_path / "a.png"])
    assert b.answers == ["1"] and b.category == "multi" and b.id == f"{tmp_path / 'set.jsonl'}:2"
    assert c.images == []
    assert vqa_prompt(a) == f"Colour?\n{SHORT_ANSWER_PROMPT}"
    assert vqa_prompt(b, suffix="") == "Image-1: <image>\nImage-2: <image>\nSame?"


@pytest.mark.parametrize(("line", "message"), [
    ("{oops", r"set.jsonl:2: not JSON"),
    ('["a"]', r"set.jsonl:2: a record must be a JSON object"),
    ('{"question": "q"}', r"set.jsonl:2: needs a 'question' string and an 'answer'"),
    ('{"question": "q", "answer": {"a": 1}}', r"set.jsonl:2: 'answer' must be a string or a list of strings"),
    ('{"question": "q", "answer": "a", "image": "gone.png"}', r"set.jsonl:2: image .*gone.png does not exist"),
])
def test_bad_records_are_named_by_file_and_line(tmp_path, line, message):
    (tmp_path / "set.jsonl").write_text('{"question": "q", "answer": "a"}\n' + line + "\n")
    with pytest.raises(DatasetError, match=message):
        read_vqa(tmp_path)


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(DatasetError, match="nothing.jsonl: no such file or folder"):
        read_vqa(tmp_path / "nothing.jsonl")


def test_nativevl_eval_vqa_scores_the_models_own_replies(tmp_path):
    from reference import tiny_checkpoint

    from nativevl.api import Pipeline
    from nativevl.infer.chat import chat

    folder = tiny_checkpoint(tmp_path / "ckpt")
    data = tmp_path / "vqa"
    data.mkdir()
    Image.new("RGB", (50, 30), (0, 200, 0)).save(data / "green.png")
    pipe = Pipeline(folder, max_num=6)
    tiles = pipe.prepare("q", [data / "green.png"])[1]
    greedy = chat(pipe.model, pipe.tokenizer, tiles, f"What colour?\n{SHORT_ANSWER_PROMPT}",
                  {"max_new_tokens": 10, "min_new_tokens": 1})
    # the first answer is the model's own greedy reply (right by construction), the second cannot match it
    records = [{"id": "hit", "question": "What colour?", "answer": [greedy.upper() + ".", "x"], "image": "green.png"},
               {"id": "miss", "question": "What colour?", "answer": greedy + " not", "image": "green.png"}]
    (data / "colours.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    out = tmp_path / "results.json"
    done = subprocess.run([sys.executable, "-m", "nativevl", "eval", str(folder), "--vqa", str(data), "--out",
                           str(out)], check=False, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    saved = json.loads(out.read_text())
    assert [r["reply"] for r in saved["results"]] == [greedy, greedy]
    assert [r["correct"] for r in saved["results"]] == [True, False]
    assert saved["accuracy"]["colours"] == {"n": 2, "accuracy": 0.5} and "colours" in done.stdout
    (data / "colours.jsonl").write_text('{"question": "q"}\n')
    bad = subprocess.run([sys.executable, "-m", "nativevl", "eval", str(folder), "--vqa", str(data)],
                         check=False, capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "colours.jsonl:1: needs a 'question' string" in bad.stderr
