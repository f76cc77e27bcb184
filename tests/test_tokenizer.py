"""Tokenizer loading offline, from tokenizer.json or from Qwen2's vocab.json + merges.txt."""

from __future__ import annotations

import json
import shutil

import pytest
from reference import SPECIAL_TOKENS, make_tokenizer
from transformers import AutoTokenizer

from nativevl.tokenizer import TokenizerError, load_tokenizer

TEXTS = [
    "def forward(self, x):\n    return x  # comment\n\n",
    "<|im_start|>system\n你是书生·万象<|im_end|>\n<|im_start|>user\n<img><IMG_CONTEXT><IMG_CONTEXT></img>\nWhat's 12345 + 6?",
    "  leading spaces, TABS\tand CAPS'll DON'T 3.14159 ünïcödé é (NFC: e\u0301)",
    "<ref>the cat</ref><box>[[10, 20, 300, 400]]</box><quad></quad>\r\n",
]


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    full = tmp_path_factory.mktemp("tok_full")
    hf = make_tokenizer(full)
    slow = tmp_path_factory.mktemp("tok_vocab")
    for name in ("vocab.json", "merges.txt"):
        shutil.copy(full / name, slow / name)
    # a tokenizer_config.json the way released InternVL3 folders have it (written by transformers 4.x)
    config = {
        "added_tokens_decoder": {str(i): {"content": t, "lstrip": False, "normalized": False, "rstrip": False,
                                          "single_word": False, "special": True} for i, t in enumerate(SPECIAL_TOKENS)},
        "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>", "model_max_length": 8192,
        "tokenizer_class": "Qwen2Tokenizer", "bos_token": None, "clean_up_tokenization_spaces": False,
    }
    (slow / "tokenizer_config.json").write_text(json.dumps(config))
    return full, slow, hf


def test_transformers_reads_the_vocab_form_the_same_way(folders):
    full, slow, hf = folders
    theirs = AutoTokenizer.from_pretrained(slow)
    ours = load_tokenizer(slow)
    for text in TEXTS:
        assert ours.encode(text) == theirs(text, add_special_tokens=False)["input_ids"]


def test_both_file_forms_equal_transformers(folders):
    full, slow, hf = folders
    assert not (slow / "tokenizer.json").exists()
    ours_full, ours_slow = load_tokenizer(full), load_tokenizer(slow)
    for text in TEXTS:
        expected = hf(text, add_special_tokens=False)["input_ids"]
        assert ours_full.encode(text) == expected
        assert ours_slow.encode(text) == expected
        assert ours_full.decode(expected, skip_special_tokens=False) == hf.decode(expected)
        assert ours_full.decode(expected) == hf.decode(expected, skip_special_tokens=True)


def test_internvl_special_tokens(folders):
    full, slow, _ = folders
    for tok in (load_tokenizer(full), load_tokenizer(slow)):
        assert tok.img_context_id == SPECIAL_TOKENS.index("<IMG_CONTEXT>") == 5
        assert tok.im_end_id == 2 and tok.pad_token_id == 0
        assert tok.encode("<img><IMG_CONTEXT></img>") == [3, 5, 4]
        assert tok.eos_token == "<|im_end|>" and tok.model_max_length == 8192
    assert AutoTokenizer.from_pretrained(full).convert_tokens_to_ids("<IMG_CONTEXT>") == 5


def test_bad_tokenizer_folders(tmp_path, folders):
    with pytest.raises(TokenizerError, match="no such folder"):
        load_tokenizer(tmp_path / "nope")
    with pytest.raises(TokenizerError, match=r"no tokenizer.json, vocab.json \+ merges.txt, or tokenizer.model"):
        load_tokenizer(tmp_path)
    (tmp_path / "tokenizer.json").write_text("{broken")
    with pytest.raises(TokenizerError, match="tokenizer.json: cannot be read"):
        load_tokenizer(tmp_path)
    full, _, _ = folders
    no_image_tokens = tmp_path / "plain"
    no_image_tokens.mkdir()
    data = json.loads((full / "tokenizer.json").read_text())
    data["added_tokens"] = [t for t in data["added_tokens"] if t["content"] != "<IMG_CONTEXT>"]
    del data["model"]["vocab"]["<IMG_CONTEXT>"]
    (no_image_tokens / "tokenizer.json").write_text(json.dumps(data))
    with pytest.raises(TokenizerError, match="<IMG_CONTEXT> is missing"):
        load_tokenizer(no_image_tokens)


def test_a_tokenizer_model_that_is_not_sentencepiece_is_named(tmp_path):
    (tmp_path / "tokenizer.model").write_bytes(b"not a model")
    with pytest.raises(TokenizerError, match="tokenizer.model: not a SentencePiece model"):
        load_tokenizer(tmp_path)
