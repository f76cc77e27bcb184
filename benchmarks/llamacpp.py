"""llama.cpp beside nativevl on the same random-weight InternVL3-1B language model (issue 27): the CPU anchor.

What it measures, with llama.cpp's own tools on this CPU: decode tokens/s at batch 1 (`llama-bench -p 0 -n 64`)
and batch 8 (`llama-batched-bench -npl 8`, the generation rate over all 8 sequences), and prompt tokens/s for a
296-token prompt (`llama-bench -p 296 -n 0`), for the model in bf16, Q8_0 and Q4_0; beside them nativevl's
decode on the very same weights (`nativevl_rows`). Nothing is downloaded but PyPI's llama-cpp-python source:
llama.cpp is built from its vendored copy, the weights are nativevl's own random initialisation written as a
transformers Qwen2 folder, converted by llama.cpp's convert_hf_to_gguf.py and quantized by llama-quantize.
The two sides run one after the other, not in turns, so on a shared machine they see its load at different
times: read the figures as approximate. Nothing is asserted.

    .venv/bin/python -m benchmarks.llamacpp --out llamacpp.json [--cache DIR] [--seed 0] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tarfile
import time
from functools import partial
from pathlib import Path
from typing import Any

VERSION = "0.3.36"  # llama-cpp-python, whose sdist vendors llama.cpp
TARGETS = ("llama-bench", "llama-batched-bench", "llama-quantize")
DEFAULT_CACHE = Path("~/.cache/nativevl/llama.cpp").expanduser()
PRESET = "internvl3-1b"
PROMPT = 296  # prompt tokens (issue 27's prompt length)
DECODE = 64  # generated tokens per decode run
KINDS = ("bf16", "q8_0", "q4_0")


def _run(cmd: list[str], **kw: Any) -> str:
    """Run a command, echo it, return its stdout; a failure raises with the command's stderr tail."""
    shown = ["<CONVERT>" if c == CONVERT else str(c) for c in cmd]
    print("+", " ".join(shown), file=sys.stderr, flush=True)
    done = subprocess.run(list(map(str, cmd)), capture_output=True, text=True, check=False, **kw)
    if done.returncode:
        raise RuntimeError(f"{cmd[0]} failed ({done.returncode}):\n{done.stderr[-3000:]}{done.stdout[-2000:]}")
    return done.stdout


def source(cache: Path) -> Path:
    """The vendored llama.cpp folder of llama-cpp-python's sdist: downloaded once by pip (source only, never a
    wheel, so no prebuilt binary is ever run), unpacked once."""
    root = cache / f"llama_cpp_python-{VERSION}"
    if not (root / "vendor/llama.cpp/CMakeLists.txt").exists():
        cache.mkdir(parents=True, exist_ok=True)
        sdist = cache / f"llama_cpp_python-{VERSION}.tar.gz"
        if not sdist.exists():
            _run([sys.executable, "-m", "pip", "download", "--no-binary", ":all:", "--no-deps",
                  f"llama-cpp-python=={VERSION}", "-d", cache])
        with tarfile.open(sdist) as tar:
            tar.extractall(cache, filter="data")
    return root / "vendor/llama.cpp"


def build(cache: Path = DEFAULT_CACHE) -> Path:
    """llama.cpp's bench and quantize tools, built once into cache (a second call finds them and does nothing).
    Release, CPU only: GGML_NATIVE so ggml uses this CPU's instruction set as nativevl's kernels do, no BLAS,
    CUDA or Metal (the comparison is of the CPU code paths), no curl (nothing to download). Returns the bin
    folder."""
    bindir = cache / "build/bin"
    if all((bindir / t).exists() for t in TARGETS):
        return bindir
    src = source(cache)
    start = time.perf_counter()
    _run(["cmake", "-S", src, "-B", cache / "build", "-DCMAKE_BUILD_TYPE=Release", "-DGGML_NATIVE=ON",
          "-DGGML_CUDA=OFF", "-DGGML_METAL=OFF", "-DGGML_BLAS=OFF", "-DGGML_OPENMP=ON", "-DLLAMA_CURL=OFF",
          "-DBUILD_SHARED_LIBS=OFF", "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_EXAMPLES=OFF",
          "-DLLAMA_BUILD_SERVER=OFF"])
    _run(["cmake", "--build", cache / "build", "--config", "Release", "-j", str(os.cpu_count() or 2),
          "--target", *TARGETS])
    (cache / "build/seconds.txt").write_text(f"{time.perf_counter() - start:.0f}\n")
    return bindir



# Qwen2.5's 22 special tokens (ids 151643...) and the 9 InternVL adds (151665...): 151674 with the normal tokens.
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
            "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>", "<|vision_end|>",
            "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>", "<tool_call>", "</tool_call>", "<|fim_prefix|>",
            "<|fim_middle|>", "<|fim_suffix|>", "<|fim_pad|>", "<|repo_name|>", "<|file_sep|>", "<img>", "</img>",
            "<IMG_CONTEXT>", "<quad>", "</quad>", "<ref>", "</ref>", "<box>", "</box>"]
QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
               r"|\s+(?!\S)|\s+")


def write_tokenizer(folder: Path, vocab_size: int) -> None:
    """A Qwen2-style byte-level BPE made here (the real one would be a download): Qwen2's split pattern, merges
    learnt from this module's docstring (llama.cpp refuses a BPE vocabulary without merges), the vocabulary padded
    with unused tokens so that the specials sit at Qwen2.5's ids and the whole is the model's vocab_size.
    Benchmarks feed token ids, so only the shape of the vocabulary matters."""
    from tokenizers import (
        AddedToken,
        Regex,
        Tokenizer,
        decoders,
        models,
        pre_tokenizers,
        trainers,
    )

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(QWEN2_SPLIT), behavior="isolated"),
                                                 pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator([__doc__ or ""], trainers.BpeTrainer(
        vocab_size=1000, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
    spec = json.loads(tok.to_str())
    vocab = spec["model"]["vocab"]
    vocab.update({f"<unused{i}>": i for i in range(len(vocab), vocab_size - len(SPECIALS))})
    tok = Tokenizer.from_str(json.dumps(spec))
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIALS])
    assert tok.get_vocab_size() == vocab_size and tok.token_to_id("<IMG_CONTEXT>") == 151667
    tok.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "bos_token": None, "eos_token": "<|endoftext|>",
        "pad_token": "<|endoftext|>", "model_max_length": 32768}, indent=1))


def hf_language_model(folder: Path, seed: int = 0) -> Path:
    """nativevl's InternVL3-1B at random init (torch.manual_seed(seed), bf16, as benchmarks/common.build_ours
    makes it), its language model written as a transformers Qwen2ForCausalLM folder for llama.cpp's converter,
    and the whole model as a nativevl checkpoint in folder/"nativevl", so both sides run the same weights.
    Cached by the `done` file, written last."""
    import torch
    from safetensors.torch import save_file

    from nativevl import InternVL, preset

    done = folder / "done"
    if done.exists() and done.read_text().strip() == str(seed):
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    cfg = preset(PRESET)
    torch.manual_seed(seed)
    model = InternVL.from_config(cfg, dtype=torch.bfloat16).eval()
    weights = {k: v.contiguous() for k, v in model.language_model.state_dict().items()}
    # nativevl's CausalLM already names its weights as transformers' Qwen2ForCausalLM does
    assert all(k.startswith("model.") or k == "lm_head.weight" for k in weights) and "lm_head.weight" in weights
    save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})
    t = cfg.text
    config = {"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "torch_dtype": "bfloat16",
              **{k: getattr(t, k) for k in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                                             "num_attention_heads", "num_key_value_heads", "max_position_embeddings",
                                             "rope_theta", "rms_norm_eps", "hidden_act", "tie_word_embeddings",
                                             "bos_token_id", "eos_token_id")},
              # no rope_scaling: llama.cpp has no dynamic NTK, which changes nothing below 32768 positions anyway
              "use_sliding_window": False, "sliding_window": None, "max_window_layers": t.num_hidden_layers}
    (folder / "config.json").write_text(json.dumps(config, indent=1))
    write_tokenizer(folder, t.vocab_size)
    model.save_pretrained(folder / "nativevl")
    done.write_text(f"{seed}\n")
    return folder


# convert_hf_to_gguf.py, run with its own gguf-py; the byte-level BPE made here is no tokenizer the converter
# knows by hash, so an unknown one is declared Qwen2's pre-tokenizer, which is the split it uses.
CONVERT = """
import runpy, sys
src, args = sys.argv[1], sys.argv[2:]
sys.path[:0] = [src, src + "/gguf-py"]
from conversion.base import TextModel
known = TextModel.get_vocab_base_pre
def pre(self, tokenizer):
    try:
        return known(self, tokenizer)
    except NotImplementedError:
        print("tokenizer hash unknown: writing tokenizer.ggml.pre = qwen2", file=sys.stderr)
        return "qwen2"
TextModel.get_vocab_base_pre = pre
sys.argv = [src + "/convert_hf_to_gguf.py", *args]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def gguf(hf_folder: Path, out: Path, kinds: tuple[str, ...] = KINDS, cache: Path = DEFAULT_CACHE
         ) -> dict[str, Path]:
    """The Qwen2 folder as GGUF files: bf16 by llama.cpp's converter, the others by llama-quantize from that
    bf16 file (llama-quantize's default choices per tensor, as a user gets them). Cached per file."""
    src, bindir = source(cache), build(cache)
    out.mkdir(parents=True, exist_ok=True)
    files = {kind: out / f"{kind}.gguf" for kind in kinds}
    base = out / "bf16.gguf"
    if not base.exists():
        _run([sys.executable, "-c", CONVERT, src, hf_folder, "--outtype", "bf16", "--outfile", base])
    for kind, path in files.items():
        if not path.exists():
            _run([bindir / "llama-quantize", base, path, kind.upper(), str(os.cpu_count() or 2)])
    return files


def _median_ts(entry: dict[str, Any]) -> float:
    return statistics.median(entry["samples_ts"]) if entry.get("samples_ts") else entry["avg_ts"]


def bench(bindir: Path, gguf_file: Path, threads: int = 2, repeats: int = 3, prompt_for_batch: int = 32
          ) -> dict[str, Any]:
    """llama.cpp's own numbers for one GGUF file, tokens/s as the median of repeats: llama-bench's pp296
    (prompt) and tg64 (decode, batch 1, from an empty context); llama-batched-bench's generation rate over all
    sequences (batch 1 and 8, after a 32-token prompt each, like benchmarks/decode.py)."""
    got = json.loads(_run([bindir / "llama-bench", "-m", gguf_file, "-p", str(PROMPT), "-n", str(DECODE),
                           "-t", str(threads), "-r", str(repeats), "-o", "json"]))
    result: dict[str, Any] = {"build": got[0].get("build_commit"), "cpu": got[0].get("cpu_info"),
                              "type": got[0].get("model_type"), "bytes": got[0].get("model_size")}
    for entry in got:
        if entry["n_prompt"] and not entry["n_gen"]:
            result[f"prompt_{PROMPT}_tok_s"] = _median_ts(entry)
        elif entry["n_gen"] and not entry["n_prompt"]:
            result["decode_b1_tok_s"] = _median_ts(entry)
    rates: dict[int, list[float]] = {}
    for _ in range(repeats):
        text = _run([bindir / "llama-batched-bench", "-m", gguf_file, "-c", "4096", "-npp", str(prompt_for_batch),
                     "-ntg", str(DECODE), "-npl", "1,8", "-t", str(threads), "--output-format", "jsonl"])
        for line in text.splitlines():
            if line.startswith("{"):
                row = json.loads(line)
                rates.setdefault(int(row["pl"]), []).append(float(row["speed_tg"]))
    result["batched_decode_tok_s"] = {pl: statistics.median(r) for pl, r in rates.items()}
    result["decode_b8_tok_s"] = result["batched_decode_tok_s"].get(8)
    return result


# ---- the nativevl side: the hook this comparison reads nativevl from (weights: bf16, int8, int4) ----
VARIANTS = {"eager": {}, "prepack": {"prepack": True}, "prepack+compile": {"prepack": True, "compile": True}}


def nativevl_rows(checkpoint: Path, threads: int = 2, quantize: tuple[str | None, ...] = (None, "int8", "int4"),
                  variants: tuple[str, ...] = ("eager", "prepack"), steps: int = 16, repeats: int = 3
                  ) -> list[dict[str, Any]]:
    """nativevl bf16 on the checkpoint hf_language_model saved, timed as benchmarks/decode.py times it
    (per_step: the extra time per generated token after a 32-token prompt, median of repeats) at batch 1 and 8,
    and the 296-token prompt as generate(max_new_tokens=1) on it. Each `quantize` (None: bf16 as loaded) and each
    of `variants` (VARIANTS: the switches) goes to nativevl.infer.chat.speed_up, as `--quantize` does; a speed_up without one (before issue 27's int8/int4)
    reports those rows skipped instead of failing the llama.cpp side."""
    import inspect

    import torch

    from benchmarks.common import measure, text_ids
    from benchmarks.decode import PROMPT as DECODE_PROMPT
    from benchmarks.decode import ours_runner, per_step
    from nativevl import InternVL
    from nativevl.infer.chat import speed_up

    torch.set_num_threads(threads)
    rows = []
    for q in quantize:
        for variant in variants:
            switches = VARIANTS[variant]
            row: dict[str, Any] = {"engine": " --".join(["nativevl", *switches]), "weights": q or "bf16"}
            if q is not None and "quantize" not in inspect.signature(speed_up).parameters:
                rows.append({**row, "skipped": "speed_up has no quantize yet"})
                continue
            try:  # a failing nativevl path is reported as its row, not at the cost of the measured rest
                model = InternVL.from_pretrained(checkpoint, dtype=torch.bfloat16).eval()
                speed_up(model, **switches, **({"quantize": q} if q else {}))
                if switches.get("compile"):  # compiled for each batch's shapes first (minutes), then timed
                    for batch in (1, 8):
                        ours_runner(model, text_ids(model, (batch, DECODE_PROMPT), seed=batch))(4)
                    ours_runner(model, text_ids(model, (1, PROMPT), seed=PROMPT))(1)
                for batch in (1, 8):
                    ids = text_ids(model, (batch, DECODE_PROMPT), seed=batch)
                    t = per_step({"run": ours_runner(model, ids)}, steps, repeats, "cpu")["run"]
                    row[f"decode_b{batch}_tok_s"] = batch / t.median
                prompt = partial(ours_runner(model, text_ids(model, (1, PROMPT), seed=PROMPT)), 1)
                row[f"prompt_{PROMPT}_tok_s"] = PROMPT / measure(prompt, repeats).median
                del model
            except Exception as e:  # noqa: BLE001
                row = {**row, "skipped": f"failed: {type(e).__name__}: {str(e)[:200]}"}
            rows.append(row)
            print(row, file=sys.stderr, flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("llamacpp.json"), help="the JSON results")
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help="build, model and GGUF files")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-nativevl", action="store_true", help="llama.cpp only")
    parser.add_argument("--nativevl", default="eager,prepack",
                        help=f"nativevl's variants, some of {', '.join(VARIANTS)} (compiling takes minutes each)")
    args = parser.parse_args()
    start = time.perf_counter()
    bindir = build(args.cache)
    built = (args.cache / "build/seconds.txt")
    hf = hf_language_model(args.cache / f"{PRESET}-seed{args.seed}", args.seed)
    files = gguf(hf, hf / "gguf", cache=args.cache)
    from benchmarks.common import machine

    results: dict[str, Any] = {"preset": PRESET, "seed": args.seed, "threads": args.threads, "machine": machine(),
                               "build_seconds": float(built.read_text()) if built.exists() else None,
                               "gguf_bytes": {k: p.stat().st_size for k, p in files.items()}, "llama.cpp": {}}
    for kind, path in files.items():
        results["llama.cpp"][kind] = bench(bindir, path, args.threads, args.repeats)
        print(kind, results["llama.cpp"][kind], file=sys.stderr, flush=True)
    variants = tuple(args.nativevl.split(","))
    if set(variants) - set(VARIANTS):
        raise SystemExit(f"--nativevl: some of {', '.join(VARIANTS)}, got {args.nativevl}")
    results["nativevl"] = [] if args.no_nativevl else nativevl_rows(hf / "nativevl", args.threads,
                                                                     variants=variants, repeats=args.repeats)
    results["seconds"] = time.perf_counter() - start
    args.out.write_text(json.dumps(results, indent=1))
    print(f"| engine | weights | MB | decode b1 tok/s | decode b8 tok/s | prompt {PROMPT} tok/s |\n" + "| --- " * 6 + "|")
    for kind, r in results["llama.cpp"].items():
        print(f"| llama.cpp | {kind} | {results['gguf_bytes'][kind] / 1e6:.0f} | {r['decode_b1_tok_s']:.1f} | "
              f"{r['decode_b8_tok_s']:.1f} | {r[f'prompt_{PROMPT}_tok_s']:.1f} |")
    for r in results["nativevl"]:
        if "skipped" in r:
            print(f"| {r['engine']} | {r['weights']} | | skipped: {r['skipped']} | | |")
        else:
            print(f"| {r['engine']} | {r['weights']} | | {r['decode_b1_tok_s']:.1f} | {r['decode_b8_tok_s']:.1f} | "
                  f"{r[f'prompt_{PROMPT}_tok_s']:.1f} |")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
