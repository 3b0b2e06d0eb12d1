"""What a run says of itself: --stats counts a local model's requests, Ctrl-C says `eexp: interrupted` without a
blank line before it, export names the quant type it wrote and a missing CKPT as missing, expert says when -n asks
for more tasks than the split has, `eexp --help` lists whole first sentences, and the SkyRL dataset is written as
eexp writes a file (whole, under a temporary name)."""

from __future__ import annotations

import json
import sys

import click
import orjson
import pytest

from eexp.cli import cli
from eexp.cli.group import first_sentence, main


def records(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


# --- --stats: policy_requests of a model in this process -----------------------------------------------------------


@pytest.mark.parametrize("backend", ["gguf", "transformers"])
def test_local_policies_count_their_requests_in_stats(backend, runner, tiny_gguf, tiny_checkpoint, tmp_path):
    expert = runner.invoke(cli, ["expert", "--env", "shop", "-n", "2", "-o", str(tmp_path / "expert.jsonl")])
    assert expert.exit_code == 0, expert.output
    model = str(tiny_gguf if backend == "gguf" else tiny_checkpoint)
    stats = tmp_path / "stats.json"
    result = runner.invoke(
        cli, ["branch", "--policy", model, "-k", "2", "-q", "--stats", str(stats), str(tmp_path / "expert.jsonl")]
    )
    assert result.exit_code == 0, result.output
    got = records(result.stdout)
    counted = json.loads(stats.read_text())
    # K samples at every expert step, each one reply asked of the model (as a server's policy counts them)
    assert got and counted["policy_requests"] == 2 * len(got), counted
    assert counted["failed_requests"] == 0


# --- Ctrl-C ---------------------------------------------------------------------------------------------------------


def _interrupted(monkeypatch, capsys, body) -> str:
    """stderr of `eexp boom`, a command whose body is `body` and which then gets Ctrl-C."""

    @click.command("boom")
    def boom():
        body()
        raise KeyboardInterrupt

    monkeypatch.setitem(cli.commands, "boom", boom)
    monkeypatch.setattr(sys, "argv", ["eexp", "boom"])
    with pytest.raises(SystemExit) as stopped:
        main()
    assert stopped.value.code == 130
    return capsys.readouterr().err


def test_interrupted_is_said_without_a_blank_line_before_it(monkeypatch, capsys):
    assert _interrupted(monkeypatch, capsys, lambda: None) == "eexp: interrupted\n"


def test_interrupted_ends_an_open_progress_bar_line_first(monkeypatch, capsys):
    from tqdm import tqdm

    bars = []

    def draw():
        bars.append(tqdm(total=10, file=sys.stderr, disable=False))
        bars[0].update(3)
        bars[0].refresh()  # drawn now, not at its next interval

    try:
        err = _interrupted(monkeypatch, capsys, draw)
    finally:
        for bar in bars:
            bar.close()
    bar_line, said = err.rsplit("\r", 1)[-1].split("\n", 1)  # the bar's last drawing, then what follows it
    assert "3/10" in bar_line and said == "eexp: interrupted\n", repr(err)


# --- export -----------------------------------------------------------------------------------------------------------


def test_export_of_a_missing_path_says_no_such_file(runner, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(cli, ["export", "IWMM", "-o", "x.gguf"])
    assert result.exit_code == 1
    assert result.stderr == "Error: IWMM: no such file or directory\n"
    (tmp_path / "base").mkdir()
    result = runner.invoke(cli, ["export", "base", "--adapter", "runs/il-lora", "-o", "x.gguf"])
    assert result.exit_code == 1
    assert result.stderr == "Error: runs/il-lora: no such file or directory\n"
    assert not (tmp_path / "x.gguf").exists()


def test_export_says_the_quant_type_it_wrote(runner, tiny_gguf, tmp_path):
    out = tmp_path / "x.gguf"
    result = runner.invoke(cli, ["export", str(tiny_gguf), "-o", str(out)])  # a GGUF: imported, quantized anew
    assert result.exit_code == 0, result.output
    assert result.stderr.endswith(f"eexp: wrote {out} (q8_0)\n")
    assert out.stat().st_size > 0


# --- expert -n past the split -------------------------------------------------------------------------------------


def test_expert_says_when_the_split_has_fewer_tasks_than_asked(runner):
    result = runner.invoke(cli, ["expert", "--env", "shop", "--split", "test", "-n", "100000", "-q"])
    assert result.exit_code == 0, result.output
    assert len(records(result.stdout)) == 1000
    assert "eexp: the test split has 1000 tasks: writing all of them (asked for 100000)\n" in result.stderr
    fewer = runner.invoke(cli, ["expert", "--env", "shop", "--split", "test", "-n", "3", "-q"])
    assert fewer.exit_code == 0 and "split has" not in fewer.stderr


# --- eexp --help --------------------------------------------------------------------------------------------------


def test_help_lists_each_command_with_a_whole_sentence():
    cut = {name: first_sentence(c) for name, c in cli.commands.items() if not first_sentence(c).endswith((".", "?"))}
    assert cut == {}


# --- SkyRL's dataset file -------------------------------------------------------------------------------------------


def test_skyrl_dataset_is_written_whole_or_not_at_all(tmp_path, monkeypatch, capsys):
    pytest.importorskip("skyrl_gym", reason="skyrl-gym is in the dev extra")
    from eexp.integrations import skyrl

    out = tmp_path / "train.jsonl"
    out.write_text('{"old": 1}\n')
    # a row that cannot be written (the second): the file keeps what it held, not a first row of the new one
    monkeypatch.setattr(skyrl, "dataset_rows", lambda *a, **k: [{"prompt": "a"}, {"prompt": object()}])
    with pytest.raises(TypeError):
        skyrl.main(["--env", "shop", "-n", "2", "-o", str(out)])
    assert out.read_text() == '{"old": 1}\n'
    monkeypatch.setattr(skyrl, "dataset_rows", lambda *a, **k: [{"prompt": "a"}, {"prompt": "b"}])
    folder = tmp_path / "folder"
    folder.mkdir()
    assert skyrl.main(["--env", "shop", "-n", "2", "-o", str(folder)]) == 1
    assert capsys.readouterr().err == f"eexp: {folder}: is a directory, not a file to write\n"
    assert skyrl.main(["--env", "shop", "-n", "2", "-o", str(out)]) == 0
    assert [orjson.loads(line) for line in out.read_bytes().splitlines()] == [{"prompt": "a"}, {"prompt": "b"}]
    assert {p.name for p in tmp_path.iterdir()} == {"train.jsonl", "folder"}  # no temporary file left
