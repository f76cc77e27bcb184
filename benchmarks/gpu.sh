#!/usr/bin/env bash
# The benchmarks on one CUDA GPU, for the device tool (or any machine with torch and transformers installed):
#   bash benchmarks/gpu.sh [STAGE...]    # from the repository root; reports go to ${OUT:-.}/gpu-STAGE.md
# Stages (default: all, in this order), each short enough for one 10-minute device call:
#   inference  the CUDA correctness checks (benchmarks/gpu_check.py), then bf16 decode at batch 1 / 8 / 32
#              against transformers' generate, and time to first token with 1 and 13 tiles;
#   train      one training step at the InternVL3-1B shape: a packed 8192-token row with a 13-tile image, then
#              16384 tokens (batch 2 x 8192's worth), tokens/s, MFU and peak memory;
#   compile    decode at batch 1 and 32 again, now with the compiled paths too: transformers' static cache +
#              torch.compile, nativevl --compile (minutes of compiling);
#   serve      nativevl serve on the GPU (bf16): 32 concurrent clients, 64 requests of 64 tokens, tokens/s and
#              p50/p99 latency (transformers has no server: its batch-32 generate from `inference` is the line
#              to compare with).
# What to expect (issue 31's targets; the H100 figures of 2026-11-24 in docs/benchmarks.md): gpu_check prints
# one "ok" line per check and "all checks passed"; decode batch 1 eager ~18 ms/step on an H100 (target with
# the CUDA graph <= 1 ms), time to first token with 13 tiles ~55 ms (target <= 30 ms), training ~30% MFU
# (target >= 45%), batch 2 x 8192 tokens fitting.
set -euo pipefail
export PYTHONPATH="src:${PYTHONPATH:-}" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
out="${OUT:-.}"
stages=("$@")
[ ${#stages[@]} -eq 0 ] && stages=(inference train compile serve)
python3 -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.cuda.get_device_name(), torch.__version__)"
for stage in "${stages[@]}"; do
  case "$stage" in
    inference)
      python3 -m benchmarks.gpu_check cuda || echo "some CUDA checks failed (above); timing goes on"
      python3 -m benchmarks decode ttft --device cuda --dtypes bfloat16 --batches 1,8,32 --steps 64 --repeats 5 \
          --out "$out/gpu-inference.md" ;;
    train)
      python3 -m benchmarks trainstep --device cuda --seq 8192 --repeats 5 --out "$out/gpu-train-8192.md"
      python3 -m benchmarks trainstep --device cuda --seq 16384 --repeats 3 --out "$out/gpu-train-16384.md" || true ;;
    compile)
      python3 -m benchmarks decode --device cuda --dtypes bfloat16 --batches 1,32 --steps 64 --repeats 3 \
          --compile --out "$out/gpu-compile.md" ;;
    serve)
      python3 benchmarks/serve.py --clients 32 --requests 64 --max-tokens 64 --repeats 3 \
          --serve-flags="--device cuda --dtype bfloat16" | tee "$out/gpu-serve.md" ;;
    *) echo "unknown stage $stage (inference, train, compile, serve)" >&2; exit 2 ;;
  esac
done
