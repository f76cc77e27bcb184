"""Which parameters a run trains, and what its checkpoints hold of the model.

Order, as the original's `internvl_chat_finetune.py`: freeze the ViT and/or the LLM; wrap them with LoRA
(`lora.vit_rank` / `lora.llm_rank`; wrapping freezes that part's base, as `get_peft_model` does); unfreeze the
output head (`lora.unfreeze_lm_head`); freeze the projector; train ViT layers `[k:]` again
(`freeze.unfreeze_vit_layers`). The original sets `lm_head.requires_grad = True` on the module (a no-op
attribute, and `get_peft_model` would freeze the head again); nativevl trains the head's weight as asked.

A run without LoRA checkpoints the whole model (original layout). A LoRA run checkpoints only what it trains:
the adapter in PEFT's format (weights/lora.py) with the modules trained in full beside it as `modules_to_save`,
and the base named by path and hash in `adapter_base.json`.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from nativevl.model.internvl import InternVLModel
from nativevl.train.config import TrainConfig
from nativevl.weights import save_state


def uses_lora(cfg: TrainConfig) -> bool:
    return bool(cfg.lora.llm_rank or cfg.lora.vit_rank)


def quantize_base(model: InternVLModel, cfg: TrainConfig) -> None:
    """QLoRA: the LLM's decoder layers to int8/int4. The output head stays float, as QLoRA's peers keep it: a
    training step dequantizes a layer's weight for the forward and again for the backward, and the head's
    151,674 rows dequantized are a float copy as large as the head itself (at the 8B's width with 2 of its 28
    layers, a step peaked at 10.8 GiB with the head on int8 against 8.3 GiB with no quantization at all)."""
    from nativevl.model.quant import QuantConfig, quantize

    quantize(model, dataclasses.replace(QuantConfig.named(cfg.model.quantize), head=0))


def make_trainable(model: InternVLModel, cfg: TrainConfig) -> None:
    """requires_grad for every parameter, in the original's order (module docstring)."""
    f, lora = cfg.freeze, cfg.lora
    model.vision_model.requires_grad_(not f.vit)
    model.language_model.requires_grad_(not f.llm)
    model.mlp1.requires_grad_(True)
    if uses_lora(cfg):
        from nativevl.weights.lora import add_lora

        add_lora(model, lora.llm_rank, lora.vit_rank, lora.target_modules or None, lora.vit_target_modules or None,
                 dropout=lora.dropout)
    if lora.unfreeze_lm_head:
        model.language_model.lm_head.requires_grad_(True)
    if f.projector:
        model.mlp1.requires_grad_(False)
    if f.vit and f.unfreeze_vit_layers is not None:
        for layer in model.vision_model.encoder.layers[f.unfreeze_vit_layers:]:
            layer.requires_grad_(True)


def frozen_linears_to_bf16(model: InternVLModel) -> None:
    """A LoRA run in bf16: under bf16 autocast a frozen Linear's weight is only ever read as bf16, so it is kept
    so, half its float32 size (what trains keeps float32). Only where the base is not saved: LoRA runs."""
    for module in model.modules():
        if isinstance(module, torch.nn.Linear) and not module.weight.requires_grad:
            module.to(torch.bfloat16)


def trained_in_full(model: InternVLModel, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The trainable tensors of `state` that are not LoRA's (the head, the projector, unfrozen ViT layers)."""
    trainable = {name for name, p in model.named_parameters() if p.requires_grad and ".lora_" not in name}
    return {name: state[name] for name in trainable}


def write_model(model: InternVLModel, state: dict[str, torch.Tensor], cfg: TrainConfig, folder: Path,
                base_sha256: str | None) -> None:
    """The model's part of a checkpoint: the whole state (original layout) or, with LoRA, the adapter."""
    if not uses_lora(cfg):
        save_state(state, model.config, folder)
        return
    from nativevl.weights.lora import save_adapter

    save_adapter(model, folder, trained=trained_in_full(model, state), base=cfg.model.checkpoint or None,
                 sha256=base_sha256, state=state)


def read_model(model: InternVLModel, cfg: TrainConfig, folder: Path) -> dict[str, torch.Tensor]:
    """A checkpoint's model tensors under the model's own names (to set into it, sharded or not)."""
    from nativevl.weights import read_state

    if not uses_lora(cfg):
        state = read_state(folder)
        if model.config.text.tie_word_embeddings:  # a tied head is not stored
            state["language_model.lm_head.weight"] = state["language_model.model.embed_tokens.weight"]
        return state
    from nativevl.weights.lora import adapter_state

    return adapter_state(model, folder)
