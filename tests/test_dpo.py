"""`eexp finetune --objective dpo`: the loss against log-probabilities computed by hand, the margin it raises, exact
resume, a pair's shared prompt, and TRL's DPOTrainer reading `eexp preference-data`'s file as it is.

The pairs: the expert steps of the two successful trajectories of tests/data, each against two admissible
alternatives (made into outcome records, then pairs by `eexp preference-data`): 16 pairs, 8 states. Every run
uses the session's tiny init-model checkpoint, so it takes a second or two on one core.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
from by_hand import answer_logp

from eexp.cli import cli
from eexp.io import read_records
from eexp.records import trajectory_states

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from eexp.card import read_card  # noqa: E402
from eexp.training.config import FinetuneConfig  # noqa: E402
from eexp.training.data import encode_pair  # noqa: E402
from eexp.training.recipe import Finetune, finetune  # noqa: E402

DATA = Path(__file__).parent / "data"

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def pairs(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("dpo-data")
    outcomes = []
    for t in read_records([str(DATA / "trajectories.jsonl")]):
        if not t["success"]:
            continue
        for step, state, action in trajectory_states(t):
            alternatives = [a for a in state["admissible"] if a != action][:2]
            outcomes.append(
                {
                    "id": f"{t['id']}#{step}",
                    "source_id": t["id"],
                    "trajectory_id": t["id"],
                    "step": step,
                    "env": t["env"],
                    "task": t["task"],
                    "prefix": [s["action"] for s in t["steps"][:step]],
                    "state": state,
                    "expert": {
                        "action": action,
                        "next_observation": "next",
                        "reward": 0.0,
                        "done": False,
                        "valid": True,
                    },
                    "alternatives": [
                        {
                            "action": a,
                            "source": "admissible",
                            "next_observation": f"after {a}",
                            "reward": 0.0,
                            "done": False,
                            "valid": True,
                        }
                        for a in alternatives
                    ],
                }
            )
    (d / "outcomes.jsonl").write_text("".join(json.dumps(o) + "\n" for o in outcomes))
    from click.testing import CliRunner

    result = CliRunner().invoke(cli, ["preference-data", str(d / "outcomes.jsonl"), "-o", str(d / "pairs.jsonl")])
    assert result.exit_code == 0, result.output
    assert len(list(read_records([str(d / "pairs.jsonl")]))) == 16
    return d / "pairs.jsonl"


def cfg(model, pairs, out, **kw) -> FinetuneConfig:
    options = dict(
        train_files=[str(pairs)],
        model=str(model),
        output=str(out),
        objective="dpo",
        batch_size=16,
        seed=0,
        quiet=True,
        max_length=512,
    )
    options.update(kw)
    return FinetuneConfig(**options)


def metrics(out) -> list[dict]:
    return [json.loads(line) for line in (Path(out) / "metrics.jsonl").read_text().splitlines()]


def margins(model, reference, tok, records) -> list[float]:
    """Each pair's (pc - rc) - (pr - rr), by hand."""
    out = []
    for r in records:
        pc, pr = (answer_logp(model, tok, r["prompt"], r[side]) for side in ("chosen", "rejected"))
        rc, rr = (answer_logp(reference, tok, r["prompt"], r[side]) for side in ("chosen", "rejected"))
        out.append((pc - rc) - (pr - rr))
    return out


def load(path):
    return transformers.AutoModelForCausalLM.from_pretrained(path).eval()


def test_dpo_loss_is_the_hand_computed_one(tiny_checkpoint, pairs, tmp_path):
    """Batch 16 = every pair in each update, so update 2's logged loss is the mean DPO loss of all 16 pairs at the
    weights after update 1 (which a run of 1 update writes: AdamW's first step does not depend on the schedule's
    length), against the starting weights as the reference."""
    beta = 0.5
    one, two = tmp_path / "one", tmp_path / "two"
    finetune(cfg(tiny_checkpoint, pairs, one, max_steps=1, beta=beta))
    finetune(cfg(tiny_checkpoint, pairs, two, max_steps=2, beta=beta))
    rows = [r for r in metrics(two) if "loss" in r]
    # Before any update the model is its own reference: every margin 0, every loss log 2.
    assert rows[0]["loss"] == pytest.approx(math.log(2), abs=2e-6)
    assert rows[0]["reward_margin"] == pytest.approx(0, abs=1e-5)
    tok = transformers.AutoTokenizer.from_pretrained(tiny_checkpoint)
    records = list(read_records([str(pairs)]))
    by_hand = margins(load(one), load(tiny_checkpoint), tok, records)
    assert any(abs(m) > 0.05 for m in by_hand)  # the update moved the pairs: the check below is not log 2 again
    losses = [-math.log(1 / (1 + math.exp(-beta * m))) for m in by_hand]  # -log sigmoid(beta * margin)
    assert rows[1]["loss"] == pytest.approx(sum(losses) / len(losses), rel=1e-4)
    assert rows[1]["reward_margin"] == pytest.approx(beta * sum(by_hand) / len(by_hand), rel=1e-4, abs=1e-5)
    assert rows[1]["reward_accuracy"] == pytest.approx(sum(m > 0 for m in by_hand) / len(by_hand))
    phase = read_card(two).phases[0]
    assert (phase["objective"], phase["beta"], phase["examples"]) == ("dpo", beta, 16)


def test_a_few_dpo_updates_raise_the_chosen_over_rejected_margin(tiny_checkpoint, pairs, tmp_path):
    out = tmp_path / "dpo"
    finetune(cfg(tiny_checkpoint, pairs, out, max_steps=6, beta=0.5))
    losses = [r["loss"] for r in metrics(out) if "loss" in r]
    assert losses == sorted(losses, reverse=True) and losses[-1] < losses[0] - 0.1  # every pair in every update
    tok = transformers.AutoTokenizer.from_pretrained(tiny_checkpoint)
    by_hand = margins(load(out), load(tiny_checkpoint), tok, list(read_records([str(pairs)])))
    # The margin starts at 0 for every pair (the model is its reference). After 6 updates the expert's action has
    # gained log-probability over the rejected alternative on the training pairs, by about 4 nats on average; DPO
    # promises nothing for a single pair, and one of these 16 is still near 0 (measured: -0.01; 15 above 0).
    assert sum(by_hand) / len(by_hand) > 2 and sum(m > 0 for m in by_hand) >= 14, sorted(by_hand)


class Killed(Exception):
    pass


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_dpo_resume_reproduces_the_uninterrupted_run(tiny_checkpoint, pairs, tmp_path, monkeypatch, lora):
    # LoRA dropout on, so the RNG state must come back too; the reference is recomputed from the start on resume.
    options = dict(max_steps=5, batch_size=3, save_every=2, lora=lora, lora_dropout=0.1, val_fraction=0.5, eval_every=2)
    finetune(cfg(tiny_checkpoint, pairs, tmp_path / "whole", **options))
    interrupted = tmp_path / "killed"
    log = Finetune._log

    def dying_log(self, row):  # killed during update 3, after the checkpoint of update 2
        log(self, row)
        if row.get("step") == 3 and "loss" in row:
            raise Killed

    monkeypatch.setattr(Finetune, "_log", dying_log)
    with pytest.raises(Killed):
        finetune(cfg(tiny_checkpoint, pairs, interrupted, **options))
    monkeypatch.setattr(Finetune, "_log", log)
    assert sorted(p.name for p in (interrupted / "checkpoints").iterdir()) == ["step-2"]
    finetune(cfg(tiny_checkpoint, pairs, interrupted, resume=True, **options))
    timeless = lambda out: [{k: v for k, v in r.items() if k != "tokens_per_s"} for r in metrics(out)]  # noqa
    whole = timeless(tmp_path / "whole")
    assert timeless(interrupted) == whole
    assert {"loss", "reward_margin", "reward_accuracy"} <= set(whole[1]) and "val_reward_margin" in whole[0]
    name = "adapter_model.safetensors" if lora else "model.safetensors"
    assert (tmp_path / "whole" / name).read_bytes() == (interrupted / name).read_bytes()


def test_an_over_long_pair_keeps_one_prompt_on_both_sides(tiny_checkpoint):
    from eexp.prompts import Serializer

    tok = transformers.AutoTokenizer.from_pretrained(tiny_checkpoint)
    state = {
        "goal": "buy a shirt",
        "observation": "a shop page " * 5,
        "history": [{"observation": f"page {i} " * 8, "action": f"click[{i}]"} for i in range(12)],
    }
    prompt = Serializer(history=12).policy_messages(state)
    chosen = [{"role": "assistant", "content": "Action: click[1]"}]
    rejected = [{"role": "assistant", "content": "Action: search[a much longer query than the chosen one]"}]
    c, r = encode_pair(tok, prompt, chosen, rejected, max_length=300)
    assert c.truncated and r.truncated and max(len(c.ids), len(r.ids)) <= 300
    start = next(i for i, w in enumerate(c.weights) if w)  # where the chosen answer starts
    assert c.ids[:start] == r.ids[:start] and not any(r.weights[:start])  # the same context, untrained
    text = tok.decode(c.ids[:start])
    assert "Task: buy a shirt" in text and "earlier steps not shown)" in text and "click[0]" not in text
    with pytest.raises(ValueError, match="over --max-length 300 .--no-truncate."):
        encode_pair(tok, prompt, chosen, rejected, max_length=300, truncate=False)


def with_template(src: Path, dst: Path, template: str) -> Path:
    shutil.copytree(src, dst)
    (dst / "chat_template.jinja").write_text(template)
    conf = json.loads((dst / "tokenizer_config.json").read_text())
    conf.pop("chat_template", None)
    (dst / "tokenizer_config.json").write_text(json.dumps(conf))
    return dst


def test_a_chat_template_that_fails_is_said_as_for_sft(tiny_checkpoint, pairs, tmp_path, runner):
    """The pair's record is named where the template cannot render it (--on-error: stopped here), the model where
    the template cannot be parsed (eexp.training.chat_template, SFT's examples' handling)."""
    original = transformers.AutoTokenizer.from_pretrained(str(tiny_checkpoint)).chat_template
    refusing = (
        "{% if messages[-1]['role'] == 'assistant' %}{{ raise_exception('no answers here') }}{% endif %}" + original
    )
    model = with_template(Path(tiny_checkpoint), tmp_path / "m", refusing)
    base = ["finetune", str(pairs), "--objective", "dpo", "-q", "--max-steps", "1"]
    result = runner.invoke(cli, [*base, "--model", str(model), "-o", str(tmp_path / "a")])
    assert result.exit_code == 1
    assert f"{pairs}:1: the chat template cannot render this pair: no answers here" in result.output
    broken = with_template(Path(tiny_checkpoint), tmp_path / "m2", "{% for m in messages %}{{ m.content }")
    result = runner.invoke(cli, [*base, "--model", str(broken), "-o", str(tmp_path / "b")])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert f"{broken}: the chat template cannot be parsed" in result.output


def test_usage_errors_name_the_problem(tiny_checkpoint, pairs, tmp_path, runner):
    il = tmp_path / "il.jsonl"
    runner.invoke(cli, ["imitation-data", str(DATA / "trajectories.jsonl"), "-o", str(il)])
    base = ["finetune", "--model", str(tiny_checkpoint), "-q", "--max-steps", "1"]
    result = runner.invoke(cli, [*base, str(il), "-o", str(tmp_path / "a"), "--objective", "dpo"])
    assert result.exit_code == 1
    assert f"{il}:1: expected a preference pair, got a training example" in result.output
    result = runner.invoke(cli, [*base, str(pairs), "-o", str(tmp_path / "b")])
    assert result.exit_code == 1 and f"{pairs}:1: expected a training example, got a preference pair" in result.output
    result = runner.invoke(cli, [*base, str(il), "-o", str(tmp_path / "c"), "--beta", "0.3"])
    # the one refusal of an objective's option under another (training.objective.refuse_foreign_options)
    assert (
        result.exit_code == 2
        and "--beta: only with --objective dpo (--objective sft does not take it)" in result.output
    )
    result = runner.invoke(
        cli, [*base, str(pairs), "-o", str(tmp_path / "d"), "--objective", "dpo", "--warmup-data", str(il)]
    )
    assert result.exit_code == 2 and "--objective dpo trains on preference pairs alone" in result.output


def test_trl_dpo_trainer_reads_the_pairs_as_they_are(tiny_checkpoint, pairs, tmp_path):
    """TRL's DPOTrainer takes `eexp preference-data`'s file as written (extra columns and all), and trains on the
    context eexp's own DPO and imitation train on: the prompt tokens are eexp's, and each answer is eexp's target
    (TRL adds the newline the template writes after the end-of-turn token)."""
    trl = pytest.importorskip("trl")
    datasets = pytest.importorskip("datasets")
    dataset = datasets.load_dataset("json", data_files=str(pairs), split="train")
    tok = transformers.AutoTokenizer.from_pretrained(tiny_checkpoint)
    args = trl.DPOConfig(
        output_dir=str(tmp_path / "trl"),
        max_steps=2,
        per_device_train_batch_size=4,
        beta=0.5,
        learning_rate=1e-3,
        report_to="none",
        logging_steps=1,
        save_strategy="no",
        use_cpu=True,
        max_length=512,
        disable_tqdm=True,
    )
    trainer = trl.DPOTrainer(
        model=load(tiny_checkpoint).train(), args=args, train_dataset=dataset, processing_class=tok
    )
    first = trainer.train_dataset[0]
    record = next(iter(read_records([str(pairs)])))
    c, r = encode_pair(tok, record["prompt"], record["chosen"], record["rejected"], max_length=512)
    start = next(i for i, w in enumerate(c.weights) if w)
    assert first["prompt_ids"] == c.ids[:start]
    assert first["chosen_ids"][: len(c.ids) - start] == c.ids[start:]
    assert first["rejected_ids"][: len(r.ids) - start] == r.ids[start:]
    trainer.train()
    logged = [row for row in trainer.state.log_history if "loss" in row]
    assert len(logged) == 2 and logged[0]["loss"] == pytest.approx(math.log(2), abs=1e-4)
