"""Presets carry the released shapes (spec §1.1, §1.2); counted on the meta device, nothing is allocated."""

from __future__ import annotations

import pytest
import torch

from nativevl import InternVL, ModelConfig, preset


def count(name: str) -> int:
    with torch.device("meta"):
        model = InternVL(preset(name))
    return sum(p.numel() for p in model.parameters())


def test_internvl3_1b_parameter_count_is_the_released_938m():
    # 304.0M InternViT-300M + 4.5M mlp1 + 629.7M Qwen2.5-0.5B with 151,674 untied embedding rows.
    assert count("internvl3-1b") == 938_193_024


@pytest.mark.parametrize(
    "name, billions",
    [("internvl3-2b", 2.09), ("internvl3-8b", 7.94), ("internvl3-14b", 15.1), ("internvl3-38b", 38.4),
     ("internvl3-78b", 78.4)],
)
def test_larger_presets_match_the_published_sizes(name, billions):
    assert abs(count(name) / 1e9 - billions) < 0.006 * billions


@pytest.mark.parametrize(
    "name, llm",
    [
        ("internvl3-1b", (896, 24, 14, 2)),
        ("internvl3-2b", (1536, 28, 12, 2)),
        ("internvl3-8b", (3584, 28, 28, 4)),
        ("internvl3-14b", (5120, 48, 40, 8)),
        ("internvl3-38b", (5120, 64, 40, 8)),
        ("internvl3-78b", (8192, 80, 64, 8)),
    ],
)
def test_llm_shapes_follow_the_family_table(name, llm):
    t = preset(name).text
    assert (t.hidden_size, t.num_hidden_layers, t.num_attention_heads, t.num_key_value_heads) == llm
    assert t.vocab_size == 151674 and not t.tie_word_embeddings
    assert t.rope_theta == 1e6 and t.rope_scaling == {"type": "dynamic", "factor": 2.0}


def test_vision_variants():
    small, big = preset("internvl3-1b").vision, preset("internvl3-78b").vision
    assert (small.hidden_size, small.num_hidden_layers, small.qkv_bias, small.qk_normalization, small.norm_type) == (
        1024, 24, True, False, "layer_norm")
    assert (big.hidden_size, big.num_hidden_layers, big.num_attention_heads, big.intermediate_size) == (
        3200, 45, 25, 12800)
    assert (big.qkv_bias, big.qk_normalization, big.norm_type) == (False, True, "rms_norm")
    assert preset("internvl3-1b").num_image_token == 256


def test_config_dict_round_trip_and_unknown_fields():
    cfg = preset("internvl3-38b").replace(**{"vision.drop_path_rate": 0.4, "select_layer": -2})
    again = ModelConfig.from_dict(cfg.to_dict())
    assert again == cfg and again.vision.drop_path_rate == 0.4
    with pytest.raises(KeyError, match="nonsense"):
        ModelConfig.from_dict({**cfg.to_dict(), "nonsense": 1})
    with pytest.raises(KeyError, match="unknown preset"):
        preset("internvl9-1b")
