"""chat / batch_chat / streaming / Pipeline on a tiny checkpoint folder with its own tokenizer."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from reference import make_tokenizer, tiny_checkpoint

from nativevl import InternVL, preset
from nativevl.api import Pipeline
from nativevl.conversation import INTERNVL2_5_SYSTEM
from nativevl.data.image import load_image
from nativevl.device import check_device
from nativevl.infer.chat import batch_chat, build_query, chat
from nativevl.infer.generate import generate
from nativevl.tokenizer import load_tokenizer


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return tiny_checkpoint(tmp_path_factory.mktemp("ckpt"))


@pytest.fixture(scope="module")
def pipe(folder):
    return Pipeline(folder)


@pytest.fixture(scope="module")
def image_file(folder):
    return folder / "photo.png"


def test_chat_generates_from_the_original_prompt(pipe, image_file):
    model, tok = pipe.model, pipe.tokenizer
    tiles = load_image(image_file)
    response, history = chat(model, tok, tiles, "What is it?", {"max_new_tokens": 8}, return_history=True)
    # the same tokens come from generating on the prompt the spec renders, stopping on <|im_end|>
    prompt = (f"<|im_start|>system\n{INTERNVL2_5_SYSTEM}<|im_end|>\n<|im_start|>user\n<img>"
              + "<IMG_CONTEXT>" * (256 * tiles.shape[0]) + "</img>\nWhat is it?<|im_end|>\n<|im_start|>assistant\n")
    ids = torch.tensor([tok.encode(prompt)])
    new = generate(model, ids, pixel_values=tiles, max_new_tokens=8, eos_token_id=tok.im_end_id)[0].tolist()
    assert response == tok.decode(new).strip()
    assert history == [("<image>\nWhat is it?", response)]
    # a second turn re-sends the image; its tokens go into the first turn
    _, query = build_query(model, "And now?", tiles, history, None)
    assert query.count("<img>") == 1 and query.index("<img>") < query.index("And now?")
    assert model.chat(tok, tiles, "And now?", {"max_new_tokens": 4}, history=history)  # the model method


def test_streaming_pieces_join_to_the_answer(pipe, image_file):
    settings = {"max_new_tokens": 12}
    answer = pipe("Describe it.", images=[image_file], **settings)
    pieces = list(pipe.stream("Describe it.", images=[image_file], **settings))
    assert len(pieces) > 1 and "".join(pieces).strip() == answer


def test_stop_strings_end_the_answer(pipe, image_file):
    full = pipe("Describe it.", images=[image_file], max_new_tokens=16)
    words = full.split()
    assert len(words) > 2, full
    stop = words[2]
    cut = pipe("Describe it.", images=[image_file], max_new_tokens=16, stop_strings=[stop])
    assert stop not in cut and full.startswith(cut)
    streamed = "".join(pipe.stream("Describe it.", images=[image_file], max_new_tokens=16, stop_strings=[stop]))
    assert streamed.strip() == cut


def test_batch_chat_equals_one_by_one(pipe, image_file):
    model, tok = pipe.model, pipe.tokenizer
    a, b = load_image(image_file), load_image(image_file, max_num=2)
    questions = ["What is it?", "Count the colours, please, one by one."]
    batched = batch_chat(model, tok, torch.cat([a, b]), questions, {"max_new_tokens": 6},
                         num_patches_list=[a.shape[0], b.shape[0]])
    single = [chat(model, tok, a, questions[0], {"max_new_tokens": 6}),
              chat(model, tok, b, questions[1], {"max_new_tokens": 6})]
    assert batched == single


def test_batch_chat_rows_with_several_images_or_none(pipe, image_file):
    """A list in num_patches_list puts that many images under one question's placeholders; an empty list asks
    about text only. Each row answers as it would alone, in a batch of any size."""
    from nativevl.eval.answer import replies

    model, tok = pipe.model, pipe.tokenizer
    a, b = load_image(image_file), load_image(image_file, max_num=2)
    items = [(torch.cat([a, b]), "Image-1: <image>\nImage-2: <image>\nWhich differs?", [a.shape[0], b.shape[0]]), (None, "Say something.", []),
             (a, "What is it?", [a.shape[0]])]
    single = [chat(model, tok, pixels, q, {"max_new_tokens": 6}, num_patches_list=n or None) for pixels, q, n in items]
    assert len(set(single)) > 1  # distinct answers, so a row mixed up with another would show
    assert replies(model, tok, items, max_new_tokens=6) == single
    assert replies(model, tok, items, max_new_tokens=6, batch_size=2) == single
    tiles = torch.cat([a, b, a])
    assert batch_chat(model, tok, tiles, [q for _, q, _ in items], {"max_new_tokens": 6},
                      num_patches_list=[n for _, _, n in items]) == single


def test_several_images_and_video(pipe, image_file, tmp_path):
    import av

    question, pixels, patches = pipe.prepare("Compare.", images=[image_file, image_file])
    assert question == "Image-1: <image>\nImage-2: <image>\nCompare." and len(patches) == 2
    assert pixels.shape[0] == sum(patches)
    assert isinstance(pipe("Compare.", images=[image_file, Image.open(image_file)], max_new_tokens=3), str)
    video = tmp_path / "v.mp4"
    with av.open(str(video), "w") as out:
        stream = out.add_stream("mpeg4", rate=5)
        stream.width, stream.height, stream.pix_fmt = 32, 32, "yuv420p"
        for i in range(12):
            frame = np.full((32, 32, 3), 20 * i, dtype=np.uint8)
            out.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        out.mux(stream.encode())
    question, pixels, patches = pipe.prepare("What happens?", video=video, num_segments=4)
    assert question.startswith("Frame1: <image>\nFrame2: <image>\nFrame3: <image>\nFrame4: <image>\nWhat")
    assert patches == [1, 1, 1, 1] and pixels.shape == (4, 3, 448, 448)
    assert isinstance(pipe("What happens?", video=video, num_segments=4, max_new_tokens=3), str)


def test_placeholder_count_mismatch_is_a_clear_error(pipe, image_file):
    with pytest.raises(ValueError, match="2 <image> placeholder\\(s\\) but 1 image"):
        pipe("<image> and <image>?", images=[image_file])


def test_v2pe_delta_changes_positions_not_the_prompt(folder, image_file):
    plain, v2pe = Pipeline(folder), Pipeline(folder, v2pe_delta=1 / 16)
    same = Pipeline(folder, v2pe_delta=1.0)
    settings = dict(images=[image_file], max_new_tokens=6)
    assert same("Describe.", **settings) == plain("Describe.", **settings)  # delta 1 = integer positions
    assert isinstance(v2pe("Describe.", **settings), str)


def test_mismatched_tokenizer_is_refused(folder, tmp_path):
    InternVL.from_config(preset("tiny").replace(img_context_token_id=7)).save_pretrained(tmp_path)
    make_tokenizer(tmp_path)
    with pytest.raises(ValueError, match="<IMG_CONTEXT> is id 5 but the model expects 7"):
        Pipeline(tmp_path)
    assert load_tokenizer(folder).img_context_id == 5


def test_tiles_follow_the_vits_image_size(tmp_path, image_file):
    """A model trained on 224-px tiles (64 tokens each) gets 224-px tiles from the pipeline."""
    InternVL.from_config(preset("tiny").replace(**{"vision.image_size": 224})).save_pretrained(tmp_path)
    make_tokenizer(tmp_path)
    pipe = Pipeline(tmp_path)
    _, pixels, patches = pipe.prepare("What?", images=[image_file])
    assert pixels.shape[-1] == 224 and pipe.model.num_image_token == 64
    assert isinstance(pipe("What?", images=[image_file], max_new_tokens=3), str)


def test_tiles_of_another_size_are_refused_naming_both(pipe, image_file):
    """The model card's `load_image(img, max_num=12)` gives 448-px tiles; a model whose ViT takes 112 px (the
    demo's) refuses them in one line before the ViT runs, and `input_size=model` gives tiles it answers on."""
    torch.manual_seed(0)
    model = InternVL.from_config(preset("tiny").replace(**{"vision.image_size": 112})).eval()
    tok = pipe.tokenizer
    tiles = load_image(image_file, max_num=12)
    vit_ran = model.vision_model.register_forward_pre_hook(lambda *_: pytest.fail("the ViT ran on the wrong tiles"))
    message = "pixel_values are 448x448 tiles, but this model's vision tower takes 112x112: .*input_size=model"
    with pytest.raises(ValueError, match=message):
        model.chat(tok, tiles, "What is it?", {"max_new_tokens": 3})
    with pytest.raises(ValueError, match=message):
        batch_chat(model, tok, tiles, ["What is it?"], {"max_new_tokens": 3})
    with pytest.raises(ValueError, match=message):  # the plain forward too, not "208 <IMG_CONTEXT> tokens but ..."
        ids = torch.tensor([[1] + [5] * (model.num_image_token * tiles.shape[0]) + [2]])
        model(ids, pixel_values=tiles)
    with pytest.raises(ValueError, match=r"pixel_values must be \(tiles, 3, 112, 112\), got shape \(3, 112, 112\)"):
        model.chat(tok, torch.zeros(3, 112, 112), "What is it?")
    vit_ran.remove()
    fitted = load_image(image_file, input_size=model, max_num=12)
    assert fitted.shape[1:] == (3, 112, 112) and fitted.shape[0] == tiles.shape[0]
    assert isinstance(model.chat(tok, fitted, "What is it?", {"max_new_tokens": 3}), str)


def _missing_device() -> str:
    """A CUDA device this machine does not have: cuda where there is none, else one past the last GPU."""
    return f"cuda:{torch.cuda.device_count()}" if torch.cuda.is_available() else "cuda"


def test_check_device_refuses_unknown_and_absent_devices():
    assert check_device(None) == torch.device("cpu")
    assert check_device("cpu") == check_device(" CPU ") == check_device(torch.device("cpu")) == torch.device("cpu")
    with pytest.raises(ValueError, match=r"device 'gpu' is not a device: use cpu, cuda, cuda:N .*mps or xpu"):
        check_device("gpu")
    with pytest.raises(ValueError, match="is not a device"):
        check_device("cuda:x")
    if torch.cuda.is_available():
        with pytest.raises(ValueError, match=f"this machine has {torch.cuda.device_count()} CUDA device"):
            check_device(_missing_device())
    else:
        with pytest.raises(ValueError) as refused:
            check_device("cuda")
        expected = f"device 'cuda': this machine has no CUDA device (torch {torch.__version__}); use cpu"
        assert str(refused.value) == expected
    if not torch.backends.mps.is_available():
        with pytest.raises(ValueError, match="no MPS"):
            check_device("mps")
    # usable as an argparse type=: argparse shows the message, not "invalid check_device value"
    import argparse

    parser = argparse.ArgumentParser(prog="p", exit_on_error=False)
    parser.add_argument("--device", type=check_device)
    with pytest.raises(argparse.ArgumentError, match="'gpu' is not a device"):
        parser.parse_args(["--device", "gpu"])
    assert parser.parse_args(["--device", "cpu"]).device == torch.device("cpu")


def test_pipeline_refuses_a_device_this_machine_lacks(folder):
    with pytest.raises(ValueError, match=f"device '{_missing_device()}': this machine has"):
        Pipeline(folder, device=_missing_device())
    with pytest.raises(ValueError, match="'gpu' is not a device"):
        InternVL.from_pretrained(folder, device="gpu")  # not safetensors' "device gpu is invalid"
