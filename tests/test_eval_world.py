"""`nativevl eval --world`: held-out world questions, greedy and Best-of-N with its majority-vote row."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from reference import world_checkpoint

    return world_checkpoint(tmp_path_factory.mktemp("evalworld"), seed=5)


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "nativevl", "eval", *args], check=False, capture_output=True,
                          text=True, timeout=600)


def test_greedy_rows_match_the_table_and_the_gold_answers(world, tmp_path):
    from nativevl.eval.world import normalize

    folder, checkpoint = world
    out = tmp_path / "greedy.json"
    done = run(str(checkpoint), "--world", str(folder), "--groups", "colour,reasoning", "--limit", "3",
               "--out", str(out))
    assert done.returncode == 0, done.stderr
    saved = json.loads(out.read_text())
    rows, table = saved["results"], saved["accuracy"]
    assert set(table) == {r["group"] for r in rows} <= {"colour", "reasoning"} and rows
    for group, entry in table.items():
        mine = [r for r in rows if r["group"] == group]
        assert entry["n"] == len(mine) and entry["accuracy"] == pytest.approx(sum(r["correct"] for r in mine) / len(mine))
    for r in rows:
        if r["group"] == "colour":  # short answers: exact match after normalisation
            assert r["correct"] == (normalize(r["reply"]) == normalize(str(r["answer"])))
    assert "question type" in done.stdout


def test_best_of_n_adds_a_majority_vote_row_from_the_same_samples(world, tmp_path):
    folder, checkpoint = world
    out = tmp_path / "bon.json"
    done = run(str(checkpoint), "--world", str(folder), "--groups", "reasoning", "--limit", "2", "--best-of", "2",
               "--prm", str(checkpoint), "--out", str(out))
    assert done.returncode == 0, done.stderr
    saved = json.loads(out.read_text())
    groups = [r["group"] for r in saved["results"]]
    n = groups.count("reasoning")
    assert n > 0 and groups.count("reasoning vote@2") == n and set(saved["accuracy"]) == set(groups)
    no_prm = run(str(checkpoint), "--world", str(folder), "--best-of", "2")
    assert no_prm.returncode == 2 and "--best-of needs --prm" in no_prm.stderr


def test_limit_takes_the_first_questions_of_each_held_out_dataset_and_groups_ignore_case(world, tmp_path):
    """--limit N: the first N records of every held-out dataset (one per task family and split), as its help
    says; --groups in any case."""
    from nativevl.data.dataset import read_lines, read_meta
    from nativevl.eval.world import group_of, task_of

    folder, checkpoint = world
    expected = sum(group_of(task_of(json.loads(line))) == "colour"
                   for spec in read_meta(folder / "meta_eval.json") if spec.name.endswith(("_val", "_test"))
                   for _, line in read_lines(spec)[:2])
    out = tmp_path / "limit.json"
    done = run(str(checkpoint), "--world", str(folder), "--groups", "Colour", "--limit", "2", "--out", str(out))
    assert done.returncode == 0, done.stderr
    assert expected >= 2 and json.loads(out.read_text())["accuracy"]["colour"]["n"] == expected
    unknown = run(str(checkpoint), "--world", str(folder), "--groups", "colr")
    assert unknown.returncode == 2 and unknown.stderr.count("\n") == 1 and "did you mean 'colour'" in unknown.stderr
