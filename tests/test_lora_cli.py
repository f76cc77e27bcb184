"""Adapters where users use them: `nativevl merge-lora` (both layouts), `chat`/`eval`'s --adapter (Pipeline),
and a server holding two adapters beside its base, each request answered by the one its `model` names."""

from __future__ import annotations

import concurrent.futures
import json
import shutil
import signal

import openai
import pytest
import torch
from reference import tiny_checkpoint
from test_lora import _randomise_adapters
from test_serve import start_server

from nativevl import InternVL, Pipeline
from nativevl.cli import main
from nativevl.weights import checkpoint_hash
from nativevl.weights.lora import AdapterError, add_lora, save_adapter


@pytest.fixture(scope="module")
def adapters(tmp_path_factory):
    """A tiny checkpoint and two adapters for it (random, so that each answers differently)."""
    root = tmp_path_factory.mktemp("adapters")
    base = tiny_checkpoint(root / "tiny")
    for seed, name in ((0, "alpha"), (1, "beta")):
        model = InternVL.from_pretrained(base).eval()
        add_lora(model, llm_rank=4, vit_rank=2 if seed else 0)
        _randomise_adapters(model, seed)
        save_adapter(model, root / name, base=str(base), sha256=checkpoint_hash(base))
    return base, root / "alpha", root / "beta"


def _logits(model: InternVL) -> torch.Tensor:
    ids = torch.tensor([[1, 10, 20, 30, 40, 50]])  # text only (5 is <IMG_CONTEXT> in the tiny vocabulary)
    with torch.no_grad():
        return model(ids).logits


def test_merge_lora_writes_both_layouts_with_the_adapters_logits(adapters, tmp_path):
    base, alpha, _ = adapters
    want = _logits(Pipeline(base, adapter=alpha).model)
    assert (want - _logits(InternVL.from_pretrained(base))).abs().max() > 1e-3
    for layout in ("original", "transformers"):
        main(["merge-lora", str(alpha), str(tmp_path / layout), "--layout", layout])
        merged = InternVL.from_pretrained(tmp_path / layout)
        assert (_logits(merged) - want).abs().max().item() <= 1e-5
        assert (tmp_path / layout / "tokenizer.json").is_file()
    assert (_logits(InternVL.from_pretrained(alpha)) - want).abs().max().item() <= 1e-5  # the folder alone


def test_an_adapter_for_another_base_is_refused_by_name(adapters, tmp_path, capsys):
    base, alpha, _ = adapters
    other = tiny_checkpoint(tmp_path / "other")  # the same seed: the same weights until one is changed
    model = InternVL.from_pretrained(other)
    with torch.no_grad():
        model.mlp1[1].bias.add_(1.0)
    model.save_pretrained(other)
    with pytest.raises(AdapterError, match="adapter_base.json: base_sha256 is that of another base"):
        Pipeline(other, adapter=alpha)
    with pytest.raises(SystemExit):
        main(["merge-lora", str(tmp_path / "nothing"), str(tmp_path / "out")])
    assert "no adapter_config.json (not a PEFT adapter folder)" in capsys.readouterr().err


def test_an_adapter_whose_base_is_missing_names_the_file_that_names_it(adapters, tmp_path, capsys):
    _, alpha, _ = adapters
    moved = shutil.copytree(alpha, tmp_path / "moved")
    (moved / "adapter_base.json").write_text(json.dumps({"base_model_name_or_path": str(tmp_path / "gone")}))
    with pytest.raises(SystemExit):
        main(["merge-lora", str(moved), str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert f"{moved / 'adapter_base.json'}: base_model_name_or_path = '{tmp_path / 'gone'}' is not a checkpoint" in err
    config = json.loads((moved / "adapter_config.json").read_text())  # an adapter PEFT wrote without a base
    (moved / "adapter_base.json").unlink()
    (moved / "adapter_config.json").write_text(json.dumps({**config, "base_model_name_or_path": None}))
    with pytest.raises(AdapterError, match=r"adapter_config\.json: base_model_name_or_path is not set: give the base"):
        InternVL.from_pretrained(moved)
    assert not (tmp_path / "out").exists()  # nothing written


def test_the_server_answers_each_model_with_its_own_adapter(adapters, tmp_path):
    base, alpha, beta = adapters
    want = {name: Pipeline(base, adapter=folder)("Count to three.", max_new_tokens=10)
            for name, folder in (("alpha", alpha), ("beta", beta))}
    want["tiny"] = Pipeline(base)("Count to three.", max_new_tokens=10)
    assert len(set(want.values())) == 3  # three different answers, so a mix-up would show
    proc, url = start_server(base, "--adapter", f"alpha={alpha}", "--adapter", str(beta), "--max-batch", "4")
    try:
        client = openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0, timeout=120)
        assert [m.id for m in client.models.list().data] == ["tiny", "alpha", "beta"]

        def ask(name: str) -> tuple[str, str]:
            done = client.chat.completions.create(model=name, max_tokens=10,
                                                  messages=[{"role": "user", "content": "Count to three."}])
            return name, done.choices[0].message.content

        names = ["alpha", "tiny", "beta", "alpha", "beta", "tiny"] * 2
        with concurrent.futures.ThreadPoolExecutor(len(names)) as pool:  # interleaved, at once
            for name, text in pool.map(ask, names):
                assert text == want[name], name
        with pytest.raises(openai.NotFoundError, match="'gamma' does not exist; this server serves 'tiny', 'alpha'"):
            client.chat.completions.create(model="gamma", messages=[{"role": "user", "content": "hi"}])
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
