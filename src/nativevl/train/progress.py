"""Seeing a run: a tqdm progress bar (loss, learning rate, tokens/s, ETA), metrics.jsonl, TensorBoard when it is
installed, and loss_curve.png at the end."""

from __future__ import annotations

import json
import os
from pathlib import Path

from tqdm import tqdm


def keep_metrics_until(metrics_file: Path, step: int) -> int:
    """Drop the rows past `step` (and any half-written line) from a metrics.jsonl, so that a run resumed at `step`
    (0: started afresh) leaves one row per step; returns how many were dropped."""
    if not metrics_file.is_file():
        return 0
    kept, dropped = [], 0
    for line in metrics_file.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
            keep = int(row["step"]) <= step
        except (ValueError, KeyError, TypeError):
            keep = False
        if keep:
            kept.append(line + "\n")
        else:
            dropped += bool(line.strip())
    if dropped:
        tmp = metrics_file.with_suffix(".jsonl.tmp")
        tmp.write_text("".join(kept), encoding="utf-8")
        os.replace(tmp, metrics_file)
    return dropped


class Progress:
    def __init__(self, out: Path, total: int, initial: int, enabled: bool = True, bar: bool = True) -> None:
        """`enabled`: write metrics (the main process); `bar`: also show the progress bar."""
        self.out, self.enabled = out, enabled
        self.bar = tqdm(total=total, initial=initial, disable=not (enabled and bar), unit="step", dynamic_ncols=True)
        self.file = open(out / "metrics.jsonl", "a", encoding="utf-8") if enabled else None  # noqa: SIM115
        self.board = None
        if enabled:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.board = SummaryWriter(str(out / "tensorboard"))
            except ImportError:  # TensorBoard is optional
                self.board = None

    def update(self, metrics: dict[str, float]) -> None:
        if not self.enabled:
            return
        self.file.write(json.dumps(metrics) + "\n")
        self.file.flush()
        if self.board is not None:
            for key in ("loss", "lr", "grad_norm", "efficiency"):
                self.board.add_scalar(key, metrics[key], int(metrics["step"]))
        tokens_per_s = metrics["tokens"] / max(metrics.get("step_seconds", 0.0), 1e-9) \
            if "step_seconds" in metrics else None
        postfix = {"loss": f"{metrics['loss']:.4f}", "lr": f"{metrics['lr']:.2e}"}
        if tokens_per_s is not None:
            postfix["tok/s"] = f"{tokens_per_s:,.0f}"
        self.bar.set_postfix(postfix)
        self.bar.update(1)

    def close(self) -> None:
        if not self.enabled:
            return
        self.bar.close()
        self.file.close()
        if self.board is not None:
            self.board.close()
        plot_loss(self.out / "metrics.jsonl", self.out / "loss_curve.png")


def plot_loss(metrics_file: Path, png: Path, title: str | None = None) -> None:
    """The loss per step from a metrics.jsonl (every run appended to it), as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(line) for line in metrics_file.read_text().splitlines() if line.strip()]
    by_step = {int(r["step"]): r["loss"] for r in rows}  # one row a step (older files: the last row wins)
    steps = sorted(by_step)
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    ax.plot(steps, [by_step[s] for s in steps], linewidth=1.2)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(title or metrics_file.parent.name)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(png)
    plt.close(fig)
