"""The independent reference: transformers' InternVL, built from configs written here by hand (not through
nativevl's own config converter), with tiny random weights. Nothing is downloaded."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402
from transformers import InternVLConfig, InternVLForConditionalGeneration  # noqa: E402

IMG_CONTEXT = 5  # <IMG_CONTEXT> in the tiny vocabulary
IMG_START, IMG_END = 3, 4

VISION_300M = dict(attention_bias=True, use_qk_norm=False, norm_type="layer_norm")
VISION_6B = dict(attention_bias=False, use_qk_norm=True, norm_type="rms_norm")


def hf_config(
    vision: dict, tied: bool, image_size: int = 448, rope: dict | None = None, max_positions: int = 32768,
    feature_layer: int = -1, text: dict | None = None,
) -> InternVLConfig:
    """`text`: text_config fields over the tiny Qwen2 ones (e.g. model_type="qwen3", head_dim=32)."""
    rope = rope or {"rope_type": "default", "rope_theta": 1e6}
    return InternVLConfig(
        vision_config=dict(
            hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=256,
            image_size=image_size, patch_size=14, layer_norm_eps=1e-6, **vision,
        ),
        text_config=dict(
            model_type="qwen2", hidden_size=64, intermediate_size=128, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, vocab_size=1000, rms_norm_eps=1e-6,
            max_position_embeddings=max_positions, rope_parameters=rope, tie_word_embeddings=tied,
        ) | (text or {}),
        image_token_id=IMG_CONTEXT,
        vision_feature_layer=feature_layer,
        tie_word_embeddings=tied,  # transformers decides tying by the top-level flag
    )


def hf_model(config: InternVLConfig, seed: int = 0) -> InternVLForConditionalGeneration:
    torch.manual_seed(seed)
    model = InternVLForConditionalGeneration(config).eval()
    # Random LayerScale and norm weights, so a mix-up between them (or a dropped bias) cannot hide; random class
    # and position embeddings (transformers zeroes them), so their interpolation and order are tested.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lambda" in name or "norm" in name or name.endswith("bias"):
                p.add_(torch.randn_like(p) * 0.1)
            elif "position_embeddings" in name or "cls_token" in name:
                p.normal_()
    model.generation_config.eos_token_id = None
    model.generation_config.pad_token_id = 0
    return model


def prompt(tiles: list[int], tokens_per_tile: int = 256, seed: int = 1) -> torch.Tensor:
    """(1, L) ids: random text around one <img> <IMG_CONTEXT>*n </img> block per image."""
    g = torch.Generator().manual_seed(seed)
    ids: list[int] = []
    for n in tiles:
        ids += torch.randint(20, 1000, (5,), generator=g).tolist()
        ids += [IMG_START] + [IMG_CONTEXT] * (tokens_per_tile * n) + [IMG_END]
    ids += torch.randint(20, 1000, (7,), generator=g).tolist()
    return torch.tensor([ids])


def pixels(tiles: int, size: int = 448, seed: int = 2) -> torch.Tensor:
    return torch.randn(tiles, 3, size, size, generator=torch.Generator().manual_seed(seed))


SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<img>", "</img>", "<IMG_CONTEXT>", "<quad>",
                  "</quad>", "<ref>", "</ref>", "<box>", "</box>", "<video>"]  # ids 0..12; <IMG_CONTEXT> = 5


def make_tokenizer(folder, vocab_size: int = 1000):
    """A tiny Qwen2-style byte-level BPE trained here on Python's own source files, saved by transformers as
    a checkpoint's tokenizer files (tokenizer.json, tokenizer_config.json, …). Returns the transformers object."""
    import glob
    import sysconfig

    from tokenizers import Regex, Tokenizer, decoders, normalizers, pre_tokenizers
    from tokenizers.models import BPE
    from tokenizers.trainers import BpeTrainer
    from transformers import PreTrainedTokenizerFast

    from nativevl.tokenizer import QWEN2_SPLIT

    tok = Tokenizer(BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_SPLIT), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    files = sorted(glob.glob(sysconfig.get_paths()["stdlib"] + "/*.py"))[:40]
    trainer = BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS,
                         initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train(files, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                   model_max_length=8192)
    fast.save_pretrained(folder)
    tok.model.save(str(folder))  # vocab.json + merges.txt too, as released Qwen checkpoints carry them
    return fast


# transformers' InternVL chat template (set by its converter; hf-transformers-reference §6.3): an image item is
# rendered as `<IMG_CONTEXT>\n`, a video item as `<video>\n`, and no default system message is added.
HF_CHAT_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n'}}"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for content in message['content'] %}"
    "{% if content['type'] == 'image' %}{{ '<IMG_CONTEXT>\n' }}"
    "{% elif content['type'] == 'video' %}{{ '<video>\n' }}"
    "{% elif content['type'] == 'text' %}{{ content['text'] }}{% endif %}"
    "{% endfor %}{% endif %}{{'<|im_end|>\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{'<|im_start|>assistant\n' }}{% endif %}"
)


def hf_processor(tokenizer_folder):
    """transformers' InternVLProcessor without its video processor (torchvision is not installed here)."""
    from transformers import GotOcr2ImageProcessorPil, InternVLProcessor, PreTrainedTokenizerFast

    class ImageOnlyProcessor(InternVLProcessor):
        def __init__(self, image_processor=None, tokenizer=None, image_seq_length=256, chat_template=None, **kw):
            super().__init__(image_processor, tokenizer, None, image_seq_length, chat_template, **kw)

    tokenizer = PreTrainedTokenizerFast.from_pretrained(
        tokenizer_folder,
        extra_special_tokens={"start_image_token": "<img>", "end_image_token": "</img>",
                              "context_image_token": "<IMG_CONTEXT>", "video_token": "<video>"},
    )
    images = GotOcr2ImageProcessorPil(size={"height": 448, "width": 448}, image_mean=[0.485, 0.456, 0.406],
                                      image_std=[0.229, 0.224, 0.225], crop_to_patches=True, max_patches=12)
    return ImageOnlyProcessor(image_processor=images, tokenizer=tokenizer, chat_template=HF_CHAT_TEMPLATE)


def tiny_checkpoint(folder):
    """A tiny random InternVL (original layout) with the tiny tokenizer and a 300x200 noise image, photo.png."""
    import numpy as np
    from PIL import Image

    from nativevl import InternVL, preset

    torch.manual_seed(0)
    InternVL.from_config(preset("tiny")).save_pretrained(folder)
    make_tokenizer(folder)
    image = np.random.default_rng(0).integers(0, 256, (200, 300, 3), dtype=np.uint8)
    Image.fromarray(image).save(folder / "photo.png")
    return folder


WORLD_TINY = {"vision.image_size": 224, "vision.hidden_size": 32, "vision.intermediate_size": 64,
              "vision.num_attention_heads": 2, "vision.num_hidden_layers": 2, "text.hidden_size": 32,
              "text.intermediate_size": 64, "text.num_attention_heads": 2, "text.num_key_value_heads": 1,
              "text.num_hidden_layers": 1}


def world_checkpoint(root, seed: int = 0, **changes):
    """A small embedded world under root/world and a tiny random model with its tokenizer under root/start;
    `changes`: config fields over WORLD_TINY's (e.g. {"text.architecture": "Qwen3ForCausalLM"})."""
    from nativevl.config import preset
    from nativevl.data.world import generate_world
    from nativevl import InternVL
    from nativevl.tokenizer import load_tokenizer
    from nativevl.weights import SIDECAR_FILES

    world = root / "world"
    generate_world(world, seed=0, scale=0.05)
    tok = load_tokenizer(world / "tokenizer")
    torch.manual_seed(seed)
    config = preset("tiny").replace(**WORLD_TINY | changes, **{"text.vocab_size": len(tok),
                                                               "img_context_token_id": tok.img_context_id})
    InternVL.from_config(config).save_pretrained(root / "start")
    for name in SIDECAR_FILES:
        if (world / "tokenizer" / name).is_file():
            (root / "start" / name).write_bytes((world / "tokenizer" / name).read_bytes())
    return world, root / "start"
