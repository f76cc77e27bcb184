"""What a new user hits (issue 25 §6): each mistake ends in one line on stderr, `nativevl CMD: error: …`, and exit
status 2, never a traceback; the help says what the commands do."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
from reference import tiny_checkpoint

from nativevl.cli import main


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return tiny_checkpoint(tmp_path_factory.mktemp("ckpt"))


def one_line_error(capsys, argv: list[str]) -> str:
    """Runs the CLI in this process; returns its one error line (the assertions say what else is wrong)."""
    with pytest.raises(SystemExit) as stop:
        main(argv)
    err = capsys.readouterr().err
    assert stop.value.code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith(f"nativevl {argv[0]}: error: "), lines[0]
    return lines[0]


def test_a_missing_checkpoint_folder_is_named_as_missing(capsys, tmp_path):
    line = one_line_error(capsys, ["chat", str(tmp_path / "nope"), "hi"])
    assert line.endswith(f"{tmp_path / 'nope'}: no such checkpoint folder")
    (tmp_path / "empty").mkdir()
    assert "no config.json (is this a checkpoint folder?)" in one_line_error(capsys, ["chat", str(tmp_path / "empty"),
                                                                                      "hi"])


def test_prm_without_best_of_is_refused(capsys, folder):
    assert "--prm scores Best-of-N candidates: give --best-of N" in one_line_error(
        capsys, ["chat", str(folder), "--prm", str(folder), "hi"])


def test_a_shard_size_needs_its_unit(capsys, folder, tmp_path):
    line = one_line_error(capsys, ["convert", str(folder), str(tmp_path / "out"), "--layout", "transformers",
                                   "--max-shard-size", "5"])
    assert "'5': give a number with its unit, e.g. 5GB" in line and not (tmp_path / "out").exists()
    from nativevl.weights import parse_size

    assert [parse_size(s) for s in ("5GB", "1.5GiB", "500MB", "2KB", "7B")] == [
        5 * 2**30, int(1.5 * 2**30), 500 * 2**20, 2048, 7]


def test_a_missing_vqa_file_is_named_as_missing(capsys, folder, tmp_path):
    line = one_line_error(capsys, ["eval", str(folder), "--vqa", str(tmp_path / "vqa.jsonl")])
    assert line.endswith(f"{tmp_path / 'vqa.jsonl'}: no such file or folder")
    (tmp_path / "empty").mkdir()
    assert "a folder with no .jsonl files" in one_line_error(capsys, ["eval", str(folder), "--vqa",
                                                                      str(tmp_path / "empty")])


def test_eval_flags_that_go_with_another_dataset_kind(capsys, folder, tmp_path):
    assert "--scoring chooses the MMMU metric" in one_line_error(
        capsys, ["eval", str(folder), "--vqa", str(tmp_path), "--scoring", "internvl"])
    assert "--groups picks the world's question types" in one_line_error(
        capsys, ["eval", str(folder), "--vqa", str(tmp_path), "--groups", "colour"])


def test_unknown_world_groups_are_refused_before_the_model_loads(capsys, tmp_path):
    line = one_line_error(capsys, ["eval", str(tmp_path / "no-model"), "--world", str(tmp_path), "--groups",
                                   "colr,reasoning"])
    assert "unknown question type(s) 'colr'; did you mean 'colour'?" in line and "multi-image" in line
    from nativevl.eval.world import check_groups

    assert check_groups(("Colour", " Reasoning ")) == ("colour", "reasoning")  # any case, as the table prints them


def test_training_errors_print_plainly_and_list_what_exists(capsys):
    line = one_line_error(capsys, ["train", "demo_pretrain", "--set", "optm.lr=1"])
    assert not line.removeprefix("nativevl train: error: ").startswith(("'", '"')), line
    assert "did you mean 'optim'?" in line and "sections: model, data, optim" in line


def test_key_errors_print_without_quotes(capsys, monkeypatch):
    import nativevl.cli as cli

    def raises(args):  # noqa: ANN001
        raise KeyError("no tokenizer.json in x")

    monkeypatch.setattr(cli, "cmd_world", raises)
    assert one_line_error(capsys, ["world", "generate", "x"]) == "nativevl world: error: no tokenizer.json in x"


def test_version_and_help_texts(capsys):
    from importlib.metadata import version

    with pytest.raises(SystemExit):
        main(["--version"])
    assert capsys.readouterr().out.strip() == f"nativevl {version('nativevl')}"
    with pytest.raises(SystemExit):
        main(["--help"])
    top = capsys.readouterr().out
    assert "MPO, PRM, Best-of-N" in top
    for command, wanted in {"train": ["recipes:", "demo_pretrain", "mpo", "prm"],
                            "convert": ["Reads either layout", "the -hf folders", "with a unit"],
                            "demo": ["natively pre-trains", "Best-of-N"],
                            "serve": ["port to listen on (default 8000)", "(default 30)", "demo_out/sft/final -> sft"],
                            "eval": ["--scoring", "mmmu", "vlmevalkit", "internvl"]}.items():
        with pytest.raises(SystemExit):
            main([command, "--help"])
        text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
        missing = [w for w in wanted if w not in text]
        assert not missing, (command, missing)


def test_interactive_chat_commands_and_ctrl_c(folder):
    """/help and /reset answer, an unknown /command is not sent to the model, Ctrl-C at the prompt ends the
    session with status 0 and no traceback."""
    proc = subprocess.Popen([sys.executable, "-m", "nativevl", "chat", str(folder), "--max-new-tokens", "2"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write("/help\n/reset\n/frobnicate\n")
    proc.stdin.flush()
    seen, deadline = "", time.monotonic() + 120
    while seen.count("user> ") < 4 and time.monotonic() < deadline:  # the 4th prompt waits for input
        seen += proc.stdout.read(1)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    assert "/reset forgets the conversation, /help shows this" in err
    assert "(conversation forgotten" in err and "unknown command /frobnicate" in err
    assert (seen + out).replace("user> ", "").strip() == ""  # nothing was answered: no command went to the model
