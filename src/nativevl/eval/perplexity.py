"""Text perplexity of a model on held-out conversations: exp of the mean negative log-likelihood per answer token.

Each record is rendered exactly as in training (the `internvl2_5` template, its default system prompt, labels on
the assistant turns and their `<|im_end|>` only, spec §4.3), so the figure is the training loss's own measure on
text the model never saw. The embedded world's `meta_text_eval.json` holds such conversations.
"""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import torch

from nativevl.data.dataset import DataConfig, DatasetSpec, SkipRecord, build_sample, read_lines, read_meta
from nativevl.model.internvl import InternVLModel
from nativevl.tokenizer import InternVLTokenizer, load_tokenizer
from nativevl.weights import load_model


@torch.inference_mode()
def text_perplexity(model: str | Path | InternVLModel, meta: str | Path | list[DatasetSpec],
                    tokenizer: InternVLTokenizer | None = None, max_seq_length: int = 4096) -> dict[str, float]:
    """{"perplexity", "nll", "tokens", "records", "skipped"} over every text-only record of `meta`'s datasets
    (records with images are skipped and counted: this measures the language model alone)."""
    if not isinstance(model, InternVLModel):
        tokenizer = tokenizer or load_tokenizer(model)
        model = load_model(model).eval()
    elif tokenizer is None:
        raise ValueError("a loaded model needs its tokenizer")
    cfg = DataConfig(max_seq_length=max_seq_length, template=model.config.template or "internvl2_5")
    specs = read_meta(meta) if isinstance(meta, (str, Path)) else list(meta)
    device = next(model.parameters()).device
    total, tokens, records, skipped = 0.0, 0, 0, 0
    for spec in specs:
        for line_no, text in read_lines(spec):
            record = json.loads(text)
            if "image" in record or "video" in record:
                skipped += 1
                continue
            try:
                sample = build_sample(record, spec, tokenizer, cfg, random.Random(0), f"{spec.annotation}:{line_no}")
            except SkipRecord:
                skipped += 1
                continue
            ids, labels = sample.input_ids[None].to(device), sample.labels[None].to(device)
            logits = model(ids).logits.float()
            # position t predicts token t + 1
            nll = torch.nn.functional.cross_entropy(logits[0, :-1], labels[0, 1:], ignore_index=-100, reduction="sum")
            total += float(nll)
            tokens += int((labels[0, 1:] != -100).sum())
            records += 1
    if tokens == 0:
        raise ValueError(f"{meta}: no text-only record with answer tokens")
    return {"perplexity": math.exp(total / tokens), "nll": total / tokens, "tokens": tokens, "records": records,
            "skipped": skipped}
