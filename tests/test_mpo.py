"""MPO loss terms (spec §9.4) on hand-computed tensors: the formulas are written out here with `math`, not
taken from the code under test."""

from __future__ import annotations

import math
import json
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from nativevl.config import IGNORE_INDEX
from nativevl.train.losses import RunningMean, bco_pair_loss, dpo_sigmoid_loss, mpo_loss, sequence_logps


def log_sigmoid(x: float) -> float:
    return -math.log1p(math.exp(-x))


def test_sequence_logps_sums_supervised_tokens_only() -> None:
    logits = torch.tensor([[[0.0, 1.0, 2.0], [2.0, 0.0, 0.0], [0.0, 0.0, 3.0], [1.0, 1.0, 1.0]]])
    labels = torch.tensor([[IGNORE_INDEX, IGNORE_INDEX, 0, 2]])  # tokens 2 and 3 are the answer

    def logp(row: list[float], k: int) -> float:
        return row[k] - math.log(sum(math.exp(v) for v in row))

    # logits[1] predicts labels[2] = 0, logits[2] predicts labels[3] = 2
    expected = logp([2.0, 0.0, 0.0], 0) + logp([0.0, 0.0, 3.0], 2)
    logps, counts = sequence_logps(logits, labels)
    assert logps.item() == pytest.approx(expected, abs=1e-6) and counts.item() == 2
    # the same two rows packed into one: per-segment sums
    packed_logits, packed_labels = torch.cat([logits, logits], 1), torch.cat([labels, labels], 1)
    sums, counts = sequence_logps(packed_logits, packed_labels, torch.tensor([0, 4, 8], dtype=torch.int32))
    assert sums.tolist() == pytest.approx([expected, expected], abs=1e-6) and counts.tolist() == [2, 2]


def test_dpo_sigmoid_hand_computed() -> None:
    c, r = torch.tensor([1.0, -0.5]), torch.tensor([-1.0, 0.5])
    got = dpo_sigmoid_loss(c, r, beta=0.1)
    assert got.tolist() == pytest.approx([-log_sigmoid(0.1 * 2.0), -log_sigmoid(0.1 * -1.0)], abs=1e-6)


def test_bco_pair_hand_computed() -> None:
    c, r, beta, delta = torch.tensor([2.0]), torch.tensor([-1.0]), 0.1, 0.05
    expected = -log_sigmoid(beta * 2.0 - delta) - log_sigmoid(-(beta * -1.0 - delta))
    assert bco_pair_loss(c, r, beta, delta).item() == pytest.approx(expected, abs=1e-6)


def test_running_mean_is_the_cumulative_mean_of_batch_means() -> None:
    running = RunningMean()
    assert running.update(torch.tensor([1.0, 3.0])) == pytest.approx(2.0)  # first batch: its own mean
    assert running.update(torch.tensor([5.0])) == pytest.approx((2.0 + 5.0) / 2)  # one count per batch mean
    assert running.update(torch.tensor([0.0, 0.0, 0.0])) == pytest.approx((2.0 + 5.0 + 0.0) / 3)
    clone = RunningMean()
    clone.load_state_dict(running.state_dict())
    assert clone.update(torch.tensor([1.0])) == pytest.approx(running.update(torch.tensor([1.0])))


def test_mpo_loss_combines_the_three_terms() -> None:
    beta = 0.1
    pc, pr = torch.tensor([-3.0, -2.0]), torch.tensor([-4.0, -1.0])
    rc, rr = torch.tensor([-3.5, -2.5]), torch.tensor([-3.0, -2.0])
    nll = torch.tensor(0.7)
    running = RunningMean()
    loss, stats = mpo_loss(pc, pr, rc, rr, nll, running, beta=beta, weights=(0.8, 0.2, 1.0))
    c = [pc[i].item() - rc[i].item() for i in range(2)]  # [0.5, 0.5]
    r = [pr[i].item() - rr[i].item() for i in range(2)]  # [-1.0, 1.0]
    delta = sum(beta * x for x in c + r) / 4  # first update: δ is this batch's mean reward
    per_pair = [0.8 * -log_sigmoid(beta * (c[i] - r[i]))
                + 0.2 * (-log_sigmoid(beta * c[i] - delta) - log_sigmoid(-(beta * r[i] - delta))) for i in range(2)]
    assert loss.item() == pytest.approx(sum(per_pair) / 2 + 0.7, abs=1e-6)
    assert running.mean == pytest.approx(delta)
    assert stats["reward_accuracy"] == pytest.approx(0.5)
    only_dpo, _ = mpo_loss(pc, pr, rc, rr, nll, RunningMean(), beta=beta, weights=(1.0, 0.0, 0.0))
    assert only_dpo.item() == pytest.approx(sum(-log_sigmoid(beta * (c[i] - r[i])) for i in range(2)) / 2, abs=1e-6)


def test_mpo_loss_gradients_flow_to_the_policy_only() -> None:
    pc = torch.tensor([-3.0], requires_grad=True)
    pr = torch.tensor([-4.0], requires_grad=True)
    loss, _ = mpo_loss(pc, pr, torch.tensor([-3.0]), torch.tensor([-3.0]), torch.tensor(0.0), RunningMean())
    loss.backward()
    assert pc.grad.item() < 0 < pr.grad.item()  # raise the chosen answer, lower the rejected one


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _running_worker(rank: int, port: int, out: dict) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    running = RunningMean()
    first = running.update(torch.tensor([1.0, 3.0]) if rank == 0 else torch.tensor([6.0]))
    second = running.update(torch.tensor([0.0]) if rank == 0 else torch.tensor([4.0]))
    out[rank] = (first, second)
    dist.destroy_process_group()


def test_running_mean_is_shared_by_all_ranks() -> None:
    out = mp.Manager().dict()
    mp.spawn(_running_worker, args=(_free_port(), out), nprocs=2)
    # rank means 2 and 6 -> 4; then 0 and 4 -> (2 + 6 + 0 + 4) / 4
    for rank in (0, 1):
        assert out[rank][0] == pytest.approx(4.0)
        assert out[rank][1] == pytest.approx(3.0)


# --- the MPO stage: pairs packed with shared tiles, the first step by hand, learning the preference -------------

@pytest.fixture(scope="module")
def start(tmp_path_factory):
    """The embedded world and a tiny random checkpoint with its tokenizer: the policy's and reference's start."""
    from reference import world_checkpoint

    return world_checkpoint(tmp_path_factory.mktemp("mpo"))


def mpo_config(world, checkpoint, out, **extra):
    from nativevl.train.recipes import load_config

    values = {"stage": "mpo", "steps": 2, "out": str(out), "progress": False, "precision": "fp32",
              "model.checkpoint": str(checkpoint), "data.meta": str(world / "meta_mpo.json"),
              "data.image_size": 224, "data.max_dynamic_patch": 2, "data.max_tokens": 1024, "data.max_tiles": 6,
              "data.max_seq_length": 1024, "data.num_workers": 0, "data.v2pe": "off", "optim.lr": 1e-3,
              "save_every": 100, "resume": False}
    values.update(extra)
    return load_config("sft", [f"{k}={json.dumps(v)}" for k, v in values.items()])


def test_a_pair_is_one_sample_whose_tiles_are_encoded_once(start):
    from nativevl.data.dataset import DataConfig, build_pair, pair_sample, read_lines, read_meta
    from nativevl.data.packing import collate
    from nativevl import InternVL
    from nativevl.tokenizer import load_tokenizer

    world, checkpoint = start
    model = InternVL.from_pretrained(checkpoint).eval()
    tok = load_tokenizer(checkpoint)
    spec = read_meta(world / "meta_mpo.json")[0]
    cfg = DataConfig(max_dynamic_patch=2, image_size=224, num_image_token=model.num_image_token)
    line = json.loads(read_lines(spec)[0][1])
    chosen, rejected = build_pair(line, spec, tok, cfg, __import__("random").Random(0))
    batch = collate([pair_sample(chosen, rejected)], 4096)
    assert batch.pixel_values.shape[0] == chosen.num_tiles  # stored once
    assert batch.cu_seqlens.tolist() == [0, chosen.num_tokens, chosen.num_tokens + rejected.num_tokens]
    encoded = []
    hook = model.vision_model.register_forward_hook(lambda mod, args, out: encoded.append(args[0].shape[0]))
    with torch.no_grad():
        packed = model(batch.input_ids, pixel_values=batch.pixel_values, image_flags=batch.image_flags,
                       position_ids=batch.position_ids, cu_seqlens=batch.cu_seqlens,
                       feature_index=batch.feature_index).logits[0]
        hook.remove()
        alone = [model(s.input_ids[None], pixel_values=s.pixel_values, position_ids=s.position_ids[None]).logits[0]
                 for s in (chosen, rejected)]
    assert encoded == [chosen.num_tiles]  # one ViT pass for both answers
    torch.testing.assert_close(packed, torch.cat(alone), atol=1e-5, rtol=1e-5)


def test_the_first_mpo_step_is_1_2_ln2_plus_the_chosen_nll(start, tmp_path):
    """At step 1 the policy is the reference: c = r = 0, so DPO = ln 2, BCO pair = 2 ln 2 (δ = 0), and the loss is
    0.8 ln 2 + 0.2 · 2 ln 2 + the token-mean cross-entropy of the chosen answers, computed here one by one."""
    import torch.nn.functional as F

    from nativevl import InternVL
    from nativevl.train.trainer import Trainer

    world, checkpoint = start
    trainer = Trainer(mpo_config(world, checkpoint, tmp_path / "run"))
    batch = next(iter(trainer._stream(0, 1)))  # the trainer's first micro-batch (the order is deterministic)
    model = InternVL.from_pretrained(checkpoint).eval()
    bounds = batch.cu_seqlens.tolist()
    ce_sum, count = 0.0, 0
    with torch.no_grad():
        for k in range(0, len(bounds) - 1, 2):  # chosen segments
            a, b = bounds[k], bounds[k + 1]
            ids, labels = batch.input_ids[:, a:b], batch.labels[:, a:b]
            n_tiles = int((ids == model.config.img_context_token_id).sum()) // model.num_image_token
            first = int((batch.input_ids[:, :a] == model.config.img_context_token_id).sum()) // model.num_image_token
            index = batch.feature_index[first: first + n_tiles]
            logits = model(ids, pixel_values=batch.pixel_values[index], position_ids=batch.position_ids[:, a:b]).logits
            ce = F.cross_entropy(logits[0, :-1], labels[0, 1:], ignore_index=-100, reduction="sum")
            ce_sum, count = ce_sum + ce.item(), count + int((labels[0, 1:] != -100).sum())
    metrics = trainer.train_step([batch])
    assert metrics["loss"] == pytest.approx(1.2 * math.log(2) + ce_sum / count, rel=1e-5)
    assert metrics["reward_chosen"] == pytest.approx(0.0, abs=1e-6)


def test_mpo_learns_the_preference_and_resumes_its_reward_mean(start, tmp_path):
    from nativevl.train.trainer import Trainer, train

    world, checkpoint = start
    history = train(mpo_config(world, checkpoint, tmp_path / "run", steps=8, save_every=4, **{"optim.lr": 3e-3}))
    margin = [h["reward_chosen"] - h["reward_rejected"] for h in history]
    assert margin[-1] > margin[0] and history[-1]["reward_accuracy"] > 0.5
    saved = json.loads(sorted((tmp_path / "run").glob("step-*/trainer.json"))[-1].read_text())["mpo_running"]
    assert saved["count"] == pytest.approx(8)  # one batch mean per step folded in
    resumed = Trainer(mpo_config(world, checkpoint, tmp_path / "run", steps=8, save_every=4, resume=True))
    assert resumed.running.state_dict() == saved and resumed.reference is not None
