"""Server throughput: 16 concurrent clients against the same requests sent one at a time.

    python benchmarks/serve.py [--preset internvl3-1b] [--clients 16] [--requests 16] [--max-tokens 32]
                               [--serve-flags="--prepack --dtype bfloat16"]

Builds a model of the preset's shape with random weights (no download) and a tokenizer from a small embedded
world, starts `nativevl serve` on loopback, and sends text prompts (~40 tokens each) through the real HTTP
API. Reports completion tokens per second and per-request latency for both modes: the median of --repeats runs
after a warm-up, with the spread (min..max). Random weights rarely emit the end token, so answers run to
max_tokens; the tokens counted are the ones the server reports in `usage`.
"""

from __future__ import annotations

import argparse
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import torch


def build(folder: Path, preset_name: str) -> None:
    from nativevl.config import preset
    from nativevl.data.world import generate_world
    from nativevl import InternVL
    from nativevl.tokenizer import load_tokenizer
    from nativevl.weights import SIDECAR_FILES

    world = folder.parent / "world"
    generate_world(world, seed=0, scale=0.02)
    tok = load_tokenizer(world / "tokenizer")
    torch.manual_seed(0)
    config = preset(preset_name).replace(img_context_token_id=tok.img_context_id)
    InternVL.from_config(config).save_pretrained(folder)
    for name in SIDECAR_FILES:
        if (world / "tokenizer" / name).is_file():
            (folder / name).write_bytes((world / "tokenizer" / name).read_bytes())


def start(folder: Path, max_batch: int, flags: list[str]) -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "nativevl", "serve", str(folder), "--port", str(port),
                             "--max-batch", str(max_batch), "--model-name", "bench", *flags],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    for _ in range(600):
        try:
            httpx.get(url + "/health", timeout=1).raise_for_status()
            return proc, url
        except httpx.HTTPError:
            time.sleep(0.5)
    proc.kill()
    raise RuntimeError("the server did not start")


def ask(url: str, i: int, max_tokens: int) -> tuple[int, float]:
    """(completion tokens, seconds) for one request."""
    prompt = f"Request {i}: describe a red square, a blue circle and a green star on a white background, in detail."
    t0 = time.perf_counter()
    r = httpx.post(url + "/v1/chat/completions", timeout=600, json={
        "model": "bench", "messages": [{"role": "user", "content": prompt}], "max_tokens": max_tokens})
    r.raise_for_status()
    return r.json()["usage"]["completion_tokens"], time.perf_counter() - t0


def run(url: str, clients: int, requests: int, max_tokens: int) -> dict[str, float]:
    t0 = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        results = list(pool.map(lambda i: ask(url, i, max_tokens), range(requests)))
    wall = time.perf_counter() - t0
    tokens = sum(n for n, _ in results)
    latencies = sorted(s for _, s in results)
    p99 = latencies[min(len(latencies) - 1, round(0.99 * (len(latencies) - 1)))]
    return {"tokens_per_s": tokens / wall, "latency_s": statistics.median(latencies), "p99_s": p99, "wall_s": wall}


def summary(runs: list[dict[str, float]], key: str) -> str:
    values = [r[key] for r in runs]
    return f"{statistics.median(values):.2f} ({min(values):.2f}..{max(values):.2f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="internvl3-1b")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--requests", type=int, default=16)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--serve-flags", default="", help="more `nativevl serve` options, e.g. '--prepack'")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "model"
        build(folder, args.preset)
        proc, url = start(folder, max_batch=args.clients, flags=args.serve_flags.split())
        try:
            ask(url, -1, 4)  # warm-up
            modes = {"one at a time": 1, f"{args.clients} concurrent clients": args.clients}
            results = {m: [run(url, c, args.requests, args.max_tokens) for _ in range(args.repeats)]
                       for m, c in modes.items()}
            max_running = httpx.get(url + "/health").json()["max_running"]
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=120)
    one, many = (results[m] for m in modes)
    ratio = statistics.median(r["tokens_per_s"] for r in many) / statistics.median(r["tokens_per_s"] for r in one)
    print(f"# nativevl serve {args.serve_flags or '(no flags)'}: {args.preset} shape, random weights, "
          f"{args.requests} requests of {args.max_tokens} tokens, median of {args.repeats} (min..max)")
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads; largest batch seen {max_running}")
    print("| mode | completion tokens/s | p50 request latency (s) | p99 (s) | wall (s) |")
    print("| --- | --- | --- | --- | --- |")
    for mode, runs in results.items():
        print(f"| {mode} | {summary(runs, 'tokens_per_s')} | {summary(runs, 'latency_s')} | {summary(runs, 'p99_s')} "
              f"| {summary(runs, 'wall_s')} |")
    print(f"\nconcurrent / one at a time: {ratio:.2f}x tokens/s")


if __name__ == "__main__":
    main()
