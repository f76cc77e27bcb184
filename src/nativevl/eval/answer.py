"""What every benchmark shares: one reply per question (greedy, or Best-of-N with a process reward model) and a
per-category accuracy table with an instance-weighted overall row."""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable, Iterator
from itertools import islice
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the scoring half of eval/ stays importable without torch
    import torch

    from nativevl.infer.prm import ProcessRewardModel


class DatasetError(ValueError):
    """A record that cannot be evaluated, named by file and line."""


def jsonl_records(path: str | Path) -> Iterator[tuple[Path, str, dict[str, Any]]]:
    """(file, "file:line", record) for every non-blank line of a `.jsonl` file or of every `.jsonl` file under a
    folder; a line that is not a JSON object stops with its file and line."""
    path = Path(path)
    if not path.exists():
        raise DatasetError(f"{path}: no such file or folder")
    files = sorted(path.rglob("*.jsonl")) if path.is_dir() else [path]
    if not files:
        raise DatasetError(f"{path}: a folder with no .jsonl files")
    if not files[0].is_file():
        raise DatasetError(f"{path}: not a file")
    for file in files:
        for n, line in enumerate(file.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            where = f"{file}:{n}"
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise DatasetError(f"{where}: not JSON ({e.msg})") from None
            if not isinstance(record, dict):
                raise DatasetError(f"{where}: a record must be a JSON object")
            yield file, where, record


def load_tiles(model: Any, images: list[Path], max_num: int) -> tuple[torch.Tensor | None, list[int]]:
    """Every image's tiles (at most `max_num` each) at the model's tile size and dtype, and the tiles per image."""
    import torch

    from nativevl.data.image import load_image

    tiles = [load_image(p, input_size=model.config.vision.image_size, max_num=max_num) for p in images]
    dtype = next(model.parameters()).dtype
    return (torch.cat(tiles).to(dtype) if tiles else None), [t.shape[0] for t in tiles]


Item = tuple["torch.Tensor | None", str, list[int]]  # (tiles of every image, prompt, tiles per image)


def replies(model: Any, tokenizer: Any, items: Iterable[Item], max_new_tokens: int = 10, min_new_tokens: int = 0,
            prm: ProcessRewardModel | None = None, best_of: int = 1, seed: int = 0, batch_size: int = 16,
            total: int | None = None, progress: str | None = None, v2pe_delta: float | None = None) -> list[str]:
    """One reply per item: greedy, `batch_size` questions decoded together (left-padded, as the original
    `batch_chat`; a small model's decode step costs about the same for 1 row as for 16), or the PRM's best of
    `best_of` samples (temperature 0.7, top-p 0.95, seeded), `batch_size // best_of` questions' samples together.
    Greedy replies use V2PE positions with `v2pe_delta` when it is given (the model's training δ).
    Items are drawn one batch at a time, so a generator keeps only that batch's tiles in memory."""
    import torch
    from tqdm import tqdm

    from nativevl.infer.chat import batch_chat
    from nativevl.infer.prm import best_of_n_batch

    if best_of > 1 and prm is None:
        raise ValueError("Best-of-N needs a process reward model")
    items = iter(items)
    out: list[str] = []
    with tqdm(total=total, disable=progress is None, desc=progress) as bar:
        while chunk := list(islice(items, max(1, batch_size // best_of))):
            if best_of > 1:
                found = best_of_n_batch(model, tokenizer, [(q, pixels, n) for pixels, q, n in chunk], prm, best_of,
                                        max_new_tokens=max_new_tokens, seed=seed)
                out += [candidates[0].response for candidates in found]
            else:
                tiles = [pixels for pixels, _, _ in chunk if pixels is not None]
                out += batch_chat(model, tokenizer, torch.cat(tiles) if tiles else None, [q for _, q, _ in chunk],
                                  {"max_new_tokens": max_new_tokens, "min_new_tokens": min_new_tokens},
                                  num_patches_list=[list(patches) for _, _, patches in chunk], v2pe_delta=v2pe_delta)
            bar.update(len(chunk))
    return out


def accuracy_table(results: Iterable[tuple[str, bool]]) -> dict[str, dict[str, float]]:
    """{category: {"n", "accuracy"}} plus "overall", instance-weighted (every question counts once)."""
    by: dict[str, list[bool]] = defaultdict(list)
    for category, ok in results:
        by[category].append(ok)
    table = {c: {"n": len(v), "accuracy": sum(v) / len(v)} for c, v in sorted(by.items())}
    every = [ok for v in by.values() for ok in v]
    table["overall"] = {"n": len(every), "accuracy": sum(every) / len(every) if every else 0.0}
    return table


def print_table(table: dict[str, dict[str, float]], title: str = "category") -> None:
    print(f"{title:<32} {'n':>5} {'accuracy':>9}")
    for name, r in table.items():
        print(f"{name:<32} {r['n']:>5} {100 * r['accuracy']:>8.1f}%")
