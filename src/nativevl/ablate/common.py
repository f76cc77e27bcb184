"""What every ablation shares: the embedded world, training stages that are reused when they already ran with the
same configuration, seeds, statistics over seeds, and the report (a markdown table, a plot and the raw figures).

A report is written between two markers; whatever follows the end marker (the discussion, written by a person
after reading the figures) is kept when the ablation runs again.
"""

from __future__ import annotations

import json
import platform
import shutil
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from nativevl.data.world import MARKER, file_digest, generate_world
from nativevl.train.config import TrainConfig
from nativevl.train.trainer import train

BEGIN = "<!-- nativevl ablate: measured figures, rewritten by each run -->"
END = "<!-- nativevl ablate: end of the measured figures; what follows is kept -->"
RUN_DIRS = ("native-vs-posthoc", "v2pe", "mpo", "best-of-n", "policy")  # the folders of `work` that hold checkpoints


@dataclass
class Context:
    """Where an ablation runs and how large it is."""

    name: str
    seeds: list[int]
    work: Path  # checkpoints and per-seed results: work/<name>/seed<k>/…; the world in work/world
    docs: Path  # the report: docs/<name>.md, .png, .json
    steps_scale: float = 1.0  # every stage's steps (and the PRM's labelled questions) times this: tests run a few
    world_scale: float = 1.0  # the world's size (tests use a small one)
    eval_limit: int | None = None  # held-out records per dataset (None: all)
    progress: bool = True
    minutes: float | None = None  # the run's duration when a report is rewritten from its figures
    started: float = field(default_factory=time.perf_counter)
    _world_checked: bool = False

    def steps(self, n: int) -> int:
        # at least 3: the post-hoc arm splits its pre-training steps into three stages of >= 1 (a stage of 0
        # steps is refused by the config's validation)
        return max(3, round(n * self.steps_scale))

    def seed_dir(self, seed: int) -> Path:
        return self.work / self.name / f"seed{seed}"

    def world(self) -> Path:
        """The ablations' world (seed 0, the same for every seed and ablation: seeds vary the training only).
        Written afresh on the first call of a run and compared with the one in `work`: when the generator has
        changed, the old world and every checkpoint trained on it are removed, so no stale stage is reused."""
        path = self.work / "world"
        if self._world_checked:
            return path
        fresh = self.work / ".world.new"
        shutil.rmtree(fresh, ignore_errors=True)
        generate_world(fresh, seed=0, scale=self.world_scale)
        if (path / MARKER).is_file() and file_digest(path) == file_digest(fresh):
            shutil.rmtree(fresh)
        else:
            for name in ("world", *RUN_DIRS):  # only what the ablations write: `work` may hold other things
                shutil.rmtree(self.work / name, ignore_errors=True)
            fresh.rename(path)
        self._world_checked = True
        return path

    def elapsed(self) -> float:
        """Minutes since the run started (or those of the run a rewritten report comes from)."""
        return self.minutes if self.minutes is not None else (time.perf_counter() - self.started) / 60


def stage(cfg: TrainConfig, out: Path, progress: bool = True) -> list[dict[str, float]]:
    """Train `cfg` into `out`, or, when `out` already holds a finished run of this very configuration from this
    very starting checkpoint, read its metrics instead (on one CPU process they give the same weights). A run of
    another configuration or start is cleared first; an unfinished run of this one resumes from its last
    checkpoint."""
    cfg.out, cfg.progress, cfg.resume = str(out), progress, True
    start = cfg.model.checkpoint
    key = {"config": cfg.to_toml(), "start": file_digest(start) if start else None}
    saved = out / "stage.json"
    if out.exists() and (not saved.is_file() or json.loads(saved.read_text()) != key):
        shutil.rmtree(out)
    if (out / "final").is_dir():
        return read_metrics(out)
    out.mkdir(parents=True, exist_ok=True)
    saved.write_text(json.dumps(key))
    train(cfg)
    return read_metrics(out)


def read_metrics(out: Path) -> list[dict[str, float]]:
    """The run's metrics by step (a resumed run rewrote the steps it repeated: the last row of a step wins)."""
    rows: dict[int, dict[str, float]] = {}
    for line in (out / "metrics.jsonl").read_text().splitlines():
        if line.strip():
            row = json.loads(line)
            rows[int(row["step"])] = row
    return [rows[s] for s in sorted(rows)]


def train_seconds(metrics: list[dict[str, float]]) -> float:
    return sum(r.get("step_seconds", 0.0) for r in metrics)


# --- statistics over seeds ----------------------------------------------------------------------------------


def stats(values: Sequence[float]) -> dict[str, float]:
    values = list(values)
    return {"mean": statistics.fmean(values), "sd": statistics.stdev(values) if len(values) > 1 else 0.0,
            "min": min(values), "max": max(values), "n": len(values)}


def cell(values: Sequence[float], percent: bool = True, digits: int = 1) -> str:
    """'53.2 ± 4.1 (48.0..57.1)': mean ± sample standard deviation (min..max) over seeds."""
    s = stats(values)
    k = 100 if percent else 1
    if s["n"] == 1:
        return f"{k * s['mean']:.{digits}f}"
    mean, sd, low, high = (f"{k * s[key]:.{digits}f}" for key in ("mean", "sd", "min", "max"))
    return f"{mean} ± {sd} ({low}..{high})"


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def text_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """The same table for the terminal, in aligned columns."""
    table = [list(header), *[[str(c) for c in row] for row in rows]]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in table)


# --- the report ---------------------------------------------------------------------------------------------


def machine() -> str:
    return f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}"


def write_report(ctx: Context, title: str, body: str, per_seed: list[dict[str, Any]],
                 plot: Callable[[Path], None]) -> dict[str, Any]:
    """docs/<name>.md (the measured part between the markers; anything after the end marker is kept), the plot
    in docs/<name>.png and the figures of every seed in docs/<name>.json, which it returns."""
    ctx.docs.mkdir(parents=True, exist_ok=True)
    md, png, raw = (ctx.docs / f"{ctx.name}{ext}" for ext in (".md", ".png", ".json"))
    plot(png)
    results = {"per_seed": per_seed, "seeds": ctx.seeds, "minutes": round(ctx.elapsed(), 1), "machine": machine(),
               "steps_scale": ctx.steps_scale, "world_scale": ctx.world_scale}
    raw.write_text(json.dumps(results, indent=1, sort_keys=True) + "\n")
    kept = "\n## Discussion\n\n(Not yet written: read the figures above.)\n"
    if md.is_file() and END in (old := md.read_text()):
        kept = old.split(END, 1)[1]
    command = f"nativevl ablate {ctx.name} --seeds {len(ctx.seeds)}"
    head = (f"# {title}\n\n{BEGIN}\n\n`{command}`: seeds {', '.join(map(str, ctx.seeds))}, "
            f"{results['minutes']} min on {machine()}"
            + (f" (steps × {ctx.steps_scale}, world × {ctx.world_scale}: a smoke run, not the figures to read)"
               if ctx.steps_scale != 1 or ctx.world_scale != 1 else "") + ".\n\n")
    md.write_text(head + body.strip() + f"\n\n![{ctx.name}]({png.name})\n\n{END}" + kept)
    return results


@contextmanager
def canvas(png: Path, title: str, cols: int = 1, size: tuple[float, float] = (7, 4.5),
           width_ratios: list[float] | None = None) -> Iterator[Any]:
    """Axes to draw on (one, or a row of `cols`), saved to `png` with a grid and `title` when the block ends."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, cols, figsize=size, dpi=100,
                             gridspec_kw={"width_ratios": width_ratios} if width_ratios else None)
    try:
        yield axes
        for ax in axes if cols > 1 else [axes]:
            ax.grid(alpha=0.3)
        fig.suptitle(title)
        fig.tight_layout()
        fig.savefig(png)
    finally:
        plt.close(fig)


def error_bars(ax: Any, xs: Sequence[float], per_seed: Sequence[Sequence[float]], label: str, percent: bool = True,
               **style: Any) -> None:
    """A line through the means over seeds with min..max bars."""
    k = 100 if percent else 1
    means = [k * statistics.fmean(v) for v in per_seed]
    low = [m - k * min(v) for m, v in zip(means, per_seed, strict=True)]
    high = [k * max(v) - m for m, v in zip(means, per_seed, strict=True)]
    ax.errorbar(xs, means, yerr=[low, high], label=label, capsize=3, marker="o", **style)


def sub_meta(world: Path, metas: Sequence[str], keep: Callable[[str], bool], out: Path,
             weights: dict[str, float] | None = None) -> Path:
    """A meta file at `out` holding the datasets of the world's `metas` (e.g. "meta_pretrain.json") whose names
    `keep` accepts, with absolute paths (the world stays where it is) and optional sampling weights by name."""
    entries: dict[str, Any] = {}
    for name in metas:
        for dataset, entry in json.loads((world / name).read_text()).items():
            if keep(dataset):
                entry = {**entry, "root": str((world / entry["root"]).resolve()),
                         "annotation": str((world / entry["annotation"]).resolve())}
                if weights and dataset in weights:
                    entry["weight"] = weights[dataset]
                entries[dataset] = entry
    if not entries:
        raise ValueError(f"no dataset of {', '.join(metas)} in {world} was kept")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(entries, indent=2, sort_keys=True) + "\n")
    return out
