"""Packing: several samples into one sequence under a token budget and a tile budget (spec §6).

Each sample keeps its own positions (restarting at 0) and its own attention segment (`cu_seqlens`), so a packed
row computes exactly what the samples would one by one. Greedy first-fit over a few open buffers; a buffer is
emitted when nothing more fits or when too many are open (the fullest first).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import torch

from nativevl.data.dataset import Sample


@dataclass
class PackedBatch:
    input_ids: torch.Tensor  # (1, N)
    labels: torch.Tensor  # (1, N)
    position_ids: torch.Tensor  # (1, N) float32, restarting per sample
    cu_seqlens: torch.Tensor  # (n + 1,) int32 sample boundaries
    pixel_values: torch.Tensor  # (T, 3, S, S)
    image_flags: torch.Tensor  # (T,)
    sources: list[str]
    max_tokens: int
    skipped: dict[str, int] = field(default_factory=dict)  # records skipped so far by this stream, by reason
    # which encoded tile each image slot reads, in order (None: tile i feeds slot i); preference pairs read theirs twice
    feature_index: torch.Tensor | None = None

    @property
    def num_samples(self) -> int:
        return len(self.sources)

    @property
    def num_tokens(self) -> int:
        return int(self.input_ids.shape[1])

    @property
    def efficiency(self) -> float:
        """Real tokens / token budget."""
        return self.num_tokens / self.max_tokens


def _feature_index(samples: list[Sample]) -> torch.Tensor | None:
    if all(s.image_uses == 1 for s in samples):
        return None
    index, base = [], 0
    for s in samples:
        index += list(range(base, base + s.num_tiles)) * s.image_uses
        base += s.num_tiles
    return torch.tensor(index, dtype=torch.long)


def collate(samples: list[Sample], max_tokens: int) -> PackedBatch:
    lengths = [n for s in samples for n in (s.segments or [s.num_tokens])]
    cu = torch.zeros(len(lengths) + 1, dtype=torch.int32)
    cu[1:] = torch.tensor(lengths).cumsum(0)
    return PackedBatch(
        input_ids=torch.cat([s.input_ids for s in samples])[None],
        labels=torch.cat([s.labels for s in samples])[None],
        position_ids=torch.cat([s.position_ids for s in samples])[None],
        cu_seqlens=cu,
        pixel_values=torch.cat([s.pixel_values for s in samples]),
        image_flags=torch.cat([s.image_flags for s in samples]),
        sources=[s.source for s in samples],
        max_tokens=max_tokens,
        feature_index=_feature_index(samples),
    )


class Packer:
    """Stateful greedy packer: `add(sample)` returns the rows (lists of samples) that became ready; `flush()`
    the rest. `collate` turns a row into a PackedBatch."""

    def __init__(self, max_tokens: int, max_tiles: int, max_buffers: int = 4) -> None:
        if max_tokens < 1 or max_tiles < 1 or max_buffers < 1:
            raise ValueError("max_tokens, max_tiles and max_buffers must be >= 1")
        self.max_tokens, self.max_tiles, self.max_buffers = max_tokens, max_tiles, max_buffers
        self.buffers: list[list[Sample]] = []

    def fits(self, sample: Sample) -> bool:
        return sample.num_tokens <= self.max_tokens and sample.num_tiles <= self.max_tiles

    def add(self, sample: Sample) -> list[list[Sample]]:
        if not self.fits(sample):
            raise ValueError(f"{sample.source}: {sample.num_tokens} tokens / {sample.num_tiles} tiles exceed the "
                             f"budget of {self.max_tokens} tokens / {self.max_tiles} tiles")
        ready = []
        for buffer in self.buffers:
            if self._tokens(buffer) + sample.num_tokens <= self.max_tokens and \
                    self._tiles(buffer) + sample.num_tiles <= self.max_tiles:
                buffer.append(sample)
                break
        else:
            self.buffers.append([sample])
        full = [b for b in self.buffers if self._tokens(b) == self.max_tokens or self._tiles(b) == self.max_tiles]
        ready += [self._emit(b) for b in full]  # full ones go now
        while len(self.buffers) > self.max_buffers:
            ready.append(self._emit(max(self.buffers, key=self._tokens)))
        return ready

    def _emit(self, buffer: list[Sample]) -> list[Sample]:
        self.buffers = [b for b in self.buffers if b is not buffer]  # by identity: samples hold tensors
        return buffer

    def flush(self) -> list[list[Sample]]:
        ready, self.buffers = self.buffers, []
        return ready

    @staticmethod
    def _tokens(buffer: list[Sample]) -> int:
        return sum(s.num_tokens for s in buffer)

    @staticmethod
    def _tiles(buffer: list[Sample]) -> int:
        return sum(s.num_tiles for s in buffer)


def pack(samples: Iterable[Sample], max_tokens: int, max_tiles: int, max_buffers: int = 4) -> Iterator[PackedBatch]:
    packer = Packer(max_tokens, max_tiles, max_buffers)
    for sample in samples:
        for row in packer.add(sample):
            yield collate(row, max_tokens)
    for row in packer.flush():
        yield collate(row, max_tokens)
