"""Chat: the original `chat` / `batch_chat` semantics (spec §3.3) and text streaming, as functions of a model
(`InternVL.chat` and `Pipeline`, in api.py, call them), and the opt-in CPU speed switches (`speed_up`).

    answer, history = chat(model, tokenizer, pixel_values, "What is in the image?", {"max_new_tokens": 64},
                           return_history=True)
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch

from nativevl.conversation import IMAGE_PLACEHOLDER, chat_prompt, expand_images, get_template
from nativevl.data.v2pe import v2pe_positions
from nativevl.infer.generate import GenerationConfig, generate, generate_steps
from nativevl.model.internvl import InternVLModel
from nativevl.model.layers import prepack_linears
from nativevl.model.quant import QuantConfig, pack_model_for_cpu, quantize_once
from nativevl.tokenizer import InternVLTokenizer

History = list[tuple[str, str]]


def chat_generation_config(
    model: InternVLModel, tokenizer: InternVLTokenizer, generation_config: dict | GenerationConfig | None
) -> GenerationConfig:
    """The caller's settings, with eos forced to the template's stop token (`<|im_end|>`), as `chat` does."""
    cfg = generation_config if isinstance(generation_config, GenerationConfig) else GenerationConfig.from_dict(
        generation_config)
    stop = get_template(model.config.template).stop_token
    return GenerationConfig(**{**cfg.__dict__, "eos_token_id": [tokenizer.token_to_id(stop)]})


def _positions(model: InternVLModel, ids: torch.Tensor, mask: torch.Tensor | None, v2pe_delta: float | None):
    if v2pe_delta is None:
        return None  # integer positions, what the released checkpoints were run with
    return v2pe_positions(ids, model.config.img_context_token_id, v2pe_delta, mask)


def check_tokenizer(model: InternVLModel, tokenizer: InternVLTokenizer) -> None:
    if tokenizer.img_context_id != model.config.img_context_token_id:
        raise ValueError(f"the tokenizer's <IMG_CONTEXT> is id {tokenizer.img_context_id} but the model expects "
                         f"{model.config.img_context_token_id}; are model and tokenizer from the same checkpoint?")


def build_query(
    model: InternVLModel,
    question: str,
    pixel_values: torch.Tensor | None,
    history: History | None,
    num_patches_list: list[int] | None,
) -> tuple[str, str]:
    """(question as stored in history, the fully expanded prompt), following the original `chat()`."""
    if pixel_values is not None and not history and IMAGE_PLACEHOLDER not in question:
        question = IMAGE_PLACEHOLDER + "\n" + question
    if num_patches_list is None:
        num_patches_list = [pixel_values.shape[0]] if pixel_values is not None else []
    tiles = pixel_values.shape[0] if pixel_values is not None else 0
    if tiles != sum(num_patches_list):
        raise ValueError(f"num_patches_list {num_patches_list} adds up to {sum(num_patches_list)} tiles, "
                         f"but pixel_values has {tiles}")
    prompt = chat_prompt(question, history, model.config.system_message, model.config.template)
    return question, expand_images(prompt, num_patches_list, model.num_image_token)


def _answer(tokenizer: InternVLTokenizer, ids: list[int], stop_strings: Sequence[str]) -> str:
    text = tokenizer.decode(ids, skip_special_tokens=True)
    text = text.split(tokenizer.decode([tokenizer.im_end_id], skip_special_tokens=False))[0]
    for stop in stop_strings:
        text = text.split(stop)[0]
    return text.strip()


def _stop_check(tokenizer: InternVLTokenizer, stop_strings: Sequence[str]):
    if not stop_strings:
        return None
    return lambda row, ids: any(s in tokenizer.decode(ids, skip_special_tokens=True) for s in stop_strings)


def _single_turn(
    model: InternVLModel,
    tokenizer: InternVLTokenizer,
    pixel_values: torch.Tensor | None,
    question: str,
    generation_config: dict | GenerationConfig | None,
    history: History | None,
    num_patches_list: list[int] | None,
) -> tuple[GenerationConfig, str, torch.Tensor, torch.Tensor | None]:
    """(settings, question as stored in history, prompt ids (1, L), pixel values), on the model's device."""
    check_tokenizer(model, tokenizer)
    if pixel_values is not None:
        model.check_pixel_values(pixel_values)  # 448-px tiles on a 112-px model: said so, before anything runs
    cfg = chat_generation_config(model, tokenizer, generation_config)
    question, query = build_query(model, question, pixel_values, history, num_patches_list)
    ids = torch.tensor([tokenizer.prompt_ids(query)], device=_device(model))
    pixel_values = pixel_values.to(_device(model)) if pixel_values is not None else None
    return cfg, question, ids, pixel_values


def chat(
    model: InternVLModel,
    tokenizer: InternVLTokenizer,
    pixel_values: torch.Tensor | None,
    question: str,
    generation_config: dict | GenerationConfig | None = None,
    history: History | None = None,
    return_history: bool = False,
    num_patches_list: list[int] | None = None,
    v2pe_delta: float | None = None,
) -> str | tuple[str, History]:
    """One answer, as the original `InternVLChatModel.chat`: `<image>\\n` is prepended to a first question with
    pixels and no placeholder; each `<image>` takes the next entry of `num_patches_list`."""
    cfg, question, ids, pixel_values = _single_turn(model, tokenizer, pixel_values, question, generation_config,
                                                    history, num_patches_list)
    new = generate(model, ids, pixel_values=pixel_values, position_ids=_positions(model, ids, None, v2pe_delta),
                   config=cfg, stop=_stop_check(tokenizer, cfg.stop_strings))
    response = _answer(tokenizer, new[0].tolist(), cfg.stop_strings)
    history = [*(history or []), (question, response)]
    return (response, history) if return_history else response


def stream_chat(
    model: InternVLModel,
    tokenizer: InternVLTokenizer,
    pixel_values: torch.Tensor | None,
    question: str,
    generation_config: dict | GenerationConfig | None = None,
    history: History | None = None,
    num_patches_list: list[int] | None = None,
    v2pe_delta: float | None = None,
) -> Iterator[str]:
    """The same answer as `chat`, as text pieces while it is generated (joined and stripped, they equal it)."""
    cfg, _, ids, pixel_values = _single_turn(model, tokenizer, pixel_values, question, generation_config, history,
                                             num_patches_list)
    steps = generate_steps(model, ids, cfg, pixel_values, position_ids=_positions(model, ids, None, v2pe_delta))
    text = TextStream(tokenizer, cfg.stop_strings)
    for token, done in steps:
        finished = bool(done[0])
        piece = text.push(None if finished and int(token[0]) in cfg.eos_token_id else int(token[0]), finished)
        if piece:
            yield piece
        if text.stopped:
            return


class TextStream:
    """Generated tokens to text pieces, for streaming: a piece never ends in half a UTF-8 character or in the
    start of a stop string, and the text is cut where a stop string appears (`stopped` is then set)."""

    def __init__(self, tokenizer: InternVLTokenizer, stop_strings: Sequence[str] = ()) -> None:
        self.tokenizer, self.stop_strings = tokenizer, list(stop_strings)
        self.tokens: list[int] = []
        self.sent = ""
        self.stopped = False

    def push(self, token: int | None, final: bool = False) -> str:
        """Add a token (None: nothing new, e.g. the eos) and return the text that can be shown now."""
        if token is not None:
            self.tokens.append(token)
        text = self.tokenizer.decode(self.tokens, skip_special_tokens=True)
        cut = min((text.find(s) for s in self.stop_strings if s in text), default=-1)
        if cut >= 0:
            text, self.stopped = text[:cut], True
        ready = text if (self.stopped or final) else _safe_prefix(text, self.stop_strings)
        if len(ready) <= len(self.sent):
            return ""
        piece, self.sent = ready[len(self.sent):], ready
        return piece


def _safe_prefix(text: str, stops: Sequence[str]) -> str:
    """Text that can be shown now: not an incomplete UTF-8 character, nor the start of a stop string."""
    text = text.rstrip("\ufffd")
    hold = 0
    for stop in stops:
        for k in range(min(len(stop) - 1, len(text)), 0, -1):
            if text.endswith(stop[:k]):
                hold = max(hold, k)
                break
    return text[: len(text) - hold]


def batch_chat(
    model: InternVLModel,
    tokenizer: InternVLTokenizer,
    pixel_values: torch.Tensor | None,
    questions: list[str],
    generation_config: dict | GenerationConfig | None = None,
    num_patches_list: list[int] | list[int | list[int]] | None = None,
    v2pe_delta: float | None = None,
    prefixes: list[str] | None = None,
) -> list[str]:
    """Several independent questions at once (left-padded), as the original `batch_chat`: question k gets
    `num_patches_list[k]` tiles under its one `<image>`, or, given a list there, that many tiles under each of its
    `<image>`s in order (several images: the question writes its `Image-1: <image>`... lines, as for `chat`).
    With `prefixes`, answer k starts with `prefixes[k]` (already written, not returned): how Monte-Carlo step
    labels continue a partial solution."""
    check_tokenizer(model, tokenizer)
    if pixel_values is not None:
        model.check_pixel_values(pixel_values)
    cfg = chat_generation_config(model, tokenizer, generation_config)
    if num_patches_list is None:
        num_patches_list = [0] * len(questions) if pixel_values is None else [pixel_values.shape[0]]
    if len(num_patches_list) != len(questions):
        raise ValueError(f"{len(questions)} questions but num_patches_list has {len(num_patches_list)} entries")
    if prefixes is not None and len(prefixes) != len(questions):
        raise ValueError(f"{len(questions)} questions but {len(prefixes)} prefixes")
    rows = []
    for k, (question, patches) in enumerate(zip(questions, num_patches_list, strict=True)):
        counts = list(patches) if isinstance(patches, (list, tuple)) else [patches] if patches else []
        rows.append(question_ids(model, tokenizer, question, counts if pixel_values is not None else [],
                                 prefixes[k] if prefixes else ""))
    ids, mask = left_pad(rows, tokenizer.pad_token_id)
    device = _device(model)
    ids, mask = ids.to(device), mask.to(device)
    pixel_values = pixel_values.to(device) if pixel_values is not None else None
    new = generate(model, ids, pixel_values=pixel_values, attention_mask=mask,
                   position_ids=_positions(model, ids, mask, v2pe_delta), config=cfg,
                   stop=_stop_check(tokenizer, cfg.stop_strings))
    return [_answer(tokenizer, row, cfg.stop_strings) for row in new.tolist()]


def question_ids(model: InternVLModel, tokenizer: InternVLTokenizer, question: str, counts: list[int],
                 prefix: str = "") -> list[int]:
    """The prompt ids `batch_chat` decodes from for one question whose images have `counts` tiles each: the
    template's prompt, `<image>` prepended when the question has none (as `chat`: several images need their
    own), each image's token block, and `prefix` already written in the answer."""
    if counts and IMAGE_PLACEHOLDER not in question:
        question = IMAGE_PLACEHOLDER + "\n" + question
    prompt = chat_prompt(question, None, model.config.system_message, model.config.template) + prefix
    return tokenizer.prompt_ids(expand_images(prompt, counts, model.num_image_token))


def left_pad(rows: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, attention mask), each (len(rows), longest): rows right-aligned, padding on the left as the original
    `batch_chat` does, so every row's next token comes at the same column."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, r in enumerate(rows):
        ids[i, width - len(r):], mask[i, width - len(r):] = torch.tensor(r, dtype=torch.long), 1
    return ids, mask


def _device(model: InternVLModel) -> torch.device:
    return model.language_model.model.embed_tokens.weight.device


def prepack_model(model: InternVLModel) -> int:
    """`prepack_linears` over the whole model (model/layers.py); the vision tower and the projector, which never
    see a few rows, skip the few-row kernel's copy. Returns the number of layers packed."""
    return (prepack_linears(model.vision_model, decodes=False) + prepack_linears(model.mlp1, decodes=False)
            + prepack_linears(model.language_model))


def speed_up(model: InternVLModel, prepack: bool = False, compile: bool = False,
             quantize: str | QuantConfig | None = None) -> InternVLModel:
    """The opt-in speed switches of `chat` and `serve` (docs/inference.md), applied after loading and casting.

    quantize: "int8" or "int4" (or a QuantConfig): the language model's linear layers as int8/int4 codes
    (model/quant.py), first, so that prepack packs what stays float.
    prepack: on CPU (float32 or bf16), multiply with oneDNN-packed copies of the weights (model/layers.py).
    compile: gpt-fast's recipe, the whole decoder compiled so the small operations between the matrix products
    fuse; dynamic shapes make one compilation serve every prompt length, cache length and batch size. (On CUDA
    the faster route is a CUDA-graph decode, `infer.generate.GraphDecoder`; it becomes this switch's CUDA path
    once it has run on a GPU: see docs/benchmarks.md.)"""
    if quantize is not None:
        quantize_once(model, quantize)
    if prepack:
        prepack_model(model)
    if compile:
        pack_model_for_cpu(model)  # quantized layers' kernel copies: a compiled forward does not make them
        model.language_model.compile(dynamic=True)
    return model
