"""Training throughput on the embedded world: the demo's model (an InternVL3-architecture model of ~10M
parameters, 112-px tiles) and its pre-training data, one optimiser step per batch, packed against padded.

The same samples are trained on both ways, from the same initial weights:
- packed: the trainer's own rows (several samples in one sequence under a token budget, attention kept inside
  each sample through `cu_seqlens`);
- padded: each packed row's samples as a padded batch (B, longest), as a trainer without packing would build.
Tokens/s counts real tokens only; packing efficiency is real tokens over the positions computed.
"""

from __future__ import annotations

import copy
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.common import fmt, table


def batches(steps: int, max_tokens: int, scale: float, folder: Path):  # noqa: ANN201
    """The demo pre-training recipe's model and its first `steps` packed rows."""
    from nativevl.data.world import generate_world
    from nativevl.train.recipes import demo_pretrain
    from nativevl.train.trainer import Trainer

    generate_world(folder / "world", seed=0, scale=scale)
    cfg = demo_pretrain()
    cfg.out, cfg.progress, cfg.resume = str(folder / "run"), False, False
    cfg.data.meta = str(folder / "world" / "meta_pretrain.json")
    cfg.data.tokenizer = str(folder / "world" / "tokenizer")
    cfg.data.max_tokens, cfg.data.num_workers = max_tokens, 0
    trainer = Trainer(cfg)
    rows = []
    for batch in trainer.loaders[0]:
        rows.append(batch)
        if len(rows) == steps:
            break
    return trainer.model, rows


def padded(batch, pad_id: int) -> dict[str, torch.Tensor]:  # noqa: ANN001
    """A packed row's samples as one right-padded batch."""
    bounds = batch.cu_seqlens.tolist()
    spans = list(zip(bounds[:-1], bounds[1:], strict=True))
    longest = max(e - s for s, e in spans)
    ids = torch.full((len(spans), longest), pad_id, dtype=torch.long)
    labels = torch.full((len(spans), longest), -100, dtype=torch.long)
    mask = torch.zeros((len(spans), longest), dtype=torch.long)
    positions = torch.arange(longest, dtype=torch.float32).repeat(len(spans), 1)
    for row, (s, e) in enumerate(spans):
        ids[row, : e - s], labels[row, : e - s] = batch.input_ids[0, s:e], batch.labels[0, s:e]
        positions[row, : e - s] = batch.position_ids[0, s:e]
        mask[row, : e - s] = 1
    return {"input_ids": ids, "labels": labels, "attention_mask": mask, "position_ids": positions,
            "pixel_values": batch.pixel_values, "image_flags": batch.image_flags}


def packed(batch) -> dict[str, torch.Tensor]:  # noqa: ANN001
    return {"input_ids": batch.input_ids, "labels": batch.labels, "position_ids": batch.position_ids,
            "cu_seqlens": batch.cu_seqlens, "pixel_values": batch.pixel_values, "image_flags": batch.image_flags}


def train_time(model, inputs: list[dict[str, torch.Tensor]], warmup: int) -> float:  # noqa: ANN001
    """Seconds for the steps after `warmup`: forward, token-mean loss, backward, clipping, AdamW."""
    model = copy.deepcopy(model).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    start = 0.0
    for i, x in enumerate(inputs):
        if i == warmup:
            start = time.perf_counter()
        loss = model(**x).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return time.perf_counter() - start


def run(steps: int, repeats: int, max_tokens: int = 2048, scale: float = 0.05) -> str:
    with tempfile.TemporaryDirectory() as folder:
        model, rows = batches(steps + 2, max_tokens, scale, Path(folder))
    timed = rows[2:]  # the first two warm up
    real = sum(b.num_tokens for b in timed)
    padded_slots = 0
    for b in timed:
        lengths = (b.cu_seqlens[1:] - b.cu_seqlens[:-1]).tolist()
        padded_slots += len(lengths) * max(lengths)
    results: dict[str, list[float]] = {"packed": [], "padded": []}
    for _ in range(repeats):
        results["packed"].append(real / train_time(model, [packed(b) for b in rows], warmup=2))
        results["padded"].append(real / train_time(model, [padded(b, pad_id=0) for b in rows], warmup=2))
    med = {k: sorted(v)[len(v) // 2] for k, v in results.items()}
    shown = {k: f"{fmt(med[k])} ({fmt(min(v))}..{fmt(max(v))})" for k, v in results.items()}
    table_rows = [
        ["packed (cu_seqlens)", shown["packed"], str(real), "100%", f"{med['packed'] / med['padded']:.2f}x"],
        ["padded batch", shown["padded"], str(padded_slots), f"{real / padded_slots:.0%}", "1.00x"],
    ]
    samples = sum(b.num_samples for b in timed)
    head = (f"{len(timed)} steps of {samples / len(timed):.1f} samples ({real / len(timed):.0f} real tokens) each; "
            f"packed rows fill {real / (len(timed) * max_tokens):.0%} of their {max_tokens}-token budget; float32, "
            f"median of {repeats} (min..max)\n\n")
    return head + table(["batches", "real tokens/s", "positions computed", "real / computed", "speed-up"], table_rows)
