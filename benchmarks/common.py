"""What every suite shares: timing (median and spread after warm-up), machine facts, and the two engines built
from one set of random weights (nativevl's InternVL, and transformers' InternVLForConditionalGeneration loaded
from the same weights written in the transformers layout)."""

from __future__ import annotations

import gc
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


@dataclass
class Timing:
    """Seconds: the median of the runs and their spread."""

    median: float
    low: float
    high: float
    runs: int

    def rate(self, n: float) -> "Rate":
        """n units per run -> units/s (a low time is a high rate)."""
        return Rate(n / self.median, n / self.high, n / self.low)


@dataclass
class Rate:
    median: float
    low: float
    high: float


def sync(device: torch.device | str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def measure(fn: Callable[[], object], repeats: int, warmup: int = 1, device: str = "cpu") -> Timing:
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return Timing(statistics.median(times), min(times), max(times), repeats)


def measure_turns(fns: dict[str, Callable[[], object]], repeats: int, warmup: int = 1, device: str = "cpu"
                  ) -> dict[str, Timing]:
    """The functions timed in turns (a, b, c, a, b, c, ...), so a drift of the machine's speed (this 2-core CPU
    is shared) falls on all of them alike instead of on whichever ran last."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            sync(device)
            start = time.perf_counter()
            fn()
            sync(device)
            times[name].append(time.perf_counter() - start)
    return {name: Timing(statistics.median(t), min(t), max(t), repeats) for name, t in times.items()}


def fmt(x: float, digits: int = 3) -> str:
    return f"{x:.{digits}g}" if abs(x) < 10 ** digits else f"{x:.0f}"


def show(t: Timing | Rate, scale: float = 1.0) -> str:
    return f"{fmt(t.median * scale)} ({fmt(t.low * scale)}..{fmt(t.high * scale)})"


def machine(device: str = "cpu") -> str:
    cores = torch.get_num_threads()
    where = f"{platform.machine()}, {cores} threads"
    if torch.device(device).type == "cuda":
        where = torch.cuda.get_device_name() + ", " + where
    return f"{where}, torch {torch.__version__}"


def build_ours(preset_name: str, dtype: torch.dtype, device: str = "cpu", seed: int = 0):  # noqa: ANN201
    """A model of the preset's shape with random weights (InternVL's own initialisation), in `dtype`."""
    from nativevl.config import preset
    from nativevl import InternVL

    torch.manual_seed(seed)
    return InternVL.from_config(preset(preset_name), dtype=dtype, device=device).eval()


def transformers_twin(model, dtype: torch.dtype, device: str = "cpu"):  # noqa: ANN001, ANN201
    """transformers' InternVLForConditionalGeneration holding exactly `model`'s weights (written in the
    transformers layout and read back by `from_pretrained`, as a user would load a converted checkpoint)."""
    from transformers import InternVLForConditionalGeneration

    with tempfile.TemporaryDirectory() as folder:
        model.save_pretrained(folder, layout="transformers")
        # loaded on the CPU, then moved: transformers' device_map needs accelerate, which nativevl does not
        theirs = InternVLForConditionalGeneration.from_pretrained(folder, dtype=dtype)
    return theirs.to(device).eval()


def free() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def text_ids(model, shape: tuple[int, ...], seed: int, device: str = "cpu") -> torch.Tensor:  # noqa: ANN001
    """Random token ids of the model's vocabulary, never its <IMG_CONTEXT> id."""
    cfg = model.config
    ids = torch.randint(1, cfg.text.vocab_size, shape, generator=torch.Generator().manual_seed(seed))
    return ids.masked_fill(ids == cfg.img_context_token_id, 1).to(device)
