"""What every benchmark shares: one reply per question (greedy, or Best-of-N with a process reward model) and a
per-category accuracy table with an instance-weighted overall row."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the scoring half of eval/ stays importable without torch
    import torch

    from nativevl.infer.prm import ProcessRewardModel


class DatasetError(ValueError):
    """A record that cannot be evaluated, named by file and line."""


def reply(model: Any, tokenizer: Any, pixels: torch.Tensor | None, question: str,
          num_patches_list: list[int] | None = None, max_new_tokens: int = 10, min_new_tokens: int = 0,
          prm: ProcessRewardModel | None = None, best_of: int = 1, seed: int = 0) -> str:
    """Greedy decoding, or the PRM's best of `best_of` samples (temperature 0.7, top-p 0.95, seeded)."""
    from nativevl.infer.chat import chat
    from nativevl.infer.prm import best_of_n

    if best_of > 1:
        if prm is None:
            raise ValueError("Best-of-N needs a process reward model")
        return best_of_n(model, tokenizer, question, pixels, prm, n=best_of, max_new_tokens=max_new_tokens,
                         num_patches_list=num_patches_list, seed=seed)[0].response
    return chat(model, tokenizer, pixels, question,
                {"max_new_tokens": max_new_tokens, "min_new_tokens": min_new_tokens},
                num_patches_list=num_patches_list)


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
