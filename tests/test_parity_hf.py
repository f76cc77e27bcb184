"""nativevl against transformers' InternVL on the same tiny random weights, exchanged through checkpoint files
in both directions. Tolerance for fp32 logits: 1e-5 (summation order only)."""

from __future__ import annotations

import json

import pytest
import torch
from reference import VISION_6B, VISION_300M, hf_config, hf_model, pixels, prompt
from safetensors.torch import load_file
from transformers import InternVLForConditionalGeneration

from nativevl import InternVL
from nativevl.infer.generate import generate
from nativevl.weights import convert

VARIANTS = {
    "vit300m-untied": (VISION_300M, False),
    "vit6b-tied": (VISION_6B, True),
}
TILES = [3, 1, 2]  # three images of 3, 1 and 2 tiles in one prompt


@pytest.fixture(scope="module", params=list(VARIANTS))
def pair(request, tmp_path_factory):
    """(transformers model, nativevl model loaded from the transformers model's own save_pretrained)."""
    vision, tied = VARIANTS[request.param]
    hf = hf_model(hf_config(vision, tied))
    folder = tmp_path_factory.mktemp(request.param)
    hf.save_pretrained(folder)
    return hf, InternVL.from_pretrained(folder).eval()


@torch.no_grad()
def test_vision_tower_and_projected_features(pair):
    hf, ours = pair
    pv = pixels(sum(TILES))
    ref = hf.model.vision_tower(pixel_values=pv).last_hidden_state
    torch.testing.assert_close(ours.vision_model(pv), ref, rtol=0, atol=1e-5)
    ref_feat = hf.model.get_image_features(
        pixel_values=pv, vision_feature_layer=-1, vision_feature_select_strategy="default"
    ).pooler_output
    feat = ours.extract_feature(pv)
    assert feat.shape == (sum(TILES), 256, 64)
    torch.testing.assert_close(feat, ref_feat, rtol=0, atol=1e-5)


@torch.no_grad()
def test_logits_several_images_of_several_tiles(pair):
    hf, ours = pair
    ids, pv = prompt(TILES), pixels(sum(TILES))
    ref = hf(input_ids=ids, pixel_values=pv).logits
    out = ours(ids, pixel_values=pv).logits
    assert out.shape == ref.shape == (1, ids.shape[1], 1000)
    assert (out - ref).abs().max().item() <= 1e-5


def test_twenty_greedy_tokens(pair):
    hf, ours = pair
    ids, pv = prompt(TILES), pixels(sum(TILES))
    with torch.no_grad():
        ref = hf.generate(input_ids=ids, pixel_values=pv, max_new_tokens=20, do_sample=False)[:, ids.shape[1] :]
    new = generate(ours, ids, pixel_values=pv, max_new_tokens=20)
    assert ref.shape == (1, 20)
    assert new.tolist() == ref.tolist()


def test_left_padded_batch(pair):
    """Two prompts of different lengths, left-padded: logits of real tokens and greedy tokens match."""
    hf, ours = pair
    a, b = prompt([2], seed=3), prompt([1], seed=4)
    width = a.shape[1]
    ids = torch.zeros(2, width, dtype=torch.long)
    mask = torch.zeros(2, width, dtype=torch.long)
    ids[0], mask[0] = a[0], 1
    ids[1, width - b.shape[1] :], mask[1, width - b.shape[1] :] = b[0], 1
    pv = pixels(3)
    with torch.no_grad():
        ref = hf(input_ids=ids, pixel_values=pv, attention_mask=mask).logits
        out = ours(ids, pixel_values=pv, attention_mask=mask).logits
        real = mask.bool()
        assert (out[real] - ref[real]).abs().max().item() <= 1e-5
        ref_gen = hf.generate(input_ids=ids, pixel_values=pv, attention_mask=mask, max_new_tokens=10, do_sample=False)
    new = generate(ours, ids, pixel_values=pv, attention_mask=mask, max_new_tokens=10)
    assert new.tolist() == ref_gen[:, width:].tolist()


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_nativevl_checkpoint_loads_in_transformers(variant, tmp_path):
    vision, tied = VARIANTS[variant]
    theirs = hf_model(hf_config(vision, tied))  # only to borrow a config
    hf_dir = tmp_path / "hf"
    theirs.save_pretrained(hf_dir)
    torch.manual_seed(5)
    ours = InternVL.from_pretrained(hf_dir)
    ours.init_weights()  # fresh weights nativevl made, so the check below cannot pass by reading back the input
    with torch.no_grad():
        for p in ours.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    ours.eval().save_pretrained(tmp_path / "ours", layout="transformers")
    hf = InternVLForConditionalGeneration.from_pretrained(tmp_path / "ours").eval()
    assert (hf.lm_head.weight.data_ptr() == hf.model.language_model.embed_tokens.weight.data_ptr()) == tied
    ids, pv = prompt(TILES), pixels(sum(TILES))
    with torch.no_grad():
        diff = (hf(input_ids=ids, pixel_values=pv).logits - ours(ids, pixel_values=pv).logits).abs().max()
    assert diff.item() <= 1e-5


def test_original_to_transformers_to_original_is_bit_exact(tmp_path):
    vision, tied = VARIANTS["vit300m-untied"]
    hf = hf_model(hf_config(vision, tied))
    hf.save_pretrained(tmp_path / "hf")
    InternVL.from_pretrained(tmp_path / "hf").save_pretrained(tmp_path / "orig", layout="original")
    convert(tmp_path / "orig", tmp_path / "hf2", layout="transformers")
    convert(tmp_path / "hf2", tmp_path / "orig2", layout="original")
    first, second = load_file(tmp_path / "orig/model.safetensors"), load_file(tmp_path / "orig2/model.safetensors")
    assert list(first) == list(second)
    assert all(torch.equal(first[k], second[k]) and first[k].dtype == second[k].dtype for k in first)
    assert json.loads((tmp_path / "orig/config.json").read_text()) == json.loads(
        (tmp_path / "orig2/config.json").read_text()
    )
    # and the transformers file nativevl wrote holds exactly the tensors transformers itself wrote
    theirs, ours = load_file(tmp_path / "hf/model.safetensors"), load_file(tmp_path / "hf2/model.safetensors")
    assert sorted(theirs) == sorted(ours)
    assert all(torch.equal(theirs[k], ours[k]) for k in theirs)


@torch.no_grad()
def test_tiles_of_another_size_interpolate_position_embeddings(tmp_path):
    """224-px tiles on a 448-px model: the position table is resized bicubically, 64 tokens per tile."""
    hf = hf_model(hf_config(VISION_300M, False))
    hf.save_pretrained(tmp_path)
    ours = InternVL.from_pretrained(tmp_path).eval()
    pv = pixels(2, size=224)
    ref = hf.model.get_image_features(
        pixel_values=pv, vision_feature_layer=-1, vision_feature_select_strategy="default"
    ).pooler_output
    feat = ours.extract_feature(pv)
    assert feat.shape == (2, 64, 64)
    torch.testing.assert_close(feat, ref, rtol=0, atol=1e-5)


@torch.no_grad()
def test_select_layer_other_than_last(tmp_path):
    hf = hf_model(hf_config(VISION_300M, False, feature_layer=-2))
    hf.save_pretrained(tmp_path)
    ours = InternVL.from_pretrained(tmp_path).eval()
    assert ours.config.select_layer == -2
    ids, pv = prompt([1]), pixels(1)
    torch.testing.assert_close(ours(ids, pixel_values=pv).logits, hf(input_ids=ids, pixel_values=pv).logits,
                               rtol=0, atol=1e-5)


@torch.no_grad()
def test_dynamic_ntk_rope_past_the_trained_length(tmp_path):
    """InternVL3's rope_scaling {dynamic, factor 2}: with a 64-position limit a 300-token prompt is scaled."""
    rope = {"rope_type": "dynamic", "rope_theta": 1e4, "factor": 2.0}  # a small base makes the scaling show
    hf = hf_model(hf_config(VISION_300M, False, rope=rope, max_positions=64))
    hf.save_pretrained(tmp_path)
    ours = InternVL.from_pretrained(tmp_path).eval()
    assert ours.config.text.rope_scaling == {"type": "dynamic", "factor": 2.0}
    ids, pv = prompt([1]), pixels(1)
    ref = hf(input_ids=ids, pixel_values=pv).logits
    torch.testing.assert_close(ours(ids, pixel_values=pv).logits, ref, rtol=0, atol=1e-5)
    plain = InternVL.from_pretrained(tmp_path).eval()
    plain.config.text.rope_scaling = None
    assert (plain(ids, pixel_values=pv).logits - ref).abs().max() > 1e-4  # the scaling did something (10x atol)
    gen = hf.generate(input_ids=ids, pixel_values=pv, max_new_tokens=20, do_sample=False)[:, ids.shape[1] :]
    assert generate(ours, ids, pixel_values=pv, max_new_tokens=20).tolist() == gen.tolist()


@torch.no_grad()
def test_fractional_v2pe_positions(pair):
    """Float position ids (text +1, image tokens +1/16 each) give the same logits as transformers."""
    hf, ours = pair
    ids, pv = prompt([2]), pixels(2)
    step = torch.where(ids[0] == 5, 1 / 16, 1.0)
    positions = (torch.cumsum(step, 0) - 1)[None]
    mask = torch.ones_like(ids)  # transformers needs an explicit mask, or it reads the steps as packed samples
    ref = hf(input_ids=ids, pixel_values=pv, attention_mask=mask, position_ids=positions).logits
    out = ours(ids, pixel_values=pv, position_ids=positions).logits
    assert (out - ref).abs().max().item() <= 1e-5
    integer = ours(ids, pixel_values=pv).logits
    assert (out - integer).abs().max().item() > 1e-4


@torch.no_grad()
def test_projector_on_low_variance_features(pair):
    """mlp1's LayerNorm eps (1e-5, unlike the ViT's 1e-6) only shows when the features are nearly constant."""
    hf, ours = pair
    x = 1 + 1e-3 * torch.randn(2, 256, 256, generator=torch.Generator().manual_seed(7))
    torch.testing.assert_close(ours.mlp1(x), hf.model.multi_modal_projector(x), rtol=0, atol=1e-5)
