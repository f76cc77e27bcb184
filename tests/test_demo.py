"""`nativevl demo` end to end at a toy scale: every stage runs and reports (the real run's figures are in the
README; they take minutes, not a test)."""

from __future__ import annotations

import json


def test_demo_runs_every_stage_and_reports(tmp_path, capsys):
    from nativevl.demo import run_demo
    from nativevl.eval.world import GROUPS

    out = tmp_path / "demo"
    results = run_demo(out, steps={"pretrain": 2, "sft": 2, "mpo": 2, "prm": 2}, best_of=2, prm_questions=2,
                       scale=0.05, eval_limit=2)
    printed = capsys.readouterr().out
    for line in ("1. world", "2. native pre-training: 2 steps", "3. SFT: 2 steps", "4. held-out questions",
                 "5. loss curves", "nativevl chat", "6. MPO: 2 steps", "7. PRM data", "PRM training: 2 steps",
                 "8. held-out step-by-step questions", "MPO Best-of-2 (PRM)", "done in"):
        assert line in printed, line
    assert "colour" in results and set(results) - {"alignment"} <= set(GROUPS)
    rows = results["alignment"]
    assert list(rows) == ["SFT greedy", "MPO greedy", "MPO majority of 2", "MPO Best-of-2 (PRM)"]
    assert all(r["n"] == rows["SFT greedy"]["n"] > 0 for r in rows.values())
    assert json.loads((out / "results.json").read_text())["alignment"] == rows
    for stage in ("pretrain", "sft", "mpo", "prm"):
        assert (out / stage / "final" / "config.json").is_file()
    assert (out / "pretrain" / "loss_curve.png").is_file()
    assert (out / "prm_data" / "prm.jsonl").read_text().count('"+"') > 0
