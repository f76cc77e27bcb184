"""`nativevl ablate NAME [--seeds 3]`: the InternVL3 paper's claims measured at small scale on the embedded world,
on a CPU. Each ablation trains its own toy models per seed, prints a table (mean and spread over seeds) and
writes `docs/ablations/NAME.md`, `.png` and `.json`.

- `native-vs-posthoc`: native multimodal pre-training against the post-hoc recipe, at equal compute;
- `v2pe`: visual position steps δ = 1, 1/4, 1/16 and random, on prompts 1x, 2x and 4x the training length;
- `mpo`: SFT against SFT + MPO on step-by-step questions;
- `best-of-n`: greedy against majority vote and Best-of-N with a trained process reward model, N = 1 … 16.

Checkpoints live under `--work` (default `runs/ablate`); a stage that already ran with the same configuration
is reused, and a killed run resumes where it stopped. Command: `nativevl ablate v2pe --seeds 3`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from nativevl.ablate import bestofn, mpo, native, v2pe
from nativevl.ablate.common import Context

MODULES = {"native-vs-posthoc": native, "v2pe": v2pe, "mpo": mpo, "best-of-n": bestofn}
ABLATIONS: dict[str, Callable[[Context], dict[str, Any]]] = {name: m.run for name, m in MODULES.items()}


def run_ablation(name: str, seeds: int = 3, work: str | Path = "runs/ablate", docs: str | Path = "docs/ablations",
                 steps_scale: float = 1.0, world_scale: float = 1.0, eval_limit: int | None = None,
                 progress: bool = True, report_only: bool = False) -> dict[str, Any]:
    """Run ablation `name` over seeds 0 … seeds-1; with `report_only`, rewrite its page from the figures of the
    last run (`docs/NAME.json`) without training or evaluating anything."""
    if name not in ABLATIONS:
        raise KeyError(f"unknown ablation {name!r}; known: {', '.join(ABLATIONS)}")
    if seeds < 1:
        raise ValueError(f"--seeds must be at least 1, got {seeds}")
    if report_only:
        raw = Path(docs) / f"{name}.json"
        if not raw.is_file():
            raise FileNotFoundError(f"{raw}: no figures of an earlier run to write the report from")
        last = json.loads(raw.read_text())
        ctx = Context(name, last["seeds"], Path(work), Path(docs), last["steps_scale"], last["world_scale"],
                      minutes=last["minutes"])
        return MODULES[name].report(ctx, last["per_seed"])
    return ABLATIONS[name](Context(name, list(range(seeds)), Path(work), Path(docs), steps_scale, world_scale,
                                   eval_limit, progress))
