"""Generation settings against transformers' logits processors and its generate, on tiny random models."""

from __future__ import annotations

import pytest
import torch
from reference import VISION_300M, hf_config, hf_model, pixels, prompt
from transformers import (
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from nativevl import InternVL
from nativevl.infer.generate import GenerationConfig, generate, process_logits

KERNEL = "nativevl_cpu::gemv"  # the few-row kernel (nativevl/kernels/gemv.py) as the profiler names it
ATTENTION = "nativevl_cpu::attention"  # its bf16 attention for prompts


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    hf = hf_model(hf_config(VISION_300M, False))
    folder = tmp_path_factory.mktemp("gen")
    hf.save_pretrained(folder)
    return hf, InternVL.from_pretrained(folder).eval()


def test_processors_equal_transformers():
    torch.manual_seed(0)
    scores = torch.randn(3, 50) * 3
    generated = torch.randint(0, 50, (3, 7))
    cfg = GenerationConfig(do_sample=True, temperature=0.7, top_k=20, top_p=0.8, repetition_penalty=1.3)
    ref = RepetitionPenaltyLogitsProcessor(1.3)(generated, scores.clone())
    for warper in (TemperatureLogitsWarper(0.7), TopKLogitsWarper(20), TopPLogitsWarper(0.8)):
        ref = warper(generated, ref)
    ours = process_logits(scores, generated, step=5, cfg=cfg)
    assert torch.equal(torch.isinf(ours), torch.isinf(ref))
    torch.testing.assert_close(ours[~torch.isinf(ours)], ref[~torch.isinf(ref)])


def test_repetition_penalty_hand_computed():
    scores = torch.tensor([[2.0, -2.0, 1.0, 0.5]])
    out = process_logits(scores, torch.tensor([[0, 1, 1]]), 0, GenerationConfig(repetition_penalty=2.0))
    assert out.tolist() == [[1.0, -4.0, 1.0, 0.5]]  # positive divided, negative multiplied, once per token
    eos = process_logits(scores, torch.empty(1, 0, dtype=torch.long), 0,
                         GenerationConfig(min_new_tokens=1, eos_token_id=[0]))
    assert eos[0, 0] == float("-inf")


def test_sampling_equals_transformers_with_the_same_seed(pair):
    hf, ours = pair
    ids, pv = prompt([1]), pixels(1)
    settings = dict(do_sample=True, temperature=0.8, top_k=40, top_p=0.9, max_new_tokens=15)
    torch.manual_seed(123)
    with torch.no_grad():
        ref = hf.generate(input_ids=ids, pixel_values=pv, **settings)[:, ids.shape[1]:]
    torch.manual_seed(123)
    assert generate(ours, ids, pixel_values=pv, **settings).tolist() == ref.tolist()
    first = generate(ours, ids, pixel_values=pv, seed=7, **settings)
    assert torch.equal(first, generate(ours, ids, pixel_values=pv, seed=7, **settings))


def test_bfloat16_greedy_equals_transformers(pair, tmp_path):
    hf, ours = pair
    ours.save_pretrained(tmp_path)
    low = InternVL.from_pretrained(tmp_path, dtype=torch.bfloat16).eval()
    hf_low = hf.to(torch.bfloat16)
    try:
        ids, pv = prompt([2]), pixels(2).to(torch.bfloat16)
        with torch.no_grad():
            ref = hf_low.generate(input_ids=ids, pixel_values=pv, max_new_tokens=10, do_sample=False)
        assert generate(low, ids, pixel_values=pv, max_new_tokens=10).tolist() == ref[:, ids.shape[1]:].tolist()
    finally:
        hf.to(torch.float32)


def test_eos_stops_rows_independently(pair):
    _, ours = pair
    ids, pv = prompt([1]), pixels(1)
    free = generate(ours, ids, pixel_values=pv, max_new_tokens=12)[0].tolist()
    eos = free[3]
    stopped = generate(ours, ids, pixel_values=pv, max_new_tokens=12, eos_token_id=eos)[0].tolist()
    assert stopped == free[: free.index(eos) + 1]
    with pytest.raises(ValueError, match="unknown generation setting"):
        generate(ours, ids, pixel_values=pv, max_length=5)
    with pytest.raises(ValueError, match="beam search"):
        GenerationConfig.from_dict({"num_beams": 4})


DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])  # CUDA runs wherever a GPU is present


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_batched_greedy_on_each_device_equals_transformers_on_cpu(pair, tmp_path, device, dtype):
    hf, ours = pair
    ours.save_pretrained(tmp_path)
    model = InternVL.from_pretrained(tmp_path, dtype=dtype, device=device).eval()
    a, b = prompt([2], seed=3), prompt([1], seed=4)
    width = a.shape[1]
    ids = torch.zeros(2, width, dtype=torch.long)
    mask = torch.zeros_like(ids)
    ids[0], mask[0] = a[0], 1
    ids[1, width - b.shape[1]:], mask[1, width - b.shape[1]:] = b[0], 1
    pv = pixels(3)
    reference = hf.to(dtype)
    try:
        with torch.no_grad():
            ref = reference.generate(input_ids=ids, pixel_values=pv.to(dtype), attention_mask=mask,
                                     max_new_tokens=8, do_sample=False)[:, width:]
    finally:
        hf.to(torch.float32)
    new = generate(model, ids.to(device), pixel_values=pv.to(device, dtype), attention_mask=mask.to(device),
                   max_new_tokens=8)
    assert new.device.type == device
    assert new.cpu().tolist() == ref.tolist()


def check_padded_batch_then_one_row(hf, model, times: int = 1) -> None:
    """Greedy tokens for a left-padded batch of two prompts with images, then for one unpadded row, equal
    transformers'."""
    a, b = prompt([2], seed=3), prompt([1], seed=4)
    ids = torch.zeros(2, a.shape[1], dtype=torch.long)
    mask = torch.zeros_like(ids)
    ids[0], mask[0] = a[0], 1
    ids[1, -b.shape[1]:], mask[1, -b.shape[1]:] = b[0], 1
    pv = pixels(3)
    with torch.no_grad():
        ref = hf.generate(input_ids=ids, pixel_values=pv, attention_mask=mask, max_new_tokens=8,
                          do_sample=False)[:, ids.shape[1]:]
        ref_b = hf.generate(input_ids=b, pixel_values=pixels(1), max_new_tokens=12, do_sample=False)[:, b.shape[1]:]
    for _ in range(times):
        assert generate(model, ids, pixel_values=pv, attention_mask=mask, max_new_tokens=8).tolist() == ref.tolist()
        assert generate(model, b, pixel_values=pixels(1), max_new_tokens=12).tolist() == ref_b.tolist()


def test_compiled_decoder_generates_what_transformers_does(pair):
    """`--compile` (the language model under torch.compile with dynamic shapes): greedy tokens for a
    left-padded batch with images, then for one unpadded row, equal transformers'."""
    import copy

    hf, ours = pair
    model = copy.deepcopy(ours)
    model.language_model.compile(dynamic=True)
    torch._dynamo.utils.counters.clear()
    check_padded_batch_then_one_row(hf, model)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] > 0, "nothing was compiled"


def test_compiled_prepacked_decoder_generates_what_transformers_does(pair):
    """`--prepack --compile` on CPU: the packed products reach torch.compile as opaque operations between the
    fused small operations (a decode step's: the few-row kernel `nativevl_cpu::gemv` where the CPU has AVX2
    or AVX-512, else `nativevl::packed_product`); greedy tokens equal transformers'."""
    import copy

    from nativevl import kernels as gemv
    from nativevl.model.layers import prepack_linears

    hf, ours = pair
    model = copy.deepcopy(ours)
    prepack_linears(model)
    model.language_model.compile(dynamic=True)
    torch._dynamo.utils.counters.clear()
    check_padded_batch_then_one_row(hf, model)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] > 0, "nothing was compiled"
    with torch.profiler.profile() as prof:
        generate(model, prompt([1], seed=5), pixel_values=pixels(1), max_new_tokens=3)
    step = KERNEL if gemv.available(torch.float32) else "nativevl::packed_product"
    assert any(e.name == step for e in prof.events())


def test_compiled_bf16_decoder_runs_the_few_row_kernel(pair):
    """`--prepack --compile` on a bf16 model where the CPU has AVX-512 BF16: decode steps reach torch.compile's
    graph as the few-row kernel (`nativevl_cpu::gemv`, its output's shape registered for the compiler), the
    prompt (270 rows, above KERNEL_MAX_ROWS) as oneDNN's packed bf16 product; greedy tokens equal the eager
    packed model's."""
    import copy

    from nativevl.infer.chat import prepack_model
    from nativevl import kernels as gemv

    _, ours = pair
    eager = copy.deepcopy(ours).to(torch.bfloat16)
    compiled = copy.deepcopy(eager)  # before packing: oneDNN's packed tensors cannot be copied
    prepack_model(eager), prepack_model(compiled)
    torch._dynamo.reset()  # the earlier tests' compilations count against the limit of recompilations per function
    compiled.language_model.compile(dynamic=True)
    a, pv = prompt([1], seed=5), pixels(1).to(torch.bfloat16)
    with torch.profiler.profile() as prof:
        tokens = generate(compiled, a, pixel_values=pv, max_new_tokens=6)
    names = {e.name for e in prof.events()}
    assert (KERNEL in names) == gemv.available(torch.bfloat16)
    # the prompt runs a packed product either way: in bf16 where the CPU multiplies bf16, widened to float32
    # where it does not (an AVX2-only CPU; the assertion used to expect none there, and failed on one)
    assert "nativevl::packed_product" in names
    assert tokens.tolist() == generate(eager, a, pixel_values=pv, max_new_tokens=6).tolist()


def test_static_cache_decoder_generates_what_transformers_does(pair, tmp_path):
    """GraphDecoder (CUDA's compiled decode over a fixed-size cache; here its step runs eagerly on the CPU, the
    graph capture itself is checked by benchmarks/gpu_check.py): greedy tokens for a left-padded batch with
    images and for a row that decodes past a dynamic-NTK limit equal transformers', with cache sizes reused
    across calls."""
    import copy

    from nativevl.infer.generate import GraphDecoder, decode_one_token, prefill
    from nativevl.model.internvl import default_positions

    hf, ours = pair
    model = copy.deepcopy(ours)
    model.graph_decoder = GraphDecoder(model, bucket=64, compiled=False)
    check_padded_batch_then_one_row(hf, model, times=2)  # the second time: the same caches reset, not rebuilt
    assert len(model.graph_decoder.graphs) == 2  # (2 rows, 576 slots) and (1 row, 320 slots)

    # Dynamic NTK: the prompt ends at position 13 and the limit is 20, so the frequencies change mid-decoding.
    # The eager decode's scaling is checked against transformers elsewhere (test_internlm.py); here each
    # static step's logits must equal the eager step's (a small base makes the rotation matter).
    rope = {"rope_type": "dynamic", "factor": 4.0, "rope_theta": 10.0}
    hf_model(hf_config(VISION_300M, False, rope=rope, max_positions=20)).save_pretrained(tmp_path)
    long_model = InternVL.from_pretrained(tmp_path).eval()
    graph = GraphDecoder(long_model, bucket=16, compiled=False).cache(1, 30)
    eager = long_model.new_cache(1, 30)
    text = torch.randint(20, 1000, (1, 14), generator=torch.Generator().manual_seed(9))
    position = default_positions(text, None, 0)
    with torch.no_grad():
        static_logits = prefill(long_model, graph.kv, text, None, None, position)
        eager_logits = prefill(long_model, eager, text, None, None, position)
        position, max_position = position[:, -1:], 13.0
        for _ in range(16):
            token = eager_logits.argmax(-1)[:, None]
            position, max_position = position + 1, max_position + 1
            static_logits = graph.decode(token, None, position, max_position)
            eager_logits = decode_one_token(long_model, eager, token, None, position)
            torch.testing.assert_close(static_logits, eager_logits, rtol=1e-5, atol=1e-5)

def _products(fn, kind: str = "_linear_pointwise") -> int:  # noqa: ANN001
    """How many oneDNN packed products (or, kind=KERNEL, few-row kernel products) `fn()` ran."""
    with torch.profiler.profile() as prof:
        fn()
    return sum(kind in e.name for e in prof.events())


def _packs(module: torch.nn.Module) -> list:
    """The PackedLinears `prepack_linears` attached under `module` (a group's, or a lone layer's forward's)."""
    return [m.packed if getattr(m, "packed", None) is not None else m.__dict__["forward"].args[0]
            for m in module.modules() if getattr(m, "packed", None) is not None or "forward" in m.__dict__]


def test_prepacked_weights_generate_what_transformers_does(pair):
    """`--prepack` (oneDNN-packed float32 weights on CPU): logits within float32 rounding of the plain model,
    greedy tokens equal transformers'; q/k/v and gate/up run as one product each, up to KERNEL_MAX_ROWS rows
    on the few-row kernel where the CPU runs it; above PACKED_MAX_ROWS and with gradients enabled the layers
    fall back to their own weights."""
    import copy

    from nativevl import kernels as gemv
    from nativevl.kernels import KERNEL_MAX_ROWS, PACKED_MAX_ROWS
    from nativevl.model.layers import prepack_linears

    hf, ours = pair
    model = copy.deepcopy(ours)
    assert prepack_linears(model) == sum(isinstance(m, torch.nn.Linear) for m in model.modules())
    a = prompt([1], seed=5)
    pv = pixels(1)
    with torch.no_grad():
        plain, packed = ours(a, pixel_values=pv).logits, model(a, pixel_values=pv).logits
        ref = hf.generate(input_ids=a, pixel_values=pv, max_new_tokens=10, do_sample=False)[:, a.shape[1]:]
    assert not torch.equal(plain, packed)  # the packed kernels really ran (their sums round differently)
    torch.testing.assert_close(packed, plain, rtol=1e-5, atol=1e-5)
    assert generate(model, a, pixel_values=pv, max_new_tokens=10).tolist() == ref.tolist()
    layer = model.language_model.model.layers[0]
    plain_layer = ours.language_model.model.layers[0]
    with torch.no_grad():
        most = KERNEL_MAX_ROWS[gemv.level()] if gemv.available(torch.float32) else 0
        assert most < PACKED_MAX_ROWS
        # above PACKED_MAX_ROWS MKL's product is faster (a prefill)
        for rows in sorted({1, 2, 9, most, most + 1, PACKED_MAX_ROWS, PACKED_MAX_ROWS + 1} - {0}):
            x = torch.randn(1, rows, layer.mlp.up_proj.in_features)
            kernel = rows <= most
            assert _products(lambda: layer.mlp(x), KERNEL) == 2 * kernel  # gate/up, down
            assert _products(lambda: layer.mlp(x)) == (2 if rows <= PACKED_MAX_ROWS and not kernel else 0)
            got = layer.mlp(x)
            if rows > PACKED_MAX_ROWS:
                assert torch.equal(got, plain_layer.mlp(x))
            else:
                torch.testing.assert_close(got, plain_layer.mlp(x), rtol=1e-5, atol=1e-6)
        x = torch.randn(1, 1, layer.self_attn.q_proj.in_features)
        from nativevl.model.text import attention_inputs

        inputs = attention_inputs(model.config.text, torch.zeros(1, 1), None, 0, torch.float32)
        kernel = gemv.available(torch.float32)
        products = _products(lambda: layer.self_attn(x, inputs, None), KERNEL if kernel else "_linear_pointwise")
        assert products == 2  # q/k/v as one, then o
        torch.testing.assert_close(layer.self_attn(x, inputs, None), plain_layer.self_attn(x, inputs, None),
                                   rtol=1e-5, atol=1e-6)
    loss = model(a, pixel_values=pv, labels=a).loss
    loss.backward()
    assert model.language_model.lm_head.weight.grad is not None


def test_prepacked_bf16_follows_the_cpu(pair, monkeypatch):
    """`--prepack` on a bf16 model. Without native bf16 products (forced here, so every CPU checks it) and
    without the few-row kernel: 1-3 rows stay on torch's bf16 kernel (bit-identical), from 4 rows the product
    runs widened to float32 on the packed copy; with the kernel (where it runs) every row count up to its
    KERNEL_MAX_ROWS goes to it. With native bf16 products (where this CPU has them; otherwise the default must
    choose widening): every row count runs packed in bf16, a prompt's logits equal the plain model's, and up
    to KERNEL_MAX_ROWS rows (a decode step) run on the few-row kernel where the CPU runs it, within bf16
    rounding of the exact sums, biases included; the vision tower and projector keep no kernel copies."""
    import copy

    from nativevl.infer.chat import prepack_model
    from nativevl import kernels as gemv
    from nativevl.kernels import BF16_PACKED_MIN_ROWS, KERNEL_MAX_ROWS
    from nativevl.model.layers import prepack_linears

    _, ours = pair
    plain = copy.deepcopy(ours).to(torch.bfloat16)
    with torch.no_grad():  # transformers initialises biases to zero; these must count
        for m in plain.modules():
            if isinstance(m, torch.nn.Linear) and m.bias is not None:
                m.bias.normal_(0, 0.5, generator=torch.Generator().manual_seed(m.out_features))
    linears = sum(isinstance(m, torch.nn.Linear) for m in plain.modules())
    widened, widened_kernel = copy.deepcopy(plain), copy.deepcopy(plain)
    level = gemv.level()
    assert prepack_linears(widened_kernel, native_bf16=False) == linears
    with monkeypatch.context() as m:
        m.setenv("NATIVEVL_GEMV", "0")
        assert prepack_linears(widened, native_bf16=False) == linears and BF16_PACKED_MIN_ROWS == 4
    layer, plain_layer = widened.language_model.model.layers[0].self_attn.o_proj, plain.language_model.model.layers[0].self_attn.o_proj
    torch.manual_seed(0)
    a, pv = prompt([1], seed=5), pixels(1).to(torch.bfloat16)
    with torch.no_grad():
        for rows in (1, 3, 4, 9):
            x = torch.randn(1, rows, layer.in_features, dtype=torch.bfloat16)
            assert _products(lambda: layer(x)) == (rows >= 4)
            got = layer(x)
            assert got.dtype == torch.bfloat16
            if rows < 4:
                assert torch.equal(got, plain_layer(x))
            else:  # exact products of bf16 values, float32 sums, one rounding to bf16
                wide = (x.float() @ layer.weight.float().T).to(torch.bfloat16)
                torch.testing.assert_close(got, wide, rtol=2**-7, atol=1e-6)
        # with the kernel: bf16 read at its own width, widened in registers (levels 1-2) or VDPBF16PS (3)
        o_kernel = widened_kernel.language_model.model.layers[0].self_attn.o_proj
        for rows in (1, 3, 9):
            x = torch.randn(1, rows, layer.in_features, dtype=torch.bfloat16)
            kernel = level > 0 and rows <= KERNEL_MAX_ROWS[level]
            assert _products(lambda: o_kernel(x), KERNEL) == kernel
            assert _products(lambda: o_kernel(x)) == (not kernel and rows >= 4)
            exact = x.double() @ o_kernel.weight.double().T
            torch.testing.assert_close(o_kernel(x).double(), exact, rtol=2**-7, atol=1e-6)
        reference = plain(a, pixel_values=pv).logits
        packed = widened(a, pixel_values=pv).logits
        assert not torch.equal(reference, packed)
        torch.testing.assert_close(packed.float(), reference.float(), rtol=0.05, atol=0.05)

        native = copy.deepcopy(plain)
        count = prepack_model(native)
        if not torch.ops.mkldnn._is_mkldnn_bf16_supported():
            assert _products(lambda: native.language_model.model.layers[0].self_attn.o_proj(x[:, :1])) == 0
            return
        assert count == linears
        o_proj = native.language_model.model.layers[0].self_attn.o_proj
        # a few rows: the few-row kernel where it runs (tests/test_gemv.py), else oneDNN
        most = KERNEL_MAX_ROWS[level] if level else 0
        for rows in sorted({1, 9, most, most + 1} - {0}):
            x = torch.randn(1, rows, layer.in_features, dtype=torch.bfloat16)
            kernel = rows <= most
            assert _products(lambda: o_proj(x)) == (not kernel)
            assert _products(lambda: o_proj(x), KERNEL) == kernel
            if kernel:
                exact = x.double() @ o_proj.weight.double().T
                torch.testing.assert_close(o_proj(x).double(), exact, rtol=2**-7, atol=1e-6)
                attn = native.language_model.model.layers[0].self_attn  # q/k/v as one product, with biases
                qkv = [attn.q_proj, attn.k_proj, attn.v_proj]
                exact = torch.cat([x.double() @ p.weight.double().T + p.bias.double() for p in qkv], -1)
                torch.testing.assert_close(attn.packed(x).double(), exact, rtol=2**-7, atol=1e-6)
        # the language model keeps the kernel's copies; the towers that never decode do not
        assert all((p.kernel_weight is not None) == gemv.available(torch.bfloat16) for p in _packs(native.language_model))
        assert all(p.kernel_weight is None for p in _packs(native.vision_model) + _packs(native.mlp1))
        # a prompt: oneDNN, the same sums; with SDPA's attention bit-identical (the attention kernel's own test
        # is test_prepacked_bf16_prompts_run_the_attention_kernel)
        attention = [m for m in native.modules() if hasattr(m, "kernel_attention")]
        assert attention and all(m.kernel_attention == gemv.attention_available() for m in attention)
        for m in attention:
            m.kernel_attention = False
        assert torch.equal(native(a, pixel_values=pv).logits, reference)
        if not gemv.available(torch.bfloat16):
            return
        # a decode step through the kernel: the plain bf16 model's logits, to bf16 rounding
        steps = []
        for model in (plain, native):
            cache = model.new_cache(1, a.shape[1] + 1)
            logits = model(a, pixel_values=pv, cache=cache).logits
            steps.append(model(logits[:, -1:].argmax(-1), cache=cache).logits)
        assert _products(lambda: native(a[:, :1]), KERNEL) > 0
        torch.testing.assert_close(steps[1].float(), steps[0].float(), rtol=2**-7, atol=2e-3)


def test_prepacked_bf16_prompts_run_the_attention_kernel(pair):
    """After `prepack_model` on a CPU with AVX-512 BF16, a bf16 prompt's attention (each ViT layer, each
    language model layer; padded rows through the mask) runs on nativevl's kernel, and the logits stay within
    bf16 rounding of the plain bf16 model's; a decode step and training keep SDPA. Elsewhere nothing changes."""
    import copy

    from nativevl.infer.chat import prepack_model
    from nativevl import kernels as gemv

    _, ours = pair
    plain = copy.deepcopy(ours).to(torch.bfloat16)
    native = copy.deepcopy(plain)
    prepack_model(native)
    layers = len(plain.vision_model.encoder.layers) + len(plain.language_model.model.layers)
    a, pv = prompt([1], seed=5), pixels(1).to(torch.bfloat16)
    padded = torch.cat([torch.full((1, 3), 0), a], 1)
    mask = torch.cat([torch.zeros(1, 3, dtype=torch.long), torch.ones_like(a)], 1)
    with torch.no_grad():
        calls = _products(lambda: native(a, pixel_values=pv), ATTENTION)
        assert calls == (layers if gemv.attention_available() else 0)
        for ids, m in ((a, None), (padded, mask)):
            reference = plain(ids, pixel_values=pv, attention_mask=m).logits[:, -a.shape[1]:]
            got = native(ids, pixel_values=pv, attention_mask=m).logits[:, -a.shape[1]:]
            torch.testing.assert_close(got.float(), reference.float(), rtol=0.05, atol=0.05)
        assert _products(lambda: native(a[:, :1]), ATTENTION) == 0  # one query: SDPA
    native.train()
    assert _products(lambda: native(a, pixel_values=pv).logits.sum().backward(), ATTENTION) == 0
    capped = copy.deepcopy(plain)
    with pytest.MonkeyPatch.context() as m:  # NATIVEVL_GEMV=2: AVX-512 without BF16, SDPA throughout
        m.setenv("NATIVEVL_GEMV", "2")
        prepack_model(capped)
    with torch.no_grad():
        assert _products(lambda: capped(a, pixel_values=pv), ATTENTION) == 0
