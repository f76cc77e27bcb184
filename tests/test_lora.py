"""LoRA adapters against PEFT on transformers' InternVL (the reference): our adapter files load with
`PeftModel.from_pretrained` and give our logits; adapters PEFT wrote load into nativevl; merging equals the
adapter; QLoRA trains through a packed base; bad adapters fail naming the file."""

from __future__ import annotations

import json

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from reference import VISION_300M, hf_config, hf_model, pixels, prompt

from nativevl import InternVL
from nativevl.model.quant import QuantLinear, quantize
from nativevl.weights import checkpoint_hash, save_model
from nativevl.weights.lora import (
    ADAPTER_CONFIG,
    ADAPTER_WEIGHTS,
    AdapterError,
    adapters_disabled,
    add_lora,
    load_adapter,
    lora_layers,
    merge_lora,
    save_adapter,
)

SIZE, TOKENS = 224, 64  # a 224-pixel tile is 64 image tokens: a quicker test than 448's 256
TILES = [2, 1]


def _randomise_adapters(model: torch.nn.Module, seed: int) -> None:
    """PEFT starts lora_B at zero (the adapter adds nothing): random A and B so that every part shows."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, layer in lora_layers(model):
            for name in layer.lora_A:
                for w in (layer.lora_A[name].weight, layer.lora_B[name].weight):
                    w.copy_(torch.randn(w.shape, generator=g) * 0.2)


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """(transformers model, its folder, nativevl's copy of it)."""
    hf = hf_model(hf_config(VISION_300M, False, image_size=SIZE))
    folder = tmp_path_factory.mktemp("base")
    hf.save_pretrained(folder)
    return hf, folder


def _ours(folder) -> InternVL:
    return InternVL.from_pretrained(folder).eval()


def _inputs():
    return prompt(TILES, tokens_per_tile=TOKENS), pixels(sum(TILES), size=SIZE)


@torch.no_grad()
def test_peft_loads_our_adapter_onto_transformers_with_our_logits(base, tmp_path):
    hf, folder = base
    ours = _ours(folder)
    wrapped = add_lora(ours, llm_rank=4, vit_rank=2)
    assert "vision_model.encoder.layers.0.attn.qkv" in wrapped and \
        "language_model.model.layers.1.mlp.down_proj" in wrapped and len(wrapped) == 2 * 4 + 2 * 7
    _randomise_adapters(ours, 0)
    ours.language_model.lm_head.weight.mul_(1.5)  # trained in full beside the adapter (unfreeze_lm_head)
    ours.mlp1[1].bias.add_(0.3)  # the projector too
    trained = {"language_model.lm_head.weight": ours.language_model.lm_head.weight,
               "mlp1.1.weight": ours.mlp1[1].weight, "mlp1.1.bias": ours.mlp1[1].bias}
    save_adapter(ours, tmp_path, trained=trained, base=str(folder), sha256=checkpoint_hash(folder))
    config = json.loads((tmp_path / ADAPTER_CONFIG).read_text())
    assert config["r"] == 4 and config["lora_alpha"] == 8 and config["lora_dropout"] == 0.05
    assert list(config["rank_pattern"].values()) == [2] and list(config["alpha_pattern"].values()) == [4]

    ids, pv = _inputs()
    mine = ours(ids, pixel_values=pv).logits
    reference = PeftModel.from_pretrained(hf_model(hf_config(VISION_300M, False, image_size=SIZE)), tmp_path).eval()
    theirs = reference(input_ids=ids, pixel_values=pv).logits
    assert (mine - theirs).abs().max().item() <= 1e-5
    base_logits = hf(input_ids=ids, pixel_values=pv).logits
    assert (mine - base_logits).abs().max().item() > 1e-2  # the adapter changes the answer

    # Back into a fresh nativevl model: the same logits (q/k/v with one shared A fuse at rank 2 again).
    again = load_adapter(_ours(folder), tmp_path, base_sha256=checkpoint_hash(folder))
    qkv = again.vision_model.encoder.layers[0].attn.qkv
    assert qkv.lora_A["default"].weight.shape[0] == 2
    assert (again(ids, pixel_values=pv).logits - mine).abs().max().item() <= 1e-5


@torch.no_grad()
def test_an_adapter_peft_wrote_loads_into_nativevl(base, tmp_path):
    hf, folder = base
    targets = r".*language_model.*\.(q_proj|v_proj|down_proj)|.*vision_tower.*\.(q_proj|k_proj|v_proj|fc2)"
    theirs = get_peft_model(hf_model(hf_config(VISION_300M, False, image_size=SIZE)),
                            LoraConfig(r=3, lora_alpha=5, target_modules=targets))
    _randomise_adapters(theirs, 1)  # independent A for q, k and v: they fuse block-diagonally at rank 9
    theirs.save_pretrained(tmp_path)
    ours = load_adapter(_ours(folder), tmp_path)
    assert ours.vision_model.encoder.layers[1].attn.qkv.lora_A["default"].weight.shape[0] == 9
    ids, pv = _inputs()
    want = theirs.eval()(input_ids=ids, pixel_values=pv).logits
    assert (ours(ids, pixel_values=pv).logits - want).abs().max().item() <= 1e-5


@torch.no_grad()
def test_merge_equals_the_adapter_and_disabling_gives_the_base(base, tmp_path):
    _, folder = base
    ours = _ours(folder)
    ids, pv = _inputs()
    plain = ours(ids, pixel_values=pv).logits
    add_lora(ours, llm_rank=4, vit_rank=4)
    _randomise_adapters(ours, 2)
    adapted = ours(ids, pixel_values=pv).logits
    with adapters_disabled(ours):
        assert (ours(ids, pixel_values=pv).logits - plain).abs().max().item() <= 1e-6
    merged = merge_lora(ours)
    assert not list(lora_layers(merged)) and "base_layer" not in "".join(merged.state_dict())
    assert (merged(ids, pixel_values=pv).logits - adapted).abs().max().item() <= 1e-4
    for layout in ("original", "transformers"):
        save_model(merged, tmp_path / layout, layout=layout)
        reread = _ours(tmp_path / layout)(ids, pixel_values=pv).logits
        assert (reread - adapted).abs().max().item() <= 1e-4


def test_qlora_trains_the_adapter_through_a_packed_base(base):
    _, folder = base
    ours = _ours(folder)
    quantize(ours, "int4")
    layer = ours.language_model.model.layers[0].self_attn.q_proj
    assert isinstance(layer, QuantLinear)
    codes = layer.qweight.clone()
    add_lora(ours, llm_rank=4, vit_rank=0)
    _randomise_adapters(ours, 3)
    ids, pv = _inputs()
    labels = ids.clone()
    loss = ours(ids, pixel_values=pv, labels=labels).loss
    loss.backward()
    trainable = {n for n, p in ours.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable if n.startswith("language_model."))
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for n, p in ours.named_parameters()
               if p.requires_grad and n.startswith("language_model."))
    assert torch.equal(ours.language_model.model.layers[0].self_attn.q_proj.base_layer.qweight, codes)
    # The input gradient through the frozen int4 product is that of its dequantized weight.
    x = torch.randn(5, layer.in_features, requires_grad=True)
    layer(x).sum().backward()
    w = layer.dequantize(torch.float32)
    torch.testing.assert_close(x.grad, torch.ones(5, layer.out_features) @ w)
    # Merging dequantizes into a float Linear whose product is the adapter's (x needs a gradient here so that
    # both take the dequantizing path, not the kernel's 8-bit x).
    wrapped = ours.language_model.model.layers[1].mlp.down_proj
    x = torch.randn(3, wrapped.in_features, requires_grad=True)
    want = wrapped(x)
    merged = merge_lora(ours).language_model.model.layers[1].mlp.down_proj
    assert type(merged) is torch.nn.Linear
    torch.testing.assert_close(merged(x), want, rtol=0, atol=1e-5)


def test_bad_adapters_fail_naming_the_file(base, tmp_path):
    _, folder = base
    ours = _ours(folder)
    add_lora(ours, llm_rank=2, vit_rank=0)
    save_adapter(ours, tmp_path / "good", sha256="0" * 64)
    with pytest.raises(AdapterError, match="base_sha256 is that of another base"):
        load_adapter(_ours(folder), tmp_path / "good", base_sha256=checkpoint_hash(folder))

    wide = InternVL.from_config(_ours(folder).config.replace(**{"text.intermediate_size": 96}))
    add_lora(wide, llm_rank=2, vit_rank=0)
    save_adapter(wide, tmp_path / "other")
    with pytest.raises(AdapterError, match=rf"{ADAPTER_WEIGHTS}.*down_proj.*another base"):
        load_adapter(_ours(folder), tmp_path / "other")

    deep = InternVL.from_config(_ours(folder).config.replace(**{"text.num_hidden_layers": 3}))
    add_lora(deep, llm_rank=2, vit_rank=0)
    save_adapter(deep, tmp_path / "deep")
    with pytest.raises(AdapterError, match=r"layers\.2\..*which this model does not have"):
        load_adapter(_ours(folder), tmp_path / "deep")

    (tmp_path / "ia3").mkdir()
    (tmp_path / "ia3" / ADAPTER_CONFIG).write_text(json.dumps({"peft_type": "IA3"}))
    with pytest.raises(AdapterError, match=rf"ia3.{ADAPTER_CONFIG}: peft_type is 'IA3'"):
        load_adapter(_ours(folder), tmp_path / "ia3")
    with pytest.raises(AdapterError, match="not a PEFT adapter folder"):
        load_adapter(_ours(folder), folder)
    with pytest.raises(ValueError, match=r"target_modules \['nothing'\]"):
        add_lora(_ours(folder), llm_rank=2, vit_rank=0, llm_target_modules=["nothing"])
