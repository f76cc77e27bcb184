"""The Python API users of the original know. `nativevl.InternVL`, the model as they hold it: the model's math (model/internvl.py) with
the checkpoint methods (weights/) and the original's chat API (infer/chat.py).

The model room knows nothing of checkpoint folders or generation; they sit above it and call into it. This
subclass, above all three, is where the original's one-object API (`InternVL.from_pretrained(...).chat(...)`)
is put back together: each method is one call into the room that implements it. Inside nativevl, code
works on `InternVLModel` and calls `load_model` / `chat` directly.

    from nativevl import InternVL, load_image, load_tokenizer
    model = InternVL.from_pretrained("path/to/InternVL3-1B")

`Pipeline` is the same in one object: a checkpoint folder, its tokenizer and the original's tiling, ready to
answer (`nativevl chat` is a loop over it).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from nativevl.conversation import (
    IMAGE_PLACEHOLDER,
    THINKING_SAMPLING,
    THINKING_SYSTEM_PROMPT,
    image_prefix,
    video_prefix,
)
from nativevl.data.image import ImageSource, load_image
from nativevl.data.video import load_video
from nativevl.device import check_device
from nativevl.infer import chat as chat_api
from nativevl.infer.chat import History, check_tokenizer, speed_up
from nativevl.infer.generate import GenerationConfig
from nativevl.model.internvl import InternVLModel
from nativevl.model.quant import QuantConfig, quantize
from nativevl.tokenizer import InternVLTokenizer, load_tokenizer
from nativevl.weights import load_model, save_model


class InternVL(InternVLModel):
    """InternVL3 (model/internvl.py) with `from_pretrained`, `save_pretrained`, `chat` and `batch_chat`."""

    @classmethod
    def from_pretrained(
        cls, path: str | Path, dtype: torch.dtype | None = None, device: torch.device | str | None = None
    ) -> InternVL:
        """Load a checkpoint folder in the original OpenGVLab or the transformers layout (weights/)."""
        return load_model(path, dtype=dtype, device=device, model_class=cls)

    def save_pretrained(self, path: str | Path, layout: str = "original", max_shard_size: str | int = "5GB") -> None:
        """Write config.json and safetensors in `layout` ("original" or "transformers"), sharded past the size."""
        save_model(self, path, layout=layout, max_shard_size=max_shard_size)

    def quantize(self, config: str | QuantConfig = "int4") -> InternVL:
        """The language model's linear layers as int8 ("int8") or int4 ("int4") codes, in place (model/quant.py);
        `save_pretrained` then writes a quantized checkpoint that `from_pretrained` reads back."""
        return quantize(self, config)

    def chat(self, tokenizer: InternVLTokenizer, pixel_values: torch.Tensor | None, question: str,
             generation_config: dict[str, Any] | GenerationConfig | None = None,
             history: History | None = None, return_history: bool = False,
             num_patches_list: list[int] | None = None, v2pe_delta: float | None = None) -> str | tuple[str, History]:
        """`model.chat(tokenizer, pixel_values, question, generation_config, history, return_history,
        num_patches_list)` with the original's semantics; see `nativevl.infer.chat.chat`."""
        return chat_api.chat(self, tokenizer, pixel_values, question, generation_config, history, return_history,
                             num_patches_list, v2pe_delta)

    def batch_chat(self, tokenizer: InternVLTokenizer, pixel_values: torch.Tensor | None, questions: list[str],
                   generation_config: dict[str, Any] | GenerationConfig | None = None,
                   num_patches_list: list[int] | None = None, v2pe_delta: float | None = None) -> list[str]:
        """Several questions at once, as the original `batch_chat`; see `nativevl.infer.chat.batch_chat`."""
        return chat_api.batch_chat(self, tokenizer, pixel_values, questions, generation_config, num_patches_list,
                                   v2pe_delta)

class Pipeline:
    """A checkpoint folder ready to answer: `pipe(prompt, images=[...])`, `pipe.stream(...)`."""

    def __init__(
        self,
        path: str | Path,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
        max_num: int | None = None,
        v2pe_delta: float | None = None,
        compile: bool = False,
        prepack: bool = False,
        quantize: str | None = None,
        adapter: str | Path | None = None,
        thinking: bool = False,
    ) -> None:
        """`adapter`: a LoRA adapter folder (PEFT's format) for the checkpoint at `path`, merged into it before
        the speed switches (so `quantize` quantizes the merged weights). `thinking`: InternVL3.5's thinking mode,
        its system prompt and recommended sampling (the reply opens with `<think>…</think>`; `split_thinking`
        parts it from the answer)."""
        device = check_device(device)  # 'gpu', or cuda on a machine without one: one line before anything loads
        model = InternVL.from_pretrained(path, dtype=dtype, device=device).eval()
        if adapter is not None:
            from nativevl.weights import checkpoint_hash
            from nativevl.weights.lora import load_adapter, merge_lora

            model = merge_lora(load_adapter(model, adapter, base_sha256=checkpoint_hash(path)))
        self.model = speed_up(model, prepack, compile, quantize)
        self.tokenizer = load_tokenizer(path)
        check_tokenizer(self.model, self.tokenizer)
        self.max_num = max_num or self.model.config.max_dynamic_patch
        self.v2pe_delta = v2pe_delta
        self.defaults: dict[str, Any] = {}  # generation settings a call's own override
        if thinking:
            self.model.config.system_message = THINKING_SYSTEM_PROMPT
            self.defaults = dict(THINKING_SAMPLING)

    def prepare(
        self, prompt: str, images: Sequence[ImageSource] = (), video: str | Path | None = None,
        num_segments: int = 8, history: History | None = None,
    ) -> tuple[str, torch.Tensor | None, list[int] | None]:
        """(question, pixel_values, num_patches_list): tiles every image; frames of the video, one tile each."""
        if images and video is not None:
            raise ValueError("give images or a video, not both")
        dtype = next(self.model.parameters()).dtype
        size = self.model.config.vision.image_size  # tiles are the ViT's size (448 for the released models)
        if video is not None:
            pixels, patches = load_video(video, num_segments=num_segments, input_size=size)
            if IMAGE_PLACEHOLDER not in prompt:
                prompt = video_prefix(len(patches)) + prompt
            return prompt, pixels.to(dtype), patches
        if not images:
            return prompt, None, None
        tiles = [load_image(image, input_size=size, max_num=self.max_num) for image in images]
        if IMAGE_PLACEHOLDER not in prompt and not history:
            prompt = image_prefix(len(tiles)) + prompt
        return prompt, torch.cat(tiles).to(dtype), [t.shape[0] for t in tiles]

    def __call__(self, prompt: str, images: Sequence[ImageSource] = (), video: str | Path | None = None,
                 history: History | None = None, return_history: bool = False, num_segments: int = 8,
                 **generation: Any) -> str | tuple[str, History]:
        question, pixels, patches = self.prepare(prompt, images, video, num_segments, history)
        generation = self.defaults | generation
        return chat_api.chat(self.model, self.tokenizer, pixels, question, generation, history, return_history, patches,
                    self.v2pe_delta)

    def stream(self, prompt: str, images: Sequence[ImageSource] = (), video: str | Path | None = None,
               history: History | None = None, num_segments: int = 8, **generation: Any) -> Iterator[str]:
        question, pixels, patches = self.prepare(prompt, images, video, num_segments, history)
        generation = self.defaults | generation
        return chat_api.stream_chat(self.model, self.tokenizer, pixels, question, generation, history, patches,
                           self.v2pe_delta)
