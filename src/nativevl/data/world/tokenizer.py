"""The world's tokenizer: a Qwen2-style byte-level BPE trained on the text of the demo's stages, with InternVL's
special tokens at ids 0..12, written as a released InternVL3 folder writes it."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from pathlib import Path

from tokenizers import Tokenizer, pre_tokenizers
from tokenizers.models import BPE
from tokenizers.trainers import BpeTrainer

from nativevl.conversation import IMAGE_PLACEHOLDER, INTERNVL2_5_SYSTEM
from nativevl.tokenizer import (
    IM_END,
    IM_START,
    INTERNVL_TOKENS,
    load_tokenizer,
    qwen2_pipeline,
)

from .common import SYSTEM_PROMPT, Record
from .stages import Datasets

# ids 0..12, in this order: the Qwen2 specials first, then InternVL's (`<IMG_CONTEXT>` lands on id 5).
SPECIAL_TOKENS = ["<|endoftext|>", IM_START, IM_END, *INTERNVL_TOKENS, "<video>"]
VOCAB_SIZE = 2000
MODEL_MAX_LENGTH = 4096


def record_texts(record: Record) -> Iterator[str]:
    """The text of a record as the model sees it, image placeholders removed (they become <img> tokens)."""
    for turn in record.get("conversations", []):
        yield turn["value"].replace(IMAGE_PLACEHOLDER, "")
    for key in ("question", "chosen", "rejected"):
        if key in record:
            yield record[key].replace(IMAGE_PLACEHOLDER, "")


def tokenizer_corpus(data: Datasets) -> Iterator[str]:
    """All the world's text, plus the chat template's frame and the InternVL system prompt repeated often
    enough for BPE to merge it into a few tokens (it opens every prompt the model will see)."""
    n = 0
    for stage in (data.pretrain, data.sft, data.mpo, data.eval):  # not the ablations' sets (see Datasets)
        for records in stage.values():
            for record in records:
                n += 1
                yield from record_texts(record)
    frame = f"system\n{INTERNVL2_5_SYSTEM}\nuser\n\nassistant\n"
    for _ in range(max(200, n // 2)):
        yield frame
    yield SYSTEM_PROMPT


def train_tokenizer(texts: Iterable[str]) -> Tokenizer:
    tok = qwen2_pipeline(Tokenizer(BPE()))
    trainer = BpeTrainer(vocab_size=VOCAB_SIZE, special_tokens=SPECIAL_TOKENS,
                         initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer)
    return tok


def write_tokenizer(out: Path, data: Datasets) -> int:
    """tokenizer.json + tokenizer_config.json (the fields a released InternVL3 folder has); returns the
    vocabulary size after checking that `load_tokenizer` reads it with `<IMG_CONTEXT>` at id 5."""
    folder = out / "tokenizer"
    folder.mkdir(parents=True, exist_ok=True)
    tok = train_tokenizer(tokenizer_corpus(data))
    (folder / "tokenizer.json").write_text(tok.to_str(pretty=True) + "\n", encoding="utf-8")
    config = {
        "added_tokens_decoder": {str(i): {"content": t, "lstrip": False, "normalized": False, "rstrip": False,
                                          "single_word": False, "special": True}
                                 for i, t in enumerate(SPECIAL_TOKENS)},
        "bos_token": None, "clean_up_tokenization_spaces": False, "eos_token": IM_END,
        "model_max_length": MODEL_MAX_LENGTH, "pad_token": "<|endoftext|>", "tokenizer_class": "Qwen2Tokenizer",
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n",
                                                  encoding="utf-8")
    loaded = load_tokenizer(folder)
    ids = [loaded.token_to_id(t) for t in SPECIAL_TOKENS]
    if ids != list(range(len(SPECIAL_TOKENS))) or loaded.img_context_id != 5:
        raise RuntimeError(f"{folder}: special tokens got ids {ids}, expected 0..{len(SPECIAL_TOKENS) - 1}")
    return len(loaded)
