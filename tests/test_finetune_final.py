"""What a finished (or stopped) `eexp finetune` leaves in OUT: a config.yaml that replays the run from any directory,
a card that names the data files it trained on with their sha256, no folder that loads as a model when the final
save is cut short, and, on Ctrl-C, a line naming the checkpoint --resume continues from.

Every run is the session's tiny init-model checkpoint on a dozen examples (a second or two on one CPU core).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest
import yaml

from eexp.card import Card, read_card
from eexp.cli import cli
from eexp.errors import CardError
from eexp.io import read_records
from eexp.prompts import Serializer
from eexp.stages.imitation import imitation_examples
from eexp.stages.world_model import world_model_examples

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from eexp.training import trainer  # noqa: E402
from eexp.training.recipe import Finetune  # noqa: E402

DATA = Path(__file__).parent / "data"

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def work(tiny_checkpoint, tmp_path, monkeypatch) -> Path:
    """A working directory holding `base` (the tiny checkpoint), il.jsonl and iwm.jsonl, made the current one: a run
    started there names them relatively, as a user does."""
    w = tmp_path / "work"
    w.mkdir()
    shutil.copytree(tiny_checkpoint, w / "base")
    s = Serializer()
    il = [e for t in read_records([DATA / "trajectories.jsonl"]) for e in imitation_examples(t, s, True)]
    iwm = [e for o in read_records([DATA / "outcomes.jsonl"]) for e in world_model_examples(o, s)]
    (w / "il.jsonl").write_text("".join(json.dumps(e) + "\n" for e in il))
    (w / "iwm.jsonl").write_text("".join(json.dumps(e) + "\n" for e in iwm))
    monkeypatch.chdir(w)
    return w


ARGS = ["il.jsonl", "--model", "base", "--max-steps", "3", "--batch-size", "4", "--max-length", "512", "-q"]


def finetune(runner, *args):
    return runner.invoke(cli, ["finetune", *args])


def losses(out: Path) -> list:
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["phase"], r["loss"]) for r in rows if "loss" in r]


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_config_yaml_replays_the_run_from_another_directory_and_the_card_names_its_data(
    runner, work, tmp_path, monkeypatch
):
    result = finetune(runner, *ARGS, "--warmup-data", "iwm.jsonl", "--val", "il.jsonl", "-o", "run")
    assert result.exit_code == 0, result.output
    conf = yaml.safe_load((work / "run" / "config.yaml").read_text())
    assert conf["model"] == str(work / "base") and conf["output"] == str(work / "run")
    assert conf["train_files"] == [str(work / "il.jsonl")] and conf["warmup_data"] == [str(work / "iwm.jsonl")]
    assert conf["val"] == str(work / "il.jsonl")

    # The card says what the model was trained (and validated) on: each file's role, path and sha256, as
    # `sha256sum FILE` prints it.
    card = read_card(work / "run")
    assert card.data == [
        {"role": "warmup", "file": str(work / "iwm.jsonl"), "sha256": sha256(work / "iwm.jsonl")},
        {"role": "train", "file": str(work / "il.jsonl"), "sha256": sha256(work / "il.jsonl")},
        {"role": "val", "file": str(work / "il.jsonl"), "sha256": sha256(work / "il.jsonl")},
    ]
    assert Card.from_gguf(card.gguf_fields(), "m.gguf") == card  # export carries it into a GGUF

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    result = finetune(runner, "--config", str(work / "run" / "config.yaml"), "-o", "again", "-q")
    assert result.exit_code == 0, result.output
    assert losses(elsewhere / "again") == losses(work / "run")  # the same run, replayed
    assert read_card(elsewhere / "again").data == card.data


def test_a_hub_id_stays_a_hub_id_in_config_yaml(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "il.jsonl").write_text("")
    written = trainer.absolute_paths(
        {"model": "HuggingFaceTB/SmolLM2-135M@main", "train_files": ["il.jsonl", "-"], "output": "o", "seed": 3}
    )
    assert written == {
        "model": "HuggingFaceTB/SmolLM2-135M@main",
        "train_files": [str(tmp_path / "il.jsonl"), "-"],
        "output": str(tmp_path / "o"),
        "seed": 3,
    }


def test_a_card_with_an_unknown_data_key_is_an_error(tmp_path):
    (tmp_path / "card.yaml").write_text("command: finetune\ndata: [{role: train, file: /a.jsonl, md5: x}]\n")
    with pytest.raises(CardError) as e:
        read_card(tmp_path)
    assert str(e.value) == f"{tmp_path / 'card.yaml'}: data: unknown key 'md5' (known: role, file, sha256)"


def interrupt_after_update(monkeypatch, step: int) -> None:
    """Ctrl-C right after update `step` (and its checkpoint, when one is due)."""
    due = Finetune._checkpoint_if_due

    def then_ctrl_c(self, at):
        due(self, at)
        if at == step:
            raise KeyboardInterrupt

    monkeypatch.setattr(Finetune, "_checkpoint_if_due", then_ctrl_c)


def test_ctrl_c_names_the_last_checkpoint_and_resume_continues_from_it(runner, work, monkeypatch):
    interrupt_after_update(monkeypatch, 2)
    result = finetune(runner, *ARGS, "--save-every", "1", "-o", "run")
    assert result.exit_code == 1, result.output  # click's Abort under CliRunner (130 from `eexp`)
    last = os.path.join("run", "checkpoints", "step-2")
    assert (
        f"eexp: stopped; {last} holds the last checkpoint: the same command with --resume continues from it\n"
        in result.output
    )
    monkeypatch.undo()
    monkeypatch.chdir(work)
    # the same command, relative paths and all, continues the run
    result = finetune(runner, *ARGS, "--save-every", "1", "-o", "run", "--resume")
    assert result.exit_code == 0, result.output
    assert f"resumed from {last} (step 2 of 3)" in result.output


def test_ctrl_c_before_any_checkpoint_names_none(runner, work, monkeypatch):
    interrupt_after_update(monkeypatch, 1)
    result = finetune(runner, *ARGS, "-o", "run")
    assert "Aborted" in result.output and "stopped;" not in result.output, result.output


def test_a_run_killed_while_writing_the_final_model_leaves_no_model_and_resume_finishes_it(runner, work, monkeypatch):
    write_card = trainer.write_card

    def killed(folder, card):  # after the weights, config.json and the tokenizer are written
        raise KeyboardInterrupt

    monkeypatch.setattr(trainer, "write_card", killed)
    result = finetune(runner, *ARGS, "--save-every", "1", "-o", "run")
    assert result.exit_code == 1, result.output
    out = work / "run"
    assert not (out / "config.json").exists() and not (out / "model.safetensors").exists()
    with pytest.raises((OSError, ValueError)):  # no config.json: "Unrecognized model"
        transformers.AutoModelForCausalLM.from_pretrained(out)
    assert "step-2 holds the last checkpoint" in result.output

    monkeypatch.setattr(trainer, "write_card", write_card)
    result = finetune(runner, *ARGS, "--save-every", "1", "-o", "run", "--resume")
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir() if p.name.startswith(".")) == []  # the half-written one is gone
    assert transformers.AutoModelForCausalLM.from_pretrained(out).config.model_type == "qwen2"
    assert read_card(out).updates == 3 and (out / "config.yaml").exists()
