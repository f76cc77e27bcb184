"""Training records in the original format: labels, tiles, augmentation, skips, mixing, sharding, resume."""

from __future__ import annotations

import json
import logging
import random

import av
import numpy as np
import pytest
import torch
from PIL import Image
from reference import make_tokenizer

from nativevl.conversation import INTERNVL2_5_SYSTEM
from nativevl.data.dataset import (
    DataConfig,
    SkipRecord,
    build_pair,
    build_sample,
    jpeg_degrade,
    preprocess,
    read_meta,
    sample_frame_indices,
)
from nativevl.data.image import dynamic_preprocess, normalize
from nativevl.data.loader import StreamConfig, TrainStream, make_loader
from nativevl.data.v2pe import V2PE_DELTAS
from nativevl.tokenizer import load_tokenizer

CFG = DataConfig(max_seq_length=4096, max_dynamic_patch=4, num_image_token=256, min_num_frame=4, max_num_frame=4)


def picture(path, w, h, seed):
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)


def write_jsonl(path, records):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))


def conv(q, a):
    return [{"from": "human", "value": q}, {"from": "gpt", "value": a}]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    make_tokenizer(root / "tok")
    (root / "img").mkdir()
    for i in range(4):
        picture(root / "img" / f"{i}.png", 300 + 100 * i, 200, i)
    with av.open(str(root / "img" / "clip.mp4"), "w") as out:
        stream = out.add_stream("mpeg4", rate=5)
        stream.width, stream.height, stream.pix_fmt = 32, 32, "yuv420p"
        for i in range(20):
            out.mux(stream.encode(av.VideoFrame.from_ndarray(np.full((32, 32, 3), 10 * i, np.uint8), format="rgb24")))
        out.mux(stream.encode())
    write_jsonl(root / "text.jsonl", [{"conversations": conv(f"What is {i} plus 1?", f"{i + 1}.")} for i in range(30)])
    write_jsonl(root / "image.jsonl", [
        {"image": f"{i % 4}.png", "conversations": conv("What colour?", f"Colour {i}.")} for i in range(10)
    ] + [
        {"image": "missing.png", "conversations": conv("<image>\nWhat?", "Nothing.")},  # line 11: missing file
        {"image": "0.png", "conversations": conv("<image> <image>", "Two?")},  # line 12: placeholder count
        "{not json",  # line 13
        {"image": "1.png", "conversations": [{"from": "human", "value": "<image>\nOnly a question."}]},  # 14
    ])
    write_jsonl(root / "multi.jsonl", [
        {"image": ["0.png", "1.png", "2.png"], "conversations": conv(
            "Image-1: <image>\nImage-2: <image>\nImage-3: <image>\nSame?", "No.")} for _ in range(5)])
    write_jsonl(root / "video.jsonl", [{"video": "clip.mp4", "conversations": conv("<video>\nWhat changes?", "It brightens.")}])
    meta = {
        "text": {"root": "img", "annotation": "text.jsonl", "data_augment": False, "repeat_time": 1},
        "image": {"root": "img", "annotation": "image.jsonl", "data_augment": True, "repeat_time": 1},
        "multi": {"root": "img", "annotation": "multi.jsonl", "data_augment": False, "repeat_time": 2},
        "video": {"root": "img", "annotation": "video.jsonl", "data_augment": False, "repeat_time": 1},
    }
    (root / "meta.json").write_text(json.dumps(meta))
    return root


@pytest.fixture(scope="module")
def tok(world):
    return load_tokenizer(world / "tok")


def spec(world, name):
    return {s.name: s for s in read_meta(world / "meta.json")}[name]


def test_labels_follow_the_original_rule(tok):
    ids, labels = preprocess(conv("Hi?", "Yes, 42."), tok, [], CFG)
    system = tok.encode(f"<|im_start|>system\n{INTERNVL2_5_SYSTEM}<|im_end|>\n")
    user = tok.encode("<|im_start|>user\nHi?<|im_end|>\n")
    answer = tok.encode("<|im_start|>assistant\nYes, 42.<|im_end|>\n")
    assert ids == system + user + answer  # each segment tokenised on its own
    prefix = len(tok.encode("<|im_start|>assistant\n"))
    learned = [t for t in labels if t != -100]
    assert learned == answer[prefix:-1]  # the answer and <|im_end|>, not the role prefix nor the last newline
    assert learned[-1] == tok.im_end_id
    ids2, _ = preprocess([{"from": "system", "value": "Be short."}] + conv("Hi?", "Yes."), tok, [], CFG)
    assert ids2[: len(tok.encode("<|im_start|>system\nBe short.<|im_end|>\n"))] == tok.encode(
        "<|im_start|>system\nBe short.<|im_end|>\n")


def test_record_kinds(world, tok):
    rng = random.Random(0)
    text = build_sample({"conversations": conv("Hi", "Yo")}, spec(world, "text"), tok, CFG, rng)
    assert text.image_flags.tolist() == [0] and text.pixel_values.shape == (1, 3, 448, 448)
    assert (text.input_ids == tok.img_context_id).sum() == 0
    one = build_sample({"image": "3.png", "conversations": conv("What?", "A.")}, spec(world, "image"), tok, CFG, rng)
    assert one.num_patches == [4] and one.image_flags.tolist() == [1] * 4  # 600x200: 3x1 tiles + thumbnail
    assert (one.input_ids == tok.img_context_id).sum() == 256 * 4
    multi = build_sample({"image": ["0.png", "1.png", "2.png"], "conversations": conv(
        "Image-1: <image>\nImage-2: <image>\nImage-3: <image>\nQ", "A")}, spec(world, "multi"), tok, CFG, rng)
    assert multi.num_patches == [1, 1, 1]  # max(1, 4 // 3) tiles each
    video = build_sample({"video": "clip.mp4", "conversations": conv("<video>\nWhat?", "B.")},
                         spec(world, "video"), tok, CFG, rng)
    assert video.num_patches == [1] * 4
    assert "Frame-1: <img>" in tok.decode(video.input_ids.tolist(), skip_special_tokens=False)


def test_jpeg_augmentation_is_per_tile(world, tok):
    s = spec(world, "image")
    image = Image.open(s.root / "3.png").convert("RGB")
    rng = random.Random(5)
    augmented = build_sample({"image": "3.png", "conversations": conv("What?", "A.")}, s, tok, CFG, rng)
    qualities_rng = random.Random(5)
    tiles = dynamic_preprocess(image, 1, 4, 448, True)
    qualities = [qualities_rng.choice(range(75, 101)) for _ in tiles]
    expected = normalize([jpeg_degrade(t, q) for t, q in zip(tiles, qualities, strict=True)])
    assert torch.equal(augmented.pixel_values, expected)
    assert len(set(qualities)) > 1
    plain = normalize(tiles)
    assert not torch.equal(plain, expected)  # noise images change a lot under JPEG; equality above is the check


def test_bad_records_are_skipped_counted_and_named(world, tok, caplog):
    stream = TrainStream([spec(world, "image")], tok, CFG, StreamConfig(max_tokens=4096, max_tiles=20))
    caplog.set_level(logging.WARNING)
    it = iter(stream)
    for _ in range(6):
        next(it)
    reasons = stream.skipped
    assert sum(reasons.values()) >= 4
    assert {"unreadable image or video", "<image> count does not match the images", "not JSON",
            "no supervised tokens"} <= set(reasons)  # counted by kind
    first = stream.skip_examples  # each kind's first file:line and reason
    assert first["unreadable image or video"].endswith("image.jsonl:11: " + str(world / "img" / "missing.png")
                                                       + ": no such file")
    assert "image.jsonl:12: 2 <image> placeholder(s) for 1 image(s)" in first["<image> count does not match the images"]
    assert "image.jsonl:13: not JSON" in first["not JSON"] and "image.jsonl:14" in first["no supervised tokens"]
    assert "image.jsonl:11" in caplog.text and "image.jsonl:13" in caplog.text


def test_image_tokens_are_never_cut_by_the_length_limit(world, tok):
    short = DataConfig(max_seq_length=300, max_dynamic_patch=4)
    with pytest.raises(SkipRecord, match="would cut image tokens"):
        build_sample({"image": "3.png", "conversations": conv("What?", "A.")}, spec(world, "image"), tok, short,
                     random.Random(0))
    turns = conv("Hi", "ok") + conv("word " * 400, "fine")  # the cut falls in the second question
    long_text = build_sample({"conversations": turns}, spec(world, "text"), tok,
                             DataConfig(max_seq_length=120, system_message="Be brief."),
                             random.Random(0))
    assert long_text.num_tokens == 120


def test_preference_pair_shares_tiles(world, tok):
    record = {"image": "2.png", "question": "<image>\nHow many?", "chosen": "Two.\n\nAnswer: 2",
              "rejected": "Three.\n\nAnswer: 3"}
    chosen, rejected = build_pair(record, spec(world, "image"), tok, CFG, random.Random(1))
    assert torch.equal(chosen.pixel_values, rejected.pixel_values)  # same JPEG qualities too
    learned = tok.decode([t for t in chosen.labels.tolist() if t != -100])
    assert learned == "Two.\n\nAnswer: 2"
    with pytest.raises(SkipRecord, match="'chosen'"):
        build_pair({"question": "q", "rejected": "r"}, spec(world, "image"), tok, CFG, random.Random(1))


def test_v2pe_random_deltas_per_image(world, tok):
    cfg = DataConfig(max_dynamic_patch=4, v2pe="random")
    record = {"image": ["0.png", "1.png"], "conversations": conv("Image-1: <image>\nImage-2: <image>\nQ", "A")}
    sample = build_sample(record, spec(world, "multi"), tok, cfg, random.Random(3))
    pos = sample.position_ids
    steps = pos[1:] - pos[:-1]
    ctx = (sample.input_ids[1:] == tok.img_context_id)
    deltas = sorted({round(float(d), 8) for d in steps[ctx]})
    assert set(deltas) <= set(V2PE_DELTAS) and pos[0] == 0
    fixed = build_sample(record, spec(world, "multi"), tok, DataConfig(max_dynamic_patch=4, v2pe="fixed",
                         v2pe_delta=0.5), random.Random(3))
    assert set((fixed.position_ids[1:] - fixed.position_ids[:-1])[ctx].tolist()) == {0.5}


def test_training_frame_sampling_rule():
    rng = random.Random(0)
    for _ in range(50):
        picks = sample_frame_indices(8, 100, rng)
        bounds = np.linspace(0, 100, 9).astype(int)
        assert all(bounds[k] <= p < bounds[k + 1] - 1 for k, p in enumerate(picks))  # never an interval's last
    short = sample_frame_indices(8, 5, random.Random(1))
    assert short[:5] == sorted(short[:5]) and short[5:] == [short[4]] * 3  # padded with the last index


def test_text_ratio_mixing(world, tok):
    stream = TrainStream(read_meta(world / "meta.json"), tok, CFG,
                         StreamConfig(text_ratio=0.25, max_tokens=8192, max_tiles=40))
    rng_picks = [stream._pick_dataset(random.Random(f"0:draw:{g}")) for g in range(2000)]
    share = sum(stream.text_only[d] for d in rng_picks) / len(rng_picks)
    assert abs(share - 0.25) < 0.03


def _ids(batches):
    return [b.input_ids.tolist() for b in batches]


def _take(it, n):
    return [next(it) for _ in range(n)]


def test_deterministic_and_sharded_by_rank(world, tok):
    specs = [spec(world, "text"), spec(world, "multi")]
    sc = StreamConfig(seed=3, max_tokens=3000, max_tiles=8)
    a = _take(iter(TrainStream(specs, tok, CFG, sc)), 4)
    b = _take(iter(TrainStream(specs, tok, CFG, sc)), 4)
    assert _ids(a) == _ids(b)
    other = _take(iter(TrainStream(specs, tok, CFG, StreamConfig(seed=4, max_tokens=3000, max_tiles=8))), 4)
    assert _ids(other) != _ids(a)
    r0 = _take(iter(TrainStream(specs, tok, CFG, sc, rank=0, world_size=2)), 3)
    r1 = _take(iter(TrainStream(specs, tok, CFG, sc, rank=1, world_size=2)), 3)
    assert set(s for b in r0 for s in b.sources).isdisjoint(s for b in r1 for s in b.sources) or \
        _ids(r0) != _ids(r1)


@pytest.mark.parametrize("workers", [0, 2])
def test_resume_gives_exactly_the_batches_that_would_have_come(world, tok, workers):
    specs = read_meta(world / "meta.json")
    sc = StreamConfig(seed=1, text_ratio=0.25, max_tokens=3000, max_tiles=12)
    loader = make_loader(TrainStream(specs, tok, CFG, sc), num_workers=workers)
    it = iter(loader)
    _take(it, 3)
    state = loader.state_dict()
    expected = _take(it, 4)
    resumed = make_loader(TrainStream(specs, tok, CFG, sc), num_workers=workers)
    resumed.load_state_dict(state)
    got = _take(iter(resumed), 4)
    assert _ids(got) == _ids(expected)
    assert all(torch.equal(g.pixel_values, e.pixel_values) for g, e in zip(got, expected, strict=True))


def test_meta_weights_and_errors(world, tok, tmp_path):
    meta = json.loads((world / "meta.json").read_text())
    meta["text"]["weight"] = 3.0
    meta["multi"]["weight"] = 1.0
    del meta["image"], meta["video"]
    (world / "weighted.json").write_text(json.dumps(meta))
    stream = TrainStream(world / "weighted.json", tok, CFG, StreamConfig())
    picks = [stream._pick_dataset(random.Random(f"0:draw:{g}")) for g in range(2000)]
    assert abs(sum(stream.text_only[d] for d in picks) / 2000 - 0.75) < 0.03
    bad = [({"x": {"annotation": "a.json"}}, "must be a .jsonl"), ({"x": {"annotation": "none.jsonl"}}, "does not exist"),
           ({"x": {"annotation": "text.jsonl", "repeat_time": 1.5}}, "repeat_time"),
           ({"x": {"annotation": "text.jsonl", "weight": -1}}, "weight must be a positive")]
    for content, message in bad:
        (world / "bad.json").write_text(json.dumps(content))
        with pytest.raises(ValueError, match=message):
            read_meta(world / "bad.json")
