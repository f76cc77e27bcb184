"""Packing and loss weights: a packed row computes exactly what its samples compute one by one."""

from __future__ import annotations

import math

import pytest
import torch
from reference import IMG_CONTEXT, IMG_END, IMG_START

from nativevl import InternVL, preset
from nativevl.data.dataset import Sample
from nativevl.data.packing import Packer, pack
from nativevl.train.losses import sample_weight, token_weights, weighted_lm_loss


def make_sample(seed: int, tiles: int, text: int, learned: int) -> Sample:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(20, 1000, (text,), generator=g).tolist()
    if tiles:
        ids[2:2] = [IMG_START] + [IMG_CONTEXT] * (256 * tiles) + [IMG_END]
    labels = [-100] * (len(ids) - learned) + ids[len(ids) - learned:]
    pixel_values = torch.randn(max(tiles, 1), 3, 448, 448, generator=g)
    return Sample(torch.tensor(ids), torch.tensor(labels), torch.arange(len(ids), dtype=torch.float32),
                  pixel_values, torch.tensor([1] * tiles or [0]), source=f"s{seed}")


SAMPLES = [make_sample(0, 1, 12, 5), make_sample(1, 0, 30, 20), make_sample(2, 2, 9, 3), make_sample(3, 0, 7, 1)]


def test_sample_weights_hand_computed():
    assert [sample_weight(4, r) for r in ("token", "sample", "square")] == [1.0, 0.25, 0.5]
    assert sample_weight(0, "square") == 0.0
    labels = torch.tensor([[-100, 5, 6, 7, 8, -100, -100, 9]])
    w = token_weights(labels, torch.tensor([0, 5, 8]), "square")
    half, one = 0.5, 1.0  # 4 learned tokens -> 1/sqrt(4); 1 learned token -> 1
    assert w.tolist() == [[0, half, half, half, half, 0, 0, one]]
    # loss = sum(ce * w) / sum(w): check against a hand-made case with uniform logits (ce = log V everywhere)
    logits = torch.zeros(1, 8, 10)
    loss = weighted_lm_loss(logits, labels, w)
    assert math.isclose(loss.item(), math.log(10), rel_tol=1e-6)
    # non-uniform: token 1 gets ce 0.1-ish, the rest log 10; weights shifted with the labels
    logits[0, 0, 5] = 10.0
    ce_first = -torch.log_softmax(logits[0, 0], -1)[5].item()
    expected = (half * ce_first + 3 * half * math.log(10) + one * math.log(10)) / (4 * half + one)
    assert math.isclose(weighted_lm_loss(logits, labels, w).item(), expected, rel_tol=1e-6)
    assert math.isclose(weighted_lm_loss(logits, labels, w, denominator=2 * (4 * half + one)).item(),
                        expected / 2, rel_tol=1e-6)


def test_packer_respects_budgets_and_reports_efficiency():
    batches = list(pack(SAMPLES, max_tokens=600, max_tiles=3))
    assert sorted(s for b in batches for s in b.sources) == ["s0", "s1", "s2", "s3"]
    for b in batches:
        assert b.num_tokens <= 600 and b.pixel_values.shape[0] <= 3
        assert b.cu_seqlens[0] == 0 and b.cu_seqlens[-1] == b.num_tokens
        assert 0 < b.efficiency <= 1
    with pytest.raises(ValueError, match="exceed the budget"):
        Packer(100, 3).add(SAMPLES[0])


@pytest.mark.parametrize("reduction", ["token", "square"])
def test_packed_equals_one_by_one(reduction):
    torch.manual_seed(0)
    model = InternVL.from_config(preset("tiny"))
    batch = list(pack(SAMPLES, max_tokens=2000, max_tiles=10))
    assert len(batch) == 1 and batch[0].num_samples == 4
    b = batch[0]
    weights = token_weights(b.labels, b.cu_seqlens, reduction)
    out = model(b.input_ids, pixel_values=b.pixel_values, image_flags=b.image_flags, position_ids=b.position_ids,
                cu_seqlens=b.cu_seqlens)
    loss = weighted_lm_loss(out.logits, b.labels, weights)
    loss.backward()
    packed_grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()

    denominator = weights.sum() - weights[0, 0]  # the first token of a row is never a target
    total = 0.0
    for i, s in enumerate(SAMPLES):
        start, end = int(b.cu_seqlens[i]), int(b.cu_seqlens[i + 1])
        single = model(s.input_ids[None], pixel_values=s.pixel_values, image_flags=s.image_flags,
                       position_ids=s.position_ids[None])
        assert (single.logits[0] - out.logits[0, start:end]).abs().max() < 1e-5, i
        w = token_weights(s.labels[None], None, reduction)
        total = total + weighted_lm_loss(single.logits, s.labels[None], w, denominator=denominator)
    assert abs(total.item() - loss.item()) < 1e-5
    total.backward()
    for name, grad in packed_grads.items():
        torch.testing.assert_close(model.get_parameter(name).grad, grad, atol=1e-5, rtol=1e-4, msg=name)


def test_positions_restart_per_sample_by_default():
    torch.manual_seed(0)
    model = InternVL.from_config(preset("tiny")).eval()
    b = next(pack(SAMPLES[1:2] + SAMPLES[3:], max_tokens=100, max_tiles=4))
    with torch.no_grad():
        explicit = model(b.input_ids, pixel_values=b.pixel_values, image_flags=b.image_flags,
                         position_ids=b.position_ids, cu_seqlens=b.cu_seqlens).logits
        default = model(b.input_ids, pixel_values=b.pixel_values, image_flags=b.image_flags,
                        cu_seqlens=b.cu_seqlens).logits
    assert torch.equal(explicit, default)


def _rank_loss(rank: int, world: int, port: int, out: str) -> None:
    import torch.distributed as dist

    from nativevl.train.losses import reduce_denominator

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    torch.manual_seed(rank)
    logits = torch.randn(1, 6 + 3 * rank, 11)
    labels = torch.randint(0, 11, (1, 6 + 3 * rank))
    labels[0, : 2 + rank] = -100
    weights = token_weights(labels, None, "square")
    local = weights[:, 1:].sum()
    denominator = reduce_denominator(local)
    loss = weighted_lm_loss(logits, labels, weights, denominator)
    torch.save({"loss": loss, "logits": logits, "labels": labels, "local": local, "den": denominator},
               f"{out}.{rank}")
    dist.destroy_process_group()


def test_denominator_reduced_across_ranks_gives_the_global_weighted_mean(tmp_path):
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_rank_loss, args=(2, port, str(tmp_path / "r")), nprocs=2, join=True)
    parts = [torch.load(tmp_path / f"r.{r}", weights_only=True) for r in range(2)]
    assert parts[0]["den"] == parts[1]["den"] == (parts[0]["local"] + parts[1]["local"]) / 2
    # data-parallel training averages the ranks' gradients, i.e. optimises the mean of their losses
    averaged = (parts[0]["loss"] + parts[1]["loss"]) / 2
    num = sum(weighted_lm_loss(p["logits"], p["labels"], token_weights(p["labels"], None, "square"), 1.0)
              for p in parts)
    assert abs(averaged.item() - (num / (parts[0]["local"] + parts[1]["local"])).item()) < 1e-6


def test_chunked_loss_equals_the_loss_over_whole_logits():
    """`loss_chunk`: the weighted loss from hidden states a few positions at a time (logits recomputed in the
    backward pass) equals the loss over the whole logits, and so do the gradients of every parameter."""
    torch.manual_seed(0)
    model = InternVL.from_config(preset("tiny"))
    b = next(iter(pack(SAMPLES, max_tokens=2000, max_tiles=10)))
    weights = token_weights(b.labels, b.cu_seqlens, "square")
    inputs = dict(pixel_values=b.pixel_values, image_flags=b.image_flags, position_ids=b.position_ids,
                  cu_seqlens=b.cu_seqlens)
    full = weighted_lm_loss(model(b.input_ids, **inputs).logits, b.labels, weights, denominator=3.0)
    full.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    out = model(b.input_ids, labels=b.labels, label_weights=weights, loss_denominator=3.0, loss_chunk=7, **inputs)
    assert out.logits is None and b.input_ids.shape[1] > 7 * 10  # many chunks, the last one partial
    torch.testing.assert_close(out.loss, full, atol=1e-6, rtol=1e-6)
    out.loss.backward()
    for name, grad in grads.items():
        torch.testing.assert_close(model.get_parameter(name).grad, grad, atol=1e-6, rtol=1e-5, msg=name)
