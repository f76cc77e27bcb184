"""V2PE positions against hand-computed cases (spec §10)."""

from __future__ import annotations

import torch

from nativevl.data.v2pe import V2PE_DELTAS, v2pe_positions, v2pe_positions_row

C = 5  # <IMG_CONTEXT>
IMG, END = 3, 4


def test_delta_one_is_ordinary_integer_positions():
    ids = [9, IMG] + [C] * 6 + [END, 8, IMG] + [C] * 3 + [END, 7]
    assert v2pe_positions_row(ids, C, 1.0) == [float(i) for i in range(len(ids))]


def test_fractional_delta_hand_computed():
    # text 0, <img> 1, four visual tokens at 1.25 .. 2.0, </img> at ceil(2.0) + 1 = 3, text 4
    assert v2pe_positions_row([9, IMG, C, C, C, C, END, 8], C, 0.25) == [0, 1, 1.25, 1.5, 1.75, 2.0, 3, 4]
    # three visual tokens at delta 0.5 end at 2.5: </img> at ceil(2.5) + 1 = 4
    assert v2pe_positions_row([IMG, C, C, C, END], C, 0.5) == [0, 0.5, 1.0, 1.5, 3]
    # one delta per image
    ids = [IMG, C, C, END, IMG, C, C, END]
    assert v2pe_positions_row(ids, C, [0.5, 1.0]) == [0, 0.5, 1.0, 2, 3, 4, 5, 6]


def test_256_tokens_at_one_256th_take_one_position():
    ids = [7, IMG] + [C] * 256 + [END, 8]
    pos = v2pe_positions_row(ids, C, 1 / 256)
    assert pos[2] == 1 + 1 / 256 and pos[257] == 2.0 and pos[258] == 3.0 and pos[259] == 4.0
    assert V2PE_DELTAS == (1, 0.5, 0.25, 0.125, 0.0625, 0.03125, 0.015625, 0.0078125, 0.00390625)


def test_batch_with_left_padding():
    ids = torch.tensor([[0, 0, IMG, C, C, END], [9, IMG, C, C, END, 8]])
    mask = torch.tensor([[0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1]])
    pos = v2pe_positions(ids, C, 0.5, mask)
    assert pos.dtype == torch.float32
    assert pos.tolist() == [[1, 1, 0, 0.5, 1.0, 2], [0, 1, 1.5, 2.0, 3, 4]]
