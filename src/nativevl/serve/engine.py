"""Dynamic batching for the server: the sequences of every request in flight share one decode step.

Each loop of the engine thread
1. admits waiting sequences while fewer than `max_batch` run: they are prefilled together (left-padded, as
   `batch_chat` does) and joined to the running batch. The two KV caches are right-aligned to a common slot
   count and the slots in front of the shorter one are masked, which is exactly how left padding works inside
   one batch, so a sequence's answer does not depend on what it was batched with;
2. picks one token per running sequence (greedy or sampled with the sequence's own settings and generator) and
   hands its text to the sequence's `emit` callback;
3. drops the sequences that finished, were cancelled (a client that disconnected) or failed, trims the cache
   slots no remaining row uses, and decodes the next token of the others in one forward.

This is the concatenate / filter scheme of Hugging Face TGI's first servers. It copies the cache when batches
join; per-row cache offsets (paged attention) would avoid the copy but need an attention kernel of their own.
A long prompt's prefill pauses the others' decoding for its duration (no chunked prefill).
"""

from __future__ import annotations

import logging
import queue
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from nativevl.infer.chat import TextStream, _device, _positions, left_pad
from nativevl.infer.generate import GenerationConfig, decode_one_token, next_token, prefill, process_logits
from nativevl.model.internvl import InternVLModel, default_positions
from nativevl.model.text import KVCache
from nativevl.tokenizer import InternVLTokenizer

log = logging.getLogger(__name__)


@dataclass
class Event:
    """What a sequence sends back: a piece of text, and at the end why it finished."""

    text: str = ""
    finish_reason: str | None = None  # "stop" (eos or a stop string), "length", "cancelled" or "error"
    completion_tokens: int = 0
    error: str | None = None


@dataclass
class Sequence:
    """One answer being generated: a prompt (token ids and its images' tiles) and its own settings."""

    ids: list[int]
    pixel_values: torch.Tensor | None
    config: GenerationConfig  # eos_token_id and stop_strings set
    emit: Callable[[Event], None]  # called on the engine thread
    cancelled: bool = False  # set from any thread; the engine drops the sequence at its next step
    text: TextStream | None = None
    generator: torch.Generator | None = None
    count: int = 0  # tokens generated, eos included
    finished: bool = False
    adapter: str | None = None  # the LoRA adapter to answer with (None: the base model)

    def cancel(self) -> None:
        self.cancelled = True

    def finish(self, reason: str, error: str | None = None) -> None:
        if not self.finished:
            self.finished = True
            self.emit(Event(finish_reason=reason, completion_tokens=self.count, error=error))

    def advance(self, logits: torch.Tensor, tokenizer: InternVLTokenizer) -> int:
        """Pick the next token from this row's logits (1, vocab), emit its text, finish if it ends the answer."""
        cfg = self.config
        if self.text is None:
            self.text = TextStream(tokenizer, cfg.stop_strings)
            if cfg.do_sample and cfg.seed is not None:
                self.generator = torch.Generator(device=logits.device).manual_seed(cfg.seed)
        # only the repetition penalty reads the tokens so far; skip building them on every step otherwise
        seen = self.text.tokens if cfg.repetition_penalty != 1.0 else []
        generated = torch.tensor([seen], dtype=torch.long, device=logits.device)
        token = int(next_token(process_logits(logits, generated, self.count, cfg), cfg, self.generator))
        self.count += 1
        eos = token in cfg.eos_token_id
        last = eos or self.count >= cfg.max_new_tokens
        piece = self.text.push(None if eos else token, final=last)
        if piece:
            self.emit(Event(text=piece))
        if eos or self.text.stopped:
            self.finish("stop")
        elif last:
            self.finish("length")
        return token


@dataclass
class Batch:
    """The running sequences, their KV cache (one row each), attention mask, last positions and next logits."""

    seqs: list[Sequence]
    cache: KVCache
    mask: torch.Tensor  # (B, cache.length) 1 = a real slot
    position: torch.Tensor  # (B, 1) position of each row's last token
    logits: torch.Tensor  # (B, vocab) the next token's logits

    def keep(self, rows: list[int]) -> "Batch":
        index = torch.tensor(rows, device=self.mask.device)
        mask = self.mask[index]
        first = int(mask.any(0).nonzero()[0]) if mask.numel() else 0  # slots that every kept row masks
        return Batch([self.seqs[i] for i in rows], self.cache.select(index, first), mask[:, first:],
                     self.position[index], self.logits[index])

    @staticmethod
    def join(batches: list["Batch"]) -> "Batch":
        room = max(s.config.max_new_tokens - s.count for b in batches for s in b.seqs)
        cache = KVCache.join([b.cache for b in batches], room)
        mask = torch.cat([torch.nn.functional.pad(b.mask, (cache.length - b.cache.length, 0)) for b in batches])
        return Batch([s for b in batches for s in b.seqs], cache, mask, torch.cat([b.position for b in batches]),
                     torch.cat([b.logits for b in batches]))


@dataclass
class EngineStats:
    steps: int = 0
    prefills: int = 0
    max_running: int = 0
    running: int = 0
    waiting: int = 0
    tokens: int = 0
    errors: int = 0
    history: list[int] = field(default_factory=list)  # batch size of each step (the last 1000)


class Engine:
    """A background thread that decodes every submitted sequence, `max_batch` at a time."""

    def __init__(self, model: InternVLModel, tokenizer: InternVLTokenizer, max_batch: int = 16,
                 v2pe_delta: float | None = None, use_adapter: Callable[[str | None], None] | None = None) -> None:
        """`use_adapter(name)` makes LoRA adapter `name` (None: the base) the model's active one; a batch holds
        the sequences of one adapter, admitted in arrival order (another adapter's waits for the batch to end)."""
        self.model, self.tokenizer = model.eval(), tokenizer
        self.use_adapter, self.adapter = use_adapter, None
        self.max_batch, self.v2pe_delta = max_batch, v2pe_delta
        self.device = _device(model)
        self.inbox: queue.Queue[Sequence] = queue.Queue()
        self.waiting: deque[Sequence] = deque()
        self.batch: Batch | None = None
        self.stats = EngineStats()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="nativevl-engine", daemon=True)

    def start(self) -> "Engine":
        self._thread.start()
        return self

    def submit(self, seq: Sequence) -> None:
        if self._stop.is_set():
            raise RuntimeError("the engine is shutting down")
        self.inbox.put(seq)

    def stop(self) -> None:
        """Cancel whatever is still running or waiting, and end the thread."""
        self._stop.set()
        self._thread.join(timeout=30)
        for seq in [*(self.batch.seqs if self.batch else []), *self.waiting, *self._drain()]:
            seq.finish("cancelled")
        self.batch = None

    # --- the loop ---------------------------------------------------------------------------------------------

    def _drain(self) -> list[Sequence]:
        out = []
        while True:
            try:
                out.append(self.inbox.get_nowait())
            except queue.Empty:
                return out

    def _run(self) -> None:
        with torch.inference_mode():
            while not self._stop.is_set():
                if self.batch is None and not self.waiting:
                    try:
                        self.waiting.append(self.inbox.get(timeout=0.1))
                    except queue.Empty:
                        continue
                self.waiting.extend(self._drain())
                try:
                    self._admit()
                    self._step()
                except Exception as e:  # a failure ends the sequences involved, never the server
                    log.exception("decode step failed")
                    self.stats.errors += 1
                    for seq in self.batch.seqs if self.batch else []:
                        seq.finish("error", f"{type(e).__name__}: {e}")
                    self.batch = None

    def _admit(self) -> None:
        running = len(self.batch.seqs) if self.batch else 0
        adapter = self.adapter if self.batch else None
        new: list[Sequence] = []
        while self.waiting and running + len(new) < self.max_batch:
            seq = self.waiting[0]
            if seq.cancelled:
                self.waiting.popleft().finish("cancelled")
                continue
            if (self.batch or new) and seq.adapter != (new[0].adapter if new else adapter):
                break  # another adapter's turn comes when this batch ends
            new.append(self.waiting.popleft())
        self.stats.waiting = len(self.waiting)
        if not new:
            return
        if self.batch is None and new[0].adapter != self.adapter and self.use_adapter is not None:
            self.use_adapter(new[0].adapter)
            self.adapter = new[0].adapter
        try:
            group = self._prefill(new)
        except Exception as e:  # a prompt that cannot run (out of memory, …) fails alone
            log.exception("prefill failed")
            self.stats.errors += 1
            for seq in new:
                seq.finish("error", f"{type(e).__name__}: {e}")
            return
        self.batch = group if self.batch is None else Batch.join([self.batch, group])

    def _prefill(self, seqs: list[Sequence]) -> Batch:
        ids, mask = left_pad([s.ids for s in seqs], self.tokenizer.pad_token_id)
        ids, mask = ids.to(self.device), mask.to(self.device)
        tiles = [s.pixel_values for s in seqs if s.pixel_values is not None]
        pixels = torch.cat(tiles).to(self.device) if tiles else None
        positions = _positions(self.model, ids, mask, self.v2pe_delta)
        if positions is None:
            positions = default_positions(ids, mask, 0)
        cache = self.model.new_cache(len(seqs), ids.shape[1] + max(s.config.max_new_tokens for s in seqs))
        logits = prefill(self.model, cache, ids, pixels, mask, positions)
        self.stats.prefills += 1
        for s in seqs:
            s.pixel_values = None  # the tiles are in the cache now
        return Batch(seqs, cache, mask, positions[:, -1:], logits)

    def _step(self) -> None:
        batch = self.batch
        if batch is None:
            return
        tokens = []
        for row, seq in enumerate(batch.seqs):
            if seq.cancelled:
                seq.finish("cancelled")
                tokens.append(0)
            else:
                tokens.append(seq.advance(batch.logits[row:row + 1], self.tokenizer))
        self.stats.steps += 1
        self.stats.tokens += len(batch.seqs)
        self.stats.max_running = max(self.stats.max_running, len(batch.seqs))
        self.stats.history = [*self.stats.history[-999:], len(batch.seqs)]
        rows = [i for i, s in enumerate(batch.seqs) if not s.finished]
        if not rows:
            self.batch = None
            self.stats.running = 0
            return
        if len(rows) < len(batch.seqs):
            batch = batch.keep(rows)
        token = torch.tensor([tokens[i] for i in rows], device=self.device)[:, None]
        batch.mask = torch.cat([batch.mask, batch.mask.new_ones(len(rows), 1)], dim=1)
        batch.position = batch.position + 1
        batch.logits = decode_one_token(self.model, batch.cache, token, batch.mask, batch.position)
        self.batch = batch
        self.stats.running = len(rows)
