"""Token generation with the KV cache: one prefill over the prompt (images spliced in), then one decode step
per new token. The two are separate functions so the decode step can later be compiled or captured.

Sampling follows transformers' order: repetition penalty, min-new-tokens, temperature, top-k, top-p. As in the
original InternVL (which calls the LLM's `generate` with embeddings only), the repetition penalty sees the
generated tokens, not the prompt.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, fields
from functools import partial
from typing import Any

import torch

from nativevl.model.internvl import InternVLModel, default_positions
from nativevl.model.text import KVCache, rope_inv_freq


@dataclass
class GenerationConfig:
    max_new_tokens: int = 1024
    min_new_tokens: int = 0
    do_sample: bool = False
    temperature: float = 1.0
    top_k: int = 0  # 0: off
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    eos_token_id: list[int] = field(default_factory=list)
    stop_strings: list[str] = field(default_factory=list)  # needs a tokenizer
    seed: int | None = None

    # keys the original passes in its generation_config dict that need no action here
    _IGNORED = ("pad_token_id", "use_cache", "output_hidden_states", "return_dict_in_generate")

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> "GenerationConfig":
        """Read the original's `generation_config` dict (`dict(max_new_tokens=1024, do_sample=True)` …)."""
        d = dict(d or {})
        if d.pop("num_beams", 1) != 1:
            raise ValueError("beam search is not supported; use num_beams=1")
        for key in cls._IGNORED:
            d.pop(key, None)
        if "eos_token_id" in d and d["eos_token_id"] is not None and not isinstance(d["eos_token_id"], list):
            d["eos_token_id"] = [d["eos_token_id"]]
        if isinstance(d.get("stop_strings"), str):
            d["stop_strings"] = [d["stop_strings"]]
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown generation setting(s): {', '.join(unknown)}")
        config = cls(**{k: v for k, v in d.items() if v is not None})
        config.validate()
        return config

    def validate(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.do_sample and self.temperature <= 0:
            raise ValueError(f"temperature must be > 0 when sampling, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0 or self.repetition_penalty <= 0:
            raise ValueError("top_k must be >= 0 and repetition_penalty > 0")


def process_logits(
    logits: torch.Tensor, generated: torch.Tensor, step: int, cfg: GenerationConfig
) -> torch.Tensor:
    """(B, vocab) float logits -> scores to take the argmax of, or to sample from after softmax."""
    scores = logits.float()
    if cfg.repetition_penalty != 1.0 and generated.shape[1] > 0:
        seen = scores.gather(1, generated)
        seen = torch.where(seen < 0, seen * cfg.repetition_penalty, seen / cfg.repetition_penalty)
        scores = scores.scatter(1, generated, seen)
    if step < cfg.min_new_tokens and cfg.eos_token_id:
        scores[:, cfg.eos_token_id] = float("-inf")
    if not cfg.do_sample:
        return scores
    scores = scores / cfg.temperature
    if cfg.top_k > 0:
        kth = torch.topk(scores, min(cfg.top_k, scores.shape[-1])).values[:, -1:]
        scores = scores.masked_fill(scores < kth, float("-inf"))
    if cfg.top_p < 1.0:
        sorted_scores, order = torch.sort(scores, descending=False)
        cumulative = sorted_scores.softmax(-1).cumsum(-1)
        drop = cumulative <= 1 - cfg.top_p
        drop[:, -1] = False  # always keep the most likely token
        scores = scores.masked_fill(drop.scatter(1, order, drop), float("-inf"))
    return scores


def next_token(scores: torch.Tensor, cfg: GenerationConfig, generator: torch.Generator | None) -> torch.Tensor:
    if not cfg.do_sample:
        return scores.argmax(-1)
    probs = scores.softmax(-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(1)


def prefill(
    model: InternVLModel,
    cache: KVCache,
    input_ids: torch.Tensor,
    pixel_values: torch.Tensor | None,
    attention_mask: torch.Tensor | None,
    position_ids: torch.Tensor,
    image_flags: torch.Tensor | None = None,
) -> torch.Tensor:
    """Run the prompt through the model, fill the cache, return the last position's logits (B, vocab)."""
    out = model(
        input_ids,
        pixel_values=pixel_values,
        attention_mask=attention_mask,
        position_ids=position_ids,
        image_flags=image_flags,
        cache=cache,
        logits_to_keep=1,
    )
    return out.logits[:, -1]


def decode_one_token(
    model: InternVLModel,
    cache: KVCache,
    token: torch.Tensor,
    attention_mask: torch.Tensor | None,
    position: torch.Tensor,
) -> torch.Tensor:
    """token (B, 1), position (B, 1) -> next-token logits (B, vocab)."""
    return model(token, attention_mask=attention_mask, position_ids=position, cache=cache).logits[:, -1]


class GraphDecoder:
    """gpt-fast's decode on CUDA: the step over a cache of fixed size, compiled once per (batch, cache size)
    and replayed as one CUDA graph (`torch.compile(mode="reduce-overhead")`), so a step costs one launch
    instead of hundreds. Everything the step reads lives in buffers of fixed address, filled before each
    replay: the token, its position, the slot it writes, the mask of slots to attend, the rotary frequencies
    (chosen outside the graph, so dynamic NTK scaling still applies past the trained length).

    Install it with `model.graph_decoder = GraphDecoder(model)`; `generate` then uses it for every call. Cache
    sizes are rounded up to a multiple of `bucket` so prompts of similar length share one compiled graph.
    Status: its step is checked against the eager decoder on the CPU (tests/test_generate.py, compiled=False);
    the captured graph has not yet run on a GPU (`python -m benchmarks.gpu_check` checks it there)."""

    def __init__(self, model: InternVLModel, bucket: int = 256, compiled: bool = True) -> None:
        self.model, self.bucket, self.compiled = model, bucket, compiled  # compiled=False: the same step, eager
        self.graphs: dict[tuple[int, int], _Graph] = {}

    def cache(self, batch: int, length: int) -> "_Graph":
        size = -(-length // self.bucket) * self.bucket
        if (batch, size) not in self.graphs:
            self.graphs[batch, size] = _Graph(self.model, batch, size, self.compiled)
        graph = self.graphs[batch, size]
        graph.reset()
        return graph


class _Graph:
    def __init__(self, model: InternVLModel, batch: int, size: int, compiled: bool) -> None:
        lm = model.language_model
        device = lm.model.embed_tokens.weight.device
        self.cfg, self.size = lm.config, size
        self.kv = model.new_cache(batch, size)
        self.token = torch.zeros(batch, 1, dtype=torch.long, device=device)
        self.position = torch.zeros(batch, 1, dtype=torch.float32, device=device)
        self.slot = torch.zeros(1, dtype=torch.long, device=device)
        self.mask = torch.zeros(batch, 1, 1, size, dtype=torch.bool, device=device)
        self.inv_freq = rope_inv_freq(self.cfg, self.position).clone()  # unscaled: positions within the limit
        for t in (*self.kv.keys, *self.kv.values, self.token, self.position, self.slot, self.mask, self.inv_freq):
            torch._dynamo.mark_static_address(t)  # read and written in place by the graph, never copied
        step = partial(lm.static_step, cache=self.kv)
        self.step = torch.compile(step, mode="reduce-overhead", fullgraph=True) if compiled else step
        self.started = False

    def reset(self) -> None:
        self.kv.length, self.kv.slot, self.started = 0, None, False
        self.mask.zero_()

    def decode(self, token: torch.Tensor, attention_mask: torch.Tensor | None, position: torch.Tensor,
               max_position: float) -> torch.Tensor:
        """After a prefill into `self.kv`: the next-token logits of token (B, 1) at position (B, 1)."""
        slot = self.kv.length
        if slot == 0 or slot >= self.size:
            raise ValueError(f"static decode needs a prefilled cache with room: slot {slot} of {self.size}")
        if not self.started:  # the prompt's slots, left padding hidden
            self.mask[:, 0, 0, :slot] = True if attention_mask is None else attention_mask[:, :slot].bool()
            self.started = True
        self.mask[:, 0, 0, slot] = True
        self.token.copy_(token)
        self.position.copy_(position)
        self.slot.fill_(slot)
        if self.cfg.rope_scaling is not None and max_position + 1 > self.cfg.max_position_embeddings:
            self.inv_freq.copy_(rope_inv_freq(self.cfg, torch.tensor([[max_position]])))  # dynamic NTK, on the host
        self.kv.slot = self.slot
        try:
            logits = self.step(self.token, self.position, self.inv_freq, self.mask).clone()
        finally:
            self.kv.slot = None
        self.kv.length += 1
        return logits


StopCheck = Callable[[int, list[int]], bool]  # (row, that row's new tokens) -> stop this row?


@torch.inference_mode()
def generate_steps(
    model: InternVLModel,
    input_ids: torch.Tensor,
    config: GenerationConfig,
    pixel_values: torch.Tensor | None = None,
    attention_mask: torch.Tensor | None = None,
    position_ids: torch.Tensor | None = None,
    image_flags: torch.Tensor | None = None,
    stop: StopCheck | None = None,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield (tokens (B,), finished (B,) bool) per step. A finished row repeats its last token afterwards.

    Prompts are left-padded (attention_mask 0 on the left). Positions continue from each row's last prompt
    position plus one per token, which also holds for fractional (V2PE) prompt positions.
    """
    b, length = input_ids.shape
    device = input_ids.device
    if position_ids is None:
        position_ids = default_positions(input_ids, attention_mask, 0)
    eos = torch.tensor(config.eos_token_id, dtype=torch.long, device=device)
    generator = None
    if config.do_sample and config.seed is not None:
        generator = torch.Generator(device=device).manual_seed(config.seed)
    graph = getattr(model, "graph_decoder", None)
    graph = graph.cache(b, length + config.max_new_tokens) if graph is not None else None
    cache = graph.kv if graph is not None else model.new_cache(b, length + config.max_new_tokens)
    logits = prefill(model, cache, input_ids, pixel_values, attention_mask, position_ids, image_flags)
    position = position_ids[:, -1:]
    max_position = float(position.max()) if graph is not None else 0.0  # one sync; then counted on the host
    generated = torch.empty(b, 0, dtype=torch.long, device=device)
    done = torch.zeros(b, dtype=torch.bool, device=device)
    for step in range(config.max_new_tokens):
        token = next_token(process_logits(logits, generated, step, config), config, generator)
        if step > 0:
            token = torch.where(done, generated[:, -1], token)
        generated = torch.cat([generated, token[:, None]], dim=1)
        newly = ~done & torch.isin(token, eos) if eos.numel() else torch.zeros_like(done)
        if stop is not None:
            rows = generated.tolist()
            newly |= torch.tensor([not d and stop(i, rows[i]) for i, d in enumerate(done.tolist())], device=device)
        done = done | newly
        yield token, done
        if bool(done.all()) or step == config.max_new_tokens - 1:
            return
        if attention_mask is not None:
            attention_mask = torch.cat([attention_mask, attention_mask.new_ones(b, 1)], dim=1)
        position = position + 1
        if graph is not None:
            max_position += 1
            logits = graph.decode(token[:, None], attention_mask, position, max_position)
        else:
            logits = decode_one_token(model, cache, token[:, None], attention_mask, position)


def generate(
    model: InternVLModel,
    input_ids: torch.Tensor,
    pixel_values: torch.Tensor | None = None,
    attention_mask: torch.Tensor | None = None,
    position_ids: torch.Tensor | None = None,
    image_flags: torch.Tensor | None = None,
    config: GenerationConfig | None = None,
    stop: StopCheck | None = None,
    **settings: Any,
) -> torch.Tensor:
    """New tokens (B, steps). Settings are GenerationConfig fields (`max_new_tokens=20`, `do_sample=True`, …).
    A row that finished early is padded with its last token (its eos)."""
    if config is None:
        config = GenerationConfig.from_dict(settings)
    elif settings:
        raise ValueError("pass either config or settings, not both")
    steps = generate_steps(model, input_ids, config, pixel_values, attention_mask, position_ids, image_flags, stop)
    return torch.stack([token for token, _ in steps], dim=1)
