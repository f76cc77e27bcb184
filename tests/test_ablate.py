"""`nativevl ablate`: the pieces each ablation's figures rest on (Best-of-N curves, the δ chosen by length, text
perplexity, equal compute, statistics over seeds, reuse of finished stages, the report) and every ablation run
end to end at a toy size."""

from __future__ import annotations

import json
import math
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from nativevl.ablate import run_ablation
from nativevl.ablate.bestofn import curves, score_auc
from nativevl.ablate.common import END, Context, cell, stage, stats, write_report
from nativevl.ablate.v2pe import delta_for, span
from nativevl.data.dataset import DataConfig, build_sample, read_meta
from nativevl.data.world import generate_world
from nativevl.eval.perplexity import text_perplexity
from nativevl import InternVL
from nativevl.tokenizer import load_tokenizer
from nativevl.train.recipes import demo_pretrain


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ablate") / "world"
    generate_world(out, seed=0, scale=0.05)
    return out


def candidate(index: int, score: float, answer: str, gold: str) -> dict:
    return {"index": index, "score": score, "response": f"Step.\n\nAnswer: {answer}", "correct": answer == gold}


def test_best_of_n_curves_take_the_first_n_samples():
    # sampling order 0..3; the PRM likes sample 2 best, then 1; the right answer is "3"
    rows = [{"answer": "3", "candidates": [candidate(2, 0.9, "3", "3"), candidate(0, 0.1, "5", "3"),
                                           candidate(1, 0.5, "5", "3"), candidate(3, 0.8, "4", "3")]},
            # one right sample, first; the PRM prefers a wrong one; a tie in score goes to the earlier sample
            {"answer": "7", "candidates": [candidate(0, 0.2, "7", "7"), candidate(1, 0.6, "2", "7"),
                                           candidate(2, 0.6, "7", "7"), candidate(3, 0.1, "2", "7")]}]
    found = curves(rows, ns=(1, 2, 4))
    # N=1: sample 0 only: wrong (5), right (7)
    assert found["Best-of-N (PRM)"][1] == found["majority vote"][1] == found["pass@N"][1] == 0.5
    # N=2: PRM picks sample 1 in both (5: wrong; 2: wrong); the vote ties and takes sample 0 (5 wrong, 7 right)
    assert found["Best-of-N (PRM)"][2] == 0.0
    assert found["majority vote"][2] == 0.5
    assert found["pass@N"][2] == 0.5
    # N=4: row 1's PRM pick is sample 2 (0.9, right); row 2's a tie of 1 and 2 at 0.6 -> the earlier, 1 (wrong)
    assert found["Best-of-N (PRM)"][4] == 0.5
    # votes: row 1 has 5, 5, 3, 4 -> 5 (wrong); row 2 has 7, 2, 7, 2 -> tie, the earlier (7, right)
    assert found["majority vote"][4] == 0.5
    assert found["pass@N"][4] == 1.0


def test_prm_auc_counts_right_over_wrong_pairs():
    rows = [{"candidates": [candidate(0, 0.9, "3", "3"), candidate(1, 0.5, "5", "3")]},
            {"candidates": [candidate(0, 0.5, "7", "7"), candidate(1, 0.7, "2", "7"), candidate(2, 0.1, "2", "7")]}]
    # right: 0.9, 0.5; wrong: 0.5, 0.7, 0.1 -> 0.9 beats all three; 0.5 ties 0.5, loses to 0.7, beats 0.1
    assert score_auc(rows) == (3 + 0.5 + 1) / 6
    assert score_auc([{"candidates": [candidate(0, 0.2, "1", "1")]}]) is None  # no wrong sample


def test_v2pe_span_and_the_delta_chosen_by_length():
    img = 5
    # 2 text tokens, 16 image tokens, 3 text tokens: with δ = 1 positions 0..20, so the span is 21
    ids = [1, 2] + [img] * 16 + [3, 4, 6]
    assert span(ids, img, 1.0) == 21
    # δ = 1/4: the image ends at 1 + 16/4 = 5, then 6, 7, 8: span 9
    assert span(ids, img, 0.25) == 9
    # δ = 1/16: the image reaches 1 + 1 = 2, then 3, 4, 5: span 6
    assert span(ids, img, 1 / 16) == 6
    assert delta_for([ids], img, 21) == 1.0
    # δ = 1/2: the image ends at 1 + 8 = 9, then 10, 11, 12: span 13 > 12, so the next step down, 1/4 (span 9)
    assert span(ids, img, 0.5) == 13
    assert delta_for([ids], img, 12) == 0.25
    assert delta_for([ids], img, 3) == 2.0 ** -8  # nothing fits: the smallest step


def test_v2pe_span_is_checked_against_the_longest_prompt():
    img = 5
    short, long = [1] + [img] * 8 + [2], [1] + [img] * 32 + [2]
    # positions: 0, the image up to ceil(32 δ), then one token: span ceil(32 δ) + 2; the short prompt alone fits δ = 1
    assert delta_for([short], img, 12) == 1.0
    assert delta_for([short, long], img, 12) == delta_for([long], img, 12) == 0.25


def test_text_perplexity_is_exp_of_the_model_s_own_token_mean_loss(world, tmp_path):
    from nativevl.config import preset
    from nativevl.train.recipes import DEMO_MODEL

    tokenizer = load_tokenizer(world / "tokenizer")
    torch.manual_seed(0)
    config = preset("tiny").replace(**DEMO_MODEL, **{"text.vocab_size": len(tokenizer),
                                                    "img_context_token_id": tokenizer.img_context_id})
    model = InternVL.from_config(config).eval()
    found = text_perplexity(model, world / "meta_text_eval.json", tokenizer=tokenizer)
    specs = read_meta(world / "meta_text_eval.json")
    total, count = 0.0, 0
    for spec in specs:
        for line in spec.annotation.read_text().splitlines():
            sample = build_sample(json.loads(line), spec, tokenizer, DataConfig(), random.Random(0))
            with torch.no_grad():
                loss = model(sample.input_ids[None], labels=sample.labels[None], loss_chunk=0).loss
            n = int((sample.labels[1:] != -100).sum())
            total, count = total + float(loss) * n, count + n
    assert found["tokens"] == count and found["records"] == sum(1 for s in specs for _ in s.annotation.open())
    assert math.isclose(found["perplexity"], math.exp(total / count), rel_tol=1e-5)
    assert found["perplexity"] > 100  # an untrained model over ~1,200 tokens: near the vocabulary size
    # records with images are skipped and counted, not scored
    mixed = world / "meta_eval.json"
    with pytest.raises(ValueError, match="no text-only record"):
        text_perplexity(model, mixed, tokenizer=tokenizer)


def test_stats_and_cells():
    s = stats([0.5, 0.6, 0.7])
    assert math.isclose(s["mean"], 0.6) and math.isclose(s["sd"], 0.1) and s["min"] == 0.5 and s["max"] == 0.7
    assert cell([0.5, 0.6, 0.7]) == "60.0 ± 10.0 (50.0..70.0)"
    assert cell([2.0, 4.0], percent=False, digits=2) == "3.00 ± 1.41 (2.00..4.00)"
    assert cell([0.25]) == "25.0"


def test_a_report_keeps_the_discussion_below_its_marker(tmp_path):
    ctx = Context("demo-claim", [0, 1], tmp_path / "work", tmp_path / "docs")
    drawn = []

    def plot(png: Path) -> None:
        png.write_bytes(b"png")
        drawn.append(png)

    write_report(ctx, "A claim", "| a | b |\n| --- | --- |\n| 1 | 2 |", [{"x": 1}], plot)
    md = tmp_path / "docs" / "demo-claim.md"
    text = md.read_text()
    assert text.startswith("# A claim") and "| 1 | 2 |" in text and "nativevl ablate demo-claim --seeds 2" in text
    assert END in text and drawn == [tmp_path / "docs" / "demo-claim.png"]
    md.write_text(text.split(END)[0] + END + "\n## Discussion\n\nWritten by hand.\n")
    results = write_report(ctx, "A claim", "| a | b |\n| --- | --- |\n| 3 | 4 |", [{"x": 2}], plot)
    again = md.read_text()
    assert "| 3 | 4 |" in again and "| 1 | 2 |" not in again and again.endswith("Written by hand.\n")
    assert json.loads((tmp_path / "docs" / "demo-claim.json").read_text()) == results
    assert results["per_seed"] == [{"x": 2}] and results["seeds"] == [0, 1]


def test_a_finished_stage_is_reused_and_a_changed_one_retrains(world, tmp_path):
    def cfg(steps: int):  # noqa: ANN202
        c = demo_pretrain()
        c.steps, c.save_every = steps, 100
        c.data.meta, c.data.tokenizer = str(world / "meta_pretrain.json"), str(world / "tokenizer")
        return c

    out = tmp_path / "run"
    first = stage(cfg(2), out, progress=False)
    stamp = (out / "final" / "model.safetensors").stat().st_mtime_ns
    again = stage(cfg(2), out, progress=False)
    assert [r["loss"] for r in again] == [r["loss"] for r in first] and len(first) == 2
    assert (out / "final" / "model.safetensors").stat().st_mtime_ns == stamp  # not trained again
    longer = stage(cfg(3), out, progress=False)
    assert len(longer) == 3 and [r["loss"] for r in longer[:2]] == [r["loss"] for r in first]  # same seed, same start
    # a stage that starts from a checkpoint trains again when that checkpoint changed, though its config did not
    follow = cfg(2)
    follow.model.checkpoint, follow.model.overrides = str(out / "final"), {}
    after = stage(follow, tmp_path / "next", progress=False)
    stamp = (tmp_path / "next" / "final" / "model.safetensors").stat().st_mtime_ns
    assert stage(follow, tmp_path / "next", progress=False) == after
    assert (tmp_path / "next" / "final" / "model.safetensors").stat().st_mtime_ns == stamp
    stage(cfg(4), out, progress=False)  # the start changes
    again = stage(follow, tmp_path / "next", progress=False)
    assert (tmp_path / "next" / "final" / "model.safetensors").stat().st_mtime_ns != stamp
    assert [r["loss"] for r in again] != [r["loss"] for r in after]


@pytest.mark.parametrize("name", ["native-vs-posthoc", "v2pe", "mpo", "best-of-n"])
def test_each_ablation_runs_end_to_end_and_writes_its_report(name, tmp_path, capsys):
    work, docs = tmp_path / "work", tmp_path / "docs"
    results = run_ablation(name, seeds=2, work=work, docs=docs, steps_scale=0.001, world_scale=0.05, eval_limit=2,
                           progress=False)
    printed = capsys.readouterr().out
    assert len(results["per_seed"]) == 2 and [s["seed"] for s in results["per_seed"]] == [0, 1]
    md = (docs / f"{name}.md").read_text()
    assert f"nativevl ablate {name} --seeds 2" in md and "smoke run" in md and f"![{name}]({name}.png)" in md
    assert (docs / f"{name}.png").read_bytes()[:4] == b"\x89PNG"
    raw = json.loads((docs / f"{name}.json").read_text())
    assert raw["seeds"] == [0, 1] and raw["per_seed"] == json.loads(json.dumps(results["per_seed"], default=str))
    assert " ± " in printed  # the table, with the spread over the two seeds
    # the page can be written again from its figures alone, without training: the same page
    (docs / f"{name}.md").unlink()
    run_ablation(name, seeds=2, work=work, docs=docs, report_only=True)
    assert (docs / f"{name}.md").read_text() == md
    # the per-seed figures are accuracies, perplexities and curves, not placeholders
    if name == "native-vs-posthoc":
        for seed in results["per_seed"]:
            assert seed["native"]["pretrain_steps"] == seed["post-hoc"]["pretrain_steps"]
            assert seed["native"]["perplexity_sft"] > 1 and 0 <= seed["native"]["accuracy"]["colour"] <= 1
    if name == "v2pe":
        arms = results["per_seed"][0]["arms"]
        assert set(arms) == {"δ = 1", "δ = 1/4", "δ = 1/16", "random δ"}
        assert set(arms["random δ"]["evals"]) == {"by length", "δ = 1"}
        reach = {k: arms["δ = 1/16"]["evals"]["trained"][k]["span"] for k in ("1x", "2x", "4x")}
        assert reach["1x"] < reach["2x"] < reach["4x"] < arms["δ = 1"]["evals"]["trained"]["4x"]["span"]
    if name == "best-of-n":
        for seed in results["per_seed"]:
            c = seed["curves"]
            assert all(c["pass@N"][str(n)] >= c["Best-of-N (PRM)"][str(n)] for n in (1, 2, 4, 8, 16))
            assert c["Best-of-N (PRM)"]["1"] == c["majority vote"]["1"] == c["pass@N"]["1"]


def test_the_command_line_names_the_ablations(tmp_path):
    run = subprocess.run([sys.executable, "-m", "nativevl", "ablate", "nope"], capture_output=True, text=True)
    assert run.returncode == 2 and "native-vs-posthoc" in run.stderr and "best-of-n" in run.stderr
