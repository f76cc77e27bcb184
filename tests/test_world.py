"""The embedded synthetic world: determinism, InternVL formats, answers that match the pictures, held-out
splits, the pretraining text/image mix and the tokenizer."""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image, ImageChops, ImageDraw, ImageFont

from nativevl.conversation import INTERNVL2_5_SYSTEM
from nativevl.data import world
from nativevl.data.world import file_digest, generate_world, render_scene
from nativevl.tokenizer import load_tokenizer

SCALE = 0.05
STAGES = world.STAGES
TRAINING = ("pretrain", "sft", "mpo", "long")
HELD_OUT = ("eval", "long_eval", "text_eval")
SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<img>", "</img>", "<IMG_CONTEXT>", "<quad>", "</quad>",
           "<ref>", "</ref>", "<box>", "</box>", "<video>"]
# The test's own names for the 3x3 grid, to check the generator's place names against pixel coordinates.
GRID = [["top-left", "top", "top-right"], ["left", "center", "right"], ["bottom-left", "bottom", "bottom-right"]]
NUMBER_WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"]


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> tuple[Path, dict[str, Any]]:
    out = tmp_path_factory.mktemp("world")
    return out, generate_world(out, seed=0, scale=SCALE)


@pytest.fixture(scope="module")
def out(built) -> Path:
    return built[0]


@pytest.fixture(scope="module")
def data(out) -> dict[str, dict[str, tuple[dict, list[dict]]]]:
    """stage -> dataset -> (meta entry, records), read back through the meta files."""
    stages = {}
    for stage in STAGES:
        meta = json.loads((out / f"meta_{stage}.json").read_text(encoding="utf-8"))
        stages[stage] = {name: (entry, [json.loads(line) for line in
                                        (out / entry["annotation"]).read_text(encoding="utf-8").splitlines()])
                         for name, entry in meta.items()}
    return stages


def records(data, *stages: str) -> Iterator[tuple[str, dict, dict]]:
    for stage in stages or STAGES:
        for name, (entry, recs) in data[stage].items():
            for r in recs:
                yield name, entry, r


def image_list(record: dict) -> list[str]:
    image = record.get("image")
    return [] if image is None else [image] if isinstance(image, str) else list(image)


def gpt_turns(record: dict) -> list[str]:
    return [t["value"] for t in record["conversations"] if t["from"] == "gpt"]


# ---------------------------------------------------------------------------------------------- determinism


def test_same_seed_gives_the_same_bytes_and_another_seed_differs(built, tmp_path):
    out, summary = built
    reference = file_digest(out)
    again = tmp_path / "again"
    bigger = generate_world(again, seed=0, scale=2 * SCALE)  # a bigger world first: no stale file may survive
    assert bigger["records"] > summary["records"]
    generate_world(again, seed=0, scale=SCALE)
    assert file_digest(again) == reference

    other = file_digest(generate_world(tmp_path / "other", seed=1, scale=SCALE)["out"])
    assert other != reference
    assert other["annotations/sft/shapes_vqa.jsonl"] != reference["annotations/sft/shapes_vqa.jsonl"]
    same_images = [p for p in reference if p.endswith(".png") and other.get(p) == reference[p]]
    assert len(same_images) < 0.05 * sum(p.endswith(".png") for p in reference)


def test_scale_must_be_positive(tmp_path):
    with pytest.raises(ValueError):
        generate_world(tmp_path, scale=0)


def test_summary_counts_match_the_files(built, data):
    out, summary = built
    files = [p for p in out.rglob("*") if p.is_file()]
    assert summary["files"] == len(files)
    assert summary["images"] == sum(p.suffix == ".png" for p in files) == sum(summary["images_per_split"].values())
    for stage in STAGES:
        assert summary["datasets"][stage] == {name: len(recs) for name, (_, recs) in data[stage].items()}
        for entry, recs in data[stage].values():
            assert entry["length"] == len(recs) > 0
    assert summary["records"] == sum(len(recs) for stage in STAGES for _, recs in data[stage].values())
    assert (out / "README.md").read_text().startswith("# nativevl synthetic world")


# ---------------------------------------------------------------------------------------------- formats


def test_meta_files_follow_internvl(out, data):
    for stage in STAGES:
        for name, (entry, recs) in data[stage].items():
            assert set(entry) <= {"root", "annotation", "data_augment", "repeat_time", "length", "max_dynamic_patch"}
            assert entry["annotation"].endswith(".jsonl") and (out / entry["annotation"]).is_file()
            # object pictures (cheap, one tile) repeat 3 times in training; everything else once
            expected_repeat = 3 if name.startswith("objects") and stage in TRAINING else 1
            assert (out / entry["root"]).is_dir() and entry["repeat_time"] == expected_repeat, name
            has_images = any("image" in r for r in recs)
            # JPEG augmentation for the demo's training stages (the ablations' long contexts go without)
            assert entry["data_augment"] is (has_images and stage in ("pretrain", "sft", "mpo")), name
            if has_images:
                assert 1 <= entry["max_dynamic_patch"] <= 6
            else:
                assert "max_dynamic_patch" not in entry


def test_every_record_parses_and_every_image_opens(out, data):
    sizes = {}
    for name, entry, r in records(data):
        for path in image_list(r):
            full = out / entry["root"] / path
            if path not in sizes:
                with Image.open(full) as im:
                    im.load()
                    sizes[path] = im.size
            w, h = sizes[path]
            assert 64 <= min(w, h) and max(w, h) <= 512 and 1 / 4 <= w / h <= 4, (path, w, h)
        paths = image_list(r)
        if len(paths) == 1:
            assert sizes[paths[0]] == (r["width"], r["height"])
        elif paths:
            assert [sizes[p] for p in paths] == list(zip(r["width_list"], r["height_list"], strict=True))
    # varied grids for dynamic tiling: wide, tall and square images
    ratios = {round(w / h, 1) for w, h in sizes.values()}
    assert min(ratios) <= 0.5 and max(ratios) >= 2


def test_files_are_written_in_one_canonical_form(out, data):
    """The annotation, meta and image files are exactly what they hold, written one way: annotation lines are
    sorted-key JSON in real UTF-8, meta files sorted JSON indented by 2, and each PNG is what `render_scene` gives
    for the scene its records keep, saved as PNG. A change in how any of them is written changes the world's
    bytes, and shows here."""
    for stage in STAGES:
        meta = json.loads((out / f"meta_{stage}.json").read_text(encoding="utf-8"))
        assert (out / f"meta_{stage}.json").read_text(encoding="utf-8") == json.dumps(meta, indent=2,
                                                                                     sort_keys=True) + "\n"
        for entry, recs in data[stage].values():
            expected = "".join(json.dumps(r, sort_keys=True, ensure_ascii=False) + "\n" for r in recs)
            assert (out / entry["annotation"]).read_bytes() == expected.encode("utf-8"), entry["annotation"]
    scenes: dict[str, dict] = {}
    for _, _, r in records(data):
        if image_list(r):
            group = r["meta"]["scenes"] if "scenes" in r["meta"] else [r["meta"]["scene"]]
            scenes.update(zip(image_list(r), group, strict=True))
    written = sorted(p.relative_to(out / "images").as_posix() for p in (out / "images").rglob("*.png"))
    assert sorted(scenes) == written  # every image is used, and every record keeps its scene
    kinds: dict[str, int] = {}
    for path in written:
        kind = scenes[path]["kind"]
        if kinds.get(kind, 0) >= 6:
            continue
        kinds[kind] = kinds.get(kind, 0) + 1
        buffer = io.BytesIO()
        render_scene(scenes[path]).save(buffer, format="PNG")
        assert (out / "images" / path).read_bytes() == buffer.getvalue(), path
    assert set(kinds) == {"object", "shapes", "ocr", "chart"}


def test_conversations_and_image_placeholders(data):
    kinds = {"text": 0, "one": 0, "several": 0, "system": 0, "multi_turn": 0}
    for name, _, r in records(data, "pretrain", "sft", "eval", "long", "long_eval", "text_eval"):
        conv = r["conversations"]
        assert isinstance(r["id"], str)
        if conv[0]["from"] == "system":
            kinds["system"] += 1
            conv = conv[1:]
        assert [t["from"] for t in conv] == ["human", "gpt"] * (len(conv) // 2) and len(conv) % 2 == 0, name
        assert all(isinstance(t["value"], str) and t["value"] for t in conv)
        n_images = len(image_list(r))
        assert sum(t["value"].count("<image>") for t in conv if t["from"] == "human") == n_images, r["id"]
        assert not any("<image>" in t for t in gpt_turns(r))
        kinds["text" if n_images == 0 else "one" if isinstance(r["image"], str) else "several"] += 1
        kinds["multi_turn"] += len(conv) > 2
        if n_images > 1:
            assert conv[0]["value"].startswith("".join(f"Image-{i + 1}: <image>\n" for i in range(n_images)))
    assert all(kinds.values()), kinds


def answer_line(text: str) -> str:
    return text.rsplit("\n", 1)[-1]


def check_steps(text: str) -> str:
    """Blank-line separated steps, 2-5 in all, the last being exactly `Answer: <final>`; returns the final."""
    blocks = text.split("\n\n")
    assert 2 <= len(blocks) <= 5 and all(b.strip() for b in blocks), text
    assert blocks[-1].startswith("Answer: ") and "\n" not in blocks[-1], text
    return blocks[-1].removeprefix("Answer: ")


def test_preference_pairs(out, data):
    n = 0
    for name, entry, r in records(data, "mpo"):
        assert r["question"].count("<image>") == len(image_list(r)) == 1
        assert (out / entry["root"] / r["image"]).is_file()
        chosen, rejected = check_steps(r["chosen"]), check_steps(r["rejected"])
        assert chosen == r["answer_gt"] != rejected
        assert r["chosen"] != r["rejected"]
        n += 1
    assert n > 0


def test_step_by_step_answers_end_with_the_answer(data):
    n = 0
    for name, _, r in records(data, "sft", "eval"):
        if "meta" not in r:  # text-only conversations
            continue
        for qa, gpt in zip(r["meta"]["qa"], gpt_turns(r), strict=True):
            if qa.get("cot"):
                assert check_steps(gpt) == qa["answer"]
                n += 1
            else:
                assert "Answer: " not in gpt
    assert n > 0


# ---------------------------------------------------------------------------------------------- answers


def place_of(s: dict, scene: dict) -> str:
    col, row = int(3 * s["x"] / scene["width"]), int(3 * s["y"] / scene["height"])
    return GRID[row][col]


def shape_label(s: dict) -> str:
    return f"{s['colour']} {s['shape']}"


def by_name(scene: dict, shape_name: str) -> dict:
    (found,) = [s for s in scene["shapes"] if shape_label(s) == shape_name]
    return found


def expected_answer(qa: dict, scenes: list[dict]) -> str | None:
    """The gold answer recomputed from the scene spec(s), independently of the generator's question code."""
    scene = scenes[0]
    task = qa["task"]
    shapes = scene.get("shapes", [])
    at = {place_of(s, scene): s for s in shapes}
    if task == "object_colour":
        return shapes[0]["colour"]
    if task == "long_colour":  # the first picture's object
        return shapes[0]["colour"]
    if task == "object_shape":
        return shapes[0]["shape"]
    if task == "count_shape":
        return str(sum(s["shape"] == qa["shape"] for s in shapes))
    if task == "count_colour":
        return str(sum(s["colour"] == qa["colour"] for s in shapes))
    if task == "count_all":
        return str(len(shapes))
    if task == "colour_at":
        return at[qa["place"]]["colour"]
    if task == "shape_at":
        return at[qa["place"]]["shape"]
    if task == "what_at":
        return shape_label(at[qa["place"]]) if qa["place"] in at else "nothing"
    if task == "colour_of":
        (s,) = [s for s in shapes if s["shape"] == qa["shape"]]
        return s["colour"]
    if task == "where":
        return place_of(by_name(scene, f"{qa['colour']} {qa['shape']}"), scene)
    if task == "further_left":
        a, b = by_name(scene, qa["a"]), by_name(scene, qa["b"])
        return qa["a"] if a["x"] < b["x"] else qa["b"]
    if task == "above":
        return "yes" if by_name(scene, qa["a"])["y"] < by_name(scene, qa["b"])["y"] else "no"
    if task == "exists":
        return "yes" if any(s["colour"] == qa["colour"] and s["shape"] == qa["shape"] for s in shapes) else "no"
    if task == "ocr_word":
        return scene["lines"][0]["text"]
    if task == "ocr_number":
        return scene["lines"][-1]["text"]
    if task == "ocr_read":
        return " ".join(line["text"] for line in scene["lines"])
    values = {b["label"]: b["value"] for b in scene.get("bars", [])}
    if task == "chart_value":
        return str(values[qa["label"]])
    if task in ("chart_highest", "chart_lowest"):
        return (max if task == "chart_highest" else min)(values, key=values.get)
    if task == "chart_bars":
        return str(len(values))
    if task == "chart_title":
        return scene["title"]
    if task == "chart_total":
        return str(sum(values.values()))
    if task == "chart_range":
        return str(max(values.values()) - min(values.values()))
    if task == "chart_difference":
        a, b = qa["values"]
        return str(abs(values[a] - values[b]))
    counts = [sum(s["shape"] == qa.get("shape") for s in sc["shapes"]) for sc in scenes]
    if task == "multi_more":
        return f"Image-{counts.index(max(counts)) + 1}"
    if task == "multi_total":
        return str(sum(counts))
    if task == "multi_same":
        return "yes" if len(scenes[0]["shapes"]) == len(scenes[1]["shapes"]) else "no"
    if task == "multi_shared":
        (colour,) = set.intersection(*({s["colour"] for s in sc["shapes"]} for sc in scenes))
        return colour
    return None  # captions: checked below


def mentions(text: str, answer: str) -> bool:
    text = text.lower()
    words = {answer.lower()} | ({NUMBER_WORDS[int(answer)]} if answer.isdigit() and int(answer) <= 10 else set())
    if answer in ("yes", "no"):
        return text.startswith(answer)
    return any(w in text for w in words)


def test_answers_match_the_scene(data):
    checked: dict[str, int] = {}
    for dataset, _, r in records(data):
        meta = r.get("meta")
        if not meta:
            continue
        scenes = meta.get("scenes") or [meta["scene"]]
        answers = [r["chosen"]] if "chosen" in r else gpt_turns(r)
        for qa, said in zip(meta["qa"], answers, strict=True):
            if qa["task"] in ("caption", "chart_caption"):
                # a description names every shape / every bar with its value
                items = ([shape_label(s) for s in scenes[0]["shapes"]] if qa["task"] == "caption" else
                         [f"{b['label']} is {b['value']}" for b in scenes[0]["bars"]])
                assert all(i in said for i in items), (said, items)
                continue
            expected = expected_answer(qa, scenes)
            assert expected is not None, qa["task"]
            assert qa["answer"] == expected, (r["id"], qa, expected)
            if "answer" in r:
                assert r["answer"] == expected
            if "answer_gt" in r:
                assert r["answer_gt"] == expected
            if said.count("\n\nAnswer: "):
                assert answer_line(said) == f"Answer: {expected}"
            else:
                assert said == expected or mentions(said, expected), (said, expected)
            checked[qa["task"]] = checked.get(qa["task"], 0) + 1
    for task in ("count_shape", "count_colour", "colour_at", "ocr_word", "ocr_number", "chart_value",
                 "multi_total"):
        assert checked.get(task, 0) > 0, (task, checked)


def test_shapes_sit_in_their_named_place_and_show_their_colour(out, data):
    for _, entry, r in records(data, "sft", "eval"):
        if r.get("meta", {}).get("scene", {}).get("kind") != "shapes":
            continue
        scene = r["meta"]["scene"]
        with Image.open(out / entry["root"] / r["image"]) as im:
            pixels = im.convert("RGB")
        for s in scene["shapes"]:
            assert s["place"] == place_of(s, scene)
            cw, ch = scene["width"] / 3, scene["height"] / 3
            col, row = int(s["x"] // cw), int(s["y"] // ch)
            # the whole shape stays inside its cell, so its place is unambiguous
            assert col * cw <= s["x"] - s["r"] and s["x"] + s["r"] <= (col + 1) * cw
            assert row * ch <= s["y"] - s["r"] and s["y"] + s["r"] <= (row + 1) * ch
            assert pixels.getpixel((s["x"], s["y"])) == world.COLOURS[s["colour"]], (r["id"], s)


def draw_text_like_ocr(scene: dict) -> Image.Image:
    """The test's own rendering of the answer strings at the recorded places."""
    image = Image.new("RGB", (scene["width"], scene["height"]), world.PAPERS[scene["paper"]])
    draw = ImageDraw.Draw(image)
    for line in scene["lines"]:
        draw.text((line["x"], line["y"]), line["text"], font=ImageFont.load_default(size=scene["size"]),
                  fill=world.COLOURS[scene["ink"]])
    return image


def same_pixels(a: Image.Image, b: Image.Image) -> bool:
    return a.size == b.size and ImageChops.difference(a.convert("RGB"), b.convert("RGB")).getbbox() is None


def test_images_show_what_their_scene_says(out, data):
    kinds: dict[str, int] = {}
    for _, entry, r in records(data, "sft", "eval"):
        scene = r.get("meta", {}).get("scene")
        if scene is None or kinds.get(scene["kind"], 0) >= 8:
            continue
        kinds[scene["kind"]] = kinds.get(scene["kind"], 0) + 1
        with Image.open(out / entry["root"] / r["image"]) as im:
            assert same_pixels(im, render_scene(scene)), r["id"]
            if scene["kind"] == "ocr":
                # the rendered string is exactly the answer text: drawing it ourselves gives the same pixels
                assert same_pixels(im, draw_text_like_ocr(scene)), r["id"]
                assert " ".join(line["text"] for line in scene["lines"]).strip()
    assert set(kinds) == {"object", "shapes", "ocr", "chart"}


# ---------------------------------------------------------------------------------------------- splits


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def question_of(r: dict) -> str:
    return r["question"] if "question" in r else r["conversations"][-2]["value"]


def test_val_and_test_are_held_out(out, data):
    train_paths, train_pairs = set(), set()
    for _, _, r in records(data, *TRAINING):
        paths = image_list(r)
        assert all(p.startswith("train/") for p in paths)
        train_paths |= set(paths)
        train_pairs.add((tuple(paths), question_of(r)))
    train_bytes = {digest(out / "images" / p) for p in train_paths}
    held: dict[str, set[str]] = {"val": set(), "test": set()}
    for dataset, _, r in records(data, "eval", "long_eval"):
        split = dataset.rsplit("_", 1)[1]
        paths = image_list(r)
        assert paths and all(p.startswith(f"{split}/") for p in paths), dataset
        assert not set(paths) & train_paths
        assert (tuple(paths), question_of(r)) not in train_pairs
        assert not {digest(out / "images" / p) for p in paths} & train_bytes
        held[split] |= set(paths)
    assert held["val"] and held["test"] and not held["val"] & held["test"]


def test_long_context_questions_ask_for_the_first_picture_s_colour(out, data):
    """Each long-context answer is the colour of the first picture's object, judged from its pixels (the object's
    centre); training questions show 2-8 pictures, held-out ones 8, 16 and 32."""
    seen: dict[str, set[int]] = {}
    for stage in ("long", "long_eval"):
        for name, entry, r in records(data, stage):
            if "image" not in r:
                continue
            qa = r["meta"]["qa"][0]
            pictures = image_list(r)
            assert r["conversations"][0]["value"].count("<image>") == len(pictures) == qa["pictures"]
            assert "first picture" in r["conversations"][0]["value"]
            centre = r["meta"]["scenes"][0]["shapes"][0]
            with Image.open(out / entry["root"] / pictures[0]) as im:
                rgb = im.convert("RGB").getpixel((centre["x"], centre["y"]))
            colour = next(c for c, v in world.COLOURS.items() if v == rgb)
            assert qa["answer"] == colour, (r["id"], colour, qa)
            if stage == "long_eval":
                assert r["answer"] == colour and r["conversations"][1]["value"] == colour
                seen.setdefault(name.split("_")[1], set()).add(len(pictures))
            else:
                assert 2 <= len(pictures) <= 8
                assert r["conversations"][1]["value"] in (colour, f"The object in the first picture is {colour}.")
    assert seen == {"1x": {8}, "2x": {16}, "4x": {32}}


def test_text_for_perplexity_and_long_text_are_text_only(data):
    held = [r for _, _, r in records(data, "text_eval")]
    long = [r for name, _, r in records(data, "long") if name == "text_long"]
    assert held and long and not any("image" in r for r in held + long)
    assert min(len(r["conversations"]) for r in long) >= 16  # 8 turns or more
    train_text = {json.dumps(r["conversations"]) for _, _, r in records(data, "pretrain", "sft")}
    assert not any(json.dumps(r["conversations"]) in train_text for r in held if len(r["conversations"]) > 2)


def test_pretrain_mixes_text_and_images_about_one_to_three(data):
    text = sum("image" not in r for _, _, r in records(data, "pretrain"))
    multimodal = sum("image" in r for _, _, r in records(data, "pretrain"))
    assert text > 0 and 0.28 <= text / multimodal <= 0.38, (text, multimodal)


# ---------------------------------------------------------------------------------------------- tokenizer


def test_tokenizer_loads_with_internvl_special_tokens(built):
    out, summary = built
    tok = load_tokenizer(out / "tokenizer")
    assert [tok.token_to_id(t) for t in SPECIAL] == list(range(13))
    assert tok.img_context_id == 5
    assert tok.encode("<img><IMG_CONTEXT><IMG_CONTEXT></img>") == [3, 5, 5, 4]
    assert tok.eos_token == "<|im_end|>" and tok.pad_token_id == 0 and tok.model_max_length
    assert len(tok) == summary["vocab_size"] > 256 + 13
    text = "<|im_start|>user\nHow many red circles are there?<|im_end|>\n"
    assert tok.decode(tok.encode(text), skip_special_tokens=False) == text
    # trained on the world's text: its words and the system prompt take few tokens
    assert len(tok.encode(" circles")) == 1
    assert len(tok.encode(INTERNVL2_5_SYSTEM)) <= 12


def test_a_foreign_folder_is_refused_not_cleared(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "mine.png").write_bytes(b"precious")
    (tmp_path / "README.md").write_text("my project")
    with pytest.raises(ValueError, match="not empty and was not written by"):
        generate_world(tmp_path, seed=0, scale=0.01)
    assert (tmp_path / "images" / "mine.png").read_bytes() == b"precious"
    assert (tmp_path / "README.md").read_text() == "my project"
