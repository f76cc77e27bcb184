"""nativevl: InternVL3 in plain PyTorch — the model, its checkpoints, inference and training."""

from nativevl.api import InternVL, Pipeline
from nativevl.config import ModelConfig, TextConfig, VisionConfig, preset
from nativevl.conversation import split_thinking
from nativevl.data.image import load_image
from nativevl.data.video import load_video
from nativevl.infer.generate import GenerationConfig
from nativevl.model.internvl import InternVLModel, Output, pixel_shuffle
from nativevl.model.text import KVCache
from nativevl.tokenizer import InternVLTokenizer, load_tokenizer

__all__ = [
    "GenerationConfig",
    "InternVL",
    "InternVLModel",
    "KVCache",
    "ModelConfig",
    "Output",
    "Pipeline",
    "TextConfig",
    "VisionConfig",
    "InternVLTokenizer",
    "load_image",
    "load_tokenizer",
    "load_video",
    "pixel_shuffle",
    "preset",
    "split_thinking",
]
__version__ = "0.1.0"
