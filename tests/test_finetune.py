"""`eexp finetune`: chat-template masks, truncation, the IWM schedule, exact resume, LoRA, bad input.

Every run uses the session's tiny init-model checkpoint (~0.1M parameters) and a dozen examples made from
tests/data, so a run takes a second or two on one CPU core.
"""

from __future__ import annotations

import errno
import json
import shutil
from pathlib import Path

import pytest
import yaml

from eexp.card import read_card
from eexp.cli import cli
from eexp.errors import TrainingError
from eexp.io import read_records
from eexp.prompts import Serializer
from eexp.stages.imitation import imitation_examples
from eexp.stages.world_model import world_model_examples

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from by_hand import collate, weighted_nll  # noqa: E402

from eexp.training import recipe  # noqa: E402
from eexp.training.batches import epoch_updates  # noqa: E402
from eexp.training.config import FinetuneConfig  # noqa: E402
from eexp.training.data import encode, read_examples, split_validation  # noqa: E402
from eexp.training.recipe import Finetune, finetune  # noqa: E402

DATA = Path(__file__).parent / "data"


# one torch thread for every test here (conftest.one_torch_thread)
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def write_jsonl(path: Path, records) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """il.jsonl (11 examples, 3 trajectories) and iwm.jsonl (world-model examples) from the test records."""
    d = tmp_path_factory.mktemp("ft-data")
    s = Serializer()
    il = [e for t in read_records([DATA / "trajectories.jsonl"]) for e in imitation_examples(t, s, True)]
    iwm = [e for o in read_records([DATA / "outcomes.jsonl"]) for e in world_model_examples(o, s)]
    return {"il": write_jsonl(d / "il.jsonl", il), "iwm": write_jsonl(d / "iwm.jsonl", iwm), "dir": d}


@pytest.fixture(scope="module")
def tokenizer(tiny_checkpoint):
    return transformers.AutoTokenizer.from_pretrained(tiny_checkpoint)


def cfg(model, data, out, **kw) -> FinetuneConfig:
    options = dict(
        train_files=[str(data["il"])],
        model=str(model),
        output=str(out),
        batch_size=4,
        seed=0,
        quiet=True,
        max_length=512,
    )
    options.update(kw)
    return FinetuneConfig(**options)


def metrics(out) -> list[dict]:
    return [json.loads(line) for line in (Path(out) / "metrics.jsonl").read_text().splitlines()]


def losses(out) -> list[tuple[int, str, float]]:
    return [(r["step"], r["phase"], r["loss"]) for r in metrics(out) if "loss" in r]


def trained_text(tok, enc) -> str:
    return tok.decode([t for t, w in zip(enc.ids, enc.weights) if w])


CONVERSATION = [
    {"role": "system", "content": "You are an agent."},
    {"role": "user", "content": "Task: buy a shirt."},
    {"role": "assistant", "content": "Action: search[shirt]", "weight": 0},
    {"role": "user", "content": "Results: [1] red shirt"},
    {"role": "assistant", "content": "Action: click[1]"},
]

QWEN2_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
LLAMA3_TEMPLATE = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' + message['content'] | trim"
    " + '<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}{{ content }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)


# --- masks ------------------------------------------------------------------------------------------------------


def test_mask_of_the_init_model_template_trains_the_answer_and_its_end_of_turn(tokenizer):
    enc = encode(tokenizer, CONVERSATION, max_length=512)
    # Only the last assistant turn (the first has weight 0), with <|im_end|> (= eos) inside the loss.
    assert trained_text(tokenizer, enc) == "Action: click[1]<|im_end|>"
    assert tokenizer.eos_token == "<|im_end|>"
    trained = [t for t, w in zip(enc.ids, enc.weights) if w]
    assert trained[-1] == tokenizer.eos_token_id
    # The sequence is the template's rendering (the answer tokenized on its own, as generated at inference).
    assert (
        tokenizer.decode(enc.ids)
        == tokenizer.apply_chat_template(
            [{k: m[k] for k in ("role", "content")} for m in CONVERSATION], tokenize=False
        ).rstrip()
    )
    # No token was added to the vocabulary.
    assert max(enc.ids) < len(tokenizer)


def test_mask_trains_every_weighted_assistant_turn(tokenizer):
    messages = [dict(m) for m in CONVERSATION]
    messages[2]["weight"] = 1
    enc = encode(tokenizer, messages, max_length=512)
    assert trained_text(tokenizer, enc) == "Action: search[shirt]<|im_end|>Action: click[1]<|im_end|>"
    messages[2]["weight"] = 0.5
    enc = encode(tokenizer, messages, max_length=512)
    assert sorted(set(enc.weights)) == [0.0, 0.5, 1.0]


@pytest.mark.parametrize("style", ["qwen2", "llama3"])
def test_mask_of_qwen2_and_llama3_style_templates(tiny_checkpoint, style):
    tok = transformers.AutoTokenizer.from_pretrained(tiny_checkpoint)
    if style == "qwen2":
        tok.chat_template, eot = QWEN2_TEMPLATE, "<|im_end|>"
        # Qwen2 adds a default system prompt when there is none: the prefixes must still line up.
        messages = CONVERSATION[1:]
    else:
        # A Llama-3-style vocabulary (made here for the test; finetune itself never adds tokens).
        tok.add_special_tokens(
            {
                "bos_token": "<|begin_of_text|>",
                "eos_token": "<|eot_id|>",
                "additional_special_tokens": ["<|start_header_id|>", "<|end_header_id|>"],
            }
        )
        tok.chat_template, eot = LLAMA3_TEMPLATE, "<|eot_id|>"
        messages = CONVERSATION
    n_vocab = len(tok)
    enc = encode(tok, messages, max_length=512)
    assert trained_text(tok, enc) == f"Action: click[1]{eot}"
    assert [t for t, w in zip(enc.ids, enc.weights) if w][-1] == tok.convert_tokens_to_ids(eot)
    assert len(tok) == n_vocab
    if style == "llama3":
        assert enc.ids[0] == tok.bos_token_id and enc.weights[0] == 0


def test_a_long_state_loses_its_oldest_history_and_keeps_its_task(tokenizer):
    """Shortened as inference shortens it (tests/test_budget.py shows the two give the same tokens)."""
    state = {
        "goal": "buy a shirt",
        "observation": "a shop page " * 5,
        "history": [{"observation": f"page {i} " * 8, "action": f"click[{i}]"} for i in range(12)],
    }
    messages = Serializer(history=12).policy_messages(state) + [{"role": "assistant", "content": "Action: click[1]"}]
    enc = encode(tokenizer, messages, max_length=400)
    assert enc.truncated and len(enc.ids) <= 400
    text = tokenizer.decode(enc.ids)
    assert "Task: buy a shirt" in text and "earlier steps not shown)" in text
    assert "click[0]" not in text and "click[11]" in text  # the oldest history went first
    assert trained_text(tokenizer, enc) == "Action: click[1]<|im_end|>"


def test_text_that_is_not_a_rendered_state_is_cut_from_the_left_keeping_system_and_target(tokenizer):
    """The last resort, for messages `shorten` cannot read (no state sections)."""
    history = " ".join(f"step{i} looked at item {i}." for i in range(60))
    messages = [
        {"role": "system", "content": "You are an agent."},
        {"role": "user", "content": f"Task: buy a shirt. {history} Now choose."},
        {"role": "assistant", "content": "Action: click[1]"},
    ]
    full = encode(tokenizer, messages, max_length=4096)
    enc = encode(tokenizer, messages, max_length=80)
    assert not full.truncated and len(full.ids) > 80
    assert enc.truncated and len(enc.ids) == 80
    text = tokenizer.decode(enc.ids)
    assert text.startswith("<|im_start|>system\nYou are an agent.<|im_end|>\n")  # system prompt kept
    assert "Task: buy a shirt" not in text and "Now choose." in text  # the oldest history went
    assert trained_text(tokenizer, enc) == "Action: click[1]<|im_end|>"  # the target is whole
    with pytest.raises(ValueError, match="over --max-length 80"):
        encode(tokenizer, messages, max_length=80, truncate=False)
    with pytest.raises(ValueError, match="targets are never cut"):
        encode(tokenizer, [messages[1], {"role": "assistant", "content": history}], max_length=80)


# --- training runs ----------------------------------------------------------------------------------------------


def test_full_finetune_pins_the_loss_and_writes_out(tiny_checkpoint, data, tmp_path):
    out = tmp_path / "il"
    run = finetune(cfg(tiny_checkpoint, data, out, max_steps=4, val_fraction=0.34))
    got = [loss for _, _, loss in losses(out)]
    # Pinned: the tiny init-model checkpoint (seed 0), these 11 examples, batch 4, lr 1e-3 (the default for a model
    # from init-model), cosine, the loss per example (the default --loss-norm). A change in masks, loss
    # normalization, batch order or the optimizer moves these.
    assert got == pytest.approx(PINNED_LOSSES, rel=1e-3)
    # And independently of our loss code: the first update's loss is the mean over the first update's examples of
    # what transformers computes for each alone (its mean over target tokens), with labels set to -100 outside the
    # trained tokens, with the initial weights.
    first = [
        run.data["train"].examples[j]
        for j in epoch_updates([len(e.ids) for e in run.data["train"].examples], 4, 0, "train", 0)[0]
    ]
    base = transformers.AutoModelForCausalLM.from_pretrained(tiny_checkpoint)
    hf_losses = []
    for example in first:
        ids, mask, w = collate([example], run.pad_id, "cpu")
        labels = torch.where((w > 0) & (mask > 0), ids, torch.full_like(ids, -100))
        with torch.no_grad():
            hf_losses.append(float(base(input_ids=ids, attention_mask=mask, labels=labels).loss))
    assert got[0] == pytest.approx(sum(hf_losses) / len(hf_losses), rel=1e-5)
    for name in ("model.safetensors", "config.json", "tokenizer.json", "config.yaml", "card.yaml", "metrics.jsonl"):
        assert (out / name).exists(), name
    assert not (out / "checkpoints").exists()
    conf, card = yaml.safe_load((out / "config.yaml").read_text()), read_card(out)
    assert card.serializer == Serializer().to_dict()  # from the examples' meta.serializer
    assert card.method == "full" and conf["lr"] == 1e-3 and card.updates == 4
    rows = metrics(out)
    assert {"step", "phase", "epoch", "loss", "lr", "tokens_per_s"} <= set(rows[1])
    val = [r["val_loss"] for r in rows if "val_loss" in r]
    assert len(val) >= 2 and val[-1] < val[0]  # validation loss went down
    # The validation split holds whole trajectories out.
    assert run.state["global_step"] == 4
    trained = transformers.AutoModelForCausalLM.from_pretrained(out)
    assert trained.config.vocab_size == transformers.AutoConfig.from_pretrained(tiny_checkpoint).vocab_size


PINNED_LOSSES = [6.021568, 5.958855, 5.810153, 5.549208]


def test_validation_split_keeps_trajectories_whole(data):
    items, _ = read_examples([str(data["il"])], "fail", print)
    train, val = split_validation(items, 0.34, seed=0)
    traj = lambda xs: {x.record["meta"]["trajectory_id"] for x in xs}  # noqa: E731
    assert traj(train) and traj(val) and not traj(train) & traj(val)
    assert len(train) + len(val) == len(items)
    assert split_validation(items, 0.34, seed=0)[1] == val  # seeded


def test_iwm_schedule_counts_both_phases_in_max_steps(tiny_checkpoint, data, tmp_path):
    out = tmp_path / "iwm"
    finetune(cfg(tiny_checkpoint, data, out, warmup_data=[str(data["iwm"])], max_steps=5, batch_size=3))
    rows = losses(out)
    n_warm = -(-len(list(read_records([data["iwm"]]))) // 3)
    assert [p for _, p, _ in rows] == ["warmup"] * n_warm + ["train"] * (5 - n_warm)
    assert [s for s, _, _ in rows] == [1, 2, 3, 4, 5]
    assert [(p["name"], p["updates"]) for p in read_card(out).phases] == [("warmup", n_warm), ("train", 5 - n_warm)]
    # A fresh optimizer and schedule for the second phase: its first update is at the peak learning rate again.
    lrs = [r["lr"] for r in metrics(out) if "lr" in r]
    assert lrs[0] == lrs[n_warm] == 1e-3 and lrs[n_warm - 1] < 1e-3


def test_warmup_steps_fix_the_warmup_whatever_the_data_size(tiny_checkpoint, data, tmp_path):
    """--warmup-steps N: N world-model updates (the data cycled past its end), then the training data."""
    n_per_epoch = -(-len(list(read_records([data["iwm"]]))) // 3)
    warm = n_per_epoch + 1  # more than one epoch of world-model data: it cycles
    out = tmp_path / "iwm"
    finetune(
        cfg(
            tiny_checkpoint,
            data,
            out,
            warmup_data=[str(data["iwm"])],
            warmup_steps=warm,
            max_steps=warm + 2,
            batch_size=3,
        )
    )
    assert [p for _, p, _ in losses(out)] == ["warmup"] * warm + ["train"] * 2
    conf = yaml.safe_load((out / "config.yaml").read_text())
    assert conf["warmup_steps"] == warm
    assert [(p["name"], p["updates"]) for p in read_card(out).phases] == [("warmup", warm), ("train", 2)]


def test_budget_must_leave_updates_after_the_warmup(tiny_checkpoint, data, tmp_path, runner):
    result = runner.invoke(
        cli,
        [
            "finetune",
            str(data["il"]),
            "--model",
            str(tiny_checkpoint),
            "-o",
            str(tmp_path / "o"),
            "--warmup-data",
            str(data["iwm"]),
            "--max-steps",
            "1",
            "-q",
        ],
    )
    assert result.exit_code == 2
    assert "leaves no updates for the training data" in result.output
    result = runner.invoke(
        cli,
        [
            "finetune",
            str(data["il"]),
            "--model",
            str(tiny_checkpoint),
            "-o",
            str(tmp_path / "o"),
            "--warmup-data",
            str(data["iwm"]),
            "--warmup-steps",
            "4",
            "--max-steps",
            "4",
            "-q",
        ],
    )
    assert result.exit_code == 2
    assert (
        "--max-steps 4 leaves no updates for the training data after the warm-up (--warmup-steps 4); give a "
        "larger --max-steps or a smaller --warmup-steps"
    ) in " ".join(result.output.split())


def test_a_warmup_rendered_with_other_serializer_settings_is_named(tiny_checkpoint, data, tmp_path, runner):
    """IWM's world model should learn states as the policy reads them: a warm-up made with another --history says so."""
    other = Serializer(history=0)
    iwm = [e for o in read_records([DATA / "outcomes.jsonl"]) for e in world_model_examples(o, other)]
    no_history = write_jsonl(tmp_path / "iwm0.jsonl", iwm)
    result = run_cli(
        runner,
        tiny_checkpoint,
        [data["il"]],
        tmp_path / "o",
        "--warmup-data",
        no_history,
        "--warmup-steps",
        "1",
        "--max-steps",
        "2",
    )
    assert result.exit_code == 0, result.output
    assert (
        "warning: --warmup-data renders states with other serializer settings than the training data (history 0 "
        "against 3); make both with the same options"
    ) in " ".join(result.output.split())
    same = run_cli(
        runner,
        tiny_checkpoint,
        [data["il"]],
        tmp_path / "o2",
        "--warmup-data",
        data["iwm"],
        "--warmup-steps",
        "1",
        "--max-steps",
        "2",
    )
    assert same.exit_code == 0, same.output
    assert "--warmup-data renders states" not in same.output


class Killed(Exception):
    pass


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_resume_reproduces_the_uninterrupted_loss_curve(tiny_checkpoint, data, tmp_path, monkeypatch, lora):
    # Two phases (IWM schedule), LoRA dropout on in the LoRA case, so the RNG state must be restored too.
    options = dict(
        warmup_data=[str(data["iwm"])],
        max_steps=7,
        batch_size=3,
        save_every=2,
        lora=lora,
        lora_dropout=0.1,
        val_fraction=0.34,
        eval_every=3,
    )
    finetune(cfg(tiny_checkpoint, data, tmp_path / "whole", **options))

    interrupted = tmp_path / "killed"
    log = Finetune._log

    def dying_log(self, row):  # killed during update 5, after the checkpoint of update 4
        log(self, row)
        if row.get("step") == 5 and "loss" in row:
            raise Killed

    monkeypatch.setattr(Finetune, "_log", dying_log)
    with pytest.raises(Killed):
        finetune(cfg(tiny_checkpoint, data, interrupted, **options))
    monkeypatch.setattr(Finetune, "_log", log)
    assert sorted(p.name for p in (interrupted / "checkpoints").iterdir()) == ["step-4"]

    finetune(cfg(tiny_checkpoint, data, interrupted, resume=True, **options))
    assert losses(interrupted) == losses(tmp_path / "whole")
    timeless = lambda out: [{k: v for k, v in r.items() if k != "tokens_per_s"} for r in metrics(out)]  # noqa
    assert timeless(interrupted) == timeless(tmp_path / "whole")  # validation rows too, none twice
    a = (tmp_path / "whole" / ("adapter_model.safetensors" if lora else "model.safetensors")).read_bytes()
    b = (interrupted / ("adapter_model.safetensors" if lora else "model.safetensors")).read_bytes()
    assert a == b


def test_resume_refuses_changed_options(tiny_checkpoint, data, tmp_path, monkeypatch):
    out = tmp_path / "o"
    monkeypatch.setattr(Finetune, "finish", lambda self: None)  # leave the checkpoints, as a killed run does
    finetune(cfg(tiny_checkpoint, data, out, max_steps=3, save_every=2))
    with pytest.raises(TrainingError, match=r"options differ.*lr"):
        finetune(cfg(tiny_checkpoint, data, out, max_steps=3, save_every=2, lr=0.01, resume=True))


def test_resume_of_a_finished_run_says_so_and_what_to_do(tiny_checkpoint, data, tmp_path):
    """The recipes fine-tune with --resume: a finished run met again (its data changed since) is refused, and the
    error says how to train again."""
    out = tmp_path / "o"
    finetune(cfg(tiny_checkpoint, data, out, max_steps=2))
    with pytest.raises(TrainingError) as e:
        finetune(cfg(tiny_checkpoint, data, out, max_steps=2, resume=True))
    assert (
        str(e.value)
        == f"{out}: this run already finished; nothing to resume (delete it, or give another -o, to train again)"
    )


def test_lora_adapter_and_continuing_it(tiny_checkpoint, data, tmp_path):
    first = tmp_path / "lora1"
    finetune(
        cfg(
            tiny_checkpoint, data, first, lora=True, lora_targets=["q_proj", "v_proj"], max_steps=3, val=str(data["il"])
        )
    )
    assert (first / "adapter_model.safetensors").exists() and not (first / "model.safetensors").exists()
    adapter_conf = json.loads((first / "adapter_config.json").read_text())
    assert Path(adapter_conf["base_model_name_or_path"]) == Path(tiny_checkpoint).resolve()
    assert sorted(adapter_conf["target_modules"]) == ["q_proj", "v_proj"]
    second = tmp_path / "lora2"
    finetune(cfg(tiny_checkpoint, data, second, adapter=str(first), max_steps=2, val=str(data["il"])))
    # The continued adapter starts where the first run ended: same validation loss before any update.
    end_of_first = [r["val_loss"] for r in metrics(first) if "val_loss" in r][-1]
    start_of_second = [r["val_loss"] for r in metrics(second) if "val_loss" in r][0]
    assert start_of_second == pytest.approx(end_of_first, rel=1e-5)


def test_lora_target_that_does_not_exist_lists_candidates(tiny_checkpoint, data, tmp_path, runner):
    result = runner.invoke(
        cli,
        [
            "finetune",
            str(data["il"]),
            "--model",
            str(tiny_checkpoint),
            "-o",
            str(tmp_path / "o"),
            "--lora",
            "--lora-targets",
            "q_proj,attn_qkv",
            "-q",
        ],
    )
    assert result.exit_code == 2
    assert "attn_qkv not in this model" in result.output
    assert "q_proj" in result.output and "down_proj" in result.output


def test_keep_best_writes_the_weights_of_the_lowest_validation_loss(tiny_checkpoint, data, tmp_path):
    out = tmp_path / "best"
    run = finetune(
        cfg(tiny_checkpoint, data, out, max_steps=6, eval_every=1, val_fraction=0.34, keep_best=True, lr=0.05)
    )
    val = {r["step"]: r["val_loss"] for r in metrics(out) if "val_loss" in r and r["step"] > 0}
    best_step = min(val, key=val.get)
    assert read_card(out).best_step == best_step
    # The saved model really is that one: its validation loss is the best one logged.
    model = transformers.AutoModelForCausalLM.from_pretrained(out)
    total = 0.0
    for e in run.val.examples:  # the validation loss is the mean over examples of each one's mean (--loss-norm)
        ids, mask, w = collate([e], run.pad_id, "cpu")
        with torch.no_grad():
            total += float(weighted_nll(model, ids, mask, w)) / e.n_targets
    assert total / len(run.val.examples) == pytest.approx(val[best_step], rel=1e-4)


def test_config_file_and_export_gguf(tiny_checkpoint, data, tmp_path, runner):
    gguf = pytest.importorskip("gguf")
    conf = tmp_path / "run.yaml"
    conf.write_text(yaml.safe_dump({"max-steps": 2, "batch_size": 4, "lr": 0.002, "seed": 3}))
    out = tmp_path / "o"
    result = runner.invoke(
        cli,
        [
            "finetune",
            str(data["il"]),
            "--model",
            str(tiny_checkpoint),
            "-o",
            str(out),
            "--config",
            str(conf),
            "--export-gguf",
            "-q",
        ],
    )
    assert result.exit_code == 0, result.output
    resolved = yaml.safe_load((out / "config.yaml").read_text())
    assert (resolved["max_steps"], resolved["lr"], resolved["seed"]) == (2, 0.002, 3)
    assert "phase train: 2 updates" in result.output  # updates per phase on stderr
    reader = gguf.GGUFReader(str(out / "model.gguf"))
    assert len(reader.tensors) > 0


# --- bad input --------------------------------------------------------------------------------------------------


def run_cli(runner, model, files, out, *extra):
    return runner.invoke(
        cli, ["finetune", *map(str, files), "--model", str(model), "-o", str(out), "-q", "--max-steps", "1", *extra]
    )


def test_example_without_an_assistant_turn(tiny_checkpoint, data, tmp_path, runner):
    bad = write_jsonl(
        tmp_path / "bad.jsonl",
        [
            {"id": "a", "messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "Action: x"}]},
            {"id": "b", "messages": [{"role": "user", "content": "hi"}]},
            {
                "id": "c",
                "messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "x", "weight": 0}],
            },
        ],
    )
    result = run_cli(runner, tiny_checkpoint, [bad], tmp_path / "o")
    assert result.exit_code == 1
    assert f"{bad}:2: messages: no assistant turn to learn from" in result.output
    result = run_cli(runner, tiny_checkpoint, [bad], tmp_path / "o2", "--on-error", "skip")
    assert result.exit_code == 0, result.output
    assert "weight 0 (nothing to learn)" in result.output and "2 skipped" in result.output


def test_records_encoded_in_chunks_are_kept_and_refused_as_one_by_one(tokenizer, tmp_path, monkeypatch):
    """finetune encodes a file in chunks (encode_many): across the chunks' edges every example is the one `encode`
    makes of its record, and a record that cannot be encoded is refused at its own line, in the file's order."""
    from eexp.training import data as training_data

    monkeypatch.setattr(training_data, "ENCODE_CHUNK", 2)
    long = "Results: " + "[1] red shirt " * 40
    records = []
    for i in range(7):
        messages = [dict(m) for m in CONVERSATION]
        messages[3]["content"] = long if i in (2, 5) else f"Results: [{i}] red shirt"
        records.append({"id": f"e{i}", "messages": messages})
    path = write_jsonl(tmp_path / "il.jsonl", records)
    warnings = []
    items, reader = read_examples([str(path)], "skip", warnings.append)
    config = FinetuneConfig(train_files=[], model="m", output=str(tmp_path / "o"), max_length=96, truncate=False)
    data = training_data.encode_items("train", items, reader, tokenizer, config)
    kept = [r for i, r in enumerate(records) if i not in (2, 5)]
    assert data.examples == [encode(tokenizer, r["messages"], 96, truncate=False) for r in kept]
    assert data.skipped == 2 and len(warnings) == 2
    assert warnings[0].startswith(f"skipping {path}:3: ") and warnings[1].startswith(f"skipping {path}:6: ")
    assert all("over --max-length 96 (--no-truncate)" in w for w in warnings)


def test_no_truncate_rejects_over_long_examples(tiny_checkpoint, data, tmp_path, runner):
    result = run_cli(runner, tiny_checkpoint, [data["il"]], tmp_path / "o", "--max-length", "64", "--no-truncate")
    assert result.exit_code == 1
    assert f"{data['il']}:1: " in result.output and "over --max-length 64 (--no-truncate)" in result.output
    result = run_cli(runner, tiny_checkpoint, [data["il"]], tmp_path / "o2", "--max-length", "100")
    assert result.exit_code == 0, result.output
    assert "truncated from the left" in result.output


def copy_model(src, dst, template: str | None = None, drop=()):
    shutil.copytree(src, dst)
    for name in drop:
        (dst / name).unlink()
    if template is not None:
        (dst / "chat_template.jinja").write_text(template)
        conf = json.loads((dst / "tokenizer_config.json").read_text())
        conf.pop("chat_template", None)
        (dst / "tokenizer_config.json").write_text(json.dumps(conf))
    return dst


def test_template_that_cannot_render_an_example(tiny_checkpoint, data, tmp_path, runner):
    refusing = (
        "{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}"
        "{% endif %}" + QWEN2_TEMPLATE
    )
    model = copy_model(tiny_checkpoint, tmp_path / "m", template=refusing)
    result = run_cli(runner, model, [data["il"]], tmp_path / "o")
    assert result.exit_code == 1
    assert f"{data['il']}:1: the chat template cannot render this example: System role not supported" in result.output
    broken = copy_model(tiny_checkpoint, tmp_path / "m2", template="{% for m in messages %}{{ m.content }")
    result = run_cli(runner, broken, [data["il"]], tmp_path / "o2")
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "the chat template cannot be parsed" in result.output


def test_model_without_tokenizer(tiny_checkpoint, data, tmp_path, runner):
    model = tmp_path / "m"
    model.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(tiny_checkpoint / name, model / name)
    result = run_cli(runner, model, [data["il"]], tmp_path / "o")
    assert result.exit_code == 1
    assert "no tokenizer in this model directory" in result.output


def test_out_of_memory_gives_advice(tiny_checkpoint, data, tmp_path, runner, monkeypatch):
    def oom(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(recipe, "example_nll", oom)  # the name the recipe calls
    result = run_cli(runner, tiny_checkpoint, [data["il"]], tmp_path / "o")
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "out of memory at step 1" in result.output
    assert "--batch-size" in result.output and "--grad-accum" in result.output and "--max-length" in result.output


def test_disk_full_while_saving_keeps_the_previous_checkpoint(tiny_checkpoint, data, tmp_path, monkeypatch):
    import safetensors.torch

    real_save = safetensors.torch.save_file
    calls = []

    def save_file(tensors, path, *args, **kwargs):
        calls.append(path)
        if len(calls) == 2:  # the second checkpoint (step 4): the disk fills up half-way
            Path(path).write_bytes(b"partial")
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(tensors, path, *args, **kwargs)

    monkeypatch.setattr(safetensors.torch, "save_file", save_file)
    out = tmp_path / "o"
    options = dict(max_steps=6, batch_size=2, save_every=2)
    with pytest.raises(TrainingError, match=r"disk is full; the previous checkpoint .*step-2 is intact"):
        finetune(cfg(tiny_checkpoint, data, out, **options))
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-2"]
    monkeypatch.setattr(safetensors.torch, "save_file", real_save)
    run = finetune(cfg(tiny_checkpoint, data, out, resume=True, **options))  # space freed: it goes on
    assert run.state["global_step"] == 6 and (out / "model.safetensors").exists()


def test_out_must_be_new_unless_resuming(tiny_checkpoint, data, tmp_path, runner):
    out = tmp_path / "o"
    out.mkdir()
    (out / "something").write_text("x")
    result = run_cli(runner, tiny_checkpoint, [data["il"]], out)
    assert result.exit_code == 1 and "already exists and is not empty" in result.output


# Several processes (DDP and FSDP under accelerate launch, grad-accum, uneven shards): tests/test_multiprocess.py


def test_a_negative_loss_weight_is_refused(tiny_checkpoint, data, tmp_path, runner):
    """A turn weighted -1 was trained on (loss -6.10 in metrics.jsonl), pushing its target down; validate passed it."""
    turn = {"role": "assistant", "content": "Action: x", "weight": -1}
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"id": "a", "messages": [{"role": "user", "content": "hi"}, turn]}])
    said = f"{bad}:1: messages[1].weight: expected a number >= 0 (0: not trained on), got -1"
    result = run_cli(runner, tiny_checkpoint, [bad], tmp_path / "o")
    assert result.exit_code == 1 and said in result.output, result.output
    checked = runner.invoke(cli, ["validate", str(bad)])
    assert checked.exit_code == 1 and said in checked.output
