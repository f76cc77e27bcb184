"""`nativevl chat` end to end in a subprocess: one-shot, interactive, and one-line errors."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from reference import tiny_checkpoint

from nativevl import kernels as gemv

CHAT = [sys.executable, "-m", "nativevl", "chat"]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return tiny_checkpoint(tmp_path_factory.mktemp("ckpt"))


def run(*args: str, stdin: str | None = None, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([*CHAT, *args], input=stdin, capture_output=True, text=True, timeout=120,
                          env=None if env is None else {**os.environ, **env})


def test_one_shot_answer_equals_the_python_api(folder):
    from nativevl import Pipeline

    done = run(str(folder), "--image", str(folder / "photo.png"), "--max-new-tokens", "6", "What is it?")
    assert done.returncode == 0, done.stderr
    expected = Pipeline(folder)("What is it?", images=[folder / "photo.png"], max_new_tokens=6)
    assert done.stdout.strip() == expected


def test_interactive_session_keeps_history(folder):
    done = run(str(folder), "--image", str(folder / "photo.png"), "--max-new-tokens", "4",
               stdin="What is it?\n<image> and <image>\nAnd the colours?\n/reset\nAgain?\n")
    assert done.returncode == 0, done.stderr
    assert len([line for line in done.stdout.splitlines() if line.strip()]) >= 3
    assert "error: the prompt has" in done.stderr  # a bad turn is reported, the session goes on


def test_best_of_n_prints_the_best_and_every_candidates_score(folder):
    done = run(str(folder), "--image", str(folder / "photo.png"), "--max-new-tokens", "5", "--best-of", "3",
               "--prm", str(folder), "--seed", "0", "Count the dots.")
    assert done.returncode == 0, done.stderr
    scores = [float(line.split("score ")[1].split(",")[0]) for line in done.stderr.splitlines()
              if line.startswith("# candidate")]
    assert len(scores) == 3 and scores == sorted(scores, reverse=True)
    assert "# majority vote:" in done.stderr and done.stdout.strip()


@pytest.mark.parametrize(
    "args, message",
    [
        (["{tmp}/nowhere", "hi"], "nowhere: no such checkpoint folder"),
        (["{ckpt}", "--image", "{ckpt}/config.json", "hi"], "not a readable image"),
        (["{ckpt}", "--image", "{ckpt}/photo.png", "<image> <image> two?"], "2 <image> placeholder(s) but 1 image"),
        (["{ckpt}", "--image", "{ckpt}/missing.png", "hi"], "missing.png: no such file"),
    ],
)
def test_errors_are_one_readable_line(folder, tmp_path, args, message):
    done = run(*[a.format(tmp=tmp_path, ckpt=folder) for a in args])
    assert done.returncode == 2
    assert message in done.stderr and "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("device, message", [
    ("cuda" if not torch.cuda.is_available() else f"cuda:{torch.cuda.device_count()}", "this machine has"),
    ("gpu", "'gpu' is not a device: use cpu, cuda"),
])
def test_a_device_this_machine_cannot_use_is_one_line(folder, device, message):
    """Not a pin_memory or SafetensorError traceback: one line, before anything is loaded."""
    done = run(str(folder), "--device", device, "hi")
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("nativevl chat: error:") and message in lines[0], done.stderr
    assert "Traceback" not in done.stderr


def test_help_documents_every_flag():
    text = subprocess.run([*CHAT, "--help"], capture_output=True, text=True).stdout
    for flag in ("--image", "--video", "--num-segments", "--max-num", "--dtype", "--device", "--max-new-tokens",
                 "--temperature", "--top-p", "--top-k", "--repetition-penalty", "--stop", "--seed", "--v2pe-delta",
                 "--system"):
        assert flag in text


@pytest.mark.parametrize("level", ["3", "1"])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_prepack_answers_as_the_plain_model(folder, dtype, level):
    """`--prepack` in a fresh process (oneDNN-packed products, the few-row kernel where the CPU has AVX2 or
    AVX-512; NATIVEVL_GEMV=1 caps it at AVX2): the same greedy answer as the plain model in the same dtype,
    and no fallback warning where it runs."""
    question = [str(folder), "--image", str(folder / "photo.png"), "--max-new-tokens", "8", "--dtype", dtype,
                "What is it?"]
    plain, packed = run(*question), run(*question, "--prepack", env={"NATIVEVL_GEMV": level})
    assert plain.returncode == 0 and packed.returncode == 0, packed.stderr
    assert packed.stdout == plain.stdout and packed.stdout.strip()
    if gemv.available(getattr(torch, dtype)):
        assert "could not build" not in packed.stderr
