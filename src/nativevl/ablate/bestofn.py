"""best-of-n: does Best-of-N with a process reward model beat greedy decoding, and how does it grow with N?

Per seed: the SFT policy (`policy.py`); a PRM trained from it on solutions of the world's training step-by-step
questions labelled by the Monte-Carlo rule (as the demo: `nativevl prm-data`, then `demo_prm`); then on each
held-out step-by-step question 16 samples (temperature 0.7, top-p 0.95), each scored once by the PRM. For N = 1,
2, 4, 8, 16 the first N samples give Best-of-N (the PRM's highest-scoring one), the majority vote of their final
answers, and pass@N (some sample right: the ceiling of any selection); greedy decoding is the reference.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from nativevl.ablate.common import (
    Context,
    canvas,
    cell,
    error_bars,
    markdown_table,
    stage,
    text_table,
    train_seconds,
    write_report,
)
from nativevl.ablate.policy import describe, sft_policy
from nativevl.data.world import file_digest
from nativevl.eval.world import evaluate_world, final_answer, normalize
from nativevl.infer.prm import ProcessRewardModel, majority_vote
from nativevl.tokenizer import load_tokenizer
from nativevl.train.config import ModelSpec
from nativevl.train.prm_data import build_prm_data
from nativevl.train.recipes import demo_prm
from nativevl.weights import load_model

NS = (1, 2, 4, 8, 16)
PRM_QUESTIONS = 32
PRM_STEPS = 60
TITLE = "Best-of-N with a process reward model against greedy decoding"
METHODS = ("Best-of-N (PRM)", "majority vote", "pass@N")


def curves(rows: list[dict[str, Any]], ns: tuple[int, ...] = NS) -> dict[str, dict[int, float]]:
    """{method: {N: accuracy}} from each question's candidates (their sampling order, PRM scores and
    correctness): the first N samples of each question, the PRM's pick (ties to the earlier sample), the
    majority final answer (ties to the earlier sample) and whether any is right."""
    out: dict[str, dict[int, float]] = {m: {} for m in METHODS}
    for n in ns:
        picked, voted, any_right = [], [], []
        for row in rows:
            first = sorted(row["candidates"], key=lambda c: c["index"])[:n]
            picked.append(max(first, key=lambda c: (c["score"], -c["index"]))["correct"])
            vote = majority_vote([c["response"] for c in first])
            voted.append(final_answer(vote) == normalize(str(row["answer"])))
            any_right.append(any(c["correct"] for c in first))
        for method, hits in zip(METHODS, (picked, voted, any_right), strict=True):
            out[method][n] = sum(hits) / len(hits)
    return out


def score_auc(rows: list[dict[str, Any]]) -> float | None:
    """How well the PRM's scores rank right samples above wrong ones across all questions: the probability that
    a right sample outscores a wrong one (ties count half); None when either kind is missing."""
    right = [c["score"] for r in rows for c in r["candidates"] if c["correct"]]
    wrong = [c["score"] for r in rows for c in r["candidates"] if not c["correct"]]
    if not right or not wrong:
        return None
    return sum((a > b) + 0.5 * (a == b) for a in right for b in wrong) / (len(right) * len(wrong))


def run(ctx: Context) -> dict[str, Any]:
    world = ctx.world()
    per_seed = []
    for seed in ctx.seeds:
        out = ctx.seed_dir(seed)
        policy_dir, seconds = sft_policy(ctx, seed)
        labels = out / "prm_data"
        made_by = {"policy": file_digest(policy_dir)}  # labels of another policy (retrained since) are made again
        if not (labels / "policy.json").is_file() or json.loads((labels / "policy.json").read_text()) != made_by:
            shutil.rmtree(labels, ignore_errors=True)
            build_prm_data(policy_dir, world, labels, questions=ctx.steps(PRM_QUESTIONS), samples=2, k=4,
                           max_new_tokens=128, seed=seed)
            (labels / "policy.json").write_text(json.dumps(made_by))
        cfg = demo_prm()
        cfg.seed, cfg.steps = seed, ctx.steps(PRM_STEPS)
        cfg.model = ModelSpec(checkpoint=str(policy_dir))
        cfg.data.meta, cfg.data.tokenizer = str(labels / "meta_prm.json"), str(world / "tokenizer")
        metrics = stage(cfg, out / "prm", ctx.progress)
        policy, tokenizer = load_model(policy_dir).eval(), load_tokenizer(policy_dir)
        common = {"groups": ("reasoning",), "limit": ctx.eval_limit, "tokenizer": tokenizer}
        greedy = evaluate_world(policy, world / "meta_eval.json", world / "meta_sft.json", **common)["reasoning"]
        rows: list[dict[str, Any]] = []
        evaluate_world(policy, world / "meta_eval.json", world / "meta_sft.json", best_of=max(NS),
                       prm=ProcessRewardModel(str(out / "prm" / "final")), rows=rows, seed=seed, batch_size=32,
                       **common)
        scored = [r for r in rows if "candidates" in r]
        found = curves(scored)
        per_seed.append({"seed": seed, "policy_seconds": seconds, "prm_seconds": train_seconds(metrics),
                         "greedy": greedy["accuracy"], "baseline": greedy["baseline"], "n": greedy["n"],
                         "prm_auc": score_auc(scored),
                         "curves": {m: {str(k): v for k, v in c.items()} for m, c in found.items()}})
        print(f"best-of-n: seed {seed} done ({ctx.elapsed():.1f} min)", flush=True)
    return report(ctx, per_seed)


def report(ctx: Context, per_seed: list[dict[str, Any]]) -> dict[str, Any]:
    def curve(method: str, n: int) -> list[float]:
        return [s["curves"][method][str(n)] for s in per_seed]

    greedy = [s["greedy"] for s in per_seed]
    header = ["N", *METHODS, "Best-of-N − greedy"]
    rows = [[str(n), *[cell(curve(m, n)) for m in METHODS],
             cell([b - g for b, g in zip(curve(METHODS[0], n), greedy, strict=True)])] for n in NS]
    rows.append(["greedy", cell(greedy), "", "", ""])
    rows.append(["most frequent answer", f"{100 * per_seed[0]['baseline']:.1f}", "", "", ""])
    print(text_table(header, rows))
    aucs = [s["prm_auc"] for s in per_seed if s.get("prm_auc") is not None]
    auc = cell(aucs) if aucs else "not measurable (no right or no wrong sample)"
    body = f"""
**Claim (paper §2.4; Table 2):** Best-of-N with a process reward model (VisualPRM) as critic improves
reasoning over greedy decoding, most of all for small models; the paper uses Best-of-8.

**Setup.** Per seed: {describe(ctx)}; a PRM trained from it ({ctx.steps(PRM_STEPS)} steps, `demo_prm`) on
{ctx.steps(PRM_QUESTIONS)} training questions' solutions (the gold one and 2 sampled at temperature 1.0), each step
labelled + when one of 4 continuations from it reaches the gold answer (VisualPRM's Monte-Carlo rule). On the
{per_seed[0]['n']} held-out step-by-step questions (val + test) the policy samples {max(NS)} solutions
(temperature 0.7, top-p 0.95); the PRM scores each (the mean of its step scores). For each N the first N
samples of a question give Best-of-N, the majority vote and pass@N. Accuracy in % (mean ± sd (min..max) over
seeds). Training the SFT policies took {sum(s['policy_seconds'] for s in per_seed) / 60:.1f} min
of steps (the same policies serve mpo and best-of-n: whichever runs second reuses them).

{markdown_table(header, rows)}

How well the PRM tells right samples from wrong ones (the probability that a right sample of any question
outscores a wrong one; 50% is chance): {auc}%.
"""

    def plot(png: Path) -> None:
        with canvas(png, "Best-of-N with a PRM (mean, min..max over seeds)") as ax:
            for method in METHODS:
                error_bars(ax, list(NS), [curve(method, n) for n in NS], method,
                           linestyle="--" if method == "pass@N" else "-")
            ax.axhline(100 * sum(greedy) / len(greedy), color="black", linestyle=":", label="greedy (mean)")
            ax.axhline(100 * per_seed[0]["baseline"], color="grey", linestyle=":", label="most frequent answer")
            ax.set_xscale("log", base=2)
            ax.set_xticks(list(NS), [str(n) for n in NS])
            ax.set_xlabel("N (samples per question)")
            ax.set_ylabel("held-out accuracy (%)")
            ax.legend(fontsize=8)

    return write_report(ctx, TITLE, body, per_seed, plot)
