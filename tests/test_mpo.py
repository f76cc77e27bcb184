"""MPO loss terms (spec §9.4) on hand-computed tensors: the formulas are written out here with `math`, not
taken from the code under test."""

from __future__ import annotations

import math
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from nativevl.model.internvl import IGNORE_INDEX
from nativevl.train.losses import (
    RunningMean,
    bco_pair_loss,
    dpo_sigmoid_loss,
    mpo_loss,
    sequence_logps,
)


def log_sigmoid(x: float) -> float:
    return -math.log1p(math.exp(-x))


def test_sequence_logps_sums_supervised_tokens_only() -> None:
    logits = torch.tensor([[[0.0, 1.0, 2.0], [2.0, 0.0, 0.0], [0.0, 0.0, 3.0], [1.0, 1.0, 1.0]]])
    labels = torch.tensor([[IGNORE_INDEX, IGNORE_INDEX, 0, 2]])  # tokens 2 and 3 are the answer

    def logp(row: list[float], k: int) -> float:
        return row[k] - math.log(sum(math.exp(v) for v in row))

    # logits[1] predicts labels[2] = 0, logits[2] predicts labels[3] = 2
    expected = logp([2.0, 0.0, 0.0], 0) + logp([0.0, 0.0, 3.0], 2)
    assert sequence_logps(logits, labels).item() == pytest.approx(expected, abs=1e-6)


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
