"""mpo: does mixed preference optimisation improve step-by-step reasoning over the SFT model it starts from?

Per seed: the SFT policy (`policy.py`), then MPO on the world's preference pairs (`demo_mpo`: 0.8 DPO + 0.2 BCO
pair + 1.0 SFT loss against the frozen SFT model); both answer the world's held-out step-by-step questions
greedily. Reported: the accuracy of the final answer, and the share of answers with no final-answer line
(`Answer: …`), which the preference pairs always have.
"""

from __future__ import annotations

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
from nativevl.eval.world import evaluate_world
from nativevl.infer.prm import ANSWER_LINE
from nativevl.train.config import ModelSpec
from nativevl.train.recipes import demo_mpo

MPO_STEPS = 100
TITLE = "MPO against SFT on step-by-step questions"


def answers(model: Path, world: Path, limit: int | None) -> dict[str, float]:
    """Greedy replies to the held-out step-by-step questions: accuracy and the share without an `Answer:` line."""
    rows: list[dict[str, Any]] = []
    table = evaluate_world(model, world / "meta_eval.json", world / "meta_sft.json", groups=("reasoning",),
                           limit=limit, rows=rows)["reasoning"]
    return {"accuracy": table["accuracy"], "baseline": table["baseline"], "n": table["n"],
            "no_answer_line": sum(not ANSWER_LINE.search(r["reply"]) for r in rows) / len(rows)}


def run(ctx: Context) -> dict[str, Any]:
    world = ctx.world()
    per_seed = []
    for seed in ctx.seeds:
        sft, seconds = sft_policy(ctx, seed)
        cfg = demo_mpo()
        cfg.seed, cfg.steps = seed, ctx.steps(MPO_STEPS)
        cfg.model = ModelSpec(checkpoint=str(sft))
        cfg.data.meta, cfg.data.tokenizer = str(world / "meta_mpo.json"), str(world / "tokenizer")
        metrics = stage(cfg, ctx.seed_dir(seed) / "mpo", ctx.progress)
        last = metrics[-10:]
        per_seed.append({
            "seed": seed, "policy_seconds": seconds, "mpo_seconds": train_seconds(metrics),
            "mpo_reward_accuracy": sum(r["reward_accuracy"] for r in last) / len(last),
            "SFT": answers(sft, world, ctx.eval_limit),
            "SFT + MPO": answers(ctx.seed_dir(seed) / "mpo" / "final", world, ctx.eval_limit)})
        print(f"mpo: seed {seed} done ({ctx.elapsed():.1f} min)", flush=True)
    return report(ctx, per_seed)


def report(ctx: Context, per_seed: list[dict[str, Any]]) -> dict[str, Any]:
    arms = ("SFT", "SFT + MPO")

    def values(arm: str, key: str) -> list[float]:
        return [s[arm][key] for s in per_seed]

    def diff(key: str) -> list[float]:
        return [b - a for a, b in zip(values("SFT", key), values("SFT + MPO", key), strict=True)]

    header = ["held-out step-by-step questions", "SFT", "SFT + MPO", "MPO − SFT"]
    rows = [["accuracy of the final answer (%)", cell(values("SFT", "accuracy")), cell(values("SFT + MPO", "accuracy")),
             cell(diff("accuracy"))],
            ["answers with no `Answer:` line (%)", cell(values("SFT", "no_answer_line")),
             cell(values("SFT + MPO", "no_answer_line")), cell(diff("no_answer_line"))]]
    print(text_table(header, rows))
    first = per_seed[0]["SFT"]
    reward = cell([s["mpo_reward_accuracy"] for s in per_seed])
    def seed_cell(found: dict[str, float]) -> str:
        return f"{100 * found['accuracy']:.1f} / {100 * found['no_answer_line']:.1f}"

    body = f"""
**Claim (paper §2.3; Table 13):** MPO (preference loss + quality loss + generation loss on preference pairs)
improves the SFT model's step-by-step reasoning.

**Setup.** Per seed: {describe(ctx)}, then {ctx.steps(MPO_STEPS)} MPO steps (`demo_mpo`: lr 1e-4; 0.8 DPO
sigmoid + 0.2 BCO pair + 1.0 SFT, β = 0.1, the frozen SFT model as reference) on the world's 900 preference
pairs (the chosen solution right; the rejected one with a miscount, a misread bar or an arithmetic slip). Both
models answer the {first['n']} held-out step-by-step questions (val + test: counting shapes, chart
arithmetic) greedily; most-frequent-answer baseline {100 * first['baseline']:.1f}%. MPO's chosen-over-rejected
reward accuracy over its last 10 steps: {reward}% (mean ± sd (min..max) over seeds, as the table).
Training the SFT policies took {sum(s['policy_seconds'] for s in per_seed) / 60:.1f} min of steps (the same
policies serve mpo and best-of-n: whichever runs second reuses them).

{markdown_table(header, rows)}

Per seed (accuracy / answers with no `Answer:` line, %):

{markdown_table(["seed", *arms], [[str(s["seed"]), *[seed_cell(s[a]) for a in arms]] for s in per_seed])}
"""

    def plot(png: Path) -> None:
        with canvas(png, "SFT vs SFT + MPO on held-out step-by-step questions (a grey line per seed)", cols=2,
                    size=(9, 4)) as axes:
            for ax, (key, label) in zip(axes, (("accuracy", "final-answer accuracy (%)"),
                                               ("no_answer_line", "answers with no Answer: line (%)")), strict=True):
                error_bars(ax, [0, 1], [values(a, key) for a in arms], "mean, min..max over seeds", linestyle="none")
                for s in per_seed:
                    ax.plot([0, 1], [100 * s[a][key] for a in arms], color="grey", alpha=0.4, linewidth=0.8)
                if key == "accuracy":
                    ax.axhline(100 * first["baseline"], color="grey", linestyle=":", label="most frequent answer")
                ax.set_xticks([0, 1], list(arms))
                ax.set_xlim(-0.5, 1.5)
                ax.set_ylabel(label)
                ax.legend(fontsize=8)

    return write_report(ctx, TITLE, body, per_seed, plot)
