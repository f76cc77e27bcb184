"""Reading and writing checkpoint folders (config.json + single-file or sharded safetensors) in either layout;
the layouts' names and configs are in names.py and configs.py.

Only safetensors are read: nothing is unpickled. Tensors come memory-mapped from the files and are assigned
into a model built on the meta device, so a load in the stored dtype holds one copy of the weights.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import TypeVar

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from nativevl.config import ModelConfig
from nativevl.device import check_device
from nativevl.model.internvl import InternVLModel
from nativevl.weights.configs import config_to_dict, read_config
from nativevl.weights.errors import LAYOUTS, CheckpointError
from nativevl.model.quant import QuantConfig, quantized_structure
from nativevl.weights.quantized import awq_shapes, from_awq, quantization_dict, read_quantization
from nativevl.weights.names import from_internlm2, from_transformers, legacy_name, to_internlm2, to_transformers

M = TypeVar("M", bound=InternVLModel)
INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
# Non-weight files a checkpoint folder carries along (tokenizer, generation and processor settings).
SIDECAR_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
    "tokenizer.model",
    "generation_config.json",
    "preprocessor_config.json",
    "processor_config.json",
    "chat_template.jinja",
    "chat_template.json",
)


# --- reading ---------------------------------------------------------------------------------------------------


def weight_files(folder: Path) -> dict[str, Path]:
    """Tensor name -> the safetensors file that holds it (from the shard index, or the single file)."""
    index = folder / INDEX_FILE
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError) as e:
            raise CheckpointError(f"{index}: not a valid shard index ({e})") from None
        files = {name: folder / shard for name, shard in weight_map.items()}
        for shard in sorted(set(files.values())):
            if not shard.is_file():
                raise CheckpointError(f"{index} names {shard.name}, which does not exist")
        return files
    single = folder / SINGLE_FILE
    if single.is_file():
        with safe_open(single, framework="pt") as f:
            return {name: single for name in f.keys()}
    pickled = sorted(p.name for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES)
    if pickled:
        raise CheckpointError(
            f"{folder}: only pickle weights found ({', '.join(pickled)}). nativevl never unpickles files. "
            "Convert them once, in an environment you trust, with:\n"
            "  python -c \"import torch, safetensors.torch as st; "
            "sd = torch.load('pytorch_model.bin', weights_only=True); "
            "st.save_file({k: v.contiguous() for k, v in sd.items()}, 'model.safetensors')\""
        )
    raise CheckpointError(f"{folder}: no {SINGLE_FILE} or {INDEX_FILE}")


def _shapes(files: dict[str, Path]) -> dict[str, tuple[int, ...]]:
    shapes: dict[str, tuple[int, ...]] = {}
    by_file: dict[Path, list[str]] = {}
    for name, file in files.items():
        by_file.setdefault(file, []).append(name)
    for file, names in by_file.items():
        with safe_open(file, framework="pt") as f:
            present = set(f.keys())
            for name in names:
                if name not in present:
                    raise CheckpointError(f"{file.name}: the shard index lists {name!r} but the file lacks it")
                shapes[name] = tuple(f.get_slice(name).get_shape())
    return shapes


def _check(expected: dict[str, torch.Tensor], found: dict[str, tuple[int, ...]], folder: Path) -> None:
    """One error listing every missing, unexpected and mis-shaped tensor by its name in the files."""
    problems = []
    for name in sorted(set(expected) - set(found)):
        problems.append(f"missing {name} (expected shape {tuple(expected[name].shape)})")
    for name in sorted(set(found) - set(expected)):
        problems.append(f"unexpected {name} (shape {found[name]})")
    for name in sorted(set(expected) & set(found)):
        if tuple(expected[name].shape) != found[name]:
            problems.append(f"shape mismatch {name}: model expects {tuple(expected[name].shape)}, file has {found[name]}")
    if problems:
        listing = "\n  ".join(problems[:50]) + ("\n  …" if len(problems) > 50 else "")
        raise CheckpointError(f"{folder}: the weights do not fit the config ({len(problems)} problems):\n  {listing}")


def _expected_in_layout(model: InternVLModel, layout: str) -> dict[str, torch.Tensor]:
    return _to_layout(own_state_dict(model), model.config, layout)


def _to_layout(state: dict[str, torch.Tensor], cfg: ModelConfig, layout: str) -> dict[str, torch.Tensor]:
    """nativevl names -> the names (and packing) a folder of `layout` stores for this model."""
    if layout == "transformers":
        return to_transformers(state)
    return to_internlm2(state, cfg.text) if cfg.text.architecture == "InternLM2ForCausalLM" else state


def _normalise_names(files: dict[str, Path], layout: str) -> dict[str, str]:
    """File name -> the name the model's expected state uses for that layout (in-memory HF names -> legacy)."""
    if layout != "transformers":
        return {name: name for name in files}
    return {name: legacy_name(name) for name in files}


def load_model(
    path: str | Path, dtype: torch.dtype | None = None, device: torch.device | str | None = None,
    model_class: type[M] = InternVLModel,
) -> M:
    """Read a checkpoint folder of either layout. dtype None keeps the stored dtype. `model_class` is built
    (`nativevl.InternVL`, the class users hold, passes itself). A LoRA adapter folder (a LoRA run's `final`)
    loads the base it names with the adapter merged in (weights/lora.py)."""
    device = check_device(device)
    folder = Path(path)
    if not (folder / "config.json").is_file() and (folder / "adapter_config.json").is_file():
        return load_merged(folder, dtype=dtype, device=device, model_class=model_class)
    cfg, layout = read_config(folder)
    with torch.device("meta"):
        model = model_class(cfg)
    files = weight_files(folder)
    names = _normalise_names(files, layout)
    if cfg.text.tie_word_embeddings:
        cfg.text.tie_word_embeddings = _stored_head_is_tied(files, names)
        if not cfg.text.tie_word_embeddings:
            with torch.device("meta"):
                model = model_class(cfg)
    quant = read_quantization(json.loads((folder / "config.json").read_text()), folder)
    if quant is not None:  # the linear layers the folder holds as codes, built empty on the meta device
        quantized_structure(model, quant[0])
    expected = _expected_in_layout(model, layout)
    if quant is not None and quant[1] == "awq":
        expected = awq_shapes(expected)
    if cfg.text.tie_word_embeddings:  # a stored copy of a tied head is not read
        for name in [n for n, legacy in names.items() if legacy == "language_model.lm_head.weight"]:
            del files[name], names[name]
    _check(expected, {names[n]: s for n, s in _shapes(files).items()}, folder)

    state = {names[name]: tensor for name, tensor in _read(files, device)}
    if layout == "transformers":
        state = from_transformers(state)
    elif cfg.text.architecture == "InternLM2ForCausalLM":
        state = from_internlm2(state, cfg.text)
    if quant is not None and quant[1] == "awq":
        state = from_awq(state)
    if dtype is not None:
        state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
    model.load_state_dict(state, strict=False, assign=True)  # keys were checked above; a tied head is absent
    model.language_model.tie_weights()
    left = [name for name, p in [*model.named_parameters(), *model.named_buffers()] if p.is_meta]
    if left:
        raise CheckpointError(f"{folder}: no weights were read for {', '.join(left)}")
    return model


def load_merged(folder: str | Path, dtype: torch.dtype | None = None, device: torch.device | str | None = None,
                model_class: type[M] = InternVLModel) -> M:
    """The base checkpoint a LoRA adapter folder names, with the adapter merged in (float32 unless `dtype`)."""
    from nativevl.weights.lora import base_of, load_adapter, merge_lora

    base = base_of(folder)
    model = load_model(base, dtype=torch.float32, device=device, model_class=model_class)
    merged = merge_lora(load_adapter(model, folder, base_sha256=checkpoint_hash(base)))
    return merged.to(dtype) if dtype is not None else merged


def checkpoint_hash(folder: str | Path) -> str:
    """SHA-256 over a checkpoint's weight files (names and bytes): what a LoRA adapter records of its base."""
    digest = hashlib.sha256()
    for path in sorted(set(weight_files(Path(folder)).values())):
        digest.update(path.name.encode())
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 22), b""):
                digest.update(block)
    return digest.hexdigest()


def _stored_head_is_tied(files: dict[str, Path], names: dict[str, str]) -> bool:
    """A config that ties the head stays tied unless the files hold an lm_head different from the embedding
    (transformers unties such checkpoints too, with a warning)."""
    by_legacy = {legacy: name for name, legacy in names.items()}
    head, embed = by_legacy.get("language_model.lm_head.weight"), by_legacy.get("language_model.model.embed_tokens.weight")
    if head is None or embed is None:
        return True
    with safe_open(files[head], framework="pt") as f, safe_open(files[embed], framework="pt") as g:
        return torch.equal(f.get_tensor(head), g.get_tensor(embed))


def _read(files: dict[str, Path], device: torch.device | str | None) -> Iterator[tuple[str, torch.Tensor]]:
    by_file: dict[Path, list[str]] = {}
    for name, file in files.items():
        by_file.setdefault(file, []).append(name)
    for file, names in by_file.items():
        with safe_open(file, framework="pt", device=str(device or "cpu")) as f:
            for name in names:
                yield name, f.get_tensor(name)


def read_state(path: str | Path) -> dict[str, torch.Tensor]:
    """Every tensor of an original-layout folder under its own name (single file or shards)."""
    return dict(_read(weight_files(Path(path)), "cpu"))


# --- writing ---------------------------------------------------------------------------------------------------


def own_state_dict(model: InternVLModel) -> dict[str, torch.Tensor]:
    """The model's tensors under their original names, without a tied lm_head (it is the embedding)."""
    state = model.state_dict()
    if model.config.text.tie_word_embeddings:
        state.pop("language_model.lm_head.weight", None)
    return state


def parse_size(size: str | int) -> int:
    """A size with its unit (5GB, 500MB, 1.5GiB, 1048576B; K/M/G are powers of 1024) in bytes; an int is bytes.
    A bare number is refused: `--max-shard-size 5` meant 5 bytes (115 shards) where 5GB was meant."""
    if isinstance(size, int):
        return size
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMG]?)(?:I?B)\s*", size.upper())
    if not m:
        raise ValueError(f"cannot read size {size!r}: give a number with its unit, e.g. 5GB, 500MB or 1048576B")
    return int(float(m.group(1)) * {"": 1, "K": 2**10, "M": 2**20, "G": 2**30}[m.group(2)])


def save_model(model: InternVLModel, path: str | Path, layout: str = "original", max_shard_size: str | int = "5GB") -> None:
    """Write config.json and safetensors (sharded with an index past `max_shard_size`)."""
    save_state(own_state_dict(model), model.config, path, layout, max_shard_size,
               quantization=getattr(model, "quantization", None))


def save_state(state: dict[str, torch.Tensor], config: ModelConfig, path: str | Path, layout: str = "original",
               max_shard_size: str | int = "5GB", quantization: QuantConfig | None = None) -> None:
    """Write a full state dict under nativevl's (original) names, e.g. one gathered from FSDP2 shards."""
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    if config.text.tie_word_embeddings:
        state = {k: v for k, v in state.items() if k != "language_model.lm_head.weight"}
    if quantization is not None and layout == "transformers" and "vision_model" in quantization.parts:
        raise ValueError("a quantized vision tower is written in the original layout only (the transformers layout "
                         "splits its q/k/v)")
    dtype = str(next(v for v in state.values() if v.is_floating_point()).dtype).removeprefix("torch.")
    state = _to_layout(state, config, layout)
    state = {k: v.detach().contiguous().cpu() for k, v in state.items()}
    config_json = config_to_dict(config, layout, dtype)
    if quantization is not None:
        config_json["quantization_config"] = quantization_dict(quantization)
    (folder / "config.json").write_text(json.dumps(config_json, indent=2) + "\n")
    for stale in [*folder.glob("model-*-of-*.safetensors"), folder / INDEX_FILE, folder / SINGLE_FILE]:
        stale.unlink(missing_ok=True)
    _write_shards(state, folder, parse_size(max_shard_size))


def _write_shards(state: dict[str, torch.Tensor], folder: Path, limit: int) -> None:
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for name, tensor in state.items():
        nbytes = tensor.numel() * tensor.element_size()
        if shards[-1] and size + nbytes > limit:
            shards.append({})
            size = 0
        shards[-1][name] = tensor
        size += nbytes
    metadata = {"format": "pt"}
    if len(shards) == 1:
        save_file(shards[0], folder / SINGLE_FILE, metadata=metadata)
        return
    weight_map = {}
    for i, shard in enumerate(shards, start=1):
        name = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, folder / name, metadata=metadata)
        weight_map.update({key: name for key in shard})
    total = sum(t.numel() * t.element_size() for t in state.values())
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (folder / INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n")


def convert(src: str | Path, dst: str | Path, layout: str, dtype: torch.dtype | None = None,
            max_shard_size: str | int = "5GB") -> InternVLModel:
    """Rewrite a checkpoint folder in another layout (and optionally dtype), carrying the tokenizer along."""
    src, dst = Path(src), Path(dst)
    if src.resolve() == dst.resolve():
        raise ValueError("convert: SRC and DST must be different folders")
    model = load_model(src, dtype=dtype)
    save_model(model, dst, layout=layout, max_shard_size=max_shard_size)
    for name in SIDECAR_FILES:
        if (src / name).is_file():
            shutil.copy2(src / name, dst / name)
    source = json.loads((src / "config.json").read_text())
    if layout == "original" and source.get("model_type") == "internvl_chat" and "auto_map" in source:
        # keep an original folder usable with its remote code (trust_remote_code) after, e.g., a dtype change
        for code in src.glob("*.py"):
            shutil.copy2(code, dst / code.name)
        config = json.loads((dst / "config.json").read_text())
        config["auto_map"] = source["auto_map"]
        (dst / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    return model
