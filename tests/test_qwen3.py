"""InternVL3.5's language model: the Qwen3 decoder (no biases, head_dim 32 where hidden / heads = 16, an RMSNorm
over each query and key head before RoPE) inside transformers' InternVL, against nativevl: logits and greedy
tokens from transformers' own files, nativevl's files in both layouts read back by transformers and by nativevl,
and the layouts round-tripping bit-exactly."""

from __future__ import annotations

import json
import math

import pytest
import torch
from reference import VISION_300M, hf_config, hf_model, pixels, prompt
from safetensors.torch import load_file
from transformers import InternVLForConditionalGeneration

from nativevl import InternVL
from nativevl.infer.generate import generate
from nativevl.weights import CheckpointError, convert

QWEN3 = dict(model_type="qwen3", head_dim=32, attention_bias=False)
TILES = [2, 1]


def qwen3_pair(folder, tied: bool, max_positions: int = 32768) -> tuple[InternVLForConditionalGeneration, InternVL]:
    """transformers' InternVL with a Qwen3 text config (random weights, q/k norms included) and nativevl loaded
    from the folder transformers wrote."""
    hf = hf_model(hf_config(VISION_300M, tied, max_positions=max_positions, text=QWEN3))
    assert hf.model.language_model.layers[0].self_attn.q_norm.weight.std() > 0.05  # random, not ones
    hf.save_pretrained(folder)
    return hf, InternVL.from_pretrained(folder).eval()


@pytest.mark.parametrize("tied", [False, True])
@torch.no_grad()
def test_logits_and_greedy_tokens_equal_transformers(tied, tmp_path):
    hf, ours = qwen3_pair(tmp_path, tied)
    assert ours.config.text.architecture == "Qwen3ForCausalLM" and ours.config.text.head_dim == 32
    assert ours.config.text.tie_word_embeddings == tied
    ids, pv = prompt(TILES), pixels(sum(TILES))
    diff = (ours(ids, pixel_values=pv).logits - hf(input_ids=ids, pixel_values=pv).logits).abs().max()
    assert diff.item() <= 1e-5
    ref = hf.generate(input_ids=ids, pixel_values=pv, max_new_tokens=20, do_sample=False)[:, ids.shape[1]:]
    assert generate(ours, ids, pixel_values=pv, max_new_tokens=20).tolist() == ref.tolist()


@torch.no_grad()
def test_dynamic_ntk_past_the_trained_length(tmp_path):
    hf = hf_model(hf_config(VISION_300M, False, max_positions=128, text=QWEN3,
                            rope={"rope_type": "dynamic", "rope_theta": 1e6, "factor": 2.0}))
    hf.save_pretrained(tmp_path)
    ours = InternVL.from_pretrained(tmp_path).eval()
    ids, pv = prompt([1], seed=7), pixels(1)  # 256 image tokens: past the 128 positions
    assert (ours(ids, pixel_values=pv).logits - hf(input_ids=ids, pixel_values=pv).logits).abs().max() <= 1e-5


@pytest.mark.parametrize("tied", [False, True])
def test_nativevl_files_in_both_layouts_load_in_transformers_and_back(tied, tmp_path):
    hf, ours = qwen3_pair(tmp_path / "theirs", tied)
    torch.manual_seed(5)
    with torch.no_grad():  # weights transformers did not write, so nothing passes by reading its file back
        for p in ours.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    ids, pv = prompt(TILES), pixels(sum(TILES))
    with torch.no_grad():
        want = ours(ids, pixel_values=pv).logits
    ours.save_pretrained(tmp_path / "orig", layout="original")
    llm = json.loads((tmp_path / "orig/config.json").read_text())["llm_config"]
    assert llm["architectures"] == ["Qwen3ForCausalLM"] and llm["head_dim"] == 32 and llm["model_type"] == "qwen3"
    assert "language_model.model.layers.0.self_attn.k_norm.weight" in load_file(tmp_path / "orig/model.safetensors")
    convert(tmp_path / "orig", tmp_path / "hf", layout="transformers")
    text = json.loads((tmp_path / "hf/config.json").read_text())["text_config"]
    assert text["model_type"] == "qwen3" and text["head_dim"] == 32
    theirs = InternVLForConditionalGeneration.from_pretrained(tmp_path / "hf").eval()
    assert (theirs.lm_head.weight.data_ptr() == theirs.model.language_model.embed_tokens.weight.data_ptr()) == tied
    with torch.no_grad():
        for folder in ("orig", "hf"):
            assert (InternVL.from_pretrained(tmp_path / folder)(ids, pixel_values=pv).logits - want).abs().max() <= 1e-5
        assert (theirs(input_ids=ids, pixel_values=pv).logits - want).abs().max().item() <= 1e-5
    convert(tmp_path / "hf", tmp_path / "orig2", layout="original")
    first, second = load_file(tmp_path / "orig/model.safetensors"), load_file(tmp_path / "orig2/model.safetensors")
    assert list(first) == list(second) and all(torch.equal(first[k], second[k]) for k in first)
    assert json.loads((tmp_path / "orig2/config.json").read_text())["llm_config"] == llm


def test_unsupported_qwen3_features_are_refused_by_field(tmp_path):
    hf_model(hf_config(VISION_300M, False, text=QWEN3)).save_pretrained(tmp_path)
    raw = json.loads((tmp_path / "config.json").read_text())
    for field, value, message in (("use_sliding_window", True, "sliding-window attention"),
                                  ("attention_bias", True, "attention_bias=true")):
        bad = json.loads(json.dumps(raw))
        bad["text_config"][field] = value
        (tmp_path / "config.json").write_text(json.dumps(bad))
        with pytest.raises(CheckpointError, match=rf"config.json: Qwen3ForCausalLM: {message}.* is not supported"):
            InternVL.from_pretrained(tmp_path)


QWEN3_WORLD = {"text.architecture": "Qwen3ForCausalLM", "text.attention_bias": False, "text.head_dim_override": 24}


@pytest.fixture(scope="module")
def qwen3_start(tmp_path_factory):
    from reference import world_checkpoint

    return world_checkpoint(tmp_path_factory.mktemp("qwen3"), **QWEN3_WORLD)


@pytest.mark.parametrize("stage, meta, extra", [
    ("pretrain", "meta_pretrain.json", {}),
    ("sft", "meta_sft.json", {"data.v2pe": "random"}),
    ("mpo", "meta_mpo.json", {"data.max_tokens": 1024, "data.max_seq_length": 1024}),
    ("sft", "meta_sft.json", {"lora.llm_rank": 4, "lora.vit_rank": 2}),
])
def test_every_stage_trains_a_qwen3_model_unchanged(qwen3_start, tmp_path, stage, meta, extra):
    from test_lora_train import settings

    from nativevl.train.recipes import load_config
    from nativevl.train.trainer import Trainer

    world, checkpoint = qwen3_start
    args = settings(qwen3_start, tmp_path, steps=4, **{"stage": stage, "data.meta": str(world / meta),
                                                       "lora.llm_rank": 0, "lora.vit_rank": 0, **extra})
    trainer = Trainer(load_config("sft", args))
    attn = trainer.model.language_model.model.layers[0].self_attn
    assert attn.qk_norm and attn.head_dim == 24  # head_dim 24 where hidden / heads = 16
    norm = attn.k_norm.weight.detach().clone()
    history = trainer.run()
    assert len(history) == 4 and all(math.isfinite(h["loss"]) for h in history)
    if not extra.get("lora.llm_rank"):
        assert not torch.equal(attn.k_norm.weight, norm)  # the Qwen3 norms train with the rest
    assert (tmp_path / "final").is_dir()


@pytest.mark.parametrize("size, vit, llm", [("1b", 0.3, 0.8), ("2b", 0.3, 2.0), ("4b", 0.3, 4.4), ("8b", 0.3, 8.2),
                                            ("14b", 0.3, 14.8), ("38b", 5.5, 32.8)])
def test_internvl35_presets_have_the_model_cards_parameter_counts(size, vit, llm):
    """The InternVL3.5 model card's #Vision / #Language columns (billions, rounded to 0.1)."""
    from nativevl.config import preset
    from nativevl.model.text import CausalLM
    from nativevl.model.vision import InternViT

    cfg = preset(f"internvl3.5-{size}")
    assert cfg.text.architecture == "Qwen3ForCausalLM" and cfg.text.head_dim == 128
    assert cfg.img_context_token_id == 151671 and cfg.template == "internvl2_5" and cfg.ps_version == "v2"
    with torch.device("meta"):
        counts = [sum(p.numel() for p in m.parameters()) / 1e9 for m in (InternViT(cfg.vision), CausalLM(cfg.text))]
    assert counts == pytest.approx([vit, llm], abs=0.05)


@pytest.mark.parametrize("switch", [{"prepack": True}, {"quantize": "int8"}])
@torch.no_grad()
def test_the_speed_switches_decode_a_qwen3_model_as_it_is(switch, tmp_path):
    """--prepack packs q/k/v into one product (the norms apply per head after it); int8 keeps the norms float."""
    from nativevl.infer.chat import speed_up

    hf_model(hf_config(VISION_300M, False, text=QWEN3)).save_pretrained(tmp_path)
    ids, pv = prompt([1]), pixels(1)
    want = generate(InternVL.from_pretrained(tmp_path).eval(), ids, pixel_values=pv, max_new_tokens=12)
    fast = speed_up(InternVL.from_pretrained(tmp_path).eval(), switch.get("prepack", False), False,
                    switch.get("quantize"))
    attn = fast.language_model.model.layers[0].self_attn
    assert (attn.packed is not None) == bool(switch.get("prepack")) and attn.q_norm.weight.dtype == torch.float32
    assert generate(fast, ids, pixel_values=pv, max_new_tokens=12).tolist() == want.tolist()
