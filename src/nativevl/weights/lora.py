"""LoRA adapters: PEFT's LoRA layers injected into nativevl's model, and their files in PEFT's own format.

The original (`internvl_chat`) wraps the ViT and the LLM with `peft.get_peft_model` (`use_backbone_lora`,
`use_llm_lora`: alpha = 2 x rank, dropout 0.05, the targets below). nativevl injects the same PEFT layers
(`peft.inject_adapter_in_model`) into the parts in place, so the model keeps its class and its forward; the
frozen base weights stay where they are (packed int8/int4 ones too: QLoRA).

Files are what `PeftModel.save_pretrained` writes for transformers' `InternVLForConditionalGeneration`:
`adapter_config.json` (peft's LoraConfig; the ViT's rank through `rank_pattern`) and `adapter_model.safetensors`
keyed `base_model.model.<transformers module>.lora_A.weight` / `.lora_B.weight`, plus whole tensors of the
modules trained in full (`modules_to_save`, e.g. the lm_head). So `PeftModel.from_pretrained(hf_model, folder)`
loads a nativevl adapter, and nativevl loads one PEFT wrote. Names are the transformers layout's whatever the
base's layout: the ViT's fused `attn.qkv` is written as q/k/v LoRAs sharing one lora_A (each B a third of
the fused one's: the same product). Read back, q/k/v LoRAs with one shared A fuse again at rank r; independent
ones fuse block-diagonally at rank 3r (alpha 3x, the same scale), so any PEFT adapter loads exactly.

`base_model_name_or_path` names the base checkpoint; beside the two files nativevl writes `adapter_base.json`
with it and `base_sha256`, a hash of the base's weight files, checked where the base is a folder (PEFT's
LoraConfig warns about fields it does not know, so the hash is not in adapter_config.json).
"""

from __future__ import annotations

import contextlib
import json
import re
import warnings
from collections.abc import Iterator
from pathlib import Path

import torch
from peft import LoraConfig, inject_adapter_in_model
from peft.tuners.lora import LoraLayer
from peft.tuners.lora.layer import Linear as PeftLoraLinear
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from nativevl.model.internvl import InternVLModel
from nativevl.model.quant import QuantLinear
from nativevl.weights.errors import CheckpointError
from nativevl.weights.names import (
    from_transformers,
    in_memory_name,
    legacy_name,
    to_transformers,
)

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_BASE = "adapter_base.json"  # nativevl's: the base's path and hash (PEFT refuses unknown config fields)
PREFIX = "base_model.model."  # PeftModel's prefix before the transformers model's own names
DROPOUT = 0.05  # the original's lora_dropout

# The original's targets (modeling_internvl_chat.py, wrap_backbone_lora / wrap_llm_lora), in its own names.
VIT_TARGETS = ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2")
LLM_TARGETS = {
    "Qwen2ForCausalLM": ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                         "mlp.gate_proj", "mlp.down_proj", "mlp.up_proj"),
    "InternLM2ForCausalLM": ("attention.wqkv", "attention.wo", "feed_forward.w1", "feed_forward.w2",
                             "feed_forward.w3"),
}
LLM_TARGETS["LlamaForCausalLM"] = LLM_TARGETS["Qwen3ForCausalLM"] = LLM_TARGETS["Qwen2ForCausalLM"]
# nativevl holds InternLM2's layers under Qwen2's names (weights/names.py unpacks wqkv on load), so its targets
# are these modules; a LoRA on the packed wqkv becomes independent q/k/v LoRAs (docs/training.md says so).
_INTERNLM2_MODULES = {
    "attention.wqkv": ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
    "attention.wo": ("self_attn.o_proj",), "feed_forward.w1": ("mlp.gate_proj",),
    "feed_forward.w3": ("mlp.up_proj",), "feed_forward.w2": ("mlp.down_proj",),
}
_VIT_QKV = re.compile(r"^vision_model\.encoder\.layers\.(\d+)\.attn\.qkv$")
_HF_QKV = re.compile(r"^model\.vision_tower\.encoder\.layer\.(\d+)\.attention\.([qkv])_proj$")


class AdapterError(CheckpointError):
    """An adapter that cannot be used with this base; the message names the file and the field or tensor."""


# --- adding, disabling, merging ----------------------------------------------------------------------------------


def llm_targets(model: InternVLModel, targets: list[str] | tuple[str, ...] | None = None) -> list[str]:
    """The LLM's LoRA targets as nativevl module-name suffixes: the original's for the model's family, or
    `targets` (the family's own names, e.g. InternLM2's `attention.wqkv`, or nativevl's)."""
    arch = model.config.text.architecture
    chosen = list(targets) if targets else list(LLM_TARGETS[arch])
    if arch == "InternLM2ForCausalLM":
        return [m for t in chosen for m in _INTERNLM2_MODULES.get(t, (t,))]
    return chosen


def _inject(config: LoraConfig, module: nn.Module, name: str = "default") -> None:
    """PEFT's injection, quiet about what is expected here: a QuantLinear base ("unsupported layer type",
    registered above) and a second adapter or part in one model ("multiple adapters")."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Unsupported layer type")
        warnings.filterwarnings("ignore", message="Already found a `peft_config` attribute")
        inject_adapter_in_model(config, module, adapter_name=name)


def _lora_config(rank: int, targets: list[str], dropout: float) -> LoraConfig:
    config = LoraConfig(r=rank, lora_alpha=2 * rank, lora_dropout=dropout, target_modules=targets)
    config._register_custom_module({QuantLinear: PeftLoraLinear})  # QLoRA: PEFT's Linear over a packed base
    return config


def add_lora(model: InternVLModel, llm_rank: int, vit_rank: int, llm_target_modules: list[str] | None = None,
             vit_target_modules: list[str] | None = None, dropout: float = DROPOUT) -> list[str]:
    """Wrap the LLM's and/or the ViT's target layers with LoRA (rank 0: that part is left alone), freezing the
    wrapped part's base as `get_peft_model` does in the original. Returns the wrapped modules' names."""
    if llm_rank < 0 or vit_rank < 0:
        raise ValueError(f"LoRA ranks must be >= 0, got llm_rank={llm_rank}, vit_rank={vit_rank}")
    for part, rank, targets in ((model.language_model, llm_rank, llm_targets(model, llm_target_modules)),
                                (model.vision_model, vit_rank, list(vit_target_modules or VIT_TARGETS))):
        if rank:
            part.requires_grad_(False)
            try:
                _inject(_lora_config(rank, targets, dropout), part)
            except ValueError as e:  # PEFT: "Target modules {...} not found in the base model"
                raise ValueError(f"LoRA target_modules {targets}: {e}") from None
            part.train(part.training)  # new dropout modules start in training mode: follow the part's
    return [name for name, _ in lora_layers(model)]


def lora_layers(model: nn.Module) -> Iterator[tuple[str, LoraLayer]]:
    for name, module in model.named_modules():
        if isinstance(module, LoraLayer):
            yield name, module


def has_lora(model: nn.Module) -> bool:
    return any(True for _ in lora_layers(model))


@contextlib.contextmanager
def adapters_disabled(model: nn.Module) -> Iterator[None]:
    """The base model alone for the duration (MPO's reference: no second copy of the weights)."""
    layers = [layer for _, layer in lora_layers(model)]
    for layer in layers:
        layer.enable_adapters(False)
    try:
        yield
    finally:
        for layer in layers:
            layer.enable_adapters(True)


def use_adapter(model: nn.Module, name: str | None) -> None:
    """Make adapter `name` the active one in every LoRA layer, or with None answer with the base alone (the
    server's per-request choice)."""
    for _, layer in lora_layers(model):
        layer.enable_adapters(name is not None)
        if name is not None:
            layer.set_adapter(name)


def _delta(layer: LoraLayer, name: str) -> torch.Tensor:
    a, b = layer.lora_A[name].weight.float(), layer.lora_B[name].weight.float()
    return (b @ a) * layer.scaling[name]


def merge_lora(model: InternVLModel, name: str = "default") -> InternVLModel:
    """Fold adapter `name` into the base weights and drop the LoRA layers (the original's merge_and_unload).
    A quantized base is dequantized and merged into a float Linear: the merged weights are not int8/int4."""
    for module_name, layer in list(lora_layers(model)):
        base = layer.get_base_layer()
        if isinstance(base, QuantLinear):
            merged = nn.Linear(base.in_features, base.out_features, bias=base.bias is not None,
                               dtype=base.scales.dtype, device=base.scales.device)
            with torch.no_grad():
                merged.weight.copy_(base.dequantize(torch.float32) + _delta(layer, name))
                if base.bias is not None:
                    merged.bias.copy_(base.bias)
            base = merged
        elif name in layer.lora_A:
            with torch.no_grad():
                base.weight.add_(_delta(layer, name).to(base.weight.dtype))
        parent, _, child = module_name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, child, base)
    return model


# --- files ---------------------------------------------------------------------------------------------------


def _hf_module(name: str) -> str:
    """nativevl module name -> transformers in-memory module name (`mlp1.1` -> `model.multi_modal_projector
    .linear_1`), through the tensor-name tables."""
    return in_memory_name(next(iter(to_transformers({name + ".weight": torch.empty(0)}))).removesuffix(".weight"))


def _pattern(names: list[str]) -> str:
    """One regex (PEFT fullmatches a string target_modules) for these module names, layer numbers as \\d+."""
    shapes = sorted({re.sub(r"\\\.(\d+)\\\.", r"\\.\\d+\\.", re.escape(n)) for n in names})
    return "|".join(f"({s})" for s in shapes) if len(shapes) > 1 else shapes[0]


def adapter_files(model: InternVLModel, name: str = "default", trained: dict[str, torch.Tensor] | None = None,
                  base: str | None = None, state: dict[str, torch.Tensor] | None = None
                  ) -> tuple[dict, dict[str, torch.Tensor]]:
    """adapter_config.json's dict and adapter_model.safetensors' tensors for adapter `name` of `model`.
    `trained`: whole tensors (nativevl names) trained beside the adapter (unfrozen modules), written as
    `modules_to_save`. `state`: the tensors to write, under the model's parameter names (a full state gathered
    from FSDP2 shards); default the model's own."""
    state = state if state is not None else dict(model.state_dict())
    tensors: dict[str, torch.Tensor] = {}
    ranks: dict[str, int] = {}
    hf_names: list[str] = []
    for module_name, layer in lora_layers(model):
        if name not in layer.lora_A:
            continue
        a = state[f"{module_name}.lora_A.{name}.weight"].detach().float().cpu().contiguous()
        b = state[f"{module_name}.lora_B.{name}.weight"].detach().float().cpu()
        fused = _VIT_QKV.match(module_name)
        parts = ([(f"model.vision_tower.encoder.layer.{fused.group(1)}.attention.{p}_proj", piece)
                  for p, piece in zip("qkv", b.chunk(3, dim=0), strict=True)] if fused else
                 [(_hf_module(module_name), b)])
        for hf_name, b_part in parts:
            tensors[f"{PREFIX}{hf_name}.lora_A.weight"] = a.clone()
            tensors[f"{PREFIX}{hf_name}.lora_B.weight"] = b_part.contiguous()
            hf_names.append(hf_name)
            ranks[hf_name] = a.shape[0]
    if not hf_names:
        raise ValueError(f"the model has no LoRA adapter named {name!r}")
    modules_to_save: list[str] = []
    for key, tensor in to_transformers({k.replace(".base_layer", ""): v for k, v in (trained or {}).items()}).items():
        hf_key = in_memory_name(key)
        tensors[PREFIX + hf_key] = tensor.detach().cpu().contiguous()
        modules_to_save.append(hf_key.rpartition(".")[0])
    llm = [r for n, r in ranks.items() if ".language_model." in n]
    rank = llm[0] if llm else next(iter(ranks.values()))
    others = sorted({r for r in ranks.values() if r != rank})
    patterns = {_pattern([n for n, r in ranks.items() if r == other]): other for other in others}
    config = _lora_config(rank, [], DROPOUT).to_dict()
    config.update(target_modules=_pattern(hf_names), rank_pattern=patterns,
                  alpha_pattern={k: 2 * r for k, r in patterns.items()},
                  modules_to_save=sorted(set(modules_to_save)) or None, base_model_name_or_path=base,
                  inference_mode=True,
                  auto_mapping={"base_model_class": "InternVLForConditionalGeneration",
                                "parent_library": "transformers.models.internvl.modeling_internvl"})
    config["peft_type"] = "LORA"
    config.pop("runtime_config", None)
    return _jsonable(config), tensors


def _jsonable(value: object) -> object:
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [_jsonable(v) for v in value]
    if hasattr(value, "value"):  # enums (peft_type, task_type)
        return value.value
    return value


def save_adapter(model: InternVLModel, folder: str | Path, name: str = "default",
                 trained: dict[str, torch.Tensor] | None = None, base: str | None = None,
                 sha256: str | None = None, state: dict[str, torch.Tensor] | None = None) -> Path:
    """Write adapter `name` in PEFT's format (module docstring)."""
    config, tensors = adapter_files(model, name, trained, base, state)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_file(tensors, folder / ADAPTER_WEIGHTS, metadata={"format": "pt"})
    (folder / ADAPTER_CONFIG).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    (folder / ADAPTER_BASE).write_text(json.dumps({"base_model_name_or_path": base, "base_sha256": sha256}) + "\n")
    return folder


def read_adapter_config(folder: str | Path) -> dict:
    path = Path(folder) / ADAPTER_CONFIG
    if not path.is_file():
        raise AdapterError(f"{folder}: no {ADAPTER_CONFIG} (not a PEFT adapter folder)")
    try:
        config = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise AdapterError(f"{path}: not valid JSON ({e})") from None
    if config.get("peft_type") != "LORA":
        raise AdapterError(f"{path}: peft_type is {config.get('peft_type')!r}; nativevl reads LORA adapters")
    for field in ("use_dora", "use_rslora"):
        if config.get(field):
            raise AdapterError(f"{path}: {field} = true is not supported (plain LoRA only)")
    if config.get("lora_bias"):
        raise AdapterError(f"{path}: lora_bias = true is not supported")
    return config


def read_adapter_base(folder: str | Path) -> dict:
    """adapter_base.json (nativevl's adapters), or {} for an adapter PEFT wrote."""
    path = Path(folder) / ADAPTER_BASE
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise AdapterError(f"{path}: not valid JSON ({e})") from None


def _alpha(config: dict, hf_name: str, rank_default: int) -> float:
    """PEFT's rule: alpha_pattern's first key matching the module, else lora_alpha (rank_pattern alike)."""
    for key, value in (config.get("alpha_pattern") or {}).items():
        if re.match(rf"(.*\.)?({key})$", hf_name):
            return float(value)
    return float(config.get("lora_alpha", rank_default))


def _read_tensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        with safe_open(path, framework="pt") as f:
            return {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open is not a dict
    except Exception as e:  # noqa: BLE001 - safetensors raises several kinds
        raise AdapterError(f"{path}: cannot read ({e})") from None


def _own_loras(config: dict, tensors: dict[str, torch.Tensor], where: Path
               ) -> dict[str, tuple[torch.Tensor, torch.Tensor, float]]:
    """{nativevl module: (A, B, alpha)} from PEFT-named tensors; q/k/v of a ViT layer fuse into its qkv."""
    loras: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in tensors.items():
        m = re.match(r"^(?:base_model\.model\.)?(.+)\.lora_([AB])(?:\.[^.]+)?\.weight$", key)
        if m:
            loras.setdefault(m.group(1), {})[m.group(2)] = tensor
    out: dict[str, tuple[torch.Tensor, torch.Tensor, float]] = {}
    qkv: dict[str, dict[str, tuple[torch.Tensor, torch.Tensor, float]]] = {}
    for hf_name, ab in loras.items():
        if set(ab) != {"A", "B"}:
            raise AdapterError(f"{where}: {hf_name} has lora_{''.join(ab)} only")
        hf_name = _memory(hf_name)
        rank = ab["A"].shape[0]
        alpha = _alpha(config, hf_name, rank)
        if ab["B"].shape[1] != rank:
            raise AdapterError(f"{where}: {hf_name}: lora_B is {tuple(ab['B'].shape)} for a rank-{rank} lora_A")
        fused = _HF_QKV.match(hf_name)
        if fused:
            qkv.setdefault(fused.group(1), {})[fused.group(2)] = (ab["A"], ab["B"], alpha)
            continue
        own = next(iter(from_transformers({legacy_name(hf_name) + ".weight": ab["A"]}))).removesuffix(".weight")
        if own.startswith("<unmapped>"):
            raise AdapterError(f"{where}: {hf_name} is not a module of an InternVL model")
        out[own] = (ab["A"], ab["B"], alpha)
    for layer, parts in qkv.items():
        out[f"vision_model.encoder.layers.{layer}.attn.qkv"] = _fuse_qkv(parts, where, layer)
    return out


def _memory(name: str) -> str:
    """A module name as transformers holds it in memory, whichever form the adapter used."""
    return in_memory_name(legacy_name(name))


def _fuse_qkv(parts: dict[str, tuple[torch.Tensor, torch.Tensor, float]], where: Path, layer: str
              ) -> tuple[torch.Tensor, torch.Tensor, float]:
    """One LoRA on the fused qkv from LoRAs on some of q, k, v (a missing one adds nothing)."""
    (a0, b0, alpha0), *rest = parts.values()
    rank, rows = a0.shape[0], b0.shape[0]
    if any(b.shape[0] != rows or a.shape[0] != rank or alpha != alpha0 for a, b, alpha in parts.values()):
        raise AdapterError(f"{where}: the ViT layer {layer}'s q/k/v LoRAs differ in rank, size or alpha")
    if all(torch.equal(a, a0) for a, _, _ in parts.values()):  # one shared A (nativevl, the original)
        b = torch.cat([parts[p][1] if p in parts else torch.zeros_like(b0) for p in "qkv"], dim=0)
        return a0, b, alpha0
    a = torch.cat([parts[p][0] if p in parts else torch.zeros_like(a0) for p in "qkv"], dim=0)
    b = torch.block_diag(*[parts[p][1] if p in parts else torch.zeros_like(b0) for p in "qkv"])
    return a, b, alpha0 * 3  # rank 3r: alpha 3x keeps the scale alpha / r


def load_adapter(model: InternVLModel, folder: str | Path, name: str = "default",
                 base_sha256: str | None = None, freeze: bool = True) -> InternVLModel:
    """Add the adapter in `folder` (PEFT's format: written by nativevl, or by PEFT on transformers' InternVL)
    to `model` as adapter `name`, active; whole modules it carries (`modules_to_save`) are loaded into the
    model. Where the model already has adapter `name` (a training run resuming), its tensors are copied into
    the same parameters. `freeze`: every parameter frozen afterwards (inference). With `base_sha256` (the
    base's `checkpoint_hash`), an adapter recording another base's is refused. Every mismatch is an AdapterError naming the
    file, before the model is changed."""
    folder = Path(folder)
    config = read_adapter_config(folder)
    where = folder / ADAPTER_WEIGHTS
    if not where.is_file():
        raise AdapterError(f"{folder}: no {ADAPTER_WEIGHTS}")
    recorded = read_adapter_base(folder).get("base_sha256")
    if base_sha256 is not None and recorded and base_sha256 != recorded:
        raise AdapterError(f"{folder / ADAPTER_BASE}: base_sha256 is that of another base checkpoint than this one "
                           f"(base_model_name_or_path: {config.get('base_model_name_or_path')})")
    tensors = _read_tensors(where)
    loras = _own_loras(config, tensors, where)
    if not loras:
        raise AdapterError(f"{where}: no lora_A/lora_B tensors")
    _check_targets(model, loras, config, where, name)
    saved = _checked_saved_modules(model, tensors, where)
    for own, (a, b, alpha) in loras.items():
        layer = model.get_submodule(own)
        if not (isinstance(layer, LoraLayer) and name in layer.lora_A):
            parent, _, leaf = own.rpartition(".")
            lora = _lora_config(a.shape[0], [leaf], float(config.get("lora_dropout", 0.0)))
            lora.lora_alpha = alpha
            _inject(lora, model.get_submodule(parent), name)
            layer = model.get_submodule(own)
            layer.train(model.training)
        with torch.no_grad():
            layer.lora_A[name].weight.copy_(a)
            layer.lora_B[name].weight.copy_(b)
    with torch.no_grad():
        for param, value in saved:
            param.copy_(value)
    use_adapter(model, name)  # (PEFT's set_adapter marks the adapter trainable: freeze after it)
    if freeze:
        model.requires_grad_(False)
    return model


def _check_targets(model: InternVLModel, loras: dict[str, tuple[torch.Tensor, torch.Tensor, float]], config: dict,
                   where: Path, name: str) -> None:
    modules = dict(model.named_modules())
    for own, (a, b, alpha) in loras.items():
        target = modules.get(own)
        base = target.get_base_layer() if isinstance(target, LoraLayer) else target
        if base is None:
            raise AdapterError(f"{where}: the adapter targets {own}, which this model does not have "
                               f"(target_modules: {config.get('target_modules')})")
        if not isinstance(base, (nn.Linear, QuantLinear)):
            raise AdapterError(f"{where}: {own} is a {type(base).__name__}, not a linear layer")
        if a.shape[1] != base.in_features or b.shape[0] != base.out_features:
            raise AdapterError(f"{where}: {own}: the adapter is {b.shape[0]}x{a.shape[1]}, this model's layer "
                               f"{base.out_features}x{base.in_features}: an adapter for another base")
        if isinstance(target, LoraLayer) and name in target.lora_A:
            if target.lora_A[name].weight.shape != a.shape or target.scaling[name] != alpha / a.shape[0]:
                raise AdapterError(f"{where}: {own}: rank {a.shape[0]} / alpha {alpha}, the model's adapter "
                                   f"{name!r} has rank {target.r[name]} / scale {target.scaling[name]}")


def adapter_state(model: InternVLModel, folder: str | Path, name: str = "default") -> dict[str, torch.Tensor]:
    """The adapter in `folder` as tensors under `model`'s parameter names, for a model that already has adapter
    `name` of the same shape (a run resuming: set into it with set_model_state_dict, sharded or not)."""
    folder = Path(folder)
    config = read_adapter_config(folder)
    where = folder / ADAPTER_WEIGHTS
    tensors = _read_tensors(where)
    loras = _own_loras(config, tensors, where)
    _check_targets(model, loras, config, where, name)
    state = {}
    for own, (a, b, _) in loras.items():
        state[f"{own}.lora_A.{name}.weight"], state[f"{own}.lora_B.{name}.weight"] = a, b
    names = {k.replace(".base_layer", ""): k for k, _ in model.named_parameters()}
    for key, value in _saved_modules(tensors).items():
        if key not in names:
            raise AdapterError(f"{where}: {key.removeprefix('<unmapped>')} is not a parameter of this model")
        state[names[key]] = value
    return state


def _saved_modules(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The whole (non-LoRA) tensors of an adapter file, under nativevl's names."""
    hf = {legacy_name(k.removeprefix(PREFIX).replace(".modules_to_save.default", "")): v
          for k, v in tensors.items() if ".lora_" not in k}
    return from_transformers(hf) if hf else {}


def _checked_saved_modules(model: InternVLModel, tensors: dict[str, torch.Tensor], where: Path
                           ) -> list[tuple[torch.nn.Parameter, torch.Tensor]]:
    """(parameter, value) for the whole tensors an adapter carries, each checked against the model."""
    params = {k.replace(".base_layer", ""): p for k, p in model.named_parameters()}
    pairs = []
    for key, value in _saved_modules(tensors).items():
        if key not in params:
            raise AdapterError(f"{where}: {key.removeprefix('<unmapped>')} is not a parameter of this model")
        if params[key].shape != value.shape:
            raise AdapterError(f"{where}: {key} is {tuple(value.shape)}, the model's {tuple(params[key].shape)}")
        pairs.append((params[key], value))
    return pairs


def base_of(folder: str | Path) -> Path:
    """The base checkpoint an adapter names (adapter_base.json, else PEFT's base_model_name_or_path)."""
    folder = Path(folder)
    config = read_adapter_config(folder)
    named_in, base = folder / ADAPTER_BASE, read_adapter_base(folder).get("base_model_name_or_path")
    if not base:
        named_in, base = folder / ADAPTER_CONFIG, config.get("base_model_name_or_path")
    if not base:
        raise AdapterError(f"{named_in}: base_model_name_or_path is not set: give the base "
                           f"checkpoint and the adapter apart (e.g. nativevl chat BASE --adapter {folder})")
    if not (Path(base) / "config.json").is_file():
        raise AdapterError(f"{named_in}: base_model_name_or_path = {base!r} is not a checkpoint "
                           "folder here (no config.json); give the base and the adapter apart")
    return Path(base)
