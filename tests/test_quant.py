"""Weight-only int8/int4 quantization (model/quant.py, kernels/quant.py): the format against hand-computed
cases, the kernel against the dequantized weight times x on 8 bits (the rule written out here), a quantized model's logits against its float
model's, and quantized checkpoints through both layouts."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from nativevl import InternVL, preset
from nativevl.kernels import quant as kernel
from nativevl.model.quant import (
    QuantConfig,
    QuantLinear,
    pack_int4,
    quantize,
    quantize_once,
    quantize_weight,
    unpack_int4,
)
from nativevl.weights import CheckpointError
from nativevl.weights.quantized import pack_awq_int32, unpack_awq_int32


def eight_bit(x: torch.Tensor, block: int) -> torch.Tensor:
    """x as the kernel multiplies it (kernels/quant.py): per block of `block` k values, round(x * 127 / max|x|)
    times max|x| / 127, in float32; a last, shorter block on its own values."""
    k = x.shape[-1]
    xp = nn.functional.pad(x.float(), (0, -k % block)).view(*x.shape[:-1], -1, block)
    top = xp.abs().amax(-1, keepdim=True)
    inv = torch.where(top > 0, 127.0 / top, torch.zeros_like(top))
    return (torch.round(xp * inv) * (top / 127.0)).flatten(-2)[..., :k]


def on_the_kernel(q: QuantLinear, dtype: torch.dtype = torch.float32) -> bool:
    return kernel.available(dtype) and kernel.supports(q)


def expected(q: QuantLinear, x: torch.Tensor) -> torch.Tensor:
    """What q(x) must be in float32: the dequantized weight times x, on 8 bits where the kernel runs."""
    xin = eight_bit(x, kernel.block_of(q)) if on_the_kernel(q, x.dtype) else x.float()
    return nn.functional.linear(xin, q.dequantize(torch.float32), None if q.bias is None else q.bias.float())


def test_symmetric_int8_by_hand():
    w = torch.tensor([[1.0, -2.0, 0.5, 4.0], [0.0, 0.0, 0.0, 0.0]])
    codes, scales, zeros = quantize_weight(w, bits=8, group=4, symmetric=True)
    s = 4.0 / 127
    assert torch.allclose(scales[0], torch.tensor([s]))
    assert scales[1].item() == 1.0  # an all-zero row keeps a usable scale
    assert zeros.tolist() == [[128], [128]]
    expected = [round(1 / s) + 128, round(-2 / s) + 128, round(0.5 / s) + 128, 127 + 128]
    assert codes[0].tolist() == expected and codes[1].tolist() == [128] * 4


def test_asymmetric_int4_is_autoawqs_rule():
    # AutoAWQ's pseudo_quantize_tensor: s = (max - min) / 15 (min clamp 1e-5), z = clamp(-round(min / s), 0, 15),
    # q = clamp(round(w / s) + z, 0, 15); per group of the row's k values
    w = torch.tensor([[-1.0, 0.0, 0.5, 2.0, 3.0, 3.0, 3.0, 3.0]])
    codes, scales, zeros = quantize_weight(w, bits=4, group=4, symmetric=False)
    s0, s1 = 3.0 / 15, 1e-5 / 15
    assert torch.allclose(scales, torch.tensor([[s0, s1]]))
    z0 = round(1.0 / s0)
    assert zeros.tolist() == [[z0, 0]]
    assert codes[0, :4].tolist() == [min(15, max(0, round(v / s0) + z0)) for v in (-1.0, 0.0, 0.5, 2.0)]
    assert codes[0, 4:].tolist() == [15] * 4  # 3 / s1 is far past the top code: clamped, as AutoAWQ clamps


def test_int4_nibble_order():
    codes = torch.tensor([[1, 2, 3, 4], [15, 0, 0, 15]], dtype=torch.uint8)
    packed = pack_int4(codes)
    assert packed.tolist() == [[0x21, 0x43], [0x0F, 0xF0]]  # input 2j low, 2j+1 high
    assert torch.equal(unpack_int4(packed), codes)


@pytest.mark.parametrize("config", [QuantConfig.named("int8"), QuantConfig.named("int4"),
                                    QuantConfig(bits=4, group_size=32, symmetric=True),
                                    QuantConfig(bits=8, group_size=64, symmetric=False)])
def test_dequantized_weight_is_within_half_a_step(config):
    torch.manual_seed(0)
    layer = nn.Linear(256, 40, bias=True)
    q = QuantLinear.from_linear(layer, config)
    group = config.group_size or 256
    step = q.scales.float().repeat_interleave(group, dim=1)
    err = (q.dequantize(torch.float32) - layer.weight).abs()
    assert (err <= step / 2 + 1e-6).all()
    assert err.max() > 0
    x = torch.randn(3, 256)
    assert torch.allclose(q(x), expected(q, x), atol=1e-5)


def test_the_kernel_is_there_exactly_where_the_cpu_runs_it():
    # read independently from /proc/cpuinfo: a kernel that fails to build on an AVX2 CPU fails here
    from test_gemv import cpu_level

    assert kernel.available(torch.float32) == kernel.available(torch.bfloat16) == (cpu_level() > 0)


@pytest.mark.parametrize("bits,group,symmetric,k", [(8, 0, True, 256), (8, 0, True, 200), (8, 32, False, 256),
                                                    (4, 128, False, 256), (4, 16, True, 256), (4, 0, False, 200),
                                                    (8, 4, True, 256)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_kernel_equals_the_dequantized_product(bits, group, symmetric, k, dtype):
    torch.manual_seed(1)
    n = 53  # outputs not a whole number of tiles; k=200 not a whole number of x's blocks
    layer = nn.Linear(k, n, bias=True)
    q = QuantLinear.from_linear(layer, QuantConfig(bits=bits, group_size=group, symmetric=symmetric))
    assert kernel.block_of(q) == {256: 32, 128: 32, 32: 32, 200: 32, 16: 16, 4: 4}[group or k]
    if not kernel.available(dtype):  # no AVX2 (checked above): QuantLinear dequantizes, tested below
        with pytest.raises((AttributeError, RuntimeError)):
            kernel.product(torch.ones(1, k, dtype=dtype), kernel.pack(q), n, bits)
        return
    packed = kernel.pack(q)
    for rows in (1, 2, 3, 37):
        x = torch.randn(rows, k).to(dtype)
        got = kernel.product(x, packed, n, bits)
        want = expected(q, x)
        assert got.dtype == dtype and got.shape == (rows, n)
        tol = 1e-5 if dtype == torch.float32 else 1e-2
        assert torch.allclose(got.float(), want, atol=tol, rtol=tol), (got.float() - want).abs().max()
        # and 8-bit x costs little against the float product
        exact = nn.functional.linear(x.float(), q.dequantize(torch.float32), q.bias.float())
        assert (got.float() - exact).norm() / exact.norm() < 0.02


def test_a_cast_after_the_first_product_is_packed_again():
    torch.manual_seed(3)
    q = QuantLinear.from_linear(nn.Linear(64, 30), QuantConfig.named("int4"))
    x = torch.randn(2, 64)
    q(x)
    q.to(torch.bfloat16)  # the scales, and the kernel's float32 copy of them, become bf16
    assert torch.allclose(q(x.bfloat16()).float(), expected(q, x.bfloat16()), atol=2e-2, rtol=2e-2)


def test_groups_narrower_than_the_kernels_steps_are_dequantized():
    torch.manual_seed(2)
    q = QuantLinear.from_linear(nn.Linear(64, 30), QuantConfig(bits=4, group_size=4, symmetric=True))
    assert not kernel.supports(q)  # int4 steps are 8 k values
    x = torch.randn(3, 64)
    assert torch.allclose(q(x), nn.functional.linear(x, q.dequantize(torch.float32), q.bias), atol=1e-5)


def _tiny(seed: int = 0) -> InternVL:
    torch.manual_seed(seed)
    return InternVL.from_config(preset("tiny")).eval()


@pytest.mark.parametrize("head", [8, 0])
def test_quantize_converts_the_language_model_only(head):
    model = quantize(_tiny(), QuantConfig(bits=4, group_size=32, head=head))
    kinds = {name: m for name, m in model.named_modules() if isinstance(m, (nn.Linear, QuantLinear))}
    assert all(type(m) is QuantLinear and m.bits == 4 for n, m in kinds.items() if n.startswith("language_model.model."))
    lm_head = kinds["language_model.lm_head"]
    assert (type(lm_head), getattr(lm_head, "bits", None)) == ((QuantLinear, 8) if head else (nn.Linear, None))
    if head:  # per channel, symmetric, whatever the layers' groups
        assert lm_head.group == lm_head.in_features and (lm_head.qzeros == 128).all()
    assert all(type(m) is nn.Linear for n, m in kinds.items() if n.startswith(("vision_model", "mlp1")))
    assert type(model.language_model.model.embed_tokens) is nn.Embedding
    with pytest.raises(ValueError, match="quantized already"):
        quantize(model, "int8")


def test_a_tied_head_is_untied_when_it_is_put_on_codes(tmp_path):
    torch.manual_seed(0)
    cfg = preset("tiny")
    cfg.text.tie_word_embeddings = True
    model = InternVL.from_config(cfg).eval()
    embedding = model.language_model.model.embed_tokens.weight.detach().clone()
    quantize(model, "int4")
    assert model.config.text.tie_word_embeddings is False
    assert torch.equal(model.language_model.model.embed_tokens.weight, embedding)  # the embedding stays float
    ids = torch.randint(0, cfg.text.vocab_size, (1, 7))
    model.save_pretrained(tmp_path / "q")
    back = InternVL.from_pretrained(tmp_path / "q")
    assert isinstance(back.language_model.lm_head, QuantLinear)
    with torch.no_grad():
        assert torch.equal(back(ids).logits, model(ids).logits)


@pytest.mark.parametrize("name,bound", [("int8", 0.02), ("int4", 0.25)])
def test_quantized_logits_stay_near_the_float_models(name, bound):
    model = _tiny()
    ids = torch.randint(0, model.config.text.vocab_size, (1, 24))
    with torch.no_grad():
        ref = model(ids).logits
        got = quantize(model, name)(ids).logits
    rel = (got - ref).norm() / ref.norm()
    assert 0 < rel < bound, rel


@pytest.mark.parametrize("layout", ["original", "transformers"])
@pytest.mark.parametrize("name", ["int8", "int4"])
def test_quantized_checkpoint_round_trip(tmp_path, layout, name):
    model = quantize(_tiny(), name)
    model.save_pretrained(tmp_path, layout=layout)
    config = json.loads((tmp_path / "config.json").read_text())["quantization_config"]
    assert config["quant_method"] == "nativevl" and config["bits"] == model.quantization.bits
    back = InternVL.from_pretrained(tmp_path)
    assert back.quantization == model.quantization
    ids = torch.randint(0, model.config.text.vocab_size, (1, 12))
    with torch.no_grad():
        assert torch.equal(back(ids).logits, model(ids).logits)


def _autoawq_pack(intweight: torch.Tensor) -> torch.Tensor:
    """AutoAWQ's WQLinear_GEMM packing, as its source documents it: intweight (in, out) codes; packed column c
    holds, at bits 4*i .. 4*i+3, the code of output column 8c + order_map[i], order_map = [0, 2, 4, 6, 1, 3, 5, 7]."""
    order_map = [0, 2, 4, 6, 1, 3, 5, 7]
    rows, cols = intweight.shape
    packed = np.zeros((rows, cols // 8), dtype=np.uint32)
    w = intweight.numpy().astype(np.uint32)
    for col in range(cols // 8):
        for i in range(8):
            packed[:, col] |= w[:, col * 8 + order_map[i]] << (i * 4)
    return torch.from_numpy(packed.view(np.int32))


def _awq_folder(tmp_path, where: str = "top") -> tuple[InternVL, Path]:
    """A tiny float model saved as an AWQ folder would hold it: every decoder linear layer as AutoAWQ's GEMM
    tensors from codes quantized here by AutoAWQ's own rule (group 32, zero point)."""
    model = _tiny(3)
    model.save_pretrained(tmp_path)
    state = load_file(tmp_path / "model.safetensors")
    group = 32
    for name, layer in list(model.named_modules()):
        if isinstance(layer, nn.Linear) and name.startswith("language_model.model."):
            codes, scales, zeros = quantize_weight(layer.weight, 4, group, symmetric=False)
            del state[name + ".weight"]
            state[name + ".qweight"] = _autoawq_pack(codes.t().contiguous())
            state[name + ".qzeros"] = _autoawq_pack(zeros.t().contiguous())
            state[name + ".scales"] = scales.t().contiguous().half()
    save_file(state, tmp_path / "model.safetensors")
    config = json.loads((tmp_path / "config.json").read_text())
    awq = {"quant_method": "awq", "bits": 4, "group_size": group, "zero_point": True, "version": "gemm",
           "modules_to_not_convert": ["vision_model", "mlp1"]}
    if where == "top":
        config["quantization_config"] = awq
    else:
        config["llm_config"]["quantization_config"] = awq
    (tmp_path / "config.json").write_text(json.dumps(config))
    return model, tmp_path


@pytest.mark.parametrize("where", ["top", "llm_config"])
def test_awq_folder_loads_as_its_codes(tmp_path, where):
    model, folder = _awq_folder(tmp_path, where)
    loaded = InternVL.from_pretrained(folder)
    layer = loaded.language_model.model.layers[0].mlp.down_proj
    assert isinstance(layer, QuantLinear) and layer.bits == 4 and layer.group == 32
    # the loaded weights are AutoAWQ's dequantization, (q - z) * s with s in float16
    ref = model.language_model.model.layers[0].mlp.down_proj.weight
    codes, scales, zeros = quantize_weight(ref, 4, 32, symmetric=False)
    want = ((codes.float().view(ref.shape[0], -1, 32) - zeros.float()[..., None])
            * scales.half().float()[..., None]).reshape(ref.shape)
    assert torch.equal(layer.dequantize(torch.float32), want)
    ids = torch.randint(0, model.config.text.vocab_size, (1, 10))
    with torch.no_grad():
        rel = (loaded(ids).logits - model(ids).logits).norm() / model(ids).logits.norm()
    assert rel < 0.25


def test_awq_packing_round_trips_against_autoawqs():
    codes = torch.randint(0, 16, (6, 32), dtype=torch.uint8)
    packed = _autoawq_pack(codes)
    assert torch.equal(unpack_awq_int32(packed), codes)
    assert torch.equal(pack_awq_int32(codes), packed)


@pytest.mark.parametrize("change,field", [
    ({"bits": 3}, "bits"), ({"quant_method": "gptq"}, "quant_method"), ({"version": "gemv"}, "version"),
    ({"group_size": 0}, "group_size")])
def test_quantization_configs_nativevl_cannot_read_are_refused(tmp_path, change, field):
    _, folder = _awq_folder(tmp_path)
    config = json.loads((folder / "config.json").read_text())
    config["quantization_config"].update(change)
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=f"config.json: quantization_config.{field}"):
        InternVL.from_pretrained(folder)


def test_awq_group_that_does_not_fit_the_shapes_is_refused(tmp_path):
    _, folder = _awq_folder(tmp_path)
    config = json.loads((folder / "config.json").read_text())
    config["quantization_config"]["group_size"] = 16  # the files hold groups of 32
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="shape mismatch language_model.model.layers.0.*qzeros"):
        InternVL.from_pretrained(folder)


def test_a_quantized_checkpoint_is_not_quantized_twice(tmp_path):
    quantize(_tiny(), "int4").save_pretrained(tmp_path)
    model = InternVL.from_pretrained(tmp_path)
    assert quantize_once(model, "int4") is model
    with pytest.raises(ValueError, match="quantized to 4 bits already"):
        quantize_once(model, "int8")


def test_decoding_on_codes_equals_decoding_on_their_dequantized_weights():
    # prompt and decode steps on the kernel (where the CPU runs it) give what a float model holding the
    # dequantized weights gives, its layers' inputs put on 8 bits by the rule above
    from nativevl.infer.generate import generate

    quantized = quantize(_tiny(5), "int4")
    plain = _tiny(5)
    with torch.no_grad():
        for name, layer in quantized.named_modules():
            if isinstance(layer, QuantLinear):
                target = plain.get_submodule(name)
                target.weight.copy_(layer.dequantize(torch.float32))
                if on_the_kernel(layer):
                    target.register_forward_pre_hook(lambda m, a, b=kernel.block_of(layer): (eight_bit(a[0], b),))
    ids = torch.randint(0, plain.config.text.vocab_size, (2, 9))
    assert torch.equal(generate(quantized, ids, max_new_tokens=12), generate(plain, ids, max_new_tokens=12))


def test_pipeline_and_cli_quantize_on_load(tmp_path):
    from reference import tiny_checkpoint

    from nativevl import Pipeline
    from nativevl.cli import main

    folder = tiny_checkpoint(tmp_path / "ckpt")
    pipe = Pipeline(folder, quantize="int8", prepack=True)
    assert pipe.model.quantization == QuantConfig.named("int8")
    assert isinstance(pipe.model.language_model.model.layers[0].self_attn.q_proj, QuantLinear)
    assert pipe("Hello", max_new_tokens=4) == Pipeline(folder, quantize="int8")("Hello", max_new_tokens=4)
    with pytest.raises(SystemExit):
        main(["chat", str(folder), "Hi", "--quantize", "int3"])


def test_prepack_fuses_quantized_qkv_and_gate_up_into_one_product_each():
    from nativevl.infer.chat import speed_up
    from nativevl.infer.generate import generate
    from nativevl.model.quant import QuantGroup

    plain = quantize(_tiny(7), QuantConfig(bits=4, group_size=32))
    packed = speed_up(quantize(_tiny(7), QuantConfig(bits=4, group_size=32)), prepack=True)
    groups = [m.packed for m in packed.language_model.modules() if isinstance(getattr(m, "packed", None), QuantGroup)]
    layers = len(packed.language_model.model.layers)
    assert len(groups) == (2 * layers if kernel.available(torch.float32) else 0)  # attention's q/k/v, MLP's gate/up
    ids = torch.randint(0, plain.config.text.vocab_size, (2, 9))
    with torch.no_grad():
        assert torch.allclose(packed(ids).logits, plain(ids).logits, atol=1e-5)
    assert torch.equal(generate(packed, ids, max_new_tokens=8), generate(plain, ids, max_new_tokens=8))
    assert set(packed.state_dict()) == set(plain.state_dict())  # the fused copy is not saved
