"""Bad training data (issue 25 §4): each case is either skipped and counted with file:line and reason, or a
clear error naming the file and field before any training step; never a traceback mid-run, never an endless
search for a usable record, never a silent loss of 0.

Errors before training: a meta.json naming a missing or unreadable jsonl, an empty dataset, repeat_time <= 0 (a
setting of the whole dataset: nothing in it could be right), a dataset whose every record is skipped.
Skipped and counted: a line that is not UTF-8 or not JSON, a record whose <image> count differs from its images,
an image path leaving the dataset root, a sample whose image tokens max_seq_length would cut (one bad record
among good ones: the original InternVL retries another record in both cases).
"""

from __future__ import annotations

import json
import logging
import pickle
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from reference import make_tokenizer

from nativevl.data.dataset import DataConfig, read_meta
from nativevl.data.loader import DataError, SkipCounts, StreamConfig, TrainStream, make_loader
from nativevl.tokenizer import load_tokenizer
from nativevl.train.recipes import load_config
from nativevl.train.trainer import Trainer, TrainingError

CFG = DataConfig(max_seq_length=4096, max_dynamic_patch=2, image_size=224, num_image_token=16)
SC = StreamConfig(max_tokens=4096, max_tiles=12)
TINY = {"vision.image_size": 224, "vision.hidden_size": 32, "vision.intermediate_size": 64,
        "vision.num_attention_heads": 2, "vision.num_hidden_layers": 2, "text.hidden_size": 32,
        "text.intermediate_size": 64, "text.num_attention_heads": 2, "text.num_key_value_heads": 1,
        "text.num_hidden_layers": 1}


def conv(q: str, a: str) -> list[dict[str, str]]:
    return [{"from": "human", "value": q}, {"from": "gpt", "value": a}]


GOOD = {"conversations": conv("What is 2 plus 3?", "5.")}


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tok")
    make_tokenizer(folder)
    return folder


@pytest.fixture(scope="module")
def tok(tok_dir):
    return load_tokenizer(tok_dir)


def picture(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (200, 300, 3), dtype=np.uint8)).save(path)


def dataset(folder: Path, lines: list, meta_extra: dict | None = None, raw: bytes | None = None) -> Path:
    """folder/a.jsonl (records, or strings written as they are) and folder/meta.json naming it as dataset 'x'."""
    folder.mkdir(parents=True, exist_ok=True)
    body = raw if raw is not None else "".join((r if isinstance(r, str) else json.dumps(r)) + "\n"
                                               for r in lines).encode()
    (folder / "a.jsonl").write_bytes(body)
    (folder / "meta.json").write_text(json.dumps({"x": {"annotation": "a.jsonl", "root": "img", **(meta_extra or {})}}))
    return folder / "meta.json"


def take(stream: TrainStream, n: int) -> list:
    it = iter(stream)
    return [next(it) for _ in range(n)]


def trainer_config(tok_dir: Path, meta: Path, out: Path, **extra):
    base = {"steps": 1, "save_every": 1, "out": str(out), "progress": False, "precision": "fp32",
            "data.meta": str(meta), "data.tokenizer": str(tok_dir), "data.image_size": 224,
            "data.max_dynamic_patch": 2, "data.max_tokens": 1024, "data.max_tiles": 6, "data.max_seq_length": 1024,
            "data.num_workers": 0, "data.text_ratio": None, "data.v2pe": "off"}
    base.update(extra)
    sets = [f"{k}={json.dumps(v)}" for k, v in base.items() if v is not None]
    sets.append("model.overrides=" + "{" + ", ".join(f'"{k}" = {v}' for k, v in TINY.items()) + "}")
    return load_config("sft", sets)


def assert_stops_before_training(tok_dir, meta, out, error, match):
    with pytest.raises(error, match=match):
        Trainer(trainer_config(tok_dir, meta, out)).run()
    assert not (out / "metrics.jsonl").exists()  # not one step was taken


# --- errors before training ------------------------------------------------------------------------------------


def test_a_missing_or_unreadable_annotation_is_an_error_naming_meta_and_dataset(tok, tok_dir, tmp_path, monkeypatch):
    meta = tmp_path / "missing" / "meta.json"
    meta.parent.mkdir()
    meta.write_text(json.dumps({"x": {"annotation": "none.jsonl"}}))
    with pytest.raises(ValueError, match=rf"{meta}: dataset 'x': annotation .*none.jsonl does not exist"):
        TrainStream(meta, tok, CFG, SC)
    assert_stops_before_training(tok_dir, meta, tmp_path / "run", ValueError, "none.jsonl does not exist")

    folder = tmp_path / "dir"
    (folder / "a.jsonl").mkdir(parents=True)
    (folder / "meta.json").write_text(json.dumps({"x": {"annotation": "a.jsonl"}}))
    with pytest.raises(ValueError, match=r"dataset 'x': annotation .*a.jsonl is not a file"):
        read_meta(folder / "meta.json")

    meta = dataset(tmp_path / "locked", [GOOD])
    real = Path.read_bytes

    def denied(self):
        if self.name == "a.jsonl":
            raise PermissionError(13, "Permission denied", str(self))
        return real(self)

    monkeypatch.setattr(Path, "read_bytes", denied)  # as root, chmod 000 would not stop the read
    with pytest.raises(ValueError, match=rf"{meta}: dataset 'x': cannot read annotation .*a.jsonl .*Permission denied"):
        TrainStream(meta, tok, CFG, SC)
    monkeypatch.undo()

    for content, message in [("{oops", "cannot read meta file"), ("{}", "expected a JSON object of datasets"),
                             ('{"x": {"annotation": 5}}', "dataset 'x': annotation must be a path"),
                             ('{"x": {"annotation": "a.jsonl", "max_dynamic_patch": "6"}}', "max_dynamic_patch"),
                             ('{"x": {"annotation": "a.jsonl", "allow_outside_root": "yes"}}',
                              "allow_outside_root must be true or false")]:
        (tmp_path / "locked" / "bad.json").write_text(content)
        with pytest.raises(ValueError, match=message):
            read_meta(tmp_path / "locked" / "bad.json")


@pytest.mark.parametrize("repeat", [0, -1, -0.5, "two", float("nan"), 1.5])
def test_repeat_time_zero_negative_or_not_a_number_names_meta_and_dataset(tok, tmp_path, repeat):
    meta = dataset(tmp_path, [GOOD], {"repeat_time": repeat})
    with pytest.raises(ValueError, match=rf"{meta}: dataset 'x': repeat_time must be in \(0, 1\] or a whole number"):
        TrainStream(meta, tok, CFG, SC)


def test_repeat_time_zero_stops_the_trainer_before_training(tok_dir, tmp_path):
    meta = dataset(tmp_path / "data", [GOOD], {"repeat_time": 0})
    assert_stops_before_training(tok_dir, meta, tmp_path / "run", ValueError, r"dataset 'x': repeat_time")


def test_an_empty_dataset_is_an_error_naming_it(tok, tok_dir, tmp_path):
    for name, raw, extra in [("empty", b"", {}), ("blank", b"\n  \n\n", {}),
                             ("cut", b"".join(json.dumps(GOOD).encode() + b"\n" for _ in range(3)),
                              {"repeat_time": 0.2})]:
        meta = dataset(tmp_path / name, [], extra, raw=raw)
        with pytest.raises(DataError, match=rf"{meta}: dataset 'x': annotation .*a.jsonl has no records") as e:
            TrainStream(meta, tok, CFG, SC)
        if name == "cut":
            assert "left by repeat_time 0.2 (int(3 × 0.2) = 0)" in str(e.value)
    assert_stops_before_training(tok_dir, tmp_path / "empty" / "meta.json", tmp_path / "run", ValueError,
                                 "has no records")


def test_a_dataset_whose_every_record_is_skipped_is_an_error_not_a_hang(tok, tok_dir, tmp_path):
    bad = [{"conversations": [{"from": "human", "value": "hi"}]}, "{not json", {"image": "gone.png",
           "conversations": conv("q", "a")}]
    meta = dataset(tmp_path / "data", bad * 3)
    with pytest.raises(DataError) as e:
        take(TrainStream(meta, tok, CFG, SC), 1)
    message = str(e.value)
    assert message.startswith(f"{meta}: the last 9 records read were all skipped, none gives a sample to train on")
    assert "3 × no supervised tokens (first: " in message and "3 × not JSON (first: " in message
    assert "3 × unreadable image or video" in message and "gone.png: no such file" in message
    assert str(tmp_path / "data" / "a.jsonl") + ":" in message  # a file:line for each kind
    # through the trainer: stopped in its data check, not trained on a loss of 0
    assert_stops_before_training(tok_dir, meta, tmp_path / "run", ValueError, "none gives a sample to train on")


def test_too_many_skips_in_a_row_stop_the_stream(tok, tmp_path):
    meta = dataset(tmp_path, ["{not json"] * 40 + [GOOD])
    with pytest.raises(DataError, match="the last 5 records read were all skipped"):
        take(TrainStream(meta, tok, CFG, StreamConfig(max_tokens=4096, max_tiles=12, max_consecutive_skips=5)), 3)


def test_mostly_skipped_records_fail_the_data_check_with_file_and_line(tok_dir, tmp_path):
    meta = dataset(tmp_path / "data", [{"conversations": [{"from": "human", "value": "hi"}]}] * 20 + [GOOD])
    with pytest.raises(TrainingError, match=r"were skipped: \d+ records skipped: \d+ × no supervised tokens "
                                            r"\(first: .*a.jsonl:\d+: no supervised tokens"):
        Trainer(trainer_config(tok_dir, meta, tmp_path / "run"))


# --- skipped and counted ---------------------------------------------------------------------------------------


def test_lines_not_json_or_not_utf8_are_skipped_and_counted_with_file_and_line(tok, tmp_path, caplog):
    raw = (b'{not json\n' + json.dumps(GOOD).encode() + b'\n[1, 2]\n{"conversations": "\xff\xfe"}\n'
           + b"".join(json.dumps(GOOD).encode() + b"\n" for _ in range(4)))
    meta = dataset(tmp_path, [], raw=raw)  # the first line is bad: the text-only probe must not trip on it
    caplog.set_level(logging.WARNING)
    stream = TrainStream(meta, tok, CFG, SC)
    assert stream.text_only == [True]
    take(stream, 2)
    annotation = tmp_path / "a.jsonl"
    assert stream.skipped["not JSON"] >= 2 and stream.skipped["not UTF-8"] >= 1
    assert f"skipped {annotation}:1: not JSON (Expecting property name" in caplog.text
    assert f"skipped {annotation}:3: the line is a JSON list, not an object" in caplog.text
    assert f"skipped {annotation}:4: not UTF-8 (byte 0xff at byte 20 of the line)" in caplog.text
    assert stream.built >= 2


def test_odd_record_shapes_are_skipped_not_raised(tok, tmp_path):
    meta = dataset(tmp_path, [{"conversations": ["hi", "ok"]}, {"conversations": [{"from": "human", "value": 3}]},
                              {"image": 7, "conversations": conv("q", "a")},
                              {"image": ["a.png", None], "conversations": conv("<image><image>", "a")}, GOOD])
    stream = TrainStream(meta, tok, CFG, SC)
    take(stream, 2)
    assert stream.skipped["malformed record"] >= 4 and set(stream.skipped) == {"malformed record"}
    assert "a.jsonl:1: conversations[0] is not a" in stream.skip_examples["malformed record"]


def test_image_count_mismatch_is_skipped_and_counted(tok, tmp_path):
    picture(tmp_path / "img" / "a.png")
    kind = "<image> count does not match the images"
    meta = dataset(tmp_path, [
        {"image": "a.png", "conversations": conv("<image> and <image>", "Two?")},  # 2 for 1
        {"image": ["a.png", "a.png"], "conversations": conv("<image> only one", "One?")},  # 1 for 2
        {"conversations": conv("<image> but no image", "None.")},  # 1 for 0
        {"image": "a.png", "conversations": conv("<image>\nColour?", "Noise.")},  # fine
        GOOD])
    stream = TrainStream(meta, tok, CFG, SC)
    batches = take(stream, 3)
    assert stream.skipped[kind] >= 3 and set(stream.skipped) == {kind}
    assert str(stream.skip_examples[kind]).startswith(f"{tmp_path / 'a.jsonl'}:")
    lines = {s.split(":")[-1] for b in batches for s in b.sources}
    assert lines <= {"4", "5"}  # only the good records became samples
    for b in batches:  # and their image tokens are whole
        assert int((b.input_ids == tok.img_context_id).sum()) == int(b.image_flags.sum()) * CFG.num_image_token


def test_image_paths_outside_the_root_are_skipped_unless_the_meta_allows_them(tok, tmp_path, caplog):
    picture(tmp_path / "img" / "inside.png")
    (tmp_path / "img" / "sub").mkdir()
    picture(tmp_path / "outside.png")  # a real image: only the path rule stops it
    records = [{"image": "../outside.png", "conversations": conv("q", "a")},
               {"image": str(tmp_path / "outside.png"), "conversations": conv("q", "a")},
               {"image": "../../../../../../etc/passwd", "conversations": conv("q", "a")},
               {"image": ["inside.png", "../outside.png"], "conversations": conv("<image><image>", "a")},
               {"video": "../../clip.mp4", "conversations": conv("<video>\nq", "a")},
               {"image": "sub/../inside.png", "conversations": conv("q", "a")}]  # stays inside: fine
    meta = dataset(tmp_path, records)
    caplog.set_level(logging.WARNING)
    stream = TrainStream(meta, tok, CFG, SC)
    batches = take(stream, 2)
    kind = "path outside the dataset root"
    assert stream.skipped[kind] >= 5 and set(stream.skipped) == {kind}
    assert {s.split(":")[-1] for b in batches for s in b.sources} == {"6"}
    root = tmp_path / "img"
    assert (f"a.jsonl:3: image path '../../../../../../etc/passwd' leaves the dataset root {root} (to allow that, "
            f'set "allow_outside_root": true in dataset \'x\' of {meta})') in caplog.text
    assert f"a.jsonl:2: image path '{tmp_path / 'outside.png'}' leaves the dataset root" in caplog.text
    assert "a.jsonl:5: video path '../../clip.mp4' leaves the dataset root" in caplog.text

    allowed = dataset(tmp_path, records[:2] + [records[3]], {"allow_outside_root": True})
    stream = TrainStream(allowed, tok, CFG, SC)
    batches = take(stream, 3)
    assert not stream.skipped
    assert {s.split(":")[-1] for b in batches for s in b.sources} == {"1", "2", "3"}


def test_a_sample_past_max_seq_length_is_never_cut_inside_an_image(tok, tmp_path):
    picture(tmp_path / "img" / "a.png")  # 300x200 with max_dynamic_patch 2: 2 tiles + thumbnail = 48 tokens
    cfg = DataConfig(max_seq_length=120, max_dynamic_patch=2, image_size=224, num_image_token=16,
                     system_message="Be brief.")
    meta = dataset(tmp_path, [
        {"image": "a.png", "conversations": conv("word " * 60 + "<image>", "late image")},  # image past the cut
        {"image": "a.png", "conversations": conv("<image>\nColour?", "Noise " * 80)},  # cut in the answer text
        {"conversations": conv("Hi", "ok") + conv("word " * 100, "fine")},  # text only: truncated as the original
    ])
    stream = TrainStream(meta, tok, cfg, SC)
    batches = take(stream, 3)
    assert stream.skipped == {"image tokens past max_seq_length": stream.skipped["image tokens past max_seq_length"]}
    assert stream.skip_examples["image tokens past max_seq_length"].startswith(f"{tmp_path / 'a.jsonl'}:1: ")
    assert "max_seq_length 120 would cut image tokens" in stream.skip_examples["image tokens past max_seq_length"]
    assert {s.split(":")[-1] for b in batches for s in b.sources} == {"2", "3"}
    lengths = [n for b in batches for n in (b.cu_seqlens[1:] - b.cu_seqlens[:-1]).tolist()]
    assert 120 in lengths  # the text-only record, cut in its text as the original cuts it
    for b in batches:
        assert b.num_tokens <= SC.max_tokens
        bounds = b.cu_seqlens.tolist()
        assert all(end - start <= 120 for start, end in zip(bounds[:-1], bounds[1:]))  # truncated to the limit
        # every image whole: its <img>, all of its tiles' <IMG_CONTEXT> and its </img>
        assert int((b.input_ids == tok.img_context_id).sum()) == int(b.image_flags.sum()) * 16
        assert int((b.input_ids == tok.token_to_id("<img>")).sum()) == int((b.input_ids == tok.token_to_id("</img>")).sum())


# --- the counts reach the user -----------------------------------------------------------------------------------


def test_skip_counts_print_with_file_and_line_and_cross_worker_processes(tok, tmp_path, caplog):
    meta = dataset(tmp_path, ["{bad"] * 3 + [GOOD] * 10)
    caplog.set_level(logging.WARNING)
    stream = TrainStream(meta, tok, CFG, StreamConfig(max_tokens=4096, max_tiles=12, log_skips=2))
    batches = take(stream, 6)
    skipped = batches[-1].skipped
    assert isinstance(skipped, SkipCounts) and sum(skipped.values()) == stream.skipped["not JSON"] >= 4
    assert str(skipped).startswith(f"{sum(skipped.values())} records skipped: {sum(skipped.values())} × not JSON "
                                   f"(first: {tmp_path / 'a.jsonl'}:")
    assert f"{skipped}" == str(skipped) == repr(skipped)  # as the trainer's data check formats it
    assert pickle.loads(pickle.dumps(skipped)).examples == skipped.examples
    # one by one while few, then a summary each time the count doubles
    assert caplog.text.count("skipped " + str(tmp_path / "a.jsonl")) == 2
    assert "2 records skipped: 2 × not JSON" in caplog.text and "further skips are counted" in caplog.text
    assert "4 records skipped: 4 × not JSON" in caplog.text
    # state_dict carries the examples
    again = TrainStream(meta, tok, CFG, SC)
    again.load_state_dict(stream.state_dict())
    assert again.skip_examples == stream.skip_examples
    # batches from worker processes keep the file:line of the skips
    loader = make_loader(TrainStream(meta, tok, CFG, SC), num_workers=2)
    it = iter(loader)
    got = [next(it) for _ in range(8)]
    assert any("a.jsonl:" in str(b.skipped) for b in got)


def test_a_run_with_bad_lines_trains_and_reports_them(tok_dir, tmp_path, caplog):
    meta = dataset(tmp_path / "data", ["{bad"] + [GOOD] * 6 + ["[]"])
    caplog.set_level(logging.INFO)
    history = Trainer(trainer_config(tok_dir, meta, tmp_path / "run")).run()
    assert len(history) == 1 and history[0]["loss"] > 0
    assert f"{tmp_path / 'data' / 'a.jsonl'}:1: not JSON" in caplog.text
    assert "data check passed" in caplog.text


def test_a_bom_and_crlf_line_ends_are_not_bad_lines(tok, tmp_path):
    raw = b"\xef\xbb\xbf" + b"".join(json.dumps(GOOD).encode() + b"\r\n" for _ in range(3))
    stream = TrainStream(dataset(tmp_path, [], raw=raw), tok, CFG, SC)
    assert [n for n, _ in stream.lines[0]] == [1, 2, 3]
    take(stream, 1)
    assert not stream.skipped
