"""init-model and export (issue 5): real models, real llama.cpp, no mocks."""

from __future__ import annotations

import json

import pytest
import yaml
from click.testing import CliRunner

from eexp.cli import cli
from eexp.models.init import IM_END, PAD_TOKEN, init_model

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
    text = tok.apply_chat_template(
        [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "Action: go"}], tokenize=False
    )
    assert text == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\nAction: go<|im_end|>\n"
    ids = tok(text).input_ids
    assert ids.count(tok.convert_tokens_to_ids("<|im_start|>")) == 2 and ids.count(tok.eos_token_id) == 2
    assert tok.decode(tok("naïve café: 25 €").input_ids) == "naïve café: 25 €"  # byte-level round trip
    meta = yaml.safe_load((tiny_checkpoint / "config.yaml").read_text())
    assert meta["arch"] == "qwen2" and meta["size"] == "tiny" and meta["seed"] == 0


def test_init_model_trains_tokenizer_on_jsonl_text_fields_and_is_deterministic(tmp_path):
    from tokenizers import Tokenizer

    record = {
        "id": "t1",
        "env": {"name": "shop", "version": "1"},
        "task": {"id": "1", "split": "train", "goal": "buy zorblaxian widgets"},
        "steps": [{"observation": "zorblaxian widgets cost 5", "action": "click[zorblaxian]"}] * 3,
        "final_observation": "done",
        "success": True,
        "meta": {"stage": "expert-metadata-quuxfrob"},
    }
    corpus = tmp_path / "expert.jsonl"
    corpus.write_text("\n".join(json.dumps(record) for _ in range(5)) + "\n")
    a = init_model(tmp_path / "a", "llama", "tiny", corpus=[str(corpus)], seed=3)
    b = init_model(tmp_path / "b", "llama", "tiny", corpus=[str(corpus)], seed=3)
    vocab = Tokenizer.from_file(str(a / "tokenizer.json")).get_vocab()
    assert "Ġzorblaxian" in vocab  # a word from goals/observations/actions became one token
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
    # a JSONL corpus is read as records are, FILE:LINE for a bad line (it was taken as plain text, line by line);
    # a word that names no file is no corpus (it was taken as the text itself)
    torn = tmp_path / "pages.jsonl"
    torn.write_text('{"observation": "a page"}\n{"observation": "cut')
    for flag in ("--corpus", "--pretrain"):
        result = runner.invoke(cli, ["init-model", str(tmp_path / "m"), flag, str(torn)])
        assert result.exit_code == 1 and f"Error: {torn}:2: not valid JSON" in result.output
        assert not (tmp_path / "m").exists()
    result = runner.invoke(cli, ["init-model", str(tmp_path / "m"), "--corpus", "pages"])
    assert result.exit_code == 1 and "Error: pages: no such corpus file" in result.output


# --- export: helpers ------------------------------------------------------------------------------------------------

TEXTS = [
    "Task: buy a red cotton shirt under 30 dollars.\nObservation: Results: [1] red shirt, $24.99\nAction: click[1]",
    "naïve café — 25 € ünïcödé 日本語 emoji 🙂\n\n\ttabs  and   spaces ",
    "<|im_start|>user\nhello<|im_end|>\n<|im_start|>assistant\nThought: ok\nAction: look<|im_end|>\n",
]


def _export(runner, *args):
    result = runner.invoke(cli, ["export", *map(str, args)])
    assert result.exit_code == 0, result.output
    return result


def _sharpened(ckpt, dest):
    """A copy of `ckpt` with q/k scaled up, so attention is peaked and a wrong rotary layout shows in the logits
    (a freshly initialized model attends almost uniformly, which would hide it)."""
    import shutil

    from safetensors.numpy import load_file, save_file

    shutil.copytree(ckpt, dest)
    weights = load_file(str(dest / "model.safetensors"))
    for key in weights:
        if key.endswith(("q_proj.weight", "k_proj.weight")):
            weights[key] = weights[key] * 12
    save_file(weights, str(dest / "model.safetensors"), metadata={"format": "pt"})
    return dest


def _llama(path, **kwargs):
    from eexp.policies.gguf_loader import open_gguf

    return open_gguf(str(path), n_ctx=512, logits_all=True, verbose=False, **kwargs)


def _last_logits(llm, ids):
    import numpy as np

    llm.reset()
    llm.eval(ids)
    return np.array(llm.scores[len(ids) - 1])


def _hf_logits(model, ids):
    import torch

    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0, -1].numpy()


def _gguf_fields(path):
    import gguf

    reader = gguf.GGUFReader(str(path))
    return {name: field.contents() for name, field in reader.fields.items()}, reader


# --- export: the real checks --------------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ["qwen2", "llama"])
def test_f32_export_tokenizes_and_computes_like_transformers(arch, request, runner, tmp_path):
    import numpy as np
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base = request.getfixturevalue("tiny_checkpoint" if arch == "qwen2" else "tiny_llama_checkpoint")
    ckpt = _sharpened(base, tmp_path / "ckpt")
    out = tmp_path / "model.f32.gguf"
    _export(runner, ckpt, "-o", out, "--quant", "f32")
    tok = AutoTokenizer.from_pretrained(ckpt)
    model = AutoModelForCausalLM.from_pretrained(ckpt)
    llm = _llama(out)
    try:
        for text in TEXTS:
            ids = tok(text).input_ids
            assert llm.tokenize(text.encode(), add_bos=True, special=True) == ids  # add_bos is honoured as "no"
            hf = _hf_logits(model, ids)
            assert hf.std() > 0.05  # real, varied logits
            assert np.abs(_last_logits(llm, ids) - hf).max() < 1e-3
        # Every position, not only the last one, on the longest text.
        ids = tok(TEXTS[0]).input_ids
        import torch

        with torch.no_grad():
            every = model(torch.tensor([ids])).logits[0].numpy()
        _last_logits(llm, ids)
        assert np.abs(np.array(llm.scores[: len(ids)]) - every).max() < 1e-3
    finally:
        llm.close()

    fields, reader = _gguf_fields(out)
    assert fields["general.architecture"] == arch
    assert fields["tokenizer.ggml.add_bos_token"] is False
    assert fields["tokenizer.ggml.eos_token_id"] == tok.eos_token_id
    assert fields["tokenizer.ggml.padding_token_id"] == tok.pad_token_id
    assert fields["tokenizer.chat_template"] == tok.chat_template
    assert fields["eexp.source"] == str(ckpt.resolve())
    # the hash a run of the checkpoint records as meta.model_sha256: records and this file join on it
    from eexp.policies import load_policy

    assert fields["eexp.source_sha256"] == load_policy(str(ckpt), {}).describe()["model_sha256"]
    assert {t.tensor_type.name for t in reader.tensors} == {"F32"}
    # tied embeddings (qwen2) write no output tensor; untied (llama) do
    assert any(t.name == "output.weight" for t in reader.tensors) == (arch == "llama")


def test_logit_check_sees_a_wrong_rotary_layout(tiny_llama_checkpoint, runner, tmp_path):
    """The logit check above can tell a wrong rotary layout apart: a GGUF whose llama q/k rows are left in
    transformers' rotate-half order (as if the converter had skipped its permutation) fails it."""
    import shutil

    import numpy as np
    from safetensors.numpy import load_file, save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    ckpt = _sharpened(tiny_llama_checkpoint, tmp_path / "ckpt")
    wrong = tmp_path / "wrong"
    shutil.copytree(ckpt, wrong)
    weights = load_file(str(wrong / "model.safetensors"))
    config = json.loads((wrong / "config.json").read_text())
    for key in weights:  # the inverse of llama.cpp's permutation: the converter's own then cancels out
        heads = config["num_attention_heads"] if "q_proj" in key else config["num_key_value_heads"]
        if key.endswith(("q_proj.weight", "k_proj.weight")):
            w = weights[key]
            weights[key] = w.reshape(heads, w.shape[0] // heads // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)
    save_file(weights, str(wrong / "model.safetensors"), metadata={"format": "pt"})
    _export(runner, wrong, "-o", tmp_path / "wrong.gguf", "--quant", "f32")
    ids = AutoTokenizer.from_pretrained(ckpt)(TEXTS[0]).input_ids
    llm = _llama(tmp_path / "wrong.gguf")
    try:
        diff = np.abs(_last_logits(llm, ids) - _hf_logits(AutoModelForCausalLM.from_pretrained(ckpt), ids)).max()
    finally:
        llm.close()
    assert diff > 1e-2


def test_import_model_writes_its_card_beside_config_yaml(tiny_gguf, tmp_path):
    """import-model's folder carries the model card (card.yaml: the command, the eexp version, the GGUF and its
    content hash, the hash a run with --policy FILE records); config.yaml keeps the import's details."""
    from eexp import __version__
    from eexp.card import Card, read_card
    from eexp.files import content_hash
    from eexp.models.import_gguf import import_gguf, is_import

    out = import_gguf(tiny_gguf, tmp_path / "imported", echo=lambda msg: None)
    sha = content_hash([str(tiny_gguf)])
    assert yaml.safe_load((out / "card.yaml").read_text()) == {
        "command": "import-model",
        "eexp_version": __version__,
        "source": str(tiny_gguf.resolve()),
        "source_sha256": sha,
    }
    assert read_card(out) == Card(
        command="import-model", eexp_version=__version__, source=str(tiny_gguf.resolve()), source_sha256=sha
    )
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert config["source_sha256"] == sha and config["source_quant"] == "Q8_0" and is_import(out, sha)


def test_import_keeps_the_gguf_special_tokens_whatever_transformers_makes_of_them(tiny_gguf, tmp_path, monkeypatch):
    """The imported tokenizer's EOS, BOS and pad tokens are the GGUF's (tokenizer.ggml.*_token_id), not what the
    installed transformers rebuilds: transformers 5.17 imported SmolLM2 with EOS <|im_start|> and no pad token (seen
    on a GPU machine's image, 2026-11-26), so training there warned that the model would not learn to stop. Here the
    rebuild is made wrong the same way, and the import must still be right."""
    import transformers
    from transformers import AutoTokenizer

    rebuild = transformers.AutoTokenizer.from_pretrained

    def as_transformers_5_17(*args, **kwargs):
        tok = rebuild(*args, **kwargs)
        if kwargs.get("gguf_file"):
            tok.eos_token, tok.pad_token = "<|im_start|>", None
        return tok

    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", as_transformers_5_17)
    from eexp.models.import_gguf import import_gguf

    out = import_gguf(tiny_gguf, tmp_path / "imported", echo=lambda msg: None)
    monkeypatch.undo()
    tok = AutoTokenizer.from_pretrained(out)
    assert (tok.eos_token, tok.pad_token) == (IM_END, PAD_TOKEN)


def test_q8_0_export_generates_and_chats(tiny_gguf, tiny_checkpoint):
    import numpy as np
    from transformers import AutoModelForCausalLM, AutoTokenizer

    fields, reader = _gguf_fields(tiny_gguf)
    assert "Q8_0" in {t.tensor_type.name for t in reader.tensors}
    assert fields["eexp.quant"] == "q8_0" and fields["eexp.version"]
    tok = AutoTokenizer.from_pretrained(tiny_checkpoint)
    ids = tok(TEXTS[0]).input_ids
    llm = _llama(tiny_gguf)
    try:
        hf = _hf_logits(AutoModelForCausalLM.from_pretrained(tiny_checkpoint), ids)
        assert np.abs(_last_logits(llm, ids) - hf).max() < 3e-2  # q8_0 rounding only
        first = llm.create_completion("Action:", max_tokens=8, temperature=0.0, seed=1)
        again = llm.create_completion("Action:", max_tokens=8, temperature=0.0, seed=1)
        assert first["usage"]["completion_tokens"] >= 1 and first["choices"][0]["text"] == again["choices"][0]["text"]
        chat = llm.create_chat_completion(
            [{"role": "user", "content": "Task: look around."}], max_tokens=6, temperature=0.0, seed=1
        )
        assert chat["choices"][0]["message"]["role"] == "assistant"
        # the prompt llama.cpp built from the GGUF's chat template is the ChatML prompt transformers builds
        prompt = tok.apply_chat_template(
            [{"role": "user", "content": "Task: look around."}], tokenize=False, add_generation_prompt=True
        )
        assert chat["usage"]["prompt_tokens"] == len(tok(prompt).input_ids)
    finally:
        llm.close()


def _lora_adapter(base, dest, seed=0):
    """A PEFT LoRA adapter on every linear layer of `base`, with weights perturbed so it changes the logits."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base)
    config = LoraConfig(
        r=8,
        lora_alpha=16,
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        task_type="CAUSAL_LM",
    )
    peft_model = get_peft_model(model, config)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.05)
    peft_model.save_pretrained(dest)
    return dest


@pytest.mark.parametrize("arch", ["qwen2", "llama"])
def test_lora_only_adapter_in_llama_cpp_matches_merged_export(arch, request, runner, tmp_path):
    import numpy as np
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base = request.getfixturevalue("tiny_checkpoint" if arch == "qwen2" else "tiny_llama_checkpoint")
    ckpt = _sharpened(base, tmp_path / "base")
    adapter = _lora_adapter(ckpt, tmp_path / "adapter")
    _export(runner, ckpt, "-o", tmp_path / "base.f32.gguf", "--quant", "f32")
    _export(runner, ckpt, "--adapter", adapter, "-o", tmp_path / "merged.f32.gguf", "--quant", "f32")
    _export(runner, ckpt, "--adapter", adapter, "--lora-only", "-o", tmp_path / "lora.gguf")
    _export(runner, ckpt, "-o", tmp_path / "base.q8_0.gguf", "--quant", "q8_0")
    _export(runner, ckpt, "--adapter", adapter, "-o", tmp_path / "merged.q8_0.gguf", "--quant", "q8_0")
    fields, _ = _gguf_fields(tmp_path / "lora.gguf")
    assert fields["general.type"] == "adapter" and fields["adapter.type"] == "lora"
    assert fields["adapter.lora.alpha"] == 16.0

    ids = AutoTokenizer.from_pretrained(ckpt)(TEXTS[0]).input_ids
    peft_logits = _hf_logits(PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(ckpt), adapter), ids)
    base_logits = _hf_logits(AutoModelForCausalLM.from_pretrained(ckpt), ids)
    assert np.abs(peft_logits - base_logits).max() > 0.1  # the adapter matters

    logits = {}
    for name, model_file, lora in [
        ("merged", "merged.f32.gguf", None),
        ("lora", "base.f32.gguf", "lora.gguf"),
        ("merged_q8", "merged.q8_0.gguf", None),
        ("lora_q8", "base.q8_0.gguf", "lora.gguf"),
    ]:
        llm = _llama(tmp_path / model_file, **({"lora_path": str(tmp_path / lora)} if lora else {}))
        try:
            logits[name] = _last_logits(llm, ids)
        finally:
            llm.close()
    assert np.abs(logits["merged"] - peft_logits).max() < 1e-3
    assert np.abs(logits["lora"] - logits["merged"]).max() < 1e-3
    assert np.abs(logits["lora_q8"] - logits["merged_q8"]).max() < 5e-2  # q8_0 base vs q8_0 merged weights


def test_export_adapter_directory_alone_and_serializer_provenance(tiny_checkpoint, runner, tmp_path):
    import shutil

    ckpt = tmp_path / "ckpt"
    shutil.copytree(tiny_checkpoint, ckpt)
    adapter = _lora_adapter(ckpt, tmp_path / "adapter")
    serializer = {
        "history": 2,
        "max_observation_chars": 800,
        "max_history_chars": 200,
        "show_admissible": True,
        "max_admissible": 40,
    }
    (adapter / "config.yaml").write_text(yaml.safe_dump({"serializer": serializer, "lr": 1e-4}))
    _export(runner, adapter, "-o", tmp_path / "a.gguf", "--quant", "f16")  # base found from adapter_config.json
    fields, reader = _gguf_fields(tmp_path / "a.gguf")
    assert json.loads(fields["eexp.serializer"]) == serializer
    assert fields["eexp.adapter"] == str(adapter.resolve()) and fields["eexp.source"] == str(ckpt.resolve())
    assert "F16" in {t.tensor_type.name for t in reader.tensors}


# --- export: bad input ----------------------------------------------------------------------------------------------


def _no_leftovers(directory, keep=()):
    return sorted(p.name for p in directory.iterdir() if p.name not in keep) == []


def test_export_refuses_checkpoint_without_tokenizer(tiny_checkpoint, runner, tmp_path):
    import shutil

    ckpt = tmp_path / "ckpt"
    shutil.copytree(tiny_checkpoint, ckpt)
    (ckpt / "tokenizer.json").unlink()
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    result = runner.invoke(cli, ["export", str(ckpt), "-o", str(out_dir / "m.gguf")])
    assert result.exit_code == 1 and "no tokenizer.json" in result.output
    assert _no_leftovers(out_dir)


def test_export_refuses_to_write_over_a_file_it_reads(tiny_checkpoint, runner, tmp_path):
    """-o naming CKPT's own weights wrote the GGUF over them, exit 0, and the checkpoint was lost."""
    import shutil

    ckpt = tmp_path / "ckpt"
    shutil.copytree(tiny_checkpoint, ckpt)
    weights = ckpt / "model.safetensors"
    kept = weights.read_bytes()
    result = runner.invoke(cli, ["export", str(ckpt), "-o", str(weights), "--quant", "f32"])
    assert result.exit_code == 1, result.output
    assert result.output == (
        f"Error: {weights}: is also an input of this run, and writing it would empty it first: write to another file\n"
    )
    assert weights.read_bytes() == kept


def test_export_refuses_unsupported_architecture(tiny_checkpoint, runner, tmp_path):
    import shutil

    ckpt = tmp_path / "ckpt"
    shutil.copytree(tiny_checkpoint, ckpt)
    config = json.loads((ckpt / "config.json").read_text())
    config["architectures"] = ["GPT2LMHeadModelOfNoKnownKind"]
    (ckpt / "config.json").write_text(json.dumps(config))
    result = runner.invoke(cli, ["export", str(ckpt), "-o", str(tmp_path / "m.gguf")])
    assert result.exit_code == 1
    assert "unsupported architecture 'GPT2LMHeadModelOfNoKnownKind'" in result.output


def test_export_refuses_adapter_that_does_not_fit(tiny_checkpoint, runner, tmp_path):
    from safetensors.numpy import load_file, save_file

    adapter = _lora_adapter(tiny_checkpoint, tmp_path / "adapter")
    weights = load_file(str(adapter / "adapter_model.safetensors"))
    key = next(k for k in weights if "layers.1.mlp.up_proj.lora_A" in k)
    weights[key] = weights[key][:, :32]  # as if trained on a model of hidden size 32
    save_file(weights, str(adapter / "adapter_model.safetensors"))
    for flags in ([], ["--lora-only"]):
        result = runner.invoke(
            cli, ["export", str(tiny_checkpoint), "--adapter", str(adapter), *flags, "-o", str(tmp_path / "m.gguf")]
        )
        assert result.exit_code == 1
        assert "does not fit base" in result.output and "model.layers.1.mlp.up_proj" in result.output
    assert not (tmp_path / "m.gguf").exists()


def test_export_refuses_quant_the_dimensions_cannot_take(tiny_checkpoint, runner, tmp_path):
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    result = runner.invoke(cli, ["export", str(tiny_checkpoint), "-o", str(out_dir / "m.gguf"), "--quant", "q4_k_m"])
    assert result.exit_code == 1
    assert "q4_k_m needs rows of a multiple of 256" in result.output and "model.embed_tokens.weight" in result.output
    assert _no_leftovers(out_dir)
    result = runner.invoke(cli, ["export", str(tiny_checkpoint), "-o", str(out_dir / "m.gguf"), "--quant", "q5"])
    assert result.exit_code == 2


def test_export_to_unwritable_output_leaves_no_partial_file(tiny_checkpoint, tmp_path):
    """A write that fails midway (here: a file-size limit, which works even as root) leaves the old file as it
    was and no temporary file behind."""
    import resource
    import signal
    import subprocess
    import sys

    out_dir = tmp_path / "out"
    out_dir.mkdir()
    (out_dir / "m.gguf").write_bytes(b"previous")

    def limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead
        resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, 100_000))

    proc = subprocess.run(
        [sys.executable, "-m", "eexp", "export", str(tiny_checkpoint), "-o", str(out_dir / "m.gguf"), "--quant", "f32"],
        preexec_fn=limit,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 1, proc.stderr
    assert "cannot write" in proc.stderr and "Traceback" not in proc.stderr
    assert (out_dir / "m.gguf").read_bytes() == b"previous"
    assert _no_leftovers(out_dir, keep=("m.gguf",))

    result = CliRunner().invoke(cli, ["export", str(tiny_checkpoint), "-o", str(out_dir / "m.gguf" / "x.gguf")])
    assert result.exit_code == 1 and f"directory {out_dir / 'm.gguf'} is a file, not a folder" in result.output


def test_lora_only_needs_an_adapter(tiny_checkpoint, runner, tmp_path):
    result = runner.invoke(cli, ["export", str(tiny_checkpoint), "--lora-only", "-o", str(tmp_path / "a.gguf")])
    assert result.exit_code == 2 and result.output == (  # a usage error: exit 2, as click's own
        "Error: --lora-only needs --adapter DIR, or an adapter as CKPT (the LoRA adapter to export)\n"
    )


def test_q4_k_m_export_of_small_model_runs_in_llama_cpp(runner, tmp_path):
    """K-quants go through llama.cpp's quantizer; the `small` size is made for them (widths of 256)."""
    import numpy as np
    from transformers import AutoModelForCausalLM, AutoTokenizer

    ckpt = init_model(tmp_path / "small", "qwen2", "small", seed=1)
    _export(runner, ckpt, "-o", tmp_path / "small.q4_k_m.gguf", "--quant", "q4_k_m")
    fields, reader = _gguf_fields(tmp_path / "small.q4_k_m.gguf")
    types = {t.tensor_type.name for t in reader.tensors}
    assert "Q4_K" in types and fields["eexp.quant"] == "q4_k_m" and fields["tokenizer.ggml.pre"] == "qwen2"
    assert (tmp_path / "small.q4_k_m.gguf").stat().st_size < 0.2 * (ckpt / "model.safetensors").stat().st_size
    assert sorted(p.name for p in tmp_path.iterdir()) == ["small", "small.q4_k_m.gguf"]  # no f32 intermediate left
    ids = AutoTokenizer.from_pretrained(ckpt)(TEXTS[0]).input_ids
    hf = _hf_logits(AutoModelForCausalLM.from_pretrained(ckpt), ids)
    llm = _llama(tmp_path / "small.q4_k_m.gguf")
    try:
        q4 = _last_logits(llm, ids)
        text = llm.create_completion("Action:", max_tokens=8, temperature=0.0, seed=1)["choices"][0]["text"]
    finally:
        llm.close()
    assert np.corrcoef(q4, hf)[0, 1] > 0.95  # 4-bit weights: close, not equal
    assert isinstance(text, str)


def test_bf16_checkpoint_exports(tiny_checkpoint, runner, tmp_path):
    """Fine-tuned checkpoints are often saved in bf16; export reads them through transformers as float32."""
    import numpy as np
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_checkpoint, dtype=torch.bfloat16)
    model.save_pretrained(tmp_path / "bf16")
    AutoTokenizer.from_pretrained(tiny_checkpoint).save_pretrained(tmp_path / "bf16")
    _export(runner, tmp_path / "bf16", "-o", tmp_path / "m.gguf", "--quant", "f32")
    ids = AutoTokenizer.from_pretrained(tmp_path / "bf16")(TEXTS[0]).input_ids
    reference = _hf_logits(AutoModelForCausalLM.from_pretrained(tmp_path / "bf16", dtype=torch.float32), ids)
    llm = _llama(tmp_path / "m.gguf")
    try:
        assert np.abs(_last_logits(llm, ids) - reference).max() < 1e-3
    finally:
        llm.close()


def test_adapter_with_full_tensors_merges_but_is_no_llama_cpp_adapter(tiny_llama_checkpoint, runner, tmp_path):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_llama_checkpoint)
    peft_model = get_peft_model(
        model, LoraConfig(r=4, target_modules=["q_proj"], modules_to_save=["lm_head"], task_type="CAUSAL_LM")
    )
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "modules_to_save" in name:
                param.add_(1.0)
    peft_model.save_pretrained(tmp_path / "adapter")
    _export(runner, tiny_llama_checkpoint, "--adapter", tmp_path / "adapter", "-o", tmp_path / "m.gguf")
    import gguf
    import numpy as np

    output = next(t for t in gguf.GGUFReader(str(tmp_path / "m.gguf")).tensors if t.name == "output.weight")
    base = AutoModelForCausalLM.from_pretrained(tiny_llama_checkpoint)
    lm_head = base.get_output_embeddings().weight.detach().numpy()  # the base weights, before the +1
    merged = gguf.quants.dequantize(np.array(output.data), output.tensor_type).reshape(lm_head.shape)
    assert np.abs(merged - (lm_head + 1.0)).max() < 0.05  # the saved module replaced the base one (q8_0)
    result = runner.invoke(
        cli,
        [
            "export",
            str(tiny_llama_checkpoint),
            "--adapter",
            str(tmp_path / "adapter"),
            "--lora-only",
            "-o",
            str(tmp_path / "a.gguf"),
        ],
    )
    assert result.exit_code == 1 and "export the merged model instead" in result.output
