"""Prompts: the internvl2_5 template, image expansion, and token ids equal to transformers' chat template given
the same system message."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from reference import hf_processor, make_tokenizer

from nativevl.conversation import (
    INTERNVL2_5_SYSTEM,
    chat_prompt,
    expand_images,
    image_prefix,
    video_prefix,
)
from nativevl.data.image import load_image
from nativevl.tokenizer import load_tokenizer


@pytest.fixture(scope="module")
def tok_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tok")
    make_tokenizer(folder)
    return folder


def picture(w: int, h: int, seed: int) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))


def test_single_turn_rendering_is_the_spec_string():
    assert chat_prompt("<image>\nWhat is it?") == (
        f"<|im_start|>system\n{INTERNVL2_5_SYSTEM}<|im_end|>\n<|im_start|>user\n<image>\nWhat is it?<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    assert chat_prompt("hi", system_message="Be brief.").startswith("<|im_start|>system\nBe brief.<|im_end|>\n")


def test_expansion_counts_must_match():
    assert expand_images("a <image> b <image>", [2, 1], 4) == (
        "a <img>" + "<IMG_CONTEXT>" * 8 + "</img> b <img>" + "<IMG_CONTEXT>" * 4 + "</img>")
    with pytest.raises(ValueError, match="1 <image> placeholder\\(s\\) but 2 image\\(s\\)"):
        expand_images("<image>\nCompare them.", [3, 1])


def _ours(tok_folder, question: str, patches: list[int], history=None) -> list[int]:
    tok = load_tokenizer(tok_folder)
    prompt = chat_prompt(question, history=history, system_message="You are a test.")
    return tok.encode(expand_images(prompt, patches))


SYSTEM = {"role": "system", "content": "You are a test."}


def test_single_image_ids_equal_transformers(tok_folder):
    image = picture(900, 600, 0)
    processor = hf_processor(tok_folder)
    messages = [SYSTEM, {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Describe."}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True)
    ref = processor(text=text, images=[image], return_tensors="pt")
    tiles = load_image(image)
    assert tiles.shape[0] == 7
    assert _ours(tok_folder, image_prefix(1) + "Describe.", [7]) == ref["input_ids"][0].tolist()
    assert torch.equal(tiles, ref["pixel_values"])


def test_multi_image_ids_equal_transformers(tok_folder):
    images = [picture(900, 600, 1), picture(300, 300, 2), picture(200, 700, 3)]
    processor = hf_processor(tok_folder)
    content = []
    for i in range(3):
        content += [{"type": "text", "text": f"Image-{i + 1}: "}, {"type": "image"}]
    content.append({"type": "text", "text": "Which is brightest?"})
    text = processor.apply_chat_template([SYSTEM, {"role": "user", "content": content}], add_generation_prompt=True)
    ref = processor(text=text, images=images, return_tensors="pt")
    tiles = [load_image(im) for im in images]
    patches = [t.shape[0] for t in tiles]
    assert _ours(tok_folder, image_prefix(3) + "Which is brightest?", patches) == ref["input_ids"][0].tolist()
    assert torch.equal(torch.cat(tiles), ref["pixel_values"])


def test_video_ids_equal_transformers(tok_folder):
    """transformers renders a video item as `<video>\\n` and expands it to `FrameK: <img>…</img>` lines."""
    processor = hf_processor(tok_folder)
    messages = [SYSTEM, {"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "What happens?"}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True)
    frames = 4
    expanded = text.replace("<video>", "\n".join(f"Frame{i + 1}: <img>{'<IMG_CONTEXT>' * 256}</img>"
                                                 for i in range(frames)))  # InternVLProcessor.replace_video_token
    ref = processor.tokenizer(expanded, add_special_tokens=False)["input_ids"]
    assert _ours(tok_folder, video_prefix(frames) + "What happens?", [1] * frames) == ref


def test_multi_turn_ids_equal_transformers(tok_folder):
    image = picture(500, 500, 4)
    processor = hf_processor(tok_folder)
    messages = [
        SYSTEM,
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is it?"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "A square of noise."}]},
        {"role": "user", "content": [{"type": "text", "text": "Which colours?"}]},
    ]
    text = processor.apply_chat_template(messages, add_generation_prompt=True)
    ref = processor(text=text, images=[image], return_tensors="pt")
    history = [("<image>\nWhat is it?", "A square of noise.")]
    patches = [load_image(image).shape[0]]
    assert _ours(tok_folder, "Which colours?", patches, history=history) == ref["input_ids"][0].tolist()
