"""Training records in the original InternVL formats (spec §4, §7, §9.1) -> token ids, labels, tiles.

A `meta.json` names datasets (`root`, `annotation` jsonl, `data_augment`, `repeat_time`, `max_dynamic_patch`);
each jsonl line is pure text, one image (`image`: str), several images (`image`: list) or a video (`video`),
with `conversations` of `human` / `gpt` (and an optional first `system`) turns; preference lines (MMPR) hold
`question`, `chosen`, `rejected` and optionally `image`.

A record that cannot be used raises `SkipRecord` (its `kind` is what it is counted under, its message the details);
callers count it and report its file and line. Image tokens are never cut by the length limit: such a record is
skipped, not truncated. Image and video paths stay inside their dataset's `root` unless the meta entry sets
`allow_outside_root`. A meta file or annotation that cannot be used is a ValueError naming the file and field,
raised before any record is read.
"""

from __future__ import annotations

import io
import json
import math
import os
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from nativevl.config import IGNORE_INDEX
from nativevl.conversation import IMAGE_PLACEHOLDER, VIDEO_PLACEHOLDER, get_template
from nativevl.data.image import ImageError, dynamic_preprocess, normalize, open_image
from nativevl.data.v2pe import V2PE_DELTAS, V2PE_MODES, v2pe_positions_row
from nativevl.data.video import VideoError, _frame_count, read_frames
from nativevl.tokenizer import IMG_END, IMG_START, InternVLTokenizer

JPEG_QUALITIES = tuple(range(75, 101))  # 75..100 inclusive, drawn uniformly per tile


class SkipRecord(Exception):
    """This record cannot become a training sample; the message says why, `kind` is the reason it is counted
    under (one of SKIP_KINDS)."""

    def __init__(self, message: str, kind: str = "malformed record") -> None:
        super().__init__(message)
        self.kind = kind


SKIP_KINDS = (
    "not UTF-8", "not JSON", "malformed record", "unreadable image or video", "path outside the dataset root",
    "<image> count does not match the images", "image tokens past max_seq_length", "no supervised tokens",
    "over the packing budget",
)


class UndecodableLine(str):
    """A jsonl line that is not valid UTF-8 (its text decoded with replacement characters); `reason` says where."""

    reason: str = ""


@dataclass
class DatasetSpec:
    """One entry of a meta.json."""

    name: str
    root: Path
    annotation: Path
    data_augment: bool = False
    repeat_time: float = 1.0
    max_dynamic_patch: int | None = None
    weight: float | None = None  # sampling weight; None: the number of records (after repeat_time)
    allow_outside_root: bool = False  # records may name absolute paths or paths with .. that leave `root`
    meta: Path | None = None  # the meta.json it came from (for messages)

    @property
    def where(self) -> str:
        return f"{self.meta}: dataset {self.name!r}" if self.meta else f"dataset {self.name!r}"


@dataclass
class DataConfig:
    """How records become samples. Defaults follow the InternVL3 scripts (spec §4.3, §8)."""

    max_seq_length: int = 16384
    max_dynamic_patch: int = 12
    min_dynamic_patch: int = 1
    use_thumbnail: bool = True
    image_size: int = 448
    num_image_token: int = 256
    min_num_frame: int = 8
    max_num_frame: int = 32
    template: str = "internvl2_5"
    system_message: str | None = None  # None: the template's default (the original always inserts one)
    v2pe: str = "off"  # "off": integer positions; "fixed": v2pe_delta for every image; "random": per image
    v2pe_delta: float = 1.0

    def __post_init__(self) -> None:
        """Settings that would make every record fail are refused here, before any record is read."""
        if self.v2pe not in V2PE_MODES:
            raise ValueError(f"v2pe must be one of {', '.join(V2PE_MODES)}, got {self.v2pe!r}")
        for name in ("max_seq_length", "max_dynamic_patch", "min_dynamic_patch", "image_size", "num_image_token",
                     "min_num_frame", "max_num_frame"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"{name} must be a positive whole number, got {getattr(self, name)!r}")
        if self.min_dynamic_patch > self.max_dynamic_patch or self.min_num_frame > self.max_num_frame:
            raise ValueError("min_dynamic_patch / min_num_frame must not exceed max_dynamic_patch / max_num_frame")


@dataclass
class Sample:
    input_ids: torch.Tensor  # (L,) long
    labels: torch.Tensor  # (L,) long, -100 = not learned
    position_ids: torch.Tensor  # (L,) float32, from 0 (fractional with V2PE)
    pixel_values: torch.Tensor  # (T, 3, S, S) float32; text-only samples carry one dummy tile
    image_flags: torch.Tensor  # (T,) long: 1 real tile, 0 dummy
    source: str = ""  # "file:line"
    num_patches: list[int] = field(default_factory=list)  # tiles per image
    # Attention segments within the sample (lengths; None: one). A preference pair is one sample of two segments,
    # chosen then rejected, whose image tokens both read the same encoded tiles (`image_uses` = 2).
    segments: list[int] | None = None
    image_uses: int = 1

    @property
    def num_tokens(self) -> int:
        return int(self.input_ids.numel())

    @property
    def num_tiles(self) -> int:
        return int(self.pixel_values.shape[0])


# --- meta.json -------------------------------------------------------------------------------------------------


def read_meta(path: str | Path) -> list[DatasetSpec]:
    """Parse a meta.json; relative `root` / `annotation` paths are taken from the meta file's folder. Every
    problem is a ValueError naming the file, the dataset and the field."""
    path = Path(path)
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: cannot read meta file ({e})") from None
    if not isinstance(meta, dict) or not meta:
        raise ValueError(f"{path}: expected a JSON object of datasets")
    specs = []
    for name, entry in meta.items():
        where = f"{path}: dataset {name!r}"
        if not isinstance(entry, dict) or "annotation" not in entry:
            raise ValueError(f"{where}: needs at least an 'annotation' field")
        for key in ("annotation", "root"):
            if key in entry and not isinstance(entry[key], str):
                raise ValueError(f"{where}: {key} must be a path (a string), got {entry[key]!r}")
        annotation = path.parent / entry["annotation"]
        if annotation.suffix != ".jsonl":
            raise ValueError(f"{where}: annotation must be a .jsonl file, got {annotation.name}")
        if not annotation.exists():
            raise ValueError(f"{where}: annotation {annotation} does not exist")
        if not annotation.is_file():
            raise ValueError(f"{where}: annotation {annotation} is not a file")
        repeat = entry.get("repeat_time", 1)
        if isinstance(repeat, bool) or not isinstance(repeat, (int, float)) or not math.isfinite(repeat) \
                or repeat <= 0 or (repeat > 1 and not float(repeat).is_integer()):
            raise ValueError(f"{where}: repeat_time must be in (0, 1] or a whole number, got {repeat!r}")
        max_patch = entry.get("max_dynamic_patch")
        if max_patch is not None and (isinstance(max_patch, bool) or not isinstance(max_patch, int) or max_patch < 1):
            raise ValueError(f"{where}: max_dynamic_patch must be a positive whole number, got {max_patch!r}")
        for key in ("data_augment", "allow_outside_root"):
            if not isinstance(entry.get(key, False), bool):
                raise ValueError(f"{where}: {key} must be true or false, got {entry[key]!r}")
        specs.append(DatasetSpec(
            name=name,
            root=path.parent / entry.get("root", ""),
            annotation=annotation,
            data_augment=entry.get("data_augment", False),
            repeat_time=float(repeat),
            max_dynamic_patch=max_patch,
            weight=_weight(entry.get("weight"), where),
            allow_outside_root=entry.get("allow_outside_root", False),
            meta=path,
        ))
    return specs


def _weight(value: Any, where: str) -> float | None:
    if value is None:
        return None
    if not isinstance(value, (int, float)) or value <= 0:
        raise ValueError(f"{where}: weight must be a positive number, got {value!r}")
    return float(value)


def read_lines(spec: DatasetSpec) -> list[tuple[int, str]]:
    """(1-based line number, text) of the annotation after repeat_time: r < 1 keeps the first int(n·r) lines,
    r > 1 repeats the list r times (as the original). A file that cannot be read is a ValueError naming it; a
    line that is not UTF-8 comes back as an `UndecodableLine` (the stream skips and counts it)."""
    try:
        data = spec.annotation.read_bytes()
    except OSError as e:
        raise ValueError(f"{spec.where}: cannot read annotation {spec.annotation} ({e})") from None
    lines: list[tuple[int, str]] = []
    for i, raw in enumerate(data.removeprefix(b"\xef\xbb\xbf").split(b"\n")):  # a UTF-8 BOM is no part of line 1
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            text = UndecodableLine(raw.decode("utf-8", errors="replace"))
            text.reason = f"not UTF-8 (byte {raw[e.start]:#04x} at byte {e.start + 1} of the line)"
        if text.strip():
            lines.append((i + 1, text))
    if spec.repeat_time < 1:
        return lines[: int(len(lines) * spec.repeat_time)]
    return lines * int(spec.repeat_time)


def parse_line(text: str) -> dict[str, Any]:
    """One jsonl line -> its record, or SkipRecord (not UTF-8, not JSON, not a JSON object)."""
    if isinstance(text, UndecodableLine):
        raise SkipRecord(text.reason, "not UTF-8")
    try:
        record = json.loads(text)
    except json.JSONDecodeError as e:
        raise SkipRecord(f"not JSON ({e})", "not JSON") from None
    if not isinstance(record, dict):
        raise SkipRecord(f"the line is a JSON {type(record).__name__}, not an object", "not JSON")
    return record


def is_text_only(spec: DatasetSpec, sample_lines: int = 20) -> bool:
    """A dataset whose first records carry no image or video (lines that do not parse are passed over)."""
    for _, line in read_lines(spec)[:sample_lines]:
        try:
            record = parse_line(line)
        except SkipRecord:
            continue
        if "image" in record or "video" in record:
            return False
    return True


# --- tokenisation and labels -----------------------------------------------------------------------------------


def preprocess(
    conversations: list[dict[str, str]],
    tokenizer: InternVLTokenizer,
    image_token_counts: list[int],
    cfg: DataConfig,
) -> tuple[list[int], list[int]]:
    """ids and labels by the original `preprocess_internvl2_5` (spec §4.3): each segment is tokenised on its
    own; only assistant answers and their `<|im_end|>` are learned, not `<|im_start|>assistant\\n` nor the
    final newline."""
    template = get_template(cfg.template)
    turns = list(conversations)
    system = cfg.system_message if cfg.system_message is not None else template.system_message
    if turns and turns[0].get("from") == "system":
        system = turns.pop(0)["value"]
    placed = 0
    segments: list[tuple[str, bool]] = [(template.system_template.format(system_message=system) + template.sep, False)]
    for turn in turns:
        role, value = turn.get("from"), turn.get("value")
        if not isinstance(value, str):
            raise SkipRecord(f"a {role!r} turn has no text value")
        if role == "human":
            while IMAGE_PLACEHOLDER in value and placed < len(image_token_counts):
                value = value.replace(IMAGE_PLACEHOLDER, IMG_START + "<IMG_CONTEXT>" * image_token_counts[placed]
                                      + IMG_END, 1)
                placed += 1
            segments.append((template.roles[0] + value + template.sep, False))
        elif role == "gpt":
            segments.append((template.roles[1] + value + template.sep, True))
        else:
            raise SkipRecord(f"unknown turn role {role!r} (expected human, gpt or a first system turn)")
    leftover = sum(t.get("value", "").count(IMAGE_PLACEHOLDER) for t in turns if t.get("from") == "human")
    if placed != len(image_token_counts) or leftover != placed:
        raise SkipRecord(f"{leftover} <image> placeholder(s) for {len(image_token_counts)} image(s)",
                         "<image> count does not match the images")
    prefix = len(tokenizer.encode(template.roles[1]))
    ids: list[int] = []
    labels: list[int] = []
    for text, learned in segments:
        seg = tokenizer.encode(text)
        ids += seg
        if learned:
            labels += [IGNORE_INDEX] * prefix + seg[prefix:-1] + [IGNORE_INDEX]
        else:
            labels += [IGNORE_INDEX] * len(seg)
    return ids, labels


# --- images ----------------------------------------------------------------------------------------------------


def jpeg_degrade(tile: Image.Image, quality: int) -> Image.Image:
    """Re-encode as JPEG at `quality` and decode again (the original's train-time augmentation)."""
    buffer = io.BytesIO()
    tile.save(buffer, format="JPEG", quality=quality)
    buffer.seek(0)
    return Image.open(buffer).convert("RGB")


def image_tiles(image: Image.Image, max_num: int, cfg: DataConfig, augment: bool, rng: random.Random,
                thumbnail: bool | None = None) -> torch.Tensor:
    """Dynamic tiles of one image; with `augment`, every tile (thumbnail too) gets its own JPEG quality."""
    tiles = dynamic_preprocess(image, cfg.min_dynamic_patch, max_num, cfg.image_size,
                               cfg.use_thumbnail if thumbnail is None else thumbnail)
    if augment:
        tiles = [jpeg_degrade(t, rng.choice(JPEG_QUALITIES)) for t in tiles]
    return normalize(tiles, cfg.image_size)


def sample_frame_indices(num_frames: int, vlen: int, rng: random.Random) -> list[int]:
    """Training frame sampling ('rand', spec §2.4): one random frame from each of `num_frames` equal intervals
    (the last frame of an interval is never drawn); if any interval is shorter than 2 frames, the first
    num_frames of a sorted random permutation; padded with the last index when the video is too short."""
    bounds = np.linspace(0, vlen, num_frames + 1).astype(int)
    ranges = [(int(bounds[k]), int(bounds[k + 1]) - 1) for k in range(num_frames)]
    if any(hi - lo < 1 for lo, hi in ranges):
        perm = list(range(vlen))
        rng.shuffle(perm)
        indices = sorted(perm[: min(num_frames, vlen)])
    else:
        indices = [rng.choice(range(lo, hi)) for lo, hi in ranges]
    return indices + [indices[-1]] * (num_frames - len(indices))


# --- records -> samples ----------------------------------------------------------------------------------------


def data_path(spec: DatasetSpec, relative: Any, field_name: str = "image") -> Path:
    """`root / relative`, or SkipRecord if `relative` is not a path or leaves the root (absolute, or `..` past
    it, judged on the text: symlinks inside the root are followed) and the dataset does not allow that."""
    if not isinstance(relative, str) or not relative:
        raise SkipRecord(f"{field_name} must be a non-empty path, got {relative!r}")
    if not spec.allow_outside_root and (os.path.isabs(relative) or
                                         os.path.normpath(relative).split(os.sep)[0] == os.pardir):
        raise SkipRecord(f"{field_name} path {relative!r} leaves the dataset root {spec.root} (to allow that, set "
                         f'"allow_outside_root": true in dataset {spec.name!r} of {spec.meta or "the meta file"})',
                         "path outside the dataset root")
    return spec.root / relative


def _open(spec: DatasetSpec, relative: str) -> Image.Image:
    path = data_path(spec, relative)
    try:
        return open_image(path)
    except ImageError as e:
        raise SkipRecord(str(e), "unreadable image or video") from None


def _positions(ids: list[int], tokenizer: InternVLTokenizer, num_images: int, cfg: DataConfig,
               rng: random.Random) -> torch.Tensor:
    if cfg.v2pe == "off":
        return torch.arange(len(ids), dtype=torch.float32)
    if cfg.v2pe == "fixed":
        deltas: list[float] = [cfg.v2pe_delta] * num_images
    elif cfg.v2pe == "random":
        deltas = [rng.choice(V2PE_DELTAS) for _ in range(num_images)]
    else:
        raise ValueError(f"v2pe must be one of {', '.join(V2PE_MODES)}, got {cfg.v2pe!r}")
    return torch.tensor(v2pe_positions_row(ids, tokenizer.img_context_id, deltas), dtype=torch.float32)


def _visuals(record: dict[str, Any], spec: DatasetSpec, cfg: DataConfig, rng: random.Random
             ) -> tuple[list[dict[str, str]], list[torch.Tensor]]:
    """(conversations, per-image tile tensors) for the record's image(s) or video."""
    conversations = [dict(t) for t in record["conversations"]]
    max_patch = spec.max_dynamic_patch or cfg.max_dynamic_patch
    image = record.get("image")
    if isinstance(image, str):
        first = conversations[0] if conversations else {}
        if first.get("from") == "human" and IMAGE_PLACEHOLDER not in first.get("value", ""):
            first["value"] = IMAGE_PLACEHOLDER + "\n" + first["value"]
        return conversations, [image_tiles(_open(spec, image), max_patch, cfg, spec.data_augment, rng)]
    if isinstance(image, list):
        if not all(isinstance(p, str) for p in image):
            raise SkipRecord(f"'image' must be a path or a list of paths, got {image!r}")
        per_image = max(1, max_patch // max(1, len(image)))
        return conversations, [image_tiles(_open(spec, p), per_image, cfg, spec.data_augment, rng) for p in image]
    video = record.get("video")
    if isinstance(video, str):
        path = data_path(spec, video, "video")
        try:
            vlen, _ = _frame_count(path)
            count = rng.randint(cfg.min_num_frame, cfg.max_num_frame)
            frames = read_frames(path, sample_frame_indices(count, vlen, rng))
        except VideoError as e:
            raise SkipRecord(str(e), "unreadable image or video") from None
        first = conversations[0]
        prefix = "\n".join(f"Frame-{i + 1}: {IMAGE_PLACEHOLDER}" for i in range(len(frames))) + "\n"
        value = first["value"]
        first["value"] = value.replace(VIDEO_PLACEHOLDER + "\n", prefix, 1) if VIDEO_PLACEHOLDER in value \
            else prefix + value
        return conversations, [image_tiles(f, 1, cfg, spec.data_augment, rng, thumbnail=False) for f in frames]
    if image is not None or video is not None:
        raise SkipRecord(f"'image' must be a path or a list of paths and 'video' a path, got "
                         f"{image if image is not None else video!r}")
    return conversations, []


DUMMY_IMAGE = Image.new("RGB", (224, 224), (255, 255, 255))


def build_sample(record: dict[str, Any], spec: DatasetSpec, tokenizer: InternVLTokenizer, cfg: DataConfig,
                 rng: random.Random, source: str = "") -> Sample:
    """One SFT / pre-training record -> a Sample, or SkipRecord."""
    if not isinstance(record.get("conversations"), list) or not record["conversations"]:
        raise SkipRecord("no 'conversations' list")
    for k, turn in enumerate(record["conversations"]):
        if not isinstance(turn, dict) or not isinstance(turn.get("from"), str) or not isinstance(turn.get("value"), str):
            raise SkipRecord(f"conversations[{k}] is not a {{\"from\": ..., \"value\": text}} turn: {str(turn)[:80]!r}")
    conversations, images = _visuals(record, spec, cfg, rng)
    counts = [cfg.num_image_token * t.shape[0] for t in images]
    ids, labels = preprocess(conversations, tokenizer, counts, cfg)
    ids, labels = _fit(ids, labels, tokenizer, cfg)
    if all(label == IGNORE_INDEX for label in labels):
        raise SkipRecord("no supervised tokens (no gpt answer, or the length limit cut it)", "no supervised tokens")
    if images:
        pixels, flags = torch.cat(images), torch.ones(sum(t.shape[0] for t in images), dtype=torch.long)
    else:  # the ViT stays in the graph through one white dummy tile, flagged 0 (spec §4.2)
        pixels, flags = normalize([DUMMY_IMAGE.resize((cfg.image_size, cfg.image_size))], cfg.image_size), \
            torch.zeros(1, dtype=torch.long)
    return Sample(
        input_ids=torch.tensor(ids, dtype=torch.long),
        labels=torch.tensor(labels, dtype=torch.long),
        position_ids=_positions(ids, tokenizer, len(images), cfg, rng),
        pixel_values=pixels,
        image_flags=flags,
        source=source,
        num_patches=[t.shape[0] for t in images],
    )


def _fit(ids: list[int], labels: list[int], tokenizer: InternVLTokenizer, cfg: DataConfig
         ) -> tuple[list[int], list[int]]:
    """Truncate text past max_seq_length; a record whose image tokens would be cut is skipped instead."""
    if len(ids) <= cfg.max_seq_length:
        return ids, labels
    image_ids = {tokenizer.img_context_id, tokenizer.token_to_id(IMG_START), tokenizer.token_to_id(IMG_END)}
    if any(t in image_ids for t in ids[cfg.max_seq_length:]):
        raise SkipRecord(f"{len(ids)} tokens: max_seq_length {cfg.max_seq_length} would cut image tokens",
                         "image tokens past max_seq_length")
    return ids[: cfg.max_seq_length], labels[: cfg.max_seq_length]


def build_pair(record: dict[str, Any], spec: DatasetSpec, tokenizer: InternVLTokenizer, cfg: DataConfig,
               rng: random.Random, source: str = "") -> tuple[Sample, Sample]:
    """An MMPR preference record -> (chosen, rejected) samples sharing the same tiles (spec §9.1)."""
    for key in ("question", "chosen", "rejected"):
        if not isinstance(record.get(key), str):
            raise SkipRecord(f"preference record without a text {key!r}")
    base = {k: v for k, v in record.items() if k in ("image", "video")}
    state = rng.getstate()
    out = []
    for answer in (record["chosen"], record["rejected"]):
        rng.setstate(state)  # the same tiles (and JPEG qualities, frames, deltas) for both answers
        conv = [{"from": "human", "value": record["question"]}, {"from": "gpt", "value": answer}]
        out.append(build_sample({**base, "conversations": conv}, spec, tokenizer, cfg, rng, source))
    return out[0], out[1]


def pair_sample(chosen: Sample, rejected: Sample) -> Sample:
    """(chosen, rejected) -> one sample of two attention segments whose tiles are stored, and encoded, once."""
    if not torch.equal(chosen.pixel_values, rejected.pixel_values):
        raise ValueError(f"{chosen.source}: the two answers of a pair must share their tiles")
    return Sample(
        input_ids=torch.cat([chosen.input_ids, rejected.input_ids]),
        labels=torch.cat([chosen.labels, rejected.labels]),
        position_ids=torch.cat([chosen.position_ids, rejected.position_ids]),
        pixel_values=chosen.pixel_values,
        image_flags=chosen.image_flags,
        source=chosen.source,
        num_patches=chosen.num_patches,
        segments=[chosen.num_tokens, rejected.num_tokens],
        image_uses=2,
    )
