"""Quantized checkpoints: nativevl's own int8/int4 format and the released AWQ folders (OpenGVLab/InternVL3-*-AWQ,
AutoAWQ's GEMM packing), read and written beside the float layouts (docs/quantization.md).

config.json's `quantization_config` (top level, as transformers writes it; also read from `llm_config` /
`text_config` and from AutoAWQ's older `quant_config.json`) names the method:
- `nativevl`: `bits`, `group_size` (0: per channel), `symmetric`, `parts`, `head` (8: lm_head on per-channel
  int8; 0 or absent: float); tensors as QuantLinear holds them
  (`qweight` uint8, `scales`, `qzeros` uint8; model/quant.py).
- `awq` (`version: gemm`, `bits: 4`): per linear layer `qweight` int32 (in, out/8), `qzeros` int32 (in/group,
  out/8), `scales` float16 (in/group, out), w[i, o] = (q - z) * s; eight 4-bit codes to an int32, output
  columns 8c .. 8c+7 at nibbles in the order 0, 2, 4, 6, 1, 3, 5, 7 (nibble j holds column 8c + ORDER[j]).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from nativevl.model.quant import PARTS, QuantConfig, pack_int4, unpack_int4
from nativevl.weights.errors import CheckpointError

AWQ_ORDER = (0, 2, 4, 6, 1, 3, 5, 7)  # nibble j of a packed int32 holds output column 8c + AWQ_ORDER[j]
METHODS = ("nativevl", "awq")
SUFFIXES = (".qweight", ".scales", ".qzeros")


def find_quantization(raw: dict[str, Any], folder: Path) -> tuple[dict[str, Any], str] | None:
    """The quantization_config of a folder's config.json (or quant_config.json) and where it was found."""
    for where, part in (("", raw), ("llm_config.", raw.get("llm_config") or {}),
                        ("text_config.", raw.get("text_config") or {})):
        if isinstance(part.get("quantization_config"), dict):
            return part["quantization_config"], f"{folder / 'config.json'}: {where}quantization_config"
    legacy = folder / "quant_config.json"  # AutoAWQ before transformers' integration: w_bit, q_group_size, ...
    if legacy.is_file():
        d = json.loads(legacy.read_text())
        return {"quant_method": "awq", "bits": d.get("w_bit"), "group_size": d.get("q_group_size"),
                "zero_point": d.get("zero_point", True), "version": d.get("version", "gemm")}, str(legacy)
    return None


def read_quantization(raw: dict[str, Any], folder: Path) -> tuple[QuantConfig, str] | None:
    """(the QuantConfig a folder's tensors are in, its method), or None for a float checkpoint; a config nativevl
    cannot read is a CheckpointError naming the file and field, before any tensor is read."""
    found = find_quantization(raw, folder)
    if found is None:
        return None
    q, where = found
    method = str(q.get("quant_method", "")).lower()
    if method not in METHODS:
        raise CheckpointError(f"{where}.quant_method {q.get('quant_method')!r} is not supported: nativevl reads "
                              f"{' and '.join(METHODS)} (for bitsandbytes or GPTQ folders, convert the float model)")
    bits, group = q.get("bits"), q.get("group_size")
    if method == "awq":
        version = str(q.get("version", "gemm")).lower()
        if version != "gemm":
            raise CheckpointError(f"{where}.version {q.get('version')!r}: only AutoAWQ's GEMM packing is read "
                                  "(the released InternVL3 AWQ folders use it)")
        if bits != 4:
            raise CheckpointError(f"{where}.bits {bits!r}: AWQ folders are 4-bit")
        if not isinstance(group, int) or group <= 0:
            raise CheckpointError(f"{where}.group_size {group!r}: a positive number of inputs per scale")
        return QuantConfig(bits=4, group_size=group, symmetric=not q.get("zero_point", True),
                           parts=("language_model",)), method
    if bits not in (4, 8):
        raise CheckpointError(f"{where}.bits {bits!r}: nativevl's format is 8- or 4-bit")
    parts = tuple(q.get("parts", ("language_model",)))
    if not isinstance(group, int) or group < 0 or group % 2 or set(parts) - set(PARTS):
        raise CheckpointError(f"{where}: group_size {group!r} (0 or a positive even number) or parts {list(parts)} "
                              f"(some of {', '.join(PARTS)}) cannot be read")
    head = q.get("head", 0)
    if head not in (0, 8):
        raise CheckpointError(f"{where}.head {head!r}: 8 (lm_head on int8) or 0 (float)")
    return QuantConfig(bits=bits, group_size=group, symmetric=bool(q.get("symmetric", False)), parts=parts,
                       head=head), method


def quantization_dict(config: QuantConfig) -> dict[str, Any]:
    """What `save_model` writes as config.json's quantization_config (transformers' key names where they fit)."""
    return {"quant_method": "nativevl", "bits": config.bits, "group_size": config.group_size,
            "symmetric": config.symmetric, "zero_point": not config.symmetric, "parts": list(config.parts),
            "head": config.head, "modules_to_not_convert": [*([] if config.head else ["language_model.lm_head"]),
                                                            *(p for p in PARTS if p not in config.parts)]}


# --- AWQ's GEMM packing ----------------------------------------------------------------------------------------


def _layers(state: dict[str, torch.Tensor]) -> list[str]:
    return sorted(name.removesuffix(".qweight") for name in state if name.endswith(".qweight"))


def awq_shapes(expected: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """nativevl's expected QuantLinear tensors (meta) -> the shapes an AWQ folder stores for them."""
    out = dict(expected)
    for p in _layers(expected):
        n, groups = expected[p + ".scales"].shape
        k = expected[p + ".qweight"].shape[1] * 2
        out[p + ".qweight"] = torch.empty(k, n // 8, dtype=torch.int32, device="meta")
        out[p + ".qzeros"] = torch.empty(groups, n // 8, dtype=torch.int32, device="meta")
        out[p + ".scales"] = torch.empty(groups, n, dtype=torch.float16, device="meta")
    return out


def unpack_awq_int32(packed: torch.Tensor) -> torch.Tensor:
    """int32 (rows, cols/8) -> uint8 codes (rows, cols), undoing AWQ's interleaved nibble order."""
    shifts = torch.arange(0, 32, 4, dtype=torch.int32)
    nibbles = (packed[..., None] >> shifts) & 15  # (rows, cols/8, 8): nibble j
    codes = torch.empty_like(nibbles)
    codes[..., list(AWQ_ORDER)] = nibbles  # column 8c + ORDER[j] <- nibble j
    return codes.reshape(packed.shape[0], -1).to(torch.uint8)


def pack_awq_int32(codes: torch.Tensor) -> torch.Tensor:
    """The inverse of `unpack_awq_int32`: uint8 codes (rows, cols) -> AWQ's int32 (rows, cols/8)."""
    c = codes.to(torch.int32).reshape(codes.shape[0], -1, 8)
    packed = torch.zeros(c.shape[:2], dtype=torch.int32)
    for j, column in enumerate(AWQ_ORDER):  # nibble j <- column 8c + ORDER[j]; the top nibble wraps the sign
        packed |= c[..., column] << (4 * j)
    return packed


def from_awq(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """AWQ's tensors of every quantized layer -> QuantLinear's (out, in)-major codes, scales and zeros."""
    out = dict(state)
    for p in _layers(state):
        codes = unpack_awq_int32(state[p + ".qweight"]).t()  # (out, in)
        out[p + ".qweight"] = pack_int4(codes.contiguous())
        out[p + ".qzeros"] = unpack_awq_int32(state[p + ".qzeros"]).t().contiguous()
        out[p + ".scales"] = state[p + ".scales"].t().contiguous()
    return out


def to_awq(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """QuantLinear's 4-bit tensors -> AWQ's GEMM packing (what `from_awq` reads)."""
    out = dict(state)
    for p in _layers(state):
        out[p + ".qweight"] = pack_awq_int32(unpack_int4(state[p + ".qweight"]).t().contiguous())
        out[p + ".qzeros"] = pack_awq_int32(state[p + ".qzeros"].t().contiguous())
        out[p + ".scales"] = state[p + ".scales"].t().contiguous().to(torch.float16)
    return out
