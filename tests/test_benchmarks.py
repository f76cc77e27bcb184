"""The benchmark runners, smoke-tested: every suite and every flag the docs show runs to its end on the tiny preset
with one repeat (nothing is timed or compared here; docs/benchmarks.md holds the figures). A documented command
whose flag no run below exercises fails `test_every_documented_flag_is_exercised`, so the docs and this file
move together."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SMALL = ["--preset", "tiny", "--repeats", "1", "--steps", "1"]

# (module or script, arguments): each is run once below
RUNS: dict[str, tuple[str, list[str]]] = {
    "every suite": ("benchmarks", ["roofline", "decode", "ttft", "attention", "preprocess", "train", "trainstep",
                                   *SMALL, "--dtypes", "float32,bfloat16", "--batches", "1,2", "--tiles", "1,2",
                                   "--train-steps", "1", "--seq", "600", "--train-tiles", "1", "--device", "cpu"]),
    "bf16 with --compile": ("benchmarks", ["decode", "ttft", *SMALL, "--dtypes", "bfloat16", "--batches", "1",
                                           "--tiles", "1", "--ttft-dtype", "bfloat16", "--compile"]),
    "loss memory": ("benchmarks.loss_memory", ["--tokens", "192", "--chunk", "64", "--device", "cpu"]),
    "server": ("benchmarks/serve.py", ["--preset", "tiny", "--clients", "2", "--requests", "2", "--max-tokens", "2",
                                       "--repeats", "1", "--serve-flags=--prepack"]),
    "CUDA paths on the CPU": ("benchmarks.gpu_check", ["cpu"]),
    "quantized weights": ("benchmarks.quant", ["--preset", "tiny", "--repeats", "1", "--steps", "1", "--batches", "1,2",
                                               "--prompt", "16", "--continuation", "4",
                                               "--formats", "bf16,int8,int4-fhead,int4-all"]),
    "large quantized checkpoint": ("benchmarks.quant_big", ["--preset", "tiny", "--quantize", "int8", "--steps", "2"]),
}
# Runners that build another engine (llama.cpp from source: minutes of compiling) are not run here; their documented
# flags are checked against their own --help instead, so a renamed flag still fails.
HELP_ONLY = {"benchmarks.llamacpp"}
# Runners that need a trained model and its world run in their own test below, with these flags
ON_A_WORLD = {"benchmarks.quant_world": {"--world", "--questions", "--continuation", "--limit", "--group-size",
                                         "--out"}}
HEADINGS = {"every suite": ["read bandwidth", "## Time to first token", "## Decode", "## One attention layer",
                            "## Image preprocessing", "## Training, packed vs padded", "## One training step"],
            "bf16 with --compile": ["## Time to first token", "nativevl --compile", "nativevl --prepack --compile"],
            "loss memory": ["| whole logits | 192 |", "| chunks of 64 | 192 |"],
            "server": ["| one at a time |", "| 2 concurrent clients |"],
            "CUDA paths on the CPU": ["all CUDA checks passed"],
            "quantized weights": ["## Decode", "| int4-all | 2 |", "## Prompts", "## Against bf16"],
            "large quantized checkpoint": ["# tiny int8: made in", "2 tokens at"]}


def command(target: str, args: list[str], out: Path | None = None) -> list[str]:
    base = [sys.executable, target] if target.endswith(".py") else [sys.executable, "-m", target]
    return base + args + (["--out", str(out)] if out is not None else [])


@pytest.mark.parametrize("name", list(RUNS))
def test_documented_runner_runs_on_the_tiny_preset(name, tmp_path):
    target, args = RUNS[name]
    out = tmp_path / "report.md" if target == "benchmarks" else None
    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'src'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
           "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(command(target, args, out), cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    for heading in HEADINGS[name]:
        assert heading in done.stdout, f"{heading!r} missing from:\n{done.stdout[-3000:]}"
    if out is not None:
        report = out.read_text()
        assert "| nativevl" in report and report.rstrip().endswith("s)"), report[-2000:]


def documented_commands() -> list[tuple[str, list[str]]]:
    """(target, arguments) of every benchmark command in docs/benchmarks.md and the README, backticked or in a
    code block."""
    found = []
    for doc in (ROOT / "docs" / "benchmarks.md", ROOT / "README.md"):
        for line in doc.read_text().splitlines():
            for m in re.finditer(r"python3? (-m (benchmarks(?:\.\w+)?)|(benchmarks/\w+\.py))((?: [^`#|]*)?)", line):
                words = shlex.split(m.group(4).strip()) if m.group(4) else []
                found.append((m.group(2) or m.group(3), words))
    return found


def flags(args: list[str]) -> set[str]:
    """The options named (`--x` or `--x=v`) and, for the main runner, the suites, as `suite:NAME`."""
    from benchmarks.__main__ import SUITES

    named = {a.split("=")[0] for a in args if a.startswith("--")}
    return named | {f"suite:{a}" for a in args if a in SUITES}


def help_flags(target: str) -> set[str]:
    """The options a runner's --help lists."""
    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'src'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    done = subprocess.run(command(target, ["--help"]), cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    return set(re.findall(r"(?<![\w-])--[a-z][\w-]*", done.stdout))


def test_every_documented_flag_is_exercised():
    exercised: dict[str, set[str]] = {}
    for target, args in RUNS.values():
        exercised.setdefault(target, set()).update(flags(args) | {"--out", "--help"})
    for target in HELP_ONLY:
        exercised[target] = help_flags(target)
    for target, named in ON_A_WORLD.items():
        exercised[target] = named | {"--help"}
    commands = documented_commands()
    assert len(commands) >= 10, commands  # the parser above still finds the docs' commands
    for target, args in commands:
        wanted = flags(args)
        if "--device" in wanted and "cuda" in args:
            wanted.discard("--device")  # CUDA runs: benchmarks/gpu.sh on the device; the CPU runs the same flags
        missing = wanted - exercised.get(target, set())
        assert not missing, f"`python {target} {' '.join(args)}` (docs) uses {sorted(missing)}, which no run tests"


def test_quantized_accuracy_runs_on_a_small_world(tmp_path):
    from reference import world_checkpoint

    world, checkpoint = world_checkpoint(tmp_path, seed=3)
    out = tmp_path / "report.md"
    args = [str(checkpoint), "--world", str(world), "--questions", "3", "--continuation", "4", "--limit", "1",
            "--group-size", "32", "--out", str(out)]
    assert flags(args) == ON_A_WORLD["benchmarks.quant_world"]
    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'src'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    done = subprocess.run(command("benchmarks.quant_world", args), cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = out.read_text()
    for heading in ("## Held-out accuracy", "| colour |", "## Greedy tokens against bf16", "| int4 | 3 |"):
        assert heading in report, report
