"""nativevl's bf16 attention kernel for CPU prompts (nativevl/kernels: bf16_attention.py, attention_tiles.h):
where the CPU has AVX-512 BF16, its outputs within a bound derived from bf16 rounding of the exact float64
attention of the same values (causal at the last key, masks, grouped heads, odd lengths, strided inputs), and
used by a prepacked bf16 model for its ViT and prompt attention; elsewhere the operation refuses to run and the
model keeps SDPA."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from test_gemv import cpu_level

from nativevl import kernels

HERE = cpu_level() >= 3  # AVX-512 BF16


def runs_here() -> bool:
    """True where this CPU has AVX-512 BF16. Elsewhere the operation must refuse to run (the test then checks
    that, instead of its results), and `attention_available()` must say no, so models keep SDPA."""
    if HERE:
        return True
    assert not kernels.attention_available()
    if kernels.built():
        q = torch.zeros(1, 2, 4, 16, dtype=torch.bfloat16)
        with pytest.raises(RuntimeError, match="needs a CPU with AVX-512 BF16"):
            kernels.attention(q, q, q)
    return False


def exact(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None, causal: bool
          ) -> tuple[torch.Tensor, torch.Tensor]:
    """float64 attention of the same bf16 values, and P @ |V| (the scale of the error rounding P to bf16 makes);
    a row that may attend nothing: zeros."""
    q, k, v = (t.double() for t in (q, k, v))
    group = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(group, 1), v.repeat_interleave(group, 1)
    lq, lk = q.shape[2], k.shape[2]
    allowed = torch.ones(1, 1, lq, lk, dtype=torch.bool)
    if causal:
        allowed = allowed & (torch.arange(lk)[None, :] <= torch.arange(lq)[:, None] + lk - lq)
    if mask is not None:
        allowed = allowed & mask
    s = (q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])).masked_fill(~allowed, -math.inf)
    p = torch.softmax(s, -1).nan_to_num(0.0)
    return p @ v, p @ v.abs()


def within_bound(out: torch.Tensor, q, k, v, mask=None, causal=False) -> None:  # noqa: ANN001
    """P rounded to bf16 moves each output by at most 2^-8 (P @ |V|), the output's rounding by 2^-8 |out|; the
    float32 scores, sums and exp add far less (the 1% slack and 1e-5)."""
    ref, scale = exact(q, k, v, mask, causal)
    bound = 1.01 * 2**-8 * (scale + ref.abs()) + 1e-5
    assert out.shape == ref.shape and out.dtype == torch.bfloat16
    excess = (out.double() - ref).abs() - bound
    assert excess.max() <= 0, f"{excess.max():.3g} over the bound"


def qkv(b: int, h: int, hkv: int, lq: int, lk: int, d: int, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """q, k, v as the models hand them over: (B, L, H, D) projections viewed as (B, H, L, D)."""
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(b, lq, h, d, generator=g).bfloat16().transpose(1, 2)
    k, v = (torch.randn(b, lk, hkv, d, generator=g).bfloat16().transpose(1, 2) * 1.5 for _ in range(2))
    return q, k, v


@pytest.mark.parametrize("b, h, hkv, lq, lk, d, causal", [
    (1, 4, 4, 97, 97, 64, False),  # a ViT tile's shape, smaller: two tiles of keys and a partial third
    (2, 14, 2, 37, 37, 64, True),  # the 1B's grouped heads, a prompt
    (2, 4, 2, 29, 40, 128, True),  # after a cache of 11 tokens: the last query sees every key
    (1, 2, 1, 9, 3, 16, True),  # more queries than keys: the first six see none (zeros)
    (1, 3, 3, 8, 49, 2, False),  # head_dim 2, 49 keys (an odd count: the last pair's padding)
    (3, 2, 1, 17, 17, 96, False),  # head_dim 96: two tiles of values, the second two registers
])
def test_attention_is_the_exact_attention_rounded(b, h, hkv, lq, lk, d, causal):
    if not runs_here():
        return
    q, k, v = qkv(b, h, hkv, lq, lk, d)
    within_bound(kernels.attention(q, k, v, None, causal), q, k, v, None, causal)
    # contiguous inputs give the same result
    same = kernels.attention(q.contiguous(), k.contiguous(), v.contiguous(), None, causal)
    assert torch.equal(same, kernels.attention(q, k, v, None, causal))


def test_masks_per_row_per_batch_and_broadcast():
    if not runs_here():
        return
    q, k, v = qkv(3, 4, 2, 21, 21, 64, seed=1)
    g = torch.Generator().manual_seed(2)
    full = torch.rand(3, 1, 21, 21, generator=g) > 0.4
    full[0, 0, 5] = False  # a row that may attend nothing: zeros
    for mask in (full, full[:1], full[:, :, :1], full[:1, :, :1]):
        for causal in (False, True):
            out = kernels.attention(q, k, v, mask, causal)
            within_bound(out, q, k, v, mask, causal)
    assert torch.equal(kernels.attention(q, k, v, full)[0, :, 5], torch.zeros(4, 64, dtype=torch.bfloat16))
    # non-contiguous masks (a view's last stride 1 or not) are read correctly
    wide = torch.rand(3, 1, 21, 42, generator=g) > 0.4
    within_bound(kernels.attention(q, k, v, wide[..., ::2]), q, k, v, wide[..., ::2])


def test_as_close_to_exact_as_torch_sdpa_on_a_vit_tile():
    """The 1B's ViT shape (1,025 tokens, 16 heads of 64): no farther from the exact attention than torch's own
    bf16 SDPA, and a custom scale is applied."""
    if not runs_here():
        return
    q, k, v = qkv(1, 16, 16, 1025, 1025, 64, seed=3)
    ref, _ = exact(q, k, v, None, False)
    ours = (kernels.attention(q, k, v).double() - ref).abs().max()
    torch_sdpa = (F.scaled_dot_product_attention(q, k, v).double() - ref).abs().max()
    assert ours <= 1.05 * torch_sdpa
    half = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), scale=0.5)
    torch.testing.assert_close(kernels.attention(q, k, v, scale=0.5).float(), half, rtol=2**-6, atol=2e-2)


def test_bad_inputs_are_refused():
    if not runs_here():
        return
    q, k, v = qkv(1, 4, 2, 5, 5, 16)
    with pytest.raises(RuntimeError, match="4-d bf16 on CPU"):
        kernels.attention(q.float(), k, v)
    with pytest.raises(RuntimeError, match="heads a multiple of kv_heads"):
        kernels.attention(q[:, :3], k, v)
    with pytest.raises(RuntimeError, match="heads a multiple of kv_heads"):
        kernels.attention(q, k[:, :0], v[:, :0])
    with pytest.raises(RuntimeError, match="head_dim 15: even"):
        kernels.attention(q[..., :15], k[..., :15], v[..., :15])
    with pytest.raises(RuntimeError, match="mask: bool"):
        kernels.attention(q, k, v, torch.ones(1, 1, 5, 4, dtype=torch.bool))
    with pytest.raises(RuntimeError, match="mask: bool"):
        kernels.attention(q, k, v, torch.ones(1, 1, 5, 5))


def test_available_follows_the_cpu_and_the_cap(monkeypatch):
    assert kernels.attention_available() == HERE
    monkeypatch.setenv("NATIVEVL_GEMV", "2")
    assert not kernels.attention_available()
    q = torch.zeros(1, 2, 3, 8, dtype=torch.bfloat16)
    assert kernels.attention_takes(q, q, q)
    assert kernels.attention_takes(q, q, q, torch.ones(1, 1, 3, 3, dtype=torch.bool))
    assert not kernels.attention_takes(q, q, q, torch.zeros(1, 1, 3, 3))  # an additive mask: SDPA
    assert not kernels.attention_takes(q[:, :, :1], q, q)  # a decode step stays on SDPA
    assert not kernels.attention_takes(q.float(), q, q) and not kernels.attention_takes(q[..., :7], q, q)
    for wants_grad in range(3):  # a gradient for q, k or v: SDPA (the kernel has no backward)
        t = [q, q, q]
        t[wants_grad] = q.clone().requires_grad_()
        assert not kernels.attention_takes(*t)
        with torch.no_grad():
            assert kernels.attention_takes(*t)
