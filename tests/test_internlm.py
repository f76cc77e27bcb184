"""InternVL3-9B's language model: the InternLM3 decoder (Llama-shaped: no biases, explicit head size, dynamic
NTK RoPE) against transformers' LlamaForCausalLM, the original folder's InternLM2 layout (one interleaved
`wqkv` per layer), both layouts round-tripping bit-exactly, and the 9B preset's size."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file
from transformers import LlamaConfig, LlamaForCausalLM

from nativevl import InternVL, preset
from nativevl.infer.generate import generate
from nativevl.weights import CheckpointError, convert


def llama_pair(max_positions: int = 64) -> tuple[LlamaForCausalLM, InternVL]:
    """A tiny random transformers Llama (head_dim 32, not hidden / heads = 16) and nativevl with its weights."""
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=1000, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, head_dim=32, max_position_embeddings=max_positions,
                         rms_norm_eps=1e-5, attention_bias=False, mlp_bias=False, tie_word_embeddings=False,
                         rope_parameters={"rope_type": "dynamic", "rope_theta": 1e4, "factor": 6.0},
                         bos_token_id=1, eos_token_id=None, pad_token_id=0)
    hf = LlamaForCausalLM(config).eval()
    cfg = preset("tiny-internlm").replace(**{"text.architecture": "LlamaForCausalLM", "text.head_dim_override": 32,
                                             "text.max_position_embeddings": max_positions, "text.rope_theta": 1e4})
    ours = InternVL.from_config(cfg).eval()
    ours.language_model.load_state_dict(hf.state_dict(), strict=True)
    return hf, ours


@torch.no_grad()
def test_logits_and_greedy_tokens_equal_transformers_llama():
    hf, ours = llama_pair()
    ids = torch.randint(10, 1000, (1, 50), generator=torch.Generator().manual_seed(1))
    diff = (ours(ids).logits - hf(input_ids=ids).logits).abs().max()
    assert diff.item() <= 1e-5
    # 20 greedy tokens: decoding crosses the 64-position limit, so dynamic NTK scaling is exercised too
    ref = hf.generate(input_ids=ids, max_new_tokens=20, do_sample=False, min_new_tokens=20)[:, ids.shape[1]:]
    assert generate(ours, ids, max_new_tokens=20).tolist() == ref.tolist()


@torch.no_grad()
def test_long_prompt_past_the_trained_length_scales_rope_as_transformers():
    hf, ours = llama_pair(max_positions=32)
    ids = torch.randint(10, 1000, (1, 120), generator=torch.Generator().manual_seed(2))
    assert (ours(ids).logits - hf(input_ids=ids).logits).abs().max().item() <= 1e-5


def test_wqkv_rows_are_grouped_by_key_value_head(tmp_path):
    """Row block order of the packed wqkv, written out by hand: group g = its query heads, its key, its value."""
    cfg = preset("tiny-internlm").replace(**{"text.num_attention_heads": 8, "text.hidden_size": 64})
    model = InternVL.from_config(cfg)
    attn, d = model.language_model.model.layers[1].self_attn, cfg.text.head_dim
    model.save_pretrained(tmp_path)
    wqkv = load_file(tmp_path / "model.safetensors")["language_model.model.layers.1.attention.wqkv.weight"]
    blocks = []
    for g in range(2):  # 2 key/value heads, 4 query heads each
        blocks += [attn.q_proj.weight[(g * 4 + j) * d:(g * 4 + j + 1) * d] for j in range(4)]
        blocks += [attn.k_proj.weight[g * d:(g + 1) * d], attn.v_proj.weight[g * d:(g + 1) * d]]
    assert torch.equal(wqkv, torch.cat(blocks))


def test_original_internlm2_layout_round_trips_bit_exactly(tmp_path):
    torch.manual_seed(3)
    model = InternVL.from_config(preset("tiny-internlm"))
    model.save_pretrained(tmp_path / "orig")
    stored = load_file(tmp_path / "orig/model.safetensors")
    assert "language_model.model.tok_embeddings.weight" in stored and "language_model.output.weight" in stored
    assert not any("q_proj" in k or "gate_proj" in k for k in stored)
    llm = json.loads((tmp_path / "orig/config.json").read_text())["llm_config"]
    assert llm["architectures"] == ["InternLM2ForCausalLM"] and llm["bias"] is False
    # original -> transformers (Llama text config) -> original: the same files
    convert(tmp_path / "orig", tmp_path / "hf", layout="transformers")
    text = json.loads((tmp_path / "hf/config.json").read_text())["text_config"]
    assert text["model_type"] == "llama" and text["attention_bias"] is False
    convert(tmp_path / "hf", tmp_path / "orig2", layout="original")
    again = load_file(tmp_path / "orig2/model.safetensors")
    assert list(stored) == list(again) and all(torch.equal(stored[k], again[k]) for k in stored)
    loaded = InternVL.from_pretrained(tmp_path / "orig2")
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), loaded.state_dict().values()))


@torch.no_grad()
def test_transformers_layout_runs_in_transformers_internvl(tmp_path):
    """The -hf layout of an InternLM decoder is a Llama text model that transformers' InternVL runs as is."""
    from reference import pixels, prompt
    from transformers import InternVLForConditionalGeneration

    torch.manual_seed(4)
    cfg = preset("tiny-internlm").replace(**{"vision.image_size": 448, "text.head_dim_override": 32})
    ours = InternVL.from_config(cfg).eval()
    ours.save_pretrained(tmp_path, layout="transformers")
    hf = InternVLForConditionalGeneration.from_pretrained(tmp_path).eval()
    ids, pv = prompt([2]), pixels(2)
    assert (hf(input_ids=ids, pixel_values=pv).logits - ours(ids, pixel_values=pv).logits).abs().max() <= 1e-5


def test_a_missing_or_misshaped_tensor_is_named(tmp_path):
    from safetensors.torch import save_file

    InternVL.from_config(preset("tiny-internlm")).save_pretrained(tmp_path)
    state = load_file(tmp_path / "model.safetensors")
    key = "language_model.model.layers.0.attention.wqkv.weight"
    state[key] = state[key][:-16]
    del state["language_model.model.layers.1.feed_forward.w3.weight"]
    save_file(state, tmp_path / "model.safetensors")
    with pytest.raises(CheckpointError) as e:
        InternVL.from_pretrained(tmp_path)
    assert "shape mismatch " + key in str(e.value) and "missing language_model.model.layers.1.feed_forward.w3" in str(
        e.value)


def test_biases_are_refused_with_a_clear_error(tmp_path):
    InternVL.from_config(preset("tiny-internlm")).save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["llm_config"]["bias"] = True
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="bias=true"):
        InternVL.from_pretrained(tmp_path)


def test_9b_preset_has_the_released_parameter_count():
    with torch.device("meta"):
        model = InternVL(preset("internvl3-9b"))
    n = sum(p.numel() for p in model.parameters())
    # InternViT-300M 304,012,288 + projector 33,570,816 + InternLM3-8B 8,804,241,408 (vocabulary 128,512):
    # 9.14B parameters, 18.28 GB in bf16, the "9.1B" / "18.3 GB" InternVL's docs list for InternVL3-9B
    assert n == 9_141_824_512
    cfg = model.config.text
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.num_attention_heads, cfg.num_key_value_heads,
            cfg.head_dim, cfg.intermediate_size) == (4096, 48, 32, 2, 128, 10240)


def test_nativevl_chat_answers_with_a_9b_layout_folder(tmp_path):
    """`nativevl chat` on a tiny random model in the 9B's folder layout (InternLM2 llm_config and packing)."""
    import subprocess
    import sys

    import numpy as np
    from PIL import Image
    from reference import make_tokenizer

    from nativevl import Pipeline

    torch.manual_seed(6)
    InternVL.from_config(preset("tiny-internlm")).save_pretrained(tmp_path)
    make_tokenizer(tmp_path)
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (200, 300, 3), dtype=np.uint8)).save(tmp_path / "a.png")
    done = subprocess.run([sys.executable, "-m", "nativevl", "chat", str(tmp_path), "--image", str(tmp_path / "a.png"),
                           "--max-new-tokens", "8", "What is it?"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == Pipeline(tmp_path)("What is it?", images=[tmp_path / "a.png"], max_new_tokens=8)


def spm_folder(folder):
    """A tiny InternLM3-style SentencePiece tokenizer: BPE with byte fallback, no dummy prefix, <s>=1 </s>=2,
    the chat tokens inside the vocabulary and InternVL's 9 tokens added after it (ids from added_tokens.json)."""
    import glob
    import sysconfig

    import sentencepiece as spm

    from nativevl.tokenizer import INTERNVL_TOKENS

    folder.mkdir(parents=True, exist_ok=True)
    text = "\n".join(open(f, encoding="utf-8", errors="ignore").read()
                     for f in sorted(glob.glob(sysconfig.get_paths()["stdlib"] + "/*.py"))[:12])
    (folder / "corpus.txt").write_text(text + "\n你好，世界。\n")
    spm.SentencePieceTrainer.train(
        input=str(folder / "corpus.txt"), model_prefix=str(folder / "tokenizer"), vocab_size=600, model_type="bpe",
        byte_fallback=True, add_dummy_prefix=False, remove_extra_whitespaces=False, normalization_rule_name="identity",
        user_defined_symbols=["<|im_start|>", "<|im_end|>"], unk_id=0, bos_id=1, eos_id=2, pad_id=-1,
        allow_whitespace_only_pieces=True, split_by_whitespace=True, minloglevel=2)
    (folder / "corpus.txt").unlink()
    (folder / "tokenizer.vocab").unlink()
    sp = spm.SentencePieceProcessor(model_file=str(folder / "tokenizer.model"))
    added = {t: sp.get_piece_size() + i for i, t in enumerate(INTERNVL_TOKENS)}
    (folder / "added_tokens.json").write_text(json.dumps(added))
    chat = {t: sp.piece_to_id(t) for t in ("<|im_start|>", "<|im_end|>")}  # in the vocabulary, listed as special
    config = {"tokenizer_class": "InternLM3Tokenizer", "add_bos_token": True, "add_eos_token": False,
              "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "</s>",
              "added_tokens_decoder": {str(i): {"content": t, "special": True} for t, i in {**chat, **added}.items()}}
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    return sp, added


def test_sentencepiece_tokenizer_encodes_as_internlm3(tmp_path):
    """Split at added tokens, each piece encoded by SentencePiece alone, `<s>` first: the ids written out by hand."""
    from nativevl.tokenizer import load_tokenizer

    sp, added = spm_folder(tmp_path)
    tok = load_tokenizer(tmp_path)
    start, end = sp.piece_to_id("<|im_start|>"), sp.piece_to_id("<|im_end|>")
    prompt = ("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n<img><IMG_CONTEXT><IMG_CONTEXT></img>\n"
              "What is  it? 你好<|im_end|>\n<|im_start|>assistant\n")
    ctx = added["<IMG_CONTEXT>"]
    expected = ([1, start] + sp.encode("system\nBe brief.") + [end] + sp.encode("\n") + [start] + sp.encode("user\n")
                + [added["<img>"], ctx, ctx, added["</img>"]] + sp.encode("\nWhat is  it? 你好") + [end]
                + sp.encode("\n") + [start] + sp.encode("assistant\n"))
    assert tok.prompt_ids(prompt) == expected and tok.encode(prompt) == expected[1:]
    assert tok.img_context_id == ctx and tok.im_end_id == end and len(tok) == sp.get_piece_size() + 9
    assert tok.decode(tok.encode(prompt), skip_special_tokens=False) == prompt
    assert tok.decode(tok.encode("<img>a b</img>"), skip_special_tokens=True) == "a b"
    assert tok.decode(tok.encode("<|im_start|>user\nhi<|im_end|>"), skip_special_tokens=True) == "user\nhi"


def test_model_chat_with_a_sentencepiece_9b_layout_folder(tmp_path):
    """`model.chat` on a tiny 9B-layout folder with an InternLM3-style tokenizer: the prompt starts with <s>."""
    import numpy as np
    from PIL import Image

    from nativevl import Pipeline
    from nativevl.infer.chat import build_query

    sp, added = spm_folder(tmp_path)
    torch.manual_seed(7)
    InternVL.from_config(preset("tiny-internlm").replace(img_context_token_id=added["<IMG_CONTEXT>"])).save_pretrained(
        tmp_path)
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (64, 96, 3), dtype=np.uint8)).save(tmp_path / "a.png")
    pipe = Pipeline(tmp_path)
    question, pixels, patches = pipe.prepare("What is it?", [tmp_path / "a.png"])
    ids = pipe.tokenizer.prompt_ids(build_query(pipe.model, question, pixels, None, patches)[1])
    assert ids[0] == 1 and ids.count(added["<IMG_CONTEXT>"]) == 256 * sum(patches)
    answer = pipe("What is it?", images=[tmp_path / "a.png"], max_new_tokens=6)
    assert isinstance(answer, str) and answer == pipe("What is it?", images=[tmp_path / "a.png"], max_new_tokens=6)
