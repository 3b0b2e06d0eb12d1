"""The model card (eexp/card.py): one card from a finetune checkpoint through its GGUF to the policy that runs it,
hashes that join, strict parsing, and a checkpoint's config.yaml that `eexp finetune --config` replays."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from eexp.card import Card, read_card, write_card
from eexp.cli import cli
from eexp.errors import CardError
from eexp.io import read_records
from eexp.prompts import Serializer
from eexp.stages.imitation import imitation_examples

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

DATA = Path(__file__).parent / "data"
SERIALIZER = Serializer(history=2, max_observation_chars=900)


# one torch thread for every test here (conftest.one_torch_thread)
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def il(tmp_path_factory) -> Path:
    """IL examples rendered with a serializer that is not the default one, so the card's serializer is seen."""
    path = tmp_path_factory.mktemp("card-data") / "il.jsonl"
    examples = [e for t in read_records([DATA / "trajectories.jsonl"]) for e in imitation_examples(t, SERIALIZER, True)]
    path.write_text("".join(json.dumps(e) + "\n" for e in examples))
    return path


def finetune_args(il, model, out, *extra) -> list[str]:
    return [
        "finetune",
        str(il),
        "--model",
        str(model),
        "-o",
        str(out),
        "--max-steps",
        "2",
        "--batch-size",
        "4",
        "--max-length",
        "512",
        "-q",
        *extra,
    ]


@pytest.fixture(scope="module")
def trained(il, tiny_checkpoint, tmp_path_factory) -> Path:
    from click.testing import CliRunner

    out = tmp_path_factory.mktemp("card-run") / "il"
    result = CliRunner().invoke(cli, finetune_args(il, tiny_checkpoint, out))
    assert result.exit_code == 0, result.output
    return out


def test_finetune_writes_one_card(trained, tiny_checkpoint):
    from eexp import __version__
    from eexp.policies import load_policy

    card = read_card(trained)
    assert card.command == "finetune" and card.eexp_version == __version__
    assert card.serializer == SERIALIZER.to_dict()
    assert card.base_model == str(Path(tiny_checkpoint).resolve()) and card.from_scratch is True
    # the base's hash is the one a run of the base records as meta.model_sha256
    assert card.base_sha256 == load_policy(str(tiny_checkpoint), {}).describe()["model_sha256"]
    assert [(p["name"], p["updates"]) for p in card.phases] == [("train", 2)] and card.updates == 2
    # the checkpoint's own policy renders states with the card's serializer
    assert load_policy(str(trained), {}).serializer_settings() == SERIALIZER.to_dict()


def test_checkpoint_to_gguf_to_policy_carries_the_card_and_the_hashes_join(trained, tmp_path):
    gguf = pytest.importorskip("gguf")
    from dataclasses import replace

    from eexp.models.export import export_gguf
    from eexp.policies import load_policy

    out = export_gguf(trained, tmp_path / "il.f32.gguf", quant="f32")
    reader = gguf.GGUFReader(str(out))
    metadata = {name: field.contents() for name, field in reader.fields.items()}
    in_gguf = Card.from_gguf(metadata, str(out))
    checkpoint_run = load_policy(str(trained), {}).describe()
    # the checkpoint's card, with what export adds: nothing of it lost on the way
    assert in_gguf == replace(
        read_card(trained), source=str(trained.resolve()), source_sha256=checkpoint_run["model_sha256"], quant="f32"
    )
    assert metadata["eexp.source_sha256"] == checkpoint_run["model_sha256"]  # records of the checkpoint join the GGUF
    assert json.loads(metadata["eexp.serializer"]) == SERIALIZER.to_dict()
    pytest.importorskip("llama_cpp")
    policy = load_policy(str(out), {"n_threads": 1})
    assert Card.from_gguf(policy.llm.metadata, str(out)) == in_gguf  # llama.cpp's all-string metadata: the same card
    assert policy.serializer_settings() == SERIALIZER.to_dict()


def test_config_yaml_replays_the_run(trained, tmp_path, runner):
    config = trained / "config.yaml"
    again = tmp_path / "again"
    result = runner.invoke(cli, ["finetune", "--config", str(config), "-o", str(again), "-q"])
    assert result.exit_code == 0, result.output
    before, after = yaml.safe_load(config.read_text()), yaml.safe_load((again / "config.yaml").read_text())
    assert after == {**before, "output": str(again)}
    assert (again / "metrics.jsonl").read_text().count("\n") == (trained / "metrics.jsonl").read_text().count("\n")
    losses = [
        [r["loss"] for r in map(json.loads, (d / "metrics.jsonl").read_text().splitlines()) if "loss" in r]
        for d in (trained, again)
    ]
    assert losses[0] == losses[1]
    assert read_card(again).serializer == read_card(trained).serializer


def test_finetune_card_records_the_machine_and_its_kernels(trained):
    """Training diverges between CPUs (issue 61): the card says which CPU and which kernels trained the model."""
    machine = read_card(trained).machine
    assert machine["cpu"] and machine["torch"] == torch.__version__
    assert machine["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    # on x86 Linux also its family and model, which the name leaves out ("AMD EPYC" covers several generations)
    cpuinfo = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    family = re.search(r"^cpu family\s*: (\d+)$", cpuinfo, re.M)
    model = re.search(r"^model\s*: (\d+)$", cpuinfo, re.M)
    assert machine.get("cpuid") == (f"family {family[1]}, model {model[1]}" if family and model else None)


def test_the_recipes_kernel_settings_reach_the_card(tmp_path):
    """The recipes' CPU_REPRODUCIBLE settings (AVX2 kernels, MKL's AVX2 branch), as recipes/Makefile exports them to
    what it runs, are what the card records (from an environment that sets none of them itself)."""
    import os
    import subprocess
    import sys

    recipes = Path(__file__).parent.parent / "recipes"
    env = {k: v for k, v in os.environ.items() if k not in ("ATEN_CPU_CAPABILITY", "MKL_CBWR", "ONEDNN_MAX_CPU_ISA")}
    snippet = (
        "from eexp.training.machine import machine_card; m = machine_card(); print(m['cpu_capability'], m['mkl_cbwr'])"
    )
    out = subprocess.run(
        [
            "make",
            "-s",
            "--no-print-directory",
            "-C",
            str(recipes),
            f'--eval=card: ; @{sys.executable} -c "{snippet}"',
            "card",
        ],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert out == ["AVX2", "AVX2"]


def test_an_unknown_key_in_a_card_is_an_error_naming_it_and_the_file(tmp_path):
    (tmp_path / "card.yaml").write_text("command: finetune\nserialiser: {history: 2}\n")
    with pytest.raises(CardError) as e:
        read_card(tmp_path)
    assert str(e.value) == (
        f"{tmp_path / 'card.yaml'}: unknown key 'serialiser' in the model card (known: adapter, adapter_sha256, "
        "base_import, base_model, base_revision, base_sha256, best_step, best_val_loss, command, data, eexp_version, "
        "from_scratch, gradient_checkpointing, machine, method, phases, precision, pretrain, quant, serializer, "
        "source, source_sha256, thought_tokens, updates)"
    )


def test_an_unknown_serializer_setting_is_an_error_not_dropped(tmp_path):
    write_card(tmp_path, Card(command="finetune"))
    (tmp_path / "card.yaml").write_text("serializer: {history: 2, max_obs_chars: 10}\n")
    with pytest.raises(CardError) as e:
        read_card(tmp_path)
    assert str(e.value) == (
        f"{tmp_path / 'card.yaml'}: serializer: unknown setting 'max_obs_chars' (settings: history, "
        "max_observation_chars, max_history_chars, show_admissible, max_admissible)"
    )


def test_a_card_that_does_not_parse_is_one_line_naming_where(tmp_path, runner):
    """A card.yaml that is not UTF-8, or not YAML, is `FILE:LINE: what`, one line, exit 1: it was a traceback, and
    yaml's own message of several lines with an excerpt. A --config file the same way (a usage error, exit 2)."""
    card = tmp_path / "card.yaml"
    card.write_bytes(b"command: \xff\n")
    with pytest.raises(CardError) as e:
        read_card(tmp_path)
    assert str(e.value) == f"{card}: not UTF-8 text (byte 9)"
    card.write_text("command: finetune\nserializer: [1, 2\n")
    with pytest.raises(CardError) as e:
        read_card(tmp_path)
    assert str(e.value) == f"{card}:3: not valid YAML: expected ',' or ']', but got '<stream end>'"
    config = tmp_path / "run.yaml"
    config.write_text("history: 2\n  seed: 1\n")
    result = runner.invoke(cli, ["imitation-data", "--config", str(config)])
    assert result.exit_code == 2
    assert result.output.splitlines()[-1] == (
        f"Error: Invalid value for '--config': {config}:2: not valid YAML: mapping values are not allowed here"
    )


def test_gguf_metadata_is_parsed_as_strictly():
    with pytest.raises(CardError) as e:
        Card.from_gguf({"general.name": "x", "eexp.version": "1", "eexp.serialiser": "{}"}, "m.gguf")
    assert str(e.value).startswith("m.gguf: unknown metadata key 'eexp.serialiser' in the model card (known: ")
    with pytest.raises(CardError) as e:
        Card.from_gguf({"eexp.updates": "two"}, "m.gguf")
    assert str(e.value).startswith("m.gguf: metadata eexp.updates is not JSON (")
    with pytest.raises(CardError) as e:
        Card.from_dict({"updates": "2"}, "card.yaml")
    assert str(e.value) == "card.yaml: updates must be an integer, not '2'"


def test_card_round_trips_through_the_folder_and_gguf_fields(tmp_path):
    card = Card(
        command="finetune",
        eexp_version="0.1",
        serializer=SERIALIZER.to_dict(),
        base_model="/m",
        base_sha256="ab" * 32,
        from_scratch=True,
        method="lora",
        phases=[{"name": "train", "updates": 3}],
        updates=3,
        best_val_loss=1.5,
    )
    write_card(tmp_path, card)
    assert read_card(tmp_path) == card
    assert Card.from_gguf(card.gguf_fields(), "m.gguf") == card
    assert card.gguf_fields()["eexp.version"] == "0.1" and card.gguf_fields()["eexp.from_scratch"] == "true"


def test_a_folder_without_a_card_is_read_from_its_config_yaml(tiny_checkpoint, tmp_path):
    """A folder from before card.yaml (init-model's, import-model's or finetune's config.yaml held the provenance):
    read_card takes the card's fields from config.yaml, as strictly."""
    card = read_card(tiny_checkpoint)
    assert card.command == "init-model" and card.from_scratch is True and card.serializer is None
    legacy = tmp_path / "legacy"
    legacy.mkdir()
    (legacy / "config.yaml").write_text((tiny_checkpoint / "config.yaml").read_text())
    assert read_card(legacy) == card  # init-model's card, read from its config.yaml alone
    (tmp_path / "config.yaml").write_text(yaml.safe_dump({"lr": 1e-4, "serializer": {"history": 1, "colour": 2}}))
    with pytest.raises(CardError, match="serializer: unknown setting 'colour'"):
        read_card(tmp_path)
    assert read_card(tmp_path / "absent") == Card()


def test_init_model_writes_its_card_with_the_pretrain_record(tiny_checkpoint, tmp_path):
    """Every checkpoint folder eexp makes carries one card: init-model's says init-model, the eexp version and
    from_scratch, and with --pretrain the pretraining record (config.yaml keeps its own copy); strictly read."""
    from eexp import __version__
    from eexp.models.init import init_model
    from eexp.models.pretrain import PretrainSettings

    assert yaml.safe_load((tiny_checkpoint / "card.yaml").read_text()) == {
        "command": "init-model",
        "eexp_version": __version__,
        "from_scratch": True,
    }
    text = tmp_path / "pages.txt"
    text.write_text("".join(f"page {i}: a red shirt costs {i} dollars and a blue one {i + 3}.\n" for i in range(30)))
    out = init_model(
        tmp_path / "prior", pretrain=[str(text)], pretrain_settings=PretrainSettings(steps=2, block=16, batch=2)
    )
    card, config = read_card(out), yaml.safe_load((out / "config.yaml").read_text())
    assert (card.command, card.from_scratch, card.pretrain) == ("init-model", True, config["pretrain"])
    assert card.pretrain["corpus"] == [str(text)] and card.pretrain["steps"] == 2
    assert Card.from_gguf(card.gguf_fields(), "m.gguf") == card  # export carries it into the GGUF

    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "card.yaml").write_text("command: init-model\npretrain: {steps: 2, colour: red}\n")
    with pytest.raises(CardError) as unknown:
        read_card(tmp_path / "bad")
    assert str(unknown.value) == (
        f"{tmp_path / 'bad' / 'card.yaml'}: pretrain: unknown key 'colour' (known: corpus, "
        "steps, block, batch, lr, seed, pages, tokens, held_out_pages, held_out_loss_before, "
        "final_train_loss, held_out_loss)"
    )
    (tmp_path / "bad" / "card.yaml").write_text("pretrain: [2]\n")
    with pytest.raises(CardError, match="pretrain must be a mapping, not list"):
        read_card(tmp_path / "bad")
