"""init-model and export (issue 5): real models, real llama.cpp, no mocks."""

from __future__ import annotations

import json

import pytest
import yaml

from eexp.cli import cli
from eexp.models.init import CHAT_TEMPLATE, IM_END, PAD_TOKEN, init_model


# --- init-model -------------------------------------------------------------------------------------------------

def test_init_model_checkpoint_loads_with_its_tokenizer_and_template(tiny_checkpoint):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_checkpoint)
    model = AutoModelForCausalLM.from_pretrained(tiny_checkpoint)
    n = sum(p.numel() for p in model.parameters())
    assert 50_000 <= n <= 500_000
    assert (tiny_checkpoint / "model.safetensors").exists()
    assert not list(tiny_checkpoint.glob("*.bin"))
    assert tok.eos_token == IM_END and tok.pad_token == PAD_TOKEN and tok.pad_token_id != tok.eos_token_id
    assert tok.bos_token is None
    assert model.config.eos_token_id == tok.eos_token_id and model.config.vocab_size == len(tok)
    text = tok.apply_chat_template([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "Action: go"}],
                                   tokenize=False)
    assert text == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\nAction: go<|im_end|>\n"
    ids = tok(text).input_ids
    assert ids.count(tok.convert_tokens_to_ids("<|im_start|>")) == 2 and ids.count(tok.eos_token_id) == 2
    assert tok.decode(tok("naïve café: 25 €").input_ids) == "naïve café: 25 €"  # byte-level round trip
    meta = yaml.safe_load((tiny_checkpoint / "config.yaml").read_text())
    assert meta["arch"] == "qwen2" and meta["size"] == "tiny" and meta["seed"] == 0


def test_init_model_trains_tokenizer_on_jsonl_text_fields_and_is_deterministic(tmp_path):
    from tokenizers import Tokenizer

    record = {"id": "t1", "env": {"name": "shop", "version": "1"},
              "task": {"id": "1", "split": "train", "goal": "buy zorblaxian widgets"},
              "steps": [{"observation": "zorblaxian widgets cost 5", "action": "click[zorblaxian]"}] * 3,
              "final_observation": "done", "success": True, "meta": {"stage": "expert-metadata-quuxfrob"}}
    corpus = tmp_path / "expert.jsonl"
    corpus.write_text("\n".join(json.dumps(record) for _ in range(5)) + "\n")
    a = init_model(tmp_path / "a", "llama", "tiny", corpus=[str(corpus)], seed=3)
    b = init_model(tmp_path / "b", "llama", "tiny", corpus=[str(corpus)], seed=3)
    vocab = Tokenizer.from_file(str(a / "tokenizer.json")).get_vocab()
    assert "Ġzorblaxian" in vocab        # a word from goals/observations/actions became one token
    assert not any("quux" in t for t in vocab)  # meta is not text a model reads
    assert (a / "model.safetensors").read_bytes() == (b / "model.safetensors").read_bytes()
    assert (a / "tokenizer.json").read_bytes() == (b / "tokenizer.json").read_bytes()


def test_init_model_cli_errors(runner, tmp_path):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    result = runner.invoke(cli, ["init-model", str(tmp_path / "full")])
    assert result.exit_code == 1 and "not empty" in result.output
    result = runner.invoke(cli, ["init-model", str(tmp_path / "m"), "--arch", "gpt2"])
    assert result.exit_code == 2
    result = runner.invoke(cli, ["init-model", str(tmp_path / "m"), "--corpus", str(tmp_path / "missing.jsonl")])
    assert result.exit_code == 1 and "missing.jsonl: no such corpus file" in result.output
    assert not (tmp_path / "m").exists()
