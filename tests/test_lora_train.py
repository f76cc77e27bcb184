"""LoRA and QLoRA in the trainer: the original's order of freezing and wrapping, checkpoints holding only what
trains (and resuming from them bit-exactly after SIGKILL), FSDP2 on 2 processes against 1, bf16 with
activation checkpointing, MPO against the base with its adapters disabled, QLoRA's packed base."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from reference import world_checkpoint
from safetensors.torch import load_file

from nativevl import InternVL
from nativevl.train.recipes import load_config
from nativevl.train.trainer import Trainer, TrainingError, train
from nativevl.weights import checkpoint_hash
from nativevl.weights.lora import ADAPTER_BASE, ADAPTER_CONFIG, ADAPTER_WEIGHTS

LORA = {"lora.llm_rank": 4, "lora.vit_rank": 2}


@pytest.fixture(scope="module")
def start(tmp_path_factory):
    return world_checkpoint(tmp_path_factory.mktemp("lora"))


def settings(start, out, **extra) -> list[str]:
    world, checkpoint = start
    values = {"steps": 6, "save_every": 2, "keep_last": 5, "out": str(out), "progress": False,
              "precision": "fp32", "model.checkpoint": str(checkpoint), "data.meta": str(world / "meta_sft.json"),
              "data.image_size": 224, "data.max_dynamic_patch": 2, "data.max_tokens": 768, "data.max_tiles": 6,
              "data.max_seq_length": 768, "data.num_workers": 0, "data.v2pe": "random", "optim.lr": 1e-2,
              "drop_path_rate": 0.0, **LORA}
    values.update(extra)
    return [f"{k}={json.dumps(v)}" for k, v in values.items()]


def _losses(out) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())}


def _run(args: list[str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "nativevl", "train", "sft", *sum([["--set", a] for a in args], [])],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_the_original_order_of_freezing_and_wrapping(start, tmp_path):
    cfg = load_config("sft", settings(start, tmp_path, **{"freeze.projector": True, "lora.unfreeze_lm_head": True,
                                                          "freeze.vit": True, "freeze.unfreeze_vit_layers": -1}))
    model = Trainer(cfg).model
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert "language_model.lm_head.weight" in trainable  # unfrozen after wrapping (get_peft_model froze it)
    assert not any(n.startswith("mlp1.") for n in trainable)  # freeze_mlp comes after the wrapping
    last = f"vision_model.encoder.layers.{len(model.vision_model.encoder.layers) - 1}."
    assert f"{last}attn.qkv.base_layer.weight" in trainable  # unfreeze_vit_layers last: the whole layer trains
    assert "vision_model.encoder.layers.0.attn.qkv.base_layer.weight" not in trainable
    assert "vision_model.encoder.layers.0.attn.qkv.lora_A.default.weight" in trainable
    llm = {n for n in trainable if n.startswith("language_model.model.")}
    assert llm and all(".lora_" in n for n in llm)
    assert len([n for n in llm if n.endswith("lora_A.default.weight")]) == 7 * model.config.text.num_hidden_layers


def test_sft_lora_recipe_is_the_originals_script():
    cfg = load_config("sft_lora")
    assert (cfg.freeze.vit, cfg.freeze.projector, cfg.freeze.llm) == (True, True, True)
    assert (cfg.lora.llm_rank, cfg.lora.vit_rank, cfg.optim.lr, cfg.data.max_dynamic_patch) == (16, 0, 4e-5, 6)


def test_a_killed_lora_run_resumes_exactly_and_checkpoints_only_the_adapter(start, tmp_path):
    extra = {"lora.unfreeze_lm_head": True}
    whole = _run(settings(start, tmp_path / "whole", **extra))
    assert whole.wait(timeout=300) == 0, whole.stdout.read()
    killed = _run(settings(start, tmp_path / "killed", **extra))
    deadline = time.time() + 300
    while not (tmp_path / "killed" / "step-0000004").exists():
        assert time.time() < deadline and killed.poll() is None, killed.stdout.read() if killed.poll() else "timeout"
        time.sleep(0.05)
    os.kill(killed.pid, signal.SIGKILL)
    killed.wait()
    resumed = _run(settings(start, tmp_path / "killed", **extra))
    output = resumed.communicate(timeout=300)[0]
    assert resumed.returncode == 0 and "resumed from" in output, output
    assert _losses(tmp_path / "whole") == _losses(tmp_path / "killed")  # bit-exact, every step
    a, b = (load_file(tmp_path / run / "final" / ADAPTER_WEIGHTS) for run in ("whole", "killed"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    step = tmp_path / "whole" / "step-0000006"
    assert not (step / "model.safetensors").exists() and (step / ADAPTER_CONFIG).is_file()
    assert "base_model.model.lm_head.weight" in a  # trained in full: modules_to_save
    # the sft recipe trains the projector in full too; nothing else of the base is written
    assert not [k for k in a if ".lora_" not in k and "lm_head" not in k and "multi_modal_projector" not in k]
    base = json.loads((step / ADAPTER_BASE).read_text())
    assert base == {"base_model_name_or_path": str(start[1]), "base_sha256": checkpoint_hash(start[1])}
    # out/final loads as the base with the adapter merged in
    merged = InternVL.from_pretrained(tmp_path / "whole" / "final")
    plain = InternVL.from_pretrained(start[1])
    assert not torch.equal(merged.language_model.lm_head.weight, plain.language_model.lm_head.weight)


def test_resuming_on_another_base_is_refused(start, tmp_path):
    train(load_config("sft", settings(start, tmp_path / "run", steps=2)))
    other = tmp_path / "other"
    InternVL.from_pretrained(start[1]).save_pretrained(other)
    for name in os.listdir(start[1]):
        if name.startswith(("tokenizer", "special")) or name.endswith(".json") and name != "config.json":
            (other / name).write_bytes((start[1] / name).read_bytes())
    with torch.no_grad():
        model = InternVL.from_pretrained(other)
        model.mlp1[1].bias.add_(1.0)
        model.save_pretrained(other)
    with pytest.raises(TrainingError, match=rf"{ADAPTER_BASE}: the adapters were trained on another base"):
        Trainer(load_config("sft", settings(start, tmp_path / "run", steps=4, **{"model.checkpoint": str(other)})))


def test_two_processes_equal_one_process_with_lora(start, tmp_path):
    # no LoRA dropout: its masks come from each rank's RNG, which one process accumulating both shards does not
    # reproduce (the trainer's drop path test sets drop_path_rate 0 for the same reason)
    common = {"steps": 3, "loss_chunk": 100, "data.v2pe": "off", "lora.dropout": 0.0}
    one = _run(settings(start, tmp_path / "one", **common, **{"optim.grad_accum": 2}))
    assert one.wait(timeout=300) == 0, one.stdout.read()
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          "-m", "nativevl", "train", "sft",
                          *sum([["--set", a] for a in settings(start, tmp_path / "two", **common)], [])],
                         capture_output=True, text=True, timeout=600)
    assert two.returncode == 0, two.stdout[-3000:] + two.stderr[-3000:]
    a, b = _losses(tmp_path / "one"), _losses(tmp_path / "two")
    assert sorted(a) == sorted(b) == [1, 2, 3]
    assert all(abs(a[s] - b[s]) < 1e-6 for s in a), (a, b)
    wa, wb = (load_file(tmp_path / run / "final" / ADAPTER_WEIGHTS) for run in ("one", "two"))
    assert wa.keys() == wb.keys() and max((wa[k] - wb[k]).abs().max().item() for k in wa) < 1e-5


def test_bf16_activation_checkpointing_and_qlora_train_only_the_adapter(start, tmp_path):
    cfg = load_config("sft", settings(start, tmp_path / "q", steps=3, precision="bf16", activation_checkpointing=True,
                                      **{"model.quantize": "int4", "lora.vit_rank": 0, "freeze.vit": True,
                                         "freeze.projector": True}))
    trainer = Trainer(cfg)
    layer = trainer.model.language_model.model.layers[0].self_attn.q_proj
    codes = layer.base_layer.qweight.clone()
    frozen = trainer.model.vision_model.encoder.layers[0].mlp.fc1  # kept in bf16: only read under autocast
    assert frozen.weight.dtype == torch.bfloat16 and layer.lora_A["default"].weight.dtype == torch.float32
    vit_before = {k: v.clone() for k, v in trainer.model.vision_model.state_dict().items()}
    history = trainer.run()
    assert len(history) == 3 and all(math.isfinite(h["loss"]) for h in history)
    assert torch.equal(layer.base_layer.qweight, codes)
    vit_after = trainer.model.vision_model.state_dict()
    assert all(torch.equal(vit_before[k], vit_after[k]) for k in vit_before)
    assert layer.lora_B["default"].weight.abs().sum() > 0  # the adapter learnt


def test_lora_mpo_uses_the_base_with_adapters_disabled_as_its_reference(start, tmp_path):
    world, checkpoint = start
    cfg = load_config("sft", settings(start, tmp_path / "mpo", steps=4, **{
        "stage": "mpo", "data.meta": str(world / "meta_mpo.json"), "data.v2pe": "off", "optim.lr": 3e-3,
        "data.max_tokens": 1024, "data.max_seq_length": 1024, "freeze.projector": True}))
    trainer = Trainer(cfg)
    assert trainer.reference is None  # no second copy of the model
    history = trainer.run()
    # at step 1 the adapters add nothing (B = 0): the policy is its reference, c = r = 0
    assert history[0]["reward_chosen"] == pytest.approx(0.0, abs=1e-6)
    assert abs(history[-1]["reward_chosen"]) > 1e-4  # the policy moved away from it
    # ... while the reference stayed the base: the trained model with its adapters disabled is the checkpoint
    batch = next(iter(trainer._stream(0, 1)))
    base = InternVL.from_pretrained(checkpoint).eval()
    with torch.no_grad():
        want = trainer._forward(base, batch).logits
        assert (trainer._reference_logits(batch) - want).abs().max().item() <= 1e-5
        assert (trainer._forward(trainer.model.eval(), batch).logits - want).abs().max().item() > 1e-4
    cfg.freeze.projector = False  # the projector trained in full would move the reference
    with pytest.raises(TrainingError, match=r"stage mpo with LoRA .* these would \(6: mlp1\.0\.weight"):
        Trainer(cfg)
