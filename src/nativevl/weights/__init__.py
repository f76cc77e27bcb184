"""Checkpoints: the original OpenGVLab layout and the transformers layout, single-file or sharded safetensors.

Layouts (spec §1.5; hf-transformers-reference §3, §4):
- "original": `config.json` with `model_type: internvl_chat` (`vision_config`, `llm_config`); keys as the
  original `InternVLChatModel` names them (fused `attn.qkv`, `ls1/ls2`, `mlp1.0/1/3`, `language_model.model.*`).
  This is nativevl's own state dict, so that mapping is the identity.
- "transformers": `config.json` with `model_type: internvl` (`vision_config`, `text_config`); q/k/v split,
  `lambda_1/2`, `multi_modal_projector.*`. Files written by transformers use the legacy names (`vision_tower.*`,
  `language_model.model.*`, `language_model.lm_head.weight`); in-memory names (`model.vision_tower.*`,
  `model.language_model.*`, `lm_head.weight`) are read too. nativevl writes the legacy names, as
  transformers' own `save_pretrained` does.

Only safetensors are read: nothing is unpickled. Tensors come memory-mapped from the files and are assigned
into a model built on the meta device, so a load in the stored dtype holds one copy of the weights.

Modules: names.py (tensor names between layouts), configs.py (config.json both ways), files.py (reading and
writing folders: `load_model`, `save_model`, `convert`), errors.py.
"""

from nativevl.weights.configs import config_from_dict, config_to_dict, read_config
from nativevl.weights.errors import LAYOUTS, CheckpointError
from nativevl.weights.files import (
    SIDECAR_FILES,
    checkpoint_hash,
    convert,
    load_model,
    own_state_dict,
    parse_size,
    read_state,
    save_model,
    save_state,
    weight_files,
)
from nativevl.weights.names import from_internlm2, from_transformers, to_internlm2, to_transformers

__all__ = [
    "LAYOUTS",
    "SIDECAR_FILES",
    "checkpoint_hash",
    "CheckpointError",
    "config_from_dict",
    "config_to_dict",
    "convert",
    "from_internlm2",
    "from_transformers",
    "load_model",
    "own_state_dict",
    "parse_size",
    "read_config",
    "read_state",
    "save_model",
    "save_state",
    "to_internlm2",
    "to_transformers",
    "weight_files",
]
