#!/usr/bin/env bash
# The benchmarks on one CUDA GPU, for the device tool (or any machine with torch and transformers installed):
#   bash benchmarks/gpu.sh            # from the repository root; the report goes to ${OUT:-.}/gpu.md
# bf16 throughout: decode at batch 1 / 8 / 32 against transformers' generate and its static cache +
# torch.compile path, time to first token with 1 and 13 tiles, preprocessing, and one training step at the
# InternVL3-1B shape (a packed 8192-token row with a 13-tile image; then 16384 tokens, i.e. batch 2 x 8192).
set -euo pipefail
export PYTHONPATH="src:${PYTHONPATH:-}" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
out="${OUT:-.}"
python3 -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.cuda.get_device_name())"
python3 -m benchmarks decode ttft preprocess --device cuda --dtypes bfloat16 --batches 1,8,32 --compile \
    --steps 64 --repeats 5 --out "$out/gpu-inference.md"
python3 -m benchmarks trainstep --device cuda --seq 8192 --repeats 5 --out "$out/gpu-train-8192.md"
python3 -m benchmarks trainstep --device cuda --seq 16384 --repeats 3 --out "$out/gpu-train-16384.md" || true
cat "$out"/gpu-*.md > "$out/gpu.md"
