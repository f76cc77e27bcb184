"""The trainer: configs, exact resume after SIGKILL, corrupted checkpoints, freezing, non-finite losses, the data
check, and FSDP2 on 2 processes against 1."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from nativevl import InternVL
from nativevl.data.world import generate_world
from nativevl.train.config import ConfigError, TrainConfig
from nativevl.train.recipes import load_config
from nativevl.train.trainer import Trainer, TrainingError, train

TINY = {"vision.image_size": 224, "vision.hidden_size": 32, "vision.intermediate_size": 64,
        "vision.num_attention_heads": 2, "vision.num_hidden_layers": 2, "text.hidden_size": 32,
        "text.intermediate_size": 64, "text.num_attention_heads": 2, "text.num_key_value_heads": 1,
        "text.num_hidden_layers": 1}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    out = tmp_path_factory.mktemp("world")
    generate_world(out, seed=0, scale=0.05)
    return out


def settings(world: Path, out: Path, **extra) -> list[str]:
    base = {"steps": 6, "save_every": 2, "keep_last": 5, "out": str(out), "progress": False, "precision": "fp32",
            "data.meta": str(world / "meta_pretrain.json"), "data.tokenizer": str(world / "tokenizer"),
            "data.image_size": 224, "data.max_dynamic_patch": 2, "data.max_tokens": 768, "data.max_tiles": 6,
            "data.max_seq_length": 768, "data.num_workers": 0, "data.text_ratio": 0.25, "data.v2pe": "random",
            "optim.lr": 1e-3, "drop_path_rate": 0.1}
    base.update(extra)
    return [f"{k}={json.dumps(v)}" for k, v in base.items()] + [
        "model.overrides=" + "{" + ", ".join(f'"{k}" = {v}' for k, v in TINY.items()) + "}"]


def config(world: Path, out: Path, **extra) -> TrainConfig:
    return load_config("pretrain", settings(world, out, **extra))


def losses(out: Path) -> dict[int, float]:
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return {int(r["step"]): r["loss"] for r in rows}


def steps_logged(out: Path) -> list[int]:
    return [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_config_overrides_and_saved_config_round_trip(tmp_path):
    cfg = load_config("sft", ["steps=7", "optim.lr=1e-4", "freeze.vit=true", "data.text_ratio=0.5",
                              'model.overrides={"text.hidden_size" = 64}'])
    assert (cfg.steps, cfg.optim.lr, cfg.freeze.vit, cfg.data.text_ratio) == (7, 1e-4, True, 0.5)
    assert cfg.model.overrides == {"text.hidden_size": 64} and cfg.stage == "sft"
    (tmp_path / "run.toml").write_text('recipe = "sft"\n' + cfg.to_toml())
    assert load_config(str(tmp_path / "run.toml")) == cfg
    with pytest.raises(ConfigError, match="unknown config field 'optim.lrr'; did you mean 'optim.lr'"):
        load_config("sft", ["optim.lrr=1"])
    with pytest.raises(ConfigError, match='steps = "many": expected an integer'):
        load_config("sft", ["steps=many"])
    with pytest.raises(ConfigError, match="unknown recipe 'nonsense'; recipes: pretrain, sft"):
        load_config("nonsense")


def _run(args: list[str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "nativevl", "train", "pretrain", *sum([["--set", a] for a in args], [])],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_killed_run_resumes_with_the_same_losses(world, tmp_path):
    whole = _run(settings(world, tmp_path / "whole"))
    assert whole.wait(timeout=300) == 0, whole.stdout.read()
    killed = _run(settings(world, tmp_path / "killed"))
    deadline = time.time() + 300
    while not (tmp_path / "killed" / "step-0000004").exists():
        assert time.time() < deadline and killed.poll() is None, killed.stdout.read() if killed.poll() else "timeout"
        time.sleep(0.05)
    os.kill(killed.pid, signal.SIGKILL)
    killed.wait()
    resumed = _run(settings(world, tmp_path / "killed"))
    output = resumed.communicate(timeout=300)[0]
    assert resumed.returncode == 0, output
    assert "resumed from" in output
    expected, got = losses(tmp_path / "whole"), losses(tmp_path / "killed")
    assert steps_logged(tmp_path / "killed") == list(range(1, 7))  # one row a step: the killed run's extra dropped
    assert got == expected  # bit-exact, every step
    a = load_file(tmp_path / "whole" / "final" / "model.safetensors")
    b = load_file(tmp_path / "killed" / "final" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert InternVL.from_pretrained(tmp_path / "killed" / "step-0000006").config.vision.image_size == 224


def test_resume_keeps_one_metrics_row_a_step_and_says_what_it_found(world, tmp_path, caplog):
    caplog.set_level("INFO", logger="nativevl.train")
    out = tmp_path / "run"
    first = train(config(world, out, steps=3))
    assert "no checkpoint in" in caplog.text and steps_logged(out) == [1, 2, 3]
    # killed after step 3 was logged, before its checkpoint: resumes at 2, step 3's row is trained again
    shutil.rmtree(out / "step-0000003")
    shutil.rmtree(out / "final")
    caplog.clear()
    train(config(world, out, steps=3))
    assert f"resumed from {out / 'step-0000002'} (step 2)" in caplog.text
    assert f"{out / 'metrics.jsonl'}: dropped 1 row past step 2" in caplog.text
    assert steps_logged(out) == [1, 2, 3] and losses(out) == {r["step"]: r["loss"] for r in first}
    # re-run on the finished run: nothing is trained or rewritten
    stamp = (out / "final" / "model.safetensors").stat().st_mtime_ns
    caplog.clear()
    assert train(config(world, out, steps=3)) == []
    assert f"{out}: already finished at step 3 (final/ exists); nothing to do" in caplog.text
    assert (out / "final" / "model.safetensors").stat().st_mtime_ns == stamp and steps_logged(out) == [1, 2, 3]
    # killed before its first checkpoint (only metrics rows left): starts fresh, the old rows dropped
    for folder in [*out.glob("step-*"), out / "final"]:
        shutil.rmtree(folder)
    (out / "metrics.jsonl").write_text((out / "metrics.jsonl").read_text() + '{"step": 4, "lo')  # half a line
    caplog.clear()
    train(config(world, out, steps=2))
    assert f"no checkpoint in {out}, starting fresh" in caplog.text
    assert "dropped 4 rows past step 0" in caplog.text
    assert steps_logged(out) == [1, 2] and losses(out) == {r["step"]: r["loss"] for r in first[:2]}


def test_resume_false_starts_afresh_without_the_earlier_checkpoints(world, tmp_path, caplog):
    Trainer(config(world, tmp_path, steps=4)).run()
    caplog.set_level("WARNING")
    train(config(world, tmp_path, steps=2, resume=False))
    assert "resume=false: removing 3 checkpoints of an earlier run" in caplog.text
    assert sorted(p.name for p in tmp_path.glob("step-*")) == ["step-0000002"] and steps_logged(tmp_path) == [1, 2]
    assert Trainer(config(world, tmp_path, steps=4)).step == 2  # a later resume finds this run's checkpoint


def test_the_missing_world_hint_is_a_command_that_trains(world, tmp_path, monkeypatch, capsys, caplog):
    from nativevl.cli import main

    monkeypatch.chdir(tmp_path)
    (tmp_path / "demo_out").mkdir()
    (tmp_path / "demo_out" / "world").symlink_to(world)  # as `make demo` leaves it
    small = ["--set", "steps=1", "--set", "progress=false", "--set", "data.max_tokens=512",
             "--set", "data.max_seq_length=512"]
    with pytest.raises(SystemExit):
        main(["train", "demo_pretrain", *small])
    err = capsys.readouterr().err
    hint = err.split("add ")[1].split(" (or")[0].split()
    assert hint == ["--set", "data.meta=demo_out/world/meta_pretrain.json",
                    "--set", "data.tokenizer=demo_out/world/tokenizer"], err
    main(["train", "demo_pretrain", *small, *hint])
    assert "trained demo_pretrain to step 1" in capsys.readouterr().out
    caplog.set_level("INFO", logger="nativevl.train")
    main(["train", "demo_pretrain", *small, *hint])
    assert "runs/demo/pretrain: already finished at step 1" in caplog.text


def test_the_saved_config_tiles_as_the_data_did(world, tmp_path):
    Trainer(config(world, tmp_path / "run", steps=1, **{"data.max_dynamic_patch": 3})).run()
    assert InternVL.from_pretrained(tmp_path / "run" / "final").config.max_dynamic_patch == 3


def test_corrupted_checkpoint_falls_back_to_the_previous(world, tmp_path, caplog):
    Trainer(config(world, tmp_path, steps=4)).run()
    latest = tmp_path / "step-0000004" / "model.safetensors"
    latest.write_bytes(latest.read_bytes()[:-100] + b"\0" * 100)
    caplog.set_level("WARNING")
    trainer = Trainer(config(world, tmp_path, steps=4))
    assert trainer.step == 2
    assert "step-0000004 is unusable (model.safetensors does not match its checksum)" in caplog.text


def test_resuming_with_another_worker_count_names_the_setting(world, tmp_path):
    Trainer(config(world, tmp_path, steps=2)).run()
    with pytest.raises(TrainingError, match=r"written with data.num_workers=0, this run has data.num_workers=1"):
        Trainer(config(world, tmp_path, steps=4, **{"data.num_workers": 1}))
    with pytest.raises(TrainingError, match=r"written with optim.grad_accum=1, this run has optim.grad_accum=2"):
        Trainer(config(world, tmp_path, steps=4, **{"optim.grad_accum": 2}))
    assert Trainer(config(world, tmp_path, steps=4)).step == 2  # the same settings resume


def test_freezing_trains_only_what_is_unfrozen(world, tmp_path):
    trainer = Trainer(config(world, tmp_path, steps=1, **{"freeze.vit": True, "freeze.llm": True}))
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    trainer.run()
    after = trainer.model.state_dict()
    changed = {k.split(".")[0] for k in before if not torch.equal(before[k], after[k])}
    assert changed == {"mlp1"}


def test_vision_lr_scale_moves_only_the_vits_rate(world, tmp_path):
    trainer = Trainer(config(world, tmp_path, steps=4, **{"optim.vision_lr_scale": 3.0, "optim.warmup_ratio": 0.0}))
    names = {id(p): n for n, p in trainer.model.named_parameters()}
    for group in trainer.optimizer.param_groups:
        vit = {names[id(p)].startswith("vision_model.") for p in group["params"]}
        assert len(vit) == 1  # a group holds ViT parameters or none
        assert group["lr"] == pytest.approx(1e-3 * (3.0 if vit.pop() else 1.0))
    assert len(trainer.optimizer.param_groups) == 4  # ViT or not, decayed or not


def test_non_finite_losses_are_skipped_then_stop_the_run(world, tmp_path, caplog):
    trainer = Trainer(config(world, tmp_path, steps=5, **{"optim.lr": 1e30, "max_nonfinite": 2,
                                                         "optim.max_grad_norm": 0.0}))
    caplog.set_level("WARNING")
    with pytest.raises(TrainingError, match="2 non-finite losses in a row"):
        trainer.run()
    assert trainer.nonfinite_skipped == 2 and "non-finite loss" in caplog.text


def test_the_data_check_fails_loudly(world, tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "a.jsonl").write_text("\n".join(json.dumps({"conversations": [{"from": "human", "value": "hi"}]})
                                          for _ in range(20)) + "\n" + json.dumps(
        {"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "ok"}]}) + "\n")
    (bad / "meta.json").write_text(json.dumps({"a": {"annotation": "a.jsonl"}}))
    with pytest.raises(TrainingError, match="were skipped"):
        Trainer(config(world, tmp_path / "run", **{"data.meta": str(bad / "meta.json"), "data.text_ratio": None}))
    with pytest.raises(TrainingError, match="data.image_size 448 != the ViT's image_size 224"):
        Trainer(config(world, tmp_path / "run2", **{"data.image_size": 448}))


def test_two_processes_equal_one_process(world, tmp_path):
    """FSDP2 over 2 gloo processes (one data shard each) vs 1 process accumulating the same 2 shards; the loss
    in chunks of 100 positions (recomputed in the backward pass, inside FSDP's root unit) in both."""
    one = _run(settings(world, tmp_path / "one", steps=3, **{"optim.grad_accum": 2, "drop_path_rate": 0.0,
                                                               "loss_chunk": 100}))
    assert one.wait(timeout=300) == 0, one.stdout.read()
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          "-m", "nativevl", "train", "pretrain",
                          *sum([["--set", a] for a in settings(world, tmp_path / "two", steps=3,
                                                                  **{"drop_path_rate": 0.0, "loss_chunk": 100})],
                               [])],
                         capture_output=True, text=True, timeout=600)
    assert two.returncode == 0, two.stdout[-3000:] + two.stderr[-3000:]
    a, b = losses(tmp_path / "one"), losses(tmp_path / "two")
    assert sorted(a) == sorted(b) == [1, 2, 3]
    for step in a:
        assert abs(a[step] - b[step]) < 1e-6, (step, a[step], b[step])
    wa = load_file(tmp_path / "one" / "final" / "model.safetensors")
    wb = load_file(tmp_path / "two" / "final" / "model.safetensors")
    # fp32 sums in another order (all-reduce vs one process) differ in the last bits; Adam's normalised update
    # can carry such a difference to ~1e-6 on a weight whose gradient is near zero
    assert max((wa[k] - wb[k]).abs().max().item() for k in wa) < 1e-5
