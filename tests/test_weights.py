"""Checkpoint reading and writing: layouts, shards, dtype, memory, and errors that name the key."""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from reference import VISION_300M, hf_config, hf_model, pixels, prompt
from safetensors.torch import load_file, save_file

from nativevl import InternVL, preset
from nativevl.weights import CheckpointError, convert


@pytest.fixture(scope="module")
def tiny() -> InternVL:
    torch.manual_seed(0)
    return InternVL.from_config(preset("tiny")).eval()


def same_weights(a: InternVL, b: InternVL) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return list(sa) == list(sb) and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize("layout", ["original", "transformers"])
def test_sharded_checkpoints_round_trip(tiny, tmp_path, layout):
    tiny.save_pretrained(tmp_path, layout=layout, max_shard_size="200KB")
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    shards = sorted({f for f in index["weight_map"].values()})
    assert len(shards) > 3 and all((tmp_path / f).is_file() for f in shards)
    assert not (tmp_path / "model.safetensors").exists()
    assert index["metadata"]["total_size"] == sum(p.numel() * 4 for p in tiny.parameters())
    assert same_weights(InternVL.from_pretrained(tmp_path), tiny)


def test_transformers_reads_nativevl_shards(tiny, tmp_path):
    from transformers import InternVLForConditionalGeneration

    tiny.save_pretrained(tmp_path, layout="transformers", max_shard_size="300KB")
    hf = InternVLForConditionalGeneration.from_pretrained(tmp_path).eval()
    ids, pv = prompt([1]), pixels(1)
    with torch.no_grad():
        assert (hf(input_ids=ids, pixel_values=pv).logits - tiny(ids, pixel_values=pv).logits).abs().max() <= 1e-5


def test_reads_transformers_in_memory_names(tmp_path):
    """A file holding `model.vision_tower.*`, `model.language_model.*`, `lm_head.weight` (state_dict() names)."""
    hf = hf_model(hf_config(VISION_300M, False))
    hf.save_pretrained(tmp_path / "legacy")
    save_file({k: v.contiguous() for k, v in hf.state_dict().items()}, tmp_path / "legacy" / "model.safetensors")
    assert any(k.startswith("model.vision_tower.") for k in load_file(tmp_path / "legacy" / "model.safetensors"))
    ours = InternVL.from_pretrained(tmp_path / "legacy").eval()
    ids, pv = prompt([1]), pixels(1)
    with torch.no_grad():
        assert (ours(ids, pixel_values=pv).logits - hf(input_ids=ids, pixel_values=pv).logits).abs().max() <= 1e-5


def test_dtype_on_load_and_stored_dtype_by_default(tiny, tmp_path):
    tiny.save_pretrained(tmp_path / "fp32")
    assert next(InternVL.from_pretrained(tmp_path / "fp32").parameters()).dtype == torch.float32
    half = InternVL.from_pretrained(tmp_path / "fp32", dtype=torch.bfloat16)
    assert {p.dtype for p in half.parameters()} == {torch.bfloat16}
    half.save_pretrained(tmp_path / "bf16")
    assert json.loads((tmp_path / "bf16/config.json").read_text())["torch_dtype"] == "bfloat16"
    assert {p.dtype for p in InternVL.from_pretrained(tmp_path / "bf16").parameters()} == {torch.bfloat16}


def test_tied_head_is_not_stored_and_stays_tied(tmp_path):
    model = InternVL.from_config(preset("tiny-6b"))
    model.save_pretrained(tmp_path)
    assert "language_model.lm_head.weight" not in load_file(tmp_path / "model.safetensors")
    again = InternVL.from_pretrained(tmp_path)
    assert again.language_model.lm_head.weight is again.language_model.model.embed_tokens.weight


def _edit(folder: Path, change) -> None:
    file = folder / "model.safetensors"
    state = load_file(file)
    change(state)
    save_file(state, file)


def test_missing_unexpected_and_misshaped_tensors_are_named(tiny, tmp_path):
    tiny.save_pretrained(tmp_path, layout="transformers")

    def damage(state):
        del state["vision_tower.encoder.layer.1.attention.k_proj.bias"]
        state["vision_tower.extra.weight"] = torch.zeros(2)
        state["multi_modal_projector.linear_1.weight"] = torch.zeros(64, 100)

    _edit(tmp_path, damage)
    with pytest.raises(CheckpointError) as e:
        InternVL.from_pretrained(tmp_path)
    msg = str(e.value)
    assert "3 problems" in msg
    assert "missing vision_tower.encoder.layer.1.attention.k_proj.bias (expected shape (64,))" in msg
    assert "unexpected vision_tower.extra.weight (shape (2,))" in msg
    assert "multi_modal_projector.linear_1.weight: model expects (64, 256), file has (64, 100)" in msg


def test_pickle_weights_are_refused_and_never_unpickled(tmp_path, tiny):
    tiny.save_pretrained(tmp_path)
    (tmp_path / "model.safetensors").unlink()
    marker = tmp_path / "unpickled"

    class Bomb:
        def __reduce__(self):
            return (Path.touch, (marker,))

    (tmp_path / "pytorch_model.bin").write_bytes(pickle.dumps(Bomb()))
    with pytest.raises(CheckpointError, match=r"only pickle weights found \(pytorch_model.bin\).*never unpickles"):
        InternVL.from_pretrained(tmp_path)
    assert not marker.exists()


def test_bad_folders_are_clear_errors(tmp_path):
    with pytest.raises(CheckpointError, match="no config.json"):
        InternVL.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="config.json: not valid JSON"):
        InternVL.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llava"}))
    with pytest.raises(CheckpointError, match="model_type 'llava'"):
        InternVL.from_pretrained(tmp_path)


def test_v1_pixel_shuffle_cannot_be_written_in_the_transformers_layout(tmp_path):
    model = InternVL.from_config(preset("tiny").replace(ps_version="v1"))
    model.save_pretrained(tmp_path / "orig")
    assert InternVL.from_pretrained(tmp_path / "orig").config.ps_version == "v1"
    with pytest.raises(CheckpointError, match="pixel shuffle v2"):
        model.save_pretrained(tmp_path / "hf", layout="transformers")


def test_original_config_takes_the_image_token_from_the_tokenizer(tiny, tmp_path):
    tiny.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    del config["img_context_token_id"]  # released original configs do not carry it
    (tmp_path / "config.json").write_text(json.dumps(config))
    tokenizer = {"added_tokens": [{"id": 7, "content": "<img>"}, {"id": 9, "content": "<IMG_CONTEXT>"}]}
    (tmp_path / "tokenizer.json").write_text(json.dumps(tokenizer))
    assert InternVL.from_pretrained(tmp_path).config.img_context_token_id == 9


def test_released_style_original_config_is_read(tmp_path):
    """The fields of a released InternVL3 config.json (spec §1.5), with the values it carries."""
    model = InternVL.from_config(preset("tiny"))
    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["llm_config"].update(
        _name_or_path="./pretrained/Qwen2.5-32B-Instruct", rope_scaling={"factor": 2.0, "rope_type": "dynamic",
        "type": "dynamic"}, max_window_layers=70, moe_config=None, use_cache=False)
    config["vision_config"].update(_name_or_path="OpenGVLab/InternViT-6B-448px-V1-5", initializer_range=1e-10)
    config.update(system_message=None, image_fold=None, template="internvl2_5")
    (tmp_path / "config.json").write_text(json.dumps(config))
    cfg = InternVL.from_pretrained(tmp_path).config
    assert cfg.text.rope_scaling == {"type": "dynamic", "factor": 2.0}
    assert cfg.system_message is None and cfg.template == "internvl2_5"


def test_convert_cli(tiny, tmp_path):
    tiny.save_pretrained(tmp_path / "src")
    (tmp_path / "src/tokenizer.json").write_text("{}")
    run = [sys.executable, "-m", "nativevl", "convert"]
    done = subprocess.run([*run, str(tmp_path / "src"), str(tmp_path / "dst"), "--layout", "transformers",
                           "--dtype", "bfloat16"], capture_output=True, text=True, check=True)
    assert "(original) ->" in done.stdout and "427,008 parameters" in done.stdout
    assert (tmp_path / "dst/tokenizer.json").is_file()
    assert json.loads((tmp_path / "dst/config.json").read_text())["model_type"] == "internvl"
    assert {t.dtype for t in load_file(tmp_path / "dst/model.safetensors").values()} == {torch.bfloat16}
    bad = subprocess.run([*run, str(tmp_path / "nowhere"), str(tmp_path / "x"), "--layout", "original"],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "nowhere: no such checkpoint folder" in bad.stderr


MEMORY_PROBE = """
import resource, sys, torch
from nativevl import InternVL
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
model = InternVL.from_pretrained(sys.argv[1])
total = sum(float(p.double().sum()) for p in model.parameters())  # touch every weight
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) * 1024)
"""


def test_loading_holds_one_copy_of_the_weights(tmp_path):
    """Peak memory while loading (and reading every weight) stays well under two copies of the file."""
    cfg = preset("tiny").replace(**{"text.vocab_size": 60000, "text.hidden_size": 512, "text.intermediate_size":
                                    1024, "text.num_attention_heads": 8})
    InternVL.from_config(cfg).save_pretrained(tmp_path)
    size = (tmp_path / "model.safetensors").stat().st_size
    assert size > 200e6
    grew = int(subprocess.run([sys.executable, "-c", MEMORY_PROBE, str(tmp_path)], capture_output=True, text=True,
                              check=True).stdout)
    assert grew < 1.4 * size, f"loading a {size / 1e6:.0f} MB file grew peak memory by {grew / 1e6:.0f} MB"


def test_untied_head_survives_a_config_without_the_top_level_flag(tmp_path):
    """transformers ties by default; a stored lm_head that differs from the embedding unties it (as there)."""
    from transformers import InternVLForConditionalGeneration

    hf = hf_model(hf_config(VISION_300M, tied=False))
    hf.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    del config["tie_word_embeddings"], config["text_config"]["tie_word_embeddings"]
    (tmp_path / "config.json").write_text(json.dumps(config))
    ours = InternVL.from_pretrained(tmp_path).eval()
    assert not ours.config.text.tie_word_embeddings
    theirs = InternVLForConditionalGeneration.from_pretrained(tmp_path).eval()
    ids, pv = prompt([1]), pixels(1)
    with torch.no_grad():
        assert (ours(ids, pixel_values=pv).logits - theirs(input_ids=ids, pixel_values=pv).logits).abs().max() < 1e-5


def test_a_stored_copy_of_a_tied_head_keeps_it_tied(tmp_path):
    model = InternVL.from_config(preset("tiny-6b"))
    model.save_pretrained(tmp_path)
    _edit(tmp_path, lambda s: s.update({"language_model.lm_head.weight": s["language_model.model.embed_tokens.weight"].clone()}))
    again = InternVL.from_pretrained(tmp_path)
    assert again.language_model.lm_head.weight is again.language_model.model.embed_tokens.weight


@pytest.mark.parametrize("layout", ["original", "transformers"])
def test_rope_scaling_spelled_rope_type_survives_a_round_trip(tmp_path, layout):
    cfg = preset("tiny").replace(**{"text.rope_scaling": {"rope_type": "dynamic", "factor": 4}})
    assert cfg.text.rope_scaling == {"type": "dynamic", "factor": 4.0}
    InternVL.from_config(cfg).save_pretrained(tmp_path, layout=layout)
    assert InternVL.from_pretrained(tmp_path).config.text.rope_scaling == {"type": "dynamic", "factor": 4.0}


def test_original_config_without_ps_version_means_v1(tiny, tmp_path):
    tiny.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    for key in ("ps_version", "max_dynamic_patch", "use_thumbnail", "template"):
        del config[key]
    (tmp_path / "config.json").write_text(json.dumps(config))
    cfg = InternVL.from_pretrained(tmp_path).config
    assert (cfg.ps_version, cfg.max_dynamic_patch, cfg.use_thumbnail, cfg.template) == ("v1", 6, False, None)


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda c: c["llm_config"].update(model_type="phi3", architectures=None), "LLM phi3 \\(phi3\\) is not supported"),
        (lambda c: c["llm_config"].update(architectures=["InternLM2ForCausalLM"], bias=True), "bias=true"),
        (lambda c: c["llm_config"].update(rope_scaling={"type": "yarn", "factor": 4.0}), "'yarn' is not supported"),
        (lambda c: c.update(force_image_size=224), "force_image_size 224 differs"),
        (lambda c: c["llm_config"].update(use_sliding_window=True), "sliding-window"),
    ],
)
def test_unsupported_configs_fail_at_load_naming_the_file(tiny, tmp_path, change, message):
    tiny.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    change(config)
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=message) as e:
        InternVL.from_pretrained(tmp_path)
    assert "config.json" in str(e.value)


def test_convert_keeps_remote_code_for_original_to_original(tiny, tmp_path):
    tiny.save_pretrained(tmp_path / "src")
    config = json.loads((tmp_path / "src/config.json").read_text())
    config["auto_map"] = {"AutoModel": "modeling_internvl_chat.InternVLChatModel"}
    (tmp_path / "src/config.json").write_text(json.dumps(config))
    (tmp_path / "src/modeling_internvl_chat.py").write_text("# remote code\n")
    convert(tmp_path / "src", tmp_path / "dst", layout="original", dtype=torch.bfloat16)
    assert json.loads((tmp_path / "dst/config.json").read_text())["auto_map"] == config["auto_map"]
    assert (tmp_path / "dst/modeling_internvl_chat.py").is_file()
    convert(tmp_path / "src", tmp_path / "hf", layout="transformers")
    assert not (tmp_path / "hf/modeling_internvl_chat.py").exists()
