"""The training stream: datasets mixed at set weights, records built into samples, packed, sharded by rank and
DataLoader worker, deterministic for a seed, and resumable exactly (`StatefulDataLoader` saves each worker's
position).

Draw g (0, 1, 2, …) picks a dataset (text-only with probability `text_ratio` when set, else in proportion to
dataset sizes) and that dataset's next record in a per-pass shuffled order; draw g belongs to rank g % world and,
within the rank, to worker (g // world) % workers. Every worker walks all draws (cheap: random numbers only)
and builds its own, so the order depends only on (seed, rank, world, workers). A record that cannot be used is
skipped and counted by kind; the first ones are logged with file, line and reason, then a summary at 2x, 4x, …
as many skips (`skip_summary`: each kind's count and first file:line). A stream that can build nothing (every
record skipped, `max_consecutive_skips` in a row or every record once) raises `DataError` instead of spinning, so
no run trains on nothing.
"""

from __future__ import annotations

import logging
import random
import warnings
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import IterableDataset, get_worker_info
from torchdata.stateful_dataloader import StatefulDataLoader

from nativevl.data.dataset import (
    DataConfig,
    DatasetSpec,
    Sample,
    SkipRecord,
    build_pair,
    build_sample,
    is_text_only,
    pair_sample,
    parse_line,
    read_lines,
    read_meta,
)
from nativevl.data.packing import Packer, collate
from nativevl.tokenizer import InternVLTokenizer

# torchdata 0.11 calls torch.set_vital, which torch 2.13 deprecates, once per loader: nothing a user can act on
# (the demo printed it four times)
warnings.filterwarnings("ignore", message="'set_vital' is deprecated", category=UserWarning)

log = logging.getLogger(__name__)


class DataError(ValueError):
    """The training data cannot give a sample; the message names the files and why."""


def skip_summary(counts: dict[str, int], examples: dict[str, str]) -> str:
    """'N records skipped: 3 × not JSON (first: a.jsonl:7: not JSON (…)); 1 × …', most frequent kind first."""
    total = sum(counts.values())
    if not total:
        return "no records skipped"
    parts = [f"{n} × {kind}" + (f" (first: {examples[kind]})" if kind in examples else "")
             for kind, n in sorted(counts.items(), key=lambda kv: -kv[1])]
    return f"{total} record{'s' if total != 1 else ''} skipped: " + "; ".join(parts)


class SkipCounts(dict):
    """Skipped records by kind, a dict of counts (`batch.skipped`) that prints as `skip_summary`, naming each
    kind's first file:line and reason."""

    def __init__(self, counts: dict[str, int] | None = None, examples: dict[str, str] | None = None) -> None:
        super().__init__(counts or {})
        self.examples = dict(examples or {})

    def __str__(self) -> str:
        return skip_summary(self, self.examples)

    __repr__ = __str__


@dataclass
class StreamConfig:
    seed: int = 0
    text_ratio: float | None = None  # share of text-only samples (native pre-training: about 0.25, i.e. 1:3)
    max_tokens: int = 8192  # packing budget per row
    max_tiles: int = 48
    max_buffers: int = 4
    log_skips: int = 20  # how many skipped records to log by file and line (all are counted)
    max_consecutive_skips: int = 1000  # this many skipped records in a row: DataError, not an endless search
    pairs: bool = False  # preference records (question, chosen, rejected): one two-segment sample per pair


class TrainStream(IterableDataset):
    """Packed batches for one rank, forever (passes over the datasets reshuffle)."""

    def __init__(self, meta: str | Path | list[DatasetSpec], tokenizer: InternVLTokenizer, data: DataConfig,
                 cfg: StreamConfig, rank: int = 0, world_size: int = 1) -> None:
        self.specs = read_meta(meta) if isinstance(meta, (str, Path)) else list(meta)
        self.tokenizer, self.data, self.cfg = tokenizer, data, cfg
        self.rank, self.world_size = rank, world_size
        self.lines = [read_lines(s) for s in self.specs]
        empty = [_empty(s) for s, lines in zip(self.specs, self.lines, strict=True) if not lines]
        if empty:
            raise DataError("; ".join(empty))
        self.total_records = sum(len(lines) for lines in self.lines)
        self._streak: set[tuple[int, int]] = set()  # the records skipped since the last one built
        self._streak_len = 0
        self.text_only = [is_text_only(s) for s in self.specs]
        self.weights = [s.weight if s.weight is not None else len(lines)
                        for s, lines in zip(self.specs, self.lines, strict=True)]
        self._reset()

    def _reset(self) -> None:
        self.draw = 0
        self.cursors = [0] * len(self.specs)
        self.pending: list[list[int]] = []  # draws in the packer's open buffers, to rebuild them on resume
        self.queued: list[list[int]] = []  # draws of rows made but not yet handed out
        self.skipped: Counter[str] = Counter()  # by kind (SKIP_KINDS)
        self.skip_examples: dict[str, str] = {}  # kind -> "file:line: reason" of its first skip
        self.built = 0

    # --- the deterministic order ------------------------------------------------------------------------------

    def _pick_dataset(self, rng: random.Random) -> int:
        indices = list(range(len(self.specs)))
        ratio = self.cfg.text_ratio
        if ratio is not None and any(self.text_only) and not all(self.text_only):
            text = rng.random() < ratio
            indices = [i for i in indices if self.text_only[i] == text]
        return rng.choices(indices, weights=[self.weights[i] for i in indices])[0]

    def _record(self, ds: int) -> int:
        """The dataset's next line index: a fresh shuffle for every pass over it."""
        n = len(self.lines[ds])
        passes, offset = divmod(self.cursors[ds], n)
        order = list(range(n))
        random.Random(f"{self.cfg.seed}:{ds}:{passes}").shuffle(order)
        self.cursors[ds] += 1
        return order[offset]

    def _next_draw(self) -> tuple[int, int, int]:
        g = self.draw
        ds = self._pick_dataset(random.Random(f"{self.cfg.seed}:draw:{g}"))
        self.draw += 1
        return g, ds, self._record(ds)

    def _build(self, g: int, ds: int, index: int) -> Sample | None:
        spec = self.specs[ds]
        line_no, text = self.lines[ds][index]
        source = f"{spec.annotation}:{line_no}"
        rng = random.Random(f"{self.cfg.seed}:sample:{g}")
        try:
            record = parse_line(text)
            if self.cfg.pairs:
                return pair_sample(*build_pair(record, spec, self.tokenizer, self.data, rng, source))
            return build_sample(record, spec, self.tokenizer, self.data, rng, source)
        except SkipRecord as e:
            self._skip(source, e.kind, str(e))
        except (KeyError, TypeError, ValueError, AttributeError, IndexError) as e:  # a record of an odd shape
            self._skip(source, "malformed record", f"{type(e).__name__}: {e}")
        return None

    def _skip(self, source: str, kind: str, reason: str) -> None:
        """Count a skipped record; log it while few, then a summary each time the count doubles."""
        self.skipped[kind] += 1
        self.skip_examples.setdefault(kind, f"{source}: {reason}")
        total, first = sum(self.skipped.values()), max(1, self.cfg.log_skips)
        if total <= self.cfg.log_skips:
            log.warning("skipped %s: %s", source, reason)
        if total == first:
            log.warning("%s; further skips are counted, with a summary at %d, %d, … skips", self.summary(),
                        2 * first, 4 * first)
        elif total > first and total % first == 0 and (total // first) & (total // first - 1) == 0:
            log.warning("%s", self.summary())

    def summary(self) -> str:
        """The skips so far, by kind, with each kind's first file:line and reason."""
        return skip_summary(self.skipped, self.skip_examples)

    def _built_nothing(self, ds: int, index: int) -> None:
        """One more record skipped in a row; DataError once it is hopeless (every record skipped once, or
        max_consecutive_skips in a row)."""
        self._streak.add((ds, index))
        self._streak_len += 1
        if len(self._streak) >= self.total_records or self._streak_len >= self.cfg.max_consecutive_skips:
            where = ", ".join(sorted({str(s.meta or s.annotation) for s in self.specs}))
            raise DataError(f"{where}: the last {self._streak_len} records read were all skipped, none gives a "
                            f"sample to train on ({self.summary()})")

    # --- iteration --------------------------------------------------------------------------------------------

    def _mine(self, g: int) -> bool:
        info = get_worker_info()
        workers, worker = (info.num_workers, info.id) if info else (1, 0)
        return g % self.world_size == self.rank and (g // self.world_size) % workers == worker

    def __iter__(self):  # noqa: ANN204 - yields PackedBatch
        packer = Packer(self.cfg.max_tokens, self.cfg.max_tiles, self.cfg.max_buffers)
        self._streak, self._streak_len = set(), 0
        draws: dict[int, int] = {}  # id(sample) -> its draw, for the samples held here
        rebuilt = self._rebuild({g for group in self.pending + self.queued for g in group})
        draws.update({id(sample): g for g, sample in rebuilt.items()})
        packer.buffers = [[rebuilt[g] for g in group] for group in self.pending]
        queue = [[rebuilt[g] for g in group] for group in self.queued]  # rows made, not yet handed out
        while True:
            while queue:
                row = queue.pop(0)
                self.queued = [[draws[id(s)] for s in r] for r in queue]
                self.pending = [[draws[id(s)] for s in b] for b in packer.buffers]
                batch = collate(row, self.cfg.max_tokens)
                batch.skipped = SkipCounts(self.skipped, self.skip_examples)
                yield batch  # the state now says exactly what is still to come
            draws = {id(s): draws[id(s)] for b in packer.buffers for s in b}
            g, ds, index = self._next_draw()
            if not self._mine(g):
                continue
            sample = self._build(g, ds, index)
            if sample is not None and not packer.fits(sample):
                self._skip(sample.source, "over the packing budget",
                           f"{sample.num_tokens} tokens / {sample.num_tiles} tiles exceed the packing budget of "
                           f"{self.cfg.max_tokens} tokens / {self.cfg.max_tiles} tiles")
                sample = None
            if sample is None:
                self._built_nothing(ds, index)
                continue
            self._streak.clear()
            self._streak_len = 0
            self.built += 1
            draws[id(sample)] = g
            queue = packer.add(sample)
            self.pending = [[draws[id(s)] for s in b] for b in packer.buffers]

    def _rebuild(self, wanted: set[int]) -> dict[int, Sample]:
        """The samples of these draws again: one replay of the (cheap) draws from the start."""
        saved = (self.draw, list(self.cursors))
        self.draw, self.cursors = 0, [0] * len(self.specs)
        picks = {}
        while wanted and self.draw <= max(wanted):
            g, ds, index = self._next_draw()
            if g in wanted:
                picks[g] = (ds, index)
        self.draw, self.cursors = saved
        samples = {g: self._build(g, ds, index) for g, (ds, index) in picks.items()}
        broken = [g for g, sample in samples.items() if sample is None]
        assert not broken, f"draws {broken} built before but not now"
        return samples

    def state_dict(self) -> dict[str, Any]:
        return {"draw": self.draw, "cursors": list(self.cursors), "pending": [list(p) for p in self.pending],
                "queued": [list(q) for q in self.queued], "skipped": dict(self.skipped),
                "skip_examples": dict(self.skip_examples), "built": self.built}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.draw, self.cursors = state["draw"], list(state["cursors"])
        self.pending = [list(p) for p in state["pending"]]
        self.queued = [list(q) for q in state.get("queued", [])]
        self.skipped, self.built = Counter(state["skipped"]), state["built"]
        self.skip_examples = dict(state.get("skip_examples", {}))


def _empty(spec: DatasetSpec) -> str:
    """Why a dataset has no records, naming its meta file, key and annotation."""
    message = f"{spec.where}: annotation {spec.annotation} has no records"
    if spec.repeat_time < 1:
        lines = len(read_lines(DatasetSpec(spec.name, spec.root, spec.annotation)))
        if lines:
            message += f" left by repeat_time {spec.repeat_time:g} (int({lines} × {spec.repeat_time:g}) = 0)"
    return message


def _identity(batch: "PackedBatch") -> "PackedBatch":  # noqa: F821 - any object passes through
    return batch


def make_loader(stream: TrainStream, num_workers: int = 0) -> StatefulDataLoader:
    """A DataLoader whose `state_dict()` / `load_state_dict()` resume the stream exactly, workers included."""
    # Its own generator: creating an iterator draws a base seed, which must not move the global RNG that
    # drop path uses (a resumed run creates its iterator after restoring that RNG).
    return StatefulDataLoader(stream, batch_size=None, num_workers=num_workers, collate_fn=_identity,
                              persistent_workers=False, generator=torch.Generator().manual_seed(stream.cfg.seed))
