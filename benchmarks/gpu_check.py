"""Correctness on CUDA before timing it (`benchmarks/gpu.sh` runs this first): the code paths only a GPU takes.

1. A tiny random model in float32 on CUDA: nativevl's logits against transformers' on the same weights.
2. Packed rows in bf16: the varlen flash-attention path (`cu_seqlens` on CUDA) against each sample run alone
   through the causal SDPA path, logits and the loss's gradient.
3. Greedy decoding in bf16: nativevl's tokens against transformers'.
4. The compiled CUDA-graph decode (`GraphDecoder`, what `--compile` installs on CUDA) against eager decoding,
   float32 and bf16, a left-padded batch, twice through the same captured graph.
5. int8 and int4 weights on the device (`QuantLinear`; on CUDA the dequantizing path, on a CPU the kernel with
   8-bit x): logits against a float model holding the dequantized weights.

Prints one line per check and exits non-zero if one fails.

`python -m benchmarks.gpu_check [cuda|cpu]` (on a CPU the packed rows take the per-sample SDPA path).
"""

from __future__ import annotations

import sys
import tempfile

import torch

from nativevl.config import preset
from nativevl import InternVL


def tiny(device: str, dtype: torch.dtype) -> InternVL:
    torch.manual_seed(0)
    cfg = preset("tiny")
    cfg.vision.image_size = 224
    return InternVL.from_config(cfg, dtype=dtype, device=device).eval()


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm())


def main() -> int:
    from transformers import InternVLForConditionalGeneration

    device = sys.argv[1] if len(sys.argv) > 1 else "cuda"
    failures: list[str] = []
    ours = tiny(device, torch.float32)
    cfg = ours.config
    n_img = ours.num_image_token
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(20, cfg.text.vocab_size, (1, n_img + 30), generator=g)
    ids[0, 5:5 + n_img] = cfg.img_context_token_id
    ids = ids.to(device)
    pixels = torch.randn(1, 3, 224, 224, generator=g).to(device)

    with tempfile.TemporaryDirectory() as folder:
        ours.save_pretrained(folder, layout="transformers")
        theirs = InternVLForConditionalGeneration.from_pretrained(folder, dtype=torch.float32).to(device).eval()
    with torch.no_grad():
        a = ours(ids, pixel_values=pixels).logits
        b = theirs(input_ids=ids, pixel_values=pixels).logits
    err = rel(a, b)
    print(f"float32 logits vs transformers on CUDA: relative error {err:.2e}")
    if err > 1e-4:
        failures.append("float32 logits")

    model = tiny(device, torch.bfloat16).train()
    lengths = [40, 25, 63]
    rows = [torch.randint(20, cfg.text.vocab_size, (n,), generator=g) for n in lengths]
    packed = torch.cat(rows)[None].to(device)
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32, device=device)
    weights = torch.randn(1, sum(lengths), cfg.text.vocab_size, generator=g).to(device)
    grad = model.language_model.model.layers[0].self_attn.q_proj.weight

    def objective_grad(logits: torch.Tensor) -> torch.Tensor:
        model.zero_grad()
        (logits.float() * weights).sum().backward()
        return grad.grad.clone()

    logits_packed = model(packed, cu_seqlens=cu).logits
    grad_packed = objective_grad(logits_packed)
    logits_alone = torch.cat([model(row[None].to(device)).logits for row in rows], dim=1)
    grad_alone = objective_grad(logits_alone)
    err_logits = rel(logits_packed, logits_alone)
    err_grad = rel(grad_packed, grad_alone)
    print(f"bf16 packed rows (varlen flash) vs samples alone: logits {err_logits:.2e}, q_proj grad {err_grad:.2e}")
    if err_logits > 2e-2 or err_grad > 5e-2:
        failures.append("packed rows")

    from nativevl.infer.generate import generate

    ours16 = tiny(device, torch.bfloat16)
    with tempfile.TemporaryDirectory() as folder:
        ours16.save_pretrained(folder, layout="transformers")
        theirs16 = InternVLForConditionalGeneration.from_pretrained(folder, dtype=torch.bfloat16).to(device).eval()
    text = torch.randint(20, cfg.text.vocab_size, (1, 24), generator=g).to(device)
    mine = generate(ours16, text, max_new_tokens=16)
    with torch.no_grad():
        ref = theirs16.generate(input_ids=text, max_new_tokens=16, min_new_tokens=16, do_sample=False,
                                pad_token_id=0)[:, text.shape[1]:]
    same = int((mine == ref).sum())
    print(f"bf16 greedy tokens vs transformers: {same}/16 equal")
    if same < 12:  # bf16 rounding may flip a near-tie late in the sequence
        failures.append("bf16 greedy")

    from nativevl.infer.generate import GraphDecoder

    for dtype in (torch.float32, torch.bfloat16):
        model = tiny(device, dtype)
        rows = torch.randint(20, cfg.text.vocab_size, (2, 24), generator=g).to(device)
        mask = torch.ones_like(rows)
        mask[1, :5] = 0  # the second row left-padded
        eager = generate(model, rows, attention_mask=mask, max_new_tokens=40)
        model.graph_decoder = GraphDecoder(model, compiled=device == "cuda")
        graphed = [generate(model, rows, attention_mask=mask, max_new_tokens=40) for _ in range(2)]
        same = [int((t == eager).sum()) for t in graphed]
        print(f"{str(dtype)[6:]} CUDA-graph decode vs eager, 2 rows x 40 tokens, twice: {same} of 80 equal")
        if min(same) < (80 if dtype == torch.float32 else 60):  # bf16: inductor's kernels round differently
            failures.append(f"graph decode {dtype}")

    from nativevl.model.quant import QuantLinear, quantize

    ids = torch.randint(20, cfg.text.vocab_size, (2, 24), generator=g).to(device)
    for name in ("int8", "int4"):
        quantized, plain = quantize(tiny(device, torch.float32), name), tiny(device, torch.float32)
        with torch.no_grad():
            for layer_name, layer in quantized.named_modules():
                if isinstance(layer, QuantLinear):
                    plain.get_submodule(layer_name).weight.copy_(layer.dequantize(torch.float32))
            err = rel(quantized(ids).logits, plain(ids).logits)
        print(f"{name} weights on {device} vs their dequantized float32: logits {err:.2e}")
        if err > 3e-2:
            failures.append(f"{name} weights")

    print("FAILED: " + ", ".join(failures) if failures else "all CUDA checks passed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
