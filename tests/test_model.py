"""The model's own behaviour, checked against hand-computed cases from the spec."""

from __future__ import annotations

import pytest
import torch
from reference import IMG_CONTEXT, pixels, prompt

from nativevl import InternVL, pixel_shuffle, preset
from nativevl.infer.generate import generate


@pytest.fixture(scope="module")
def model() -> InternVL:
    torch.manual_seed(0)
    return InternVL.from_config(preset("tiny")).eval()


def test_pixel_shuffle_v2_matches_the_spec_formula():
    """Spec §1.3: output token (i, j) = [x(2i,2j), x(2i,2j+1), x(2i+1,2j), x(2i+1,2j+1)], C channels each."""
    x = torch.randn(2, 4, 4, 3)
    out = pixel_shuffle(x, 0.5, "v2")
    assert out.shape == (2, 2, 2, 12)
    for i in range(2):
        for j in range(2):
            expected = torch.cat([x[:, 2 * i, 2 * j], x[:, 2 * i, 2 * j + 1], x[:, 2 * i + 1, 2 * j],
                                  x[:, 2 * i + 1, 2 * j + 1]], dim=-1)
            assert torch.equal(out[:, i, j], expected)


def test_pixel_shuffle_v1_is_the_transposed_grid():
    x = torch.randn(1, 6, 6, 2)
    assert torch.equal(pixel_shuffle(x, 0.5, "v1"), pixel_shuffle(x, 0.5, "v2").transpose(1, 2))
    with pytest.raises(ValueError, match="divisible"):
        pixel_shuffle(torch.randn(1, 9, 9, 2))


def test_drop_path_rises_linearly_and_drops_whole_samples():
    cfg = preset("tiny").replace(**{"vision.drop_path_rate": 0.3, "vision.num_hidden_layers": 4})
    layers = InternVL.from_config(cfg).vision_model.encoder.layers
    assert [round(layer.drop_path1.rate, 6) for layer in layers] == [0.0, 0.1, 0.2, 0.3]
    drop = layers[-1].drop_path1.train()
    torch.manual_seed(0)
    out = drop(torch.ones(400, 5, 7))
    kept = out.flatten(1).amax(1) > 0
    torch.testing.assert_close(out[kept], torch.full_like(out[kept], 1 / 0.7))  # whole samples, rescaled
    assert torch.all(out[~kept] == 0) and 0.2 < (~kept).float().mean() < 0.4
    assert torch.equal(drop.eval()(torch.ones(3, 2)), torch.ones(3, 2))


def test_image_count_mismatch_is_a_clear_error(model):
    ids = prompt([2])
    with pytest.raises(ValueError, match=r"512 <IMG_CONTEXT> tokens .* 3 image tiles give 768 features"):
        model(ids, pixel_values=pixels(3))
    with pytest.raises(ValueError, match="no pixel_values"):
        model(ids)


@torch.no_grad()
def test_image_flags_drop_dummy_tiles(model):
    ids = prompt([1])
    real = pixels(1)
    with_dummy = torch.cat([torch.zeros(1, 3, 448, 448), real])
    out = model(ids, pixel_values=with_dummy, image_flags=torch.tensor([0, 1])).logits
    assert torch.equal(out, model(ids, pixel_values=real).logits)


def test_text_only_sample_with_a_dummy_tile_keeps_the_vit_in_the_graph():
    torch.manual_seed(0)
    m = InternVL.from_config(preset("tiny"))
    ids = torch.randint(20, 1000, (1, 12))
    out = m(ids, pixel_values=torch.ones(1, 3, 448, 448), image_flags=torch.tensor([0]), labels=ids)
    out.loss.backward()
    grad = m.vision_model.encoder.layers[0].attn.qkv.weight.grad
    assert grad is not None and torch.all(grad == 0)  # in the graph (no unused-parameter error), no signal


def test_loss_is_mean_cross_entropy_over_learned_tokens(model):
    ids = prompt([1])
    labels = ids.clone()
    labels[:, :262] = -100  # learn only the last few text tokens
    out = model(ids, pixel_values=pixels(1), labels=labels)
    logits = out.logits[0, :-1]
    target = labels[0, 1:]
    keep = target != -100
    manual = -torch.log_softmax(logits[keep].double(), -1).gather(1, target[keep, None]).mean()
    assert abs(out.loss.item() - manual.item()) < 1e-5


@torch.no_grad()
@pytest.mark.parametrize("fractional", [False, True])
def test_kv_cache_decoding_equals_full_forward(model, fractional):
    ids, pv = prompt([2]), pixels(2)
    step = torch.where(ids[0] == IMG_CONTEXT, 0.25 if fractional else 1.0, 1.0)
    positions = (torch.cumsum(step, 0) - 1)[None]
    new = generate(model, ids, pixel_values=pv, position_ids=positions, max_new_tokens=8)
    full_ids = torch.cat([ids, new], dim=1)
    full_pos = torch.cat([positions, positions[:, -1:] + torch.arange(1, 9)], dim=1)
    logits = model(full_ids, pixel_values=pv, position_ids=full_pos).logits
    # every generated token is the argmax of the uncached forward at the position before it
    assert torch.equal(logits[0, ids.shape[1] - 1 : -1].argmax(-1), new[0])
    cache = model.new_cache(1, full_ids.shape[1])
    model(ids, pixel_values=pv, position_ids=positions, cache=cache)
    step_logits = model(new[:, :1], position_ids=full_pos[:, ids.shape[1] : ids.shape[1] + 1], cache=cache).logits
    assert (step_logits[0, -1] - logits[0, ids.shape[1]]).abs().max() < 1e-5


def test_cache_overflow_and_bad_select_layer(model):
    cache = model.new_cache(1, 4)
    with pytest.raises(ValueError, match="KV cache is full"):
        model(torch.randint(20, 1000, (1, 5)), cache=cache)
    broken = InternVL.from_config(preset("tiny").replace(select_layer=-4))
    with pytest.raises(ValueError, match="select_layer -4"):
        broken.extract_feature(pixels(1))


def test_bf16_forward_is_close_to_fp32(model):
    ids, pv = prompt([1]), pixels(1)
    with torch.no_grad():
        ref = model(ids, pixel_values=pv).logits
        low = InternVL.from_config(preset("tiny"))
        low.load_state_dict(model.state_dict())
        out = low.to(torch.bfloat16).eval()(ids, pixel_values=pv).logits
    assert out.dtype == torch.bfloat16
    assert (out.float() - ref).abs().max() < 0.1 * ref.abs().max()


def test_drop_path_rate_one_drops_everything_without_nan():
    from nativevl.model.layers import DropPath

    out = DropPath(1.0).train()(torch.ones(4, 3))
    assert torch.equal(out, torch.zeros(4, 3))
