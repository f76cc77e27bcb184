"""A checkpoint's tokenizer, loaded offline, knowing InternVL's special tokens.

Reads `tokenizer.json` with the `tokenizers` library when the folder has one; otherwise builds the Qwen2
byte-level BPE from `vocab.json` + `merges.txt` the way transformers converts Qwen2's slow tokenizer (NFC,
Qwen2's split regex, byte level); otherwise reads a SentencePiece `tokenizer.model` (InternLM3, the 9B) with the
`sentencepiece` library, as InternLM3's remote tokenizer does. The tokens listed in `tokenizer_config.json` /
`added_tokens.json` are added at their recorded ids.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from tokenizers import AddedToken, Regex, Tokenizer, decoders, normalizers, pre_tokenizers, processors
from tokenizers.models import BPE

IMG_START, IMG_END, IMG_CONTEXT = "<img>", "</img>", "<IMG_CONTEXT>"
IM_START, IM_END = "<|im_start|>", "<|im_end|>"
# Added after the LLM vocabulary in this order when InternVL is built (spec §3.2).
INTERNVL_TOKENS = (IMG_START, IMG_END, IMG_CONTEXT, "<quad>", "</quad>", "<ref>", "</ref>", "<box>", "</box>")
QWEN2_SPLIT = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
)


class TokenizerError(ValueError):
    """A tokenizer folder that cannot be used; the message names the file."""


class InternVLTokenizer:
    """Text <-> ids, plus the ids InternVL needs (`img_context_id`, `im_end_id`, …)."""

    def __init__(self, tokenizer: Tokenizer, config: dict | None = None, where: str = "tokenizer") -> None:
        self.tokenizer = tokenizer
        self.config = config or {}
        self.where = where
        for token in (IMG_START, IMG_END, IMG_CONTEXT):
            if tokenizer.token_to_id(token) is None:
                raise TokenizerError(f"{where}: the InternVL token {token} is missing")

    def __len__(self) -> int:
        return self.tokenizer.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str) -> list[int]:
        """The text's ids alone (no BOS), as training data is tokenised piece by piece."""
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def prompt_ids(self, text: str) -> list[int]:
        """A whole prompt's ids as the original's `tokenizer(query)` gives them: with the tokenizer's own special
        tokens (none for Qwen2; `<s>` first for InternLM3)."""
        return self.tokenizer.encode(text, add_special_tokens=True).ids

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def token_to_id(self, token: str) -> int:
        token_id = self.tokenizer.token_to_id(token)
        if token_id is None:
            raise TokenizerError(f"{self.where}: no token {token!r}")
        return token_id

    def _named(self, key: str, default: str | None) -> str | None:
        value = self.config.get(key, default)
        return value.get("content") if isinstance(value, dict) else value

    @property
    def img_context_id(self) -> int:
        return self.token_to_id(IMG_CONTEXT)

    @property
    def im_end_id(self) -> int:
        return self.token_to_id(IM_END)

    @property
    def eos_token(self) -> str | None:
        return self._named("eos_token", IM_END)

    @property
    def pad_token(self) -> str | None:
        return self._named("pad_token", "<|endoftext|>")

    @property
    def pad_token_id(self) -> int:
        pad = self.pad_token
        return self.token_to_id(pad) if pad else 0

    @property
    def model_max_length(self) -> int | None:
        value = self.config.get("model_max_length")
        return int(value) if isinstance(value, (int, float)) and value < 1e12 else None


class SentencePieceTokenizer(InternVLTokenizer):
    """A SentencePiece `tokenizer.model`, read as InternLM3's remote tokenizer (`InternLM3Tokenizer`) reads it:
    the text is split at the added tokens (matched whole, longest first), each piece between them is encoded on
    its own by SentencePiece with nothing prepended, and a prompt starts with `<s>` when `add_bos_token` (the
    default). Decoding gives each run of SentencePiece ids to SentencePiece and added tokens as written."""

    def __init__(self, model_file: Path, added: dict[int, tuple[str, bool]], config: dict, where: str) -> None:
        try:
            import sentencepiece
        except ImportError:
            raise TokenizerError(f"{where}: reading tokenizer.model needs the sentencepiece package "
                                 "(pip install sentencepiece)") from None
        try:
            self.sp = sentencepiece.SentencePieceProcessor(model_file=str(model_file))
        except (OSError, RuntimeError) as e:
            raise TokenizerError(f"{model_file}: not a SentencePiece model ({e})") from None
        self.config, self.where = config, where
        self.added = {content: token_id for token_id, (content, _) in added.items()}
        self.added_ids = {token_id: (content, special) for token_id, (content, special) in added.items()}
        self.split = re.compile("(" + "|".join(re.escape(t) for t in sorted(self.added, key=len, reverse=True))
                                + ")") if self.added else None
        self.add_bos = bool(config.get("add_bos_token", True))
        bos = self._named("bos_token", "<s>")
        self.bos_id = self.token_to_id(bos) if bos else None
        for token in (IMG_START, IMG_END, IMG_CONTEXT):
            if token not in self.added:
                raise TokenizerError(f"{where}: the InternVL token {token} is missing")

    def __len__(self) -> int:
        return max(self.sp.get_piece_size(), max(self.added_ids, default=-1) + 1)

    def encode(self, text: str) -> list[int]:
        ids: list[int] = []
        for part in self.split.split(text) if self.split else [text]:
            if part in self.added:
                ids.append(self.added[part])
            elif part:
                ids.extend(self.sp.encode(part))
        return ids

    def prompt_ids(self, text: str) -> list[int]:
        return ([self.bos_id] if self.add_bos and self.bos_id is not None else []) + self.encode(text)

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        out: list[str] = []
        run: list[int] = []
        size = self.sp.get_piece_size()
        for token_id in map(int, ids):
            if token_id not in self.added_ids and 0 <= token_id < size and not self.sp.is_control(token_id):
                run.append(token_id)
                continue
            out.append(self.sp.decode(run))
            run = []
            if token_id in self.added_ids:
                content, special = self.added_ids[token_id]
            elif 0 <= token_id < size:
                content, special = self.sp.id_to_piece(token_id), True  # <s>, </s>
            else:
                continue  # an id past the vocabulary decodes to nothing, as the original's
            if not (skip_special_tokens and special):
                out.append(content)
        return "".join(out) + self.sp.decode(run)

    def token_to_id(self, token: str) -> int:
        if token in self.added:
            return self.added[token]
        token_id = self.sp.piece_to_id(token)
        if self.sp.id_to_piece(token_id) != token:  # unknown pieces map to <unk>
            raise TokenizerError(f"{self.where}: no token {token!r}")
        return token_id


def _qwen2_from_vocab(folder: Path) -> Tokenizer:
    vocab_file, merges_file = folder / "vocab.json", folder / "merges.txt"
    try:
        vocab = json.loads(vocab_file.read_text(encoding="utf-8"))
        lines = merges_file.read_text(encoding="utf-8").splitlines()
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise TokenizerError(f"{folder}: cannot read vocab.json / merges.txt ({e})") from None
    merges = [tuple(line.split(" ")) for line in lines if line and not line.startswith("#version")]
    bad = [i for i, m in enumerate(merges) if len(m) != 2]
    if bad:
        raise TokenizerError(f"{merges_file}: line {bad[0] + 1} is not a merge of two symbols")
    return qwen2_pipeline(Tokenizer(BPE(vocab=vocab, merges=merges, continuing_subword_prefix="",
                                        end_of_word_suffix="", fuse_unk=False, byte_fallback=False)))


def qwen2_pipeline(tok: Tokenizer) -> Tokenizer:
    """Qwen2's text handling around a BPE model (as transformers converts it): NFC, Qwen2's split regex, byte
    level, byte-level decoding."""
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_SPLIT), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    return tok


def _added_tokens(folder: Path, config: dict) -> dict[int, tuple[str, bool]]:
    """id -> (content, special) from tokenizer_config.json's added_tokens_decoder and added_tokens.json."""
    added: dict[int, tuple[str, bool]] = {}
    file = folder / "added_tokens.json"
    if file.is_file():
        for content, token_id in json.loads(file.read_text(encoding="utf-8")).items():
            added[int(token_id)] = (content, True)
    for token_id, entry in (config.get("added_tokens_decoder") or {}).items():
        added[int(token_id)] = (entry["content"], bool(entry.get("special", True)))
    return added


def load_tokenizer(path: str | Path) -> InternVLTokenizer:
    """Load the tokenizer files of a checkpoint folder, offline."""
    folder = Path(path)
    if not folder.is_dir():
        raise TokenizerError(f"{folder}: no such folder")
    config_file = folder / "tokenizer_config.json"
    try:
        config = json.loads(config_file.read_text(encoding="utf-8")) if config_file.is_file() else {}
    except json.JSONDecodeError as e:
        raise TokenizerError(f"{config_file}: not valid JSON ({e})") from None
    if (folder / "tokenizer.json").is_file():
        try:
            tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
        except Exception as e:  # the tokenizers library raises its own Exception type for bad files
            raise TokenizerError(f"{folder / 'tokenizer.json'}: cannot be read ({e})") from None
    elif (folder / "vocab.json").is_file() and (folder / "merges.txt").is_file():
        tok = _qwen2_from_vocab(folder)
        for token_id, (content, special) in sorted(_added_tokens(folder, config).items()):
            # registered even when already in vocab.json, so text containing it is matched whole
            token = AddedToken(content, special=special, normalized=not special)
            (tok.add_special_tokens if special else tok.add_tokens)([token])
            if tok.token_to_id(content) != token_id:
                raise TokenizerError(f"{folder}: added token {content!r} should have id {token_id}, "
                                     f"got {tok.token_to_id(content)} (ids must follow the vocabulary)")
    elif (folder / "tokenizer.model").is_file():
        return SentencePieceTokenizer(folder / "tokenizer.model", _added_tokens(folder, config), config, str(folder))
    else:
        raise TokenizerError(f"{folder}: no tokenizer.json, vocab.json + merges.txt, or tokenizer.model")
    return InternVLTokenizer(tok, config, str(folder))
