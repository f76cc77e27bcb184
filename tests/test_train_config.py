"""Training configs: every field's allowed values refused with one plain line (load_config and the CLI) before a
model or data is touched, unknown names with the valid ones, the demo recipes' missing inputs with a hint, and
the recipe list for `nativevl train --help`."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import typing

import pytest

from nativevl.cli import main
from nativevl.train.config import ConfigError, TrainConfig, validate
from nativevl.train.recipes import RECIPES, load_config, recipe_summaries, recipes_help

# one bad value per kind of field and rule: (--set items, what the message says)
BAD = [
    (["precision=fp8"], 'precision = "fp8": must be one of "bf16", "fp32"'),
    (["stage=dpo"], 'stage = "dpo": must be one of "pretrain", "sft", "mpo"'),
    (["loss_reduction=avg"], 'loss_reduction = "avg": must be one of "token", "sample", "square"'),
    (["data.v2pe=on"], 'data.v2pe = "on": must be one of "off", "fixed", "random"'),
    (["model.preset=huge"], 'model.preset = "huge": must be one of "internvl3-1b", '),
    (["steps=-5"], "steps = -5: must be >= 1"),
    (["optim.grad_accum=0"], "optim.grad_accum = 0: must be >= 1"),
    (["data.num_workers=-1"], "data.num_workers = -1: must be >= 0"),
    (["seed=-1"], "seed = -1: must be in [0, 4294967295]"),
    (["optim.lr=0"], "optim.lr = 0.0: must be > 0"),
    (["optim.warmup_ratio=1.5"], "optim.warmup_ratio = 1.5: must be in [0, 1]"),
    (["drop_path_rate=1"], "drop_path_rate = 1.0: must be in [0, 1)"),
    (["data.text_ratio=2"], "data.text_ratio = 2.0: must be in [0, 1]"),
    (["data.v2pe_delta=0"], "data.v2pe_delta = 0.0: must be in (0, 1]"),
    (["mpo.beta=-1"], "mpo.beta = -1.0: must be > 0"),
    (["optim.betas=[0.9, 1.2]"], "optim.betas = [0.9, 1.2]: each beta must be in [0, 1)"),
    (['out=""'], 'out = "": must not be empty'),
    (["steps=many"], 'steps = "many": expected an integer'),
    (["steps=1.5"], "steps = 1.5: expected an integer"),
    (["freeze.vit=yes"], 'freeze.vit = "yes": expected true or false'),
    (["optim.betas=0.9"], "optim.betas = 0.9: expected a list of 2 numbers"),
    (["data.text_ratio=lots"], 'data.text_ratio = "lots": expected a number or none'),
    (["model.overrides=3"], "model.overrides = 3: expected a table"),
    (['model.overrides={"text.hiden_size" = 8}'],
     "model.overrides: unknown model field 'text.hiden_size'; did you mean 'text.hidden_size'?"),
    (["data.min_num_frame=40"], "data.min_num_frame = 40 is above data.max_num_frame = 32"),
    (["model.checkpoint=ckpt"], "model.overrides apply to a preset, not to model.checkpoint"),
    (["freeze.vit=true", "freeze.projector=true", "freeze.llm=true"],
     "freeze.vit, freeze.projector and freeze.llm are all true and no LoRA rank is set: nothing to train"),
    (["model.quantize=int4"], "model.quantize = 'int4' freezes the language model in int8/int4 (QLoRA): it needs "
                              "lora.llm_rank > 0"),
    (["model.quantize=int3"], 'model.quantize = "int3": must be one of "", "int8", "int4"'),
    (['lora.target_modules=["attention.wqkv"]'], "lora.target_modules is set but lora.llm_rank = 0"),
    (['lora.vit_target_modules=["attn.qkv"]'], "lora.vit_target_modules is set but lora.vit_rank = 0"),
    (["lora.llm_rank=-2"], "lora.llm_rank = -2: must be >= 0"),
    (["freeze.unfreeze_vit_layers=-4"], "freeze.unfreeze_vit_layers = -4 trains layers of a frozen ViT again: it "
                                        "needs freeze.vit = true"),
    (["stage=mpo", "mpo.dpo_weight=0", "mpo.bco_weight=0", "mpo.sft_weight=0"],
     "mpo.dpo_weight, mpo.bco_weight and mpo.sft_weight are all 0: the MPO loss would be 0"),
    (["optm.lr=1"], "unknown config section 'optm' in 'optm.lr'; did you mean 'optim'? sections: model, data, "
                    "optim, freeze, lora, mpo"),
    (["optim.lrr=1"], "unknown config field 'optim.lrr'; did you mean 'optim.lr'? fields of [optim]: lr, "),
    (["stepz=3"], "unknown config field 'stepz'; did you mean 'steps'? top-level fields: name, stage, "),
    (["optim=3"], "optim is a section; give its fields"),
    (["steps"], "--set needs key=value, got 'steps'"),
]


@pytest.mark.parametrize(("sets", "message"), BAD, ids=[" ".join(s) for s, _ in BAD])
def test_a_bad_value_is_refused_when_the_config_is_built(sets, message):
    with pytest.raises(ConfigError) as e:
        load_config("demo_pretrain", sets)
    assert str(e.value).startswith(message), str(e.value)
    assert isinstance(e.value, ValueError)


@pytest.mark.parametrize(("sets", "message"), BAD, ids=[" ".join(s) for s, _ in BAD])
def test_the_cli_prints_one_plain_line_and_exits_2(sets, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as e:
        main(["train", "demo_pretrain", *sum([["--set", s] for s in sets], [])])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(f"nativevl train: error: {message}") and err.count("\n") == 1, err
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_a_config_built_in_python_is_checked_by_the_trainer_too():
    from nativevl.train.trainer import Trainer

    cfg = RECIPES["demo_pretrain"]()
    cfg.steps = 0
    with pytest.raises(ConfigError, match="steps = 0: must be >= 1"):
        Trainer(cfg)


def test_every_number_has_a_range_and_every_recipe_is_valid():
    free = {"freeze.unfreeze_vit_layers"}  # a Python slice start: any integer

    def walk(section, prefix=""):
        hints = typing.get_type_hints(type(section))
        for f in dataclasses.fields(section):
            value = getattr(section, f.name)
            if dataclasses.is_dataclass(value):
                yield from walk(value, f"{prefix}{f.name}.")
            else:
                yield prefix + f.name, hints[f.name], f.metadata

    unchecked = [key for key, hint, meta in walk(TrainConfig()) if key not in free and not meta and
                 any(t in (int, float) for t in (hint, *typing.get_args(hint)))]
    assert unchecked == []
    for make in RECIPES.values():
        validate(make())
    assert load_config("sft", ["data.text_ratio=none", "optim.lr=1"]).optim.lr == 1.0  # an int where a float goes
    assert load_config("sft", ["data.text_ratio=none"]).data.text_ratio is None


def test_unknown_recipes_and_toml_files_say_what_exists(tmp_path):
    with pytest.raises(ConfigError, match="unknown recipe 'demo_pretrian'; did you mean 'demo_pretrain'\\? "
                                          "recipes: pretrain, sft, ") as raised:
        load_config("demo_pretrian")
    listed = str(raised.value).split("recipes: ")[1].split(" (or")[0].split(", ")
    assert sorted(listed) == sorted(RECIPES)  # every recipe is named, each once
    (tmp_path / "run.toml").write_text('recipe = "sft"\n[optim]\nlrr = 1\n')
    with pytest.raises(ConfigError, match=f"{tmp_path / 'run.toml'}: unknown config field 'optim.lrr'"):
        load_config(str(tmp_path / "run.toml"))
    (tmp_path / "run.toml").write_text('recipe = "sft"\nprecision = "fp8"\n')
    with pytest.raises(ConfigError, match='precision = "fp8"'):
        load_config(str(tmp_path / "run.toml"))


def test_the_demo_recipes_missing_world_names_the_paths_and_the_fix(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit):
        main(["train", "demo_pretrain"])
    err = capsys.readouterr().err
    assert err == ("nativevl train: error: data.meta = world/meta_pretrain.json: no such file; data.tokenizer = "
                   "world/tokenizer: no such folder. Write ./world, where the demo recipes read their world, with "
                   "`nativevl world generate world`\n")
    (tmp_path / "demo_out/world/tokenizer").mkdir(parents=True)  # what `make demo` leaves
    (tmp_path / "demo_out/world/meta_sft.json").write_text("{}")
    (tmp_path / "demo_out/pretrain/final").mkdir(parents=True)
    with pytest.raises(SystemExit):
        main(["train", "demo_sft"])
    err = capsys.readouterr().err
    assert ("`make demo` wrote them under demo_out: add --set data.meta=demo_out/world/meta_sft.json --set "
            "data.tokenizer=demo_out/world/tokenizer --set model.checkpoint=demo_out/pretrain/final") in err
    assert "train it here first with `nativevl train demo_pretrain`" in err and err.count("\n") == 1


def test_recipes_are_listed_for_the_help_and_config_does_not_import_them():
    names = [name for name, _ in recipe_summaries()]
    assert names == list(RECIPES)
    assert all(line and "\n" not in line for _, line in recipe_summaries())
    text = recipes_help()
    assert text.startswith("recipes:\n") and all(f"  {name} " in text for name in RECIPES)
    probe = "import sys, nativevl.train.config; print('nativevl.train.recipes' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True).stdout.strip() == "False"
