"""`eexp merge` (issue 28 point 2): an adapter and its base -> one Hugging Face folder for vLLM and SGLang, whose
logits are the adapter's applied in memory, with the tokenizer, chat template and card."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")

from eexp.card import Card, read_card, write_card  # noqa: E402
from eexp.cli import cli  # noqa: E402
from eexp.files import content_hash  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def adapter(tiny_checkpoint, tmp_path_factory):
    """A LoRA adapter of the tiny checkpoint whose B matrices are random (a fresh adapter's are zero, and merging
    it would change nothing), saved as finetune saves one: its base named, its tokenizer and card beside it."""
    out = tmp_path_factory.mktemp("merge") / "adapter"
    base = transformers.AutoModelForCausalLM.from_pretrained(tiny_checkpoint)
    torch.manual_seed(0)
    config = peft.LoraConfig(
        r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False, task_type="CAUSAL_LM"
    )
    model = peft.get_peft_model(base, config)
    model.save_pretrained(out)
    conf = json.loads((out / "adapter_config.json").read_text())
    conf["base_model_name_or_path"] = str(tiny_checkpoint)
    (out / "adapter_config.json").write_text(json.dumps(conf))
    transformers.AutoTokenizer.from_pretrained(tiny_checkpoint).save_pretrained(out)
    write_card(
        out,
        Card(command="finetune", method="lora", base_model=str(tiny_checkpoint), serializer={"history": 0}, updates=7),
    )
    return out


def logits_of(model, tokenizer) -> torch.Tensor:
    ids = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Task: buy a red shirt"}],
        add_generation_prompt=True,
        tokenize=True,
        return_dict=True,
    )["input_ids"]
    with torch.no_grad():
        return model(input_ids=torch.tensor([ids])).logits.float()


def in_memory(tiny_checkpoint, adapter) -> torch.Tensor:
    base = transformers.AutoModelForCausalLM.from_pretrained(tiny_checkpoint, dtype=torch.float32)
    model = peft.PeftModel.from_pretrained(base, adapter).eval()  # applied, not merged
    return logits_of(model, transformers.AutoTokenizer.from_pretrained(adapter))


def test_merged_fp32_folder_gives_the_logits_of_the_adapter_applied_in_memory(tiny_checkpoint, adapter, tmp_path):
    out = tmp_path / "merged"
    result = CliRunner().invoke(cli, ["merge", str(adapter), "-o", str(out), "--dtype", "fp32"])
    assert result.exit_code == 0, result.output
    merged = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(out)
    expected = in_memory(tiny_checkpoint, adapter)
    got = logits_of(merged, tokenizer)
    assert torch.allclose(got, expected, atol=1e-5, rtol=1e-5)
    base = logits_of(transformers.AutoModelForCausalLM.from_pretrained(tiny_checkpoint).eval(), tokenizer)
    assert (expected - base).abs().max() > 1e-2  # the adapter changes the model: the comparison means something
    assert not (out / "adapter_config.json").exists()


def test_merged_bf16_folder_is_ready_to_serve(tiny_checkpoint, adapter, tmp_path):
    """The default: bf16 weights (the fp32 merge rounded once), config.json saying so, the tokenizer with the same
    chat template, generation_config.json, safetensors only, and the card."""
    fp32, bf16 = tmp_path / "fp32", tmp_path / "bf16"
    for out, extra in ((fp32, ["--dtype", "fp32"]), (bf16, [])):
        result = CliRunner().invoke(cli, ["merge", str(adapter), "-o", str(out), *extra])
        assert result.exit_code == 0, result.output
    from safetensors.torch import load_file

    full, half = load_file(fp32 / "model.safetensors"), load_file(bf16 / "model.safetensors")
    assert half.keys() == full.keys()
    assert all(t.dtype == torch.bfloat16 for t in half.values())
    assert all(torch.equal(half[k], full[k].to(torch.bfloat16)) for k in full)
    assert json.loads((bf16 / "config.json").read_text())["dtype"] == "bfloat16"
    assert (bf16 / "generation_config.json").exists()
    assert not [p.name for p in bf16.iterdir() if p.suffix in (".bin", ".pt", ".pth")]
    tokenizer = transformers.AutoTokenizer.from_pretrained(bf16)
    assert tokenizer.chat_template == transformers.AutoTokenizer.from_pretrained(adapter).chat_template
    # the logits: the fp32 merge's are the adapter's (the test above), and these weights are exactly its rounding
    assert transformers.AutoModelForCausalLM.from_pretrained(bf16, dtype="auto").dtype == torch.bfloat16
    card = read_card(bf16)
    assert card.command == "merge" and card.precision == "bf16" and card.method == "lora" and card.updates == 7
    assert card.serializer == {"history": 0}  # eval renders states the way the adapter was trained
    assert card.adapter == str(adapter) and card.adapter_sha256 == content_hash([str(adapter)])
    assert card.base_model == str(tiny_checkpoint) and card.base_sha256 == content_hash([str(tiny_checkpoint)])
    assert not list(tmp_path.glob(".*.part"))  # nothing half-written left beside OUT


def test_merged_folder_is_a_policy_that_acts_as_the_adapter(tiny_checkpoint, adapter, tmp_path):
    from eexp.policies import load_policy

    out = tmp_path / "merged"
    assert CliRunner().invoke(cli, ["merge", str(adapter), "-o", str(out), "--dtype", "fp32"]).exit_code == 0
    messages = [{"role": "user", "content": "Task: buy a red shirt. You see a red shirt and a blue hat."}]
    admissible = ["click[red shirt]", "click[blue hat]", "search[shirt]"]
    scores = []
    for spec in (str(adapter), str(out)):  # the adapter on its base (merged in memory by the policy), the folder
        policy = load_policy(spec, act="score")
        scores.append(dict(policy.rank(messages, admissible)))
        policy.close()
    assert [scores[1][a] for a in admissible] == pytest.approx([scores[0][a] for a in admissible], abs=1e-4)


def test_merge_refuses_what_it_cannot_merge(tiny_checkpoint, adapter, tmp_path):
    runner = CliRunner()
    result = runner.invoke(cli, ["merge", str(tiny_checkpoint), "-o", str(tmp_path / "x")])
    assert result.exit_code == 1 and "not a LoRA adapter directory" in result.output
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "keep").write_text("x")
    result = runner.invoke(cli, ["merge", str(adapter), "-o", str(busy)])
    assert result.exit_code == 1 and "already exists and is not an empty directory" in result.output
    assert (busy / "keep").read_text() == "x"
    result = runner.invoke(cli, ["merge", str(adapter), "-o", str(tmp_path / "y"), "--dtype", "int8"])
    assert result.exit_code == 2
