"""`eexp export` on llama.cpp's own converter (issue 34; issue 28's Llama-3 point): one tiny random model per
architecture users bring, exported to f32 GGUF, and llama.cpp's logits compared with transformers' at every
position of a 200-token sequence, past any original context: Llama with plain RoPE and with `llama3` rope scaling
(original context 32), Qwen2, Qwen3 and Gemma-3 (sliding window 16 on five of its six layers). Also a LoRA adapter over
the llama3 model, merged and `--lora-only`, and the converter's provenance (one `gguf`, the expected version).

The tolerance: f32 weights, so llama.cpp and transformers differ only by the order of float32 operations (and
llama.cpp's own RoPE and softmax kernels): the largest difference over all positions and the whole vocabulary must
be under 0.3% of the logits' spread (max - min over the sequence; measured here: 1e-4 to 4.4e-4 of it, Gemma-3 the
largest; 1% with the LoRA adapter of large random weights, measured 3.6e-3). A wrong tensor layout, RoPE variant or
window gives differences of the order of the spread itself; each case checks that what it tests (the scaling, the
window, the adapter) moves the logits by more than ten times the tolerance.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from eexp.cli import cli

SEQ = 200  # positions compared: past llama3's original context (32) and Gemma-3's window (16)
TOLERANCE = 0.003  # of the logits' spread
LLAMA3_ROPE = {
    "rope_type": "llama3",
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 32,
}


def _config(arch: str, vocab: int, **overrides):
    """A tiny transformers config of each family (2 layers, width 64, 4 heads of 16, 2 KV heads; Gemma-3: 6 layers,
    so that one of them (the sixth) is a global-attention layer, as in llama.cpp's fixed 5:1 pattern)."""
    from transformers import Gemma3TextConfig, LlamaConfig, Qwen2Config, Qwen3Config

    common = dict(
        vocab_size=vocab,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        max_position_embeddings=256,
        tie_word_embeddings=False,
        bos_token_id=None,
        eos_token_id=2,
        pad_token_id=0,
    )
    if arch in ("llama", "llama3"):
        config = LlamaConfig(**common, rope_theta=10000.0, rope_scaling=dict(LLAMA3_ROPE) if arch == "llama3" else None)
    elif arch == "qwen2":
        config = Qwen2Config(**{**common, "tie_word_embeddings": True}, rope_theta=10000.0)
    elif arch == "qwen3":
        config = Qwen3Config(**common, rope_theta=10000.0)
    elif arch == "gemma3":
        config = Gemma3TextConfig(
            **{**common, "num_hidden_layers": 6, "tie_word_embeddings": True},
            sliding_window=16,
            query_pre_attn_scalar=16,
        )
        config.architectures = ["Gemma3ForCausalLM"]
    for key, value in overrides.items():
        setattr(config, key, value)
    return config


def _tiny(arch: str, tokenizer_dir, dest, seed: int = 0, **overrides):
    """A random model of `arch` with the tokenizer of `eexp init-model --size tiny` (which llama.cpp's hash table does
    not know: the converter is told its pre-tokenizer), q/k scaled up so attention is peaked and a wrong rotary or
    window shows in the logits (a fresh model attends almost uniformly)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(_config(arch, len(tok), **overrides), dtype=torch.float32)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith(("q_proj.weight", "k_proj.weight")):
                param.mul_(8)
            elif "norm" in name and arch == "gemma3":
                param.normal_(0, 0.1)  # Gemma's norms are 1 + weight: keep them away from the default
    model.save_pretrained(dest, safe_serialization=True)
    tok.save_pretrained(dest)
    return dest


def _ids(vocab: int, seed: int = 1):
    import random

    rng = random.Random(seed)
    return [rng.randrange(3, vocab) for _ in range(SEQ)]


def _hf_all(ckpt, ids, adapter=None):
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(ckpt, dtype=torch.float32)
    if adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(adapter))
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].numpy()


def _llama_all(path, ids, **kwargs):
    import numpy as np

    from eexp.policies.gguf_loader import open_gguf

    llm = open_gguf(str(path), n_ctx=256, n_batch=256, logits_all=True, verbose=False, **kwargs)
    try:
        llm.eval(ids)
        return np.array(llm.scores[: len(ids)])
    finally:
        llm.close()


def _export(*args):
    result = CliRunner().invoke(cli, ["export", *map(str, args)])
    assert result.exit_code == 0, result.output
    return result


def _fields(path):
    import gguf

    return {name: field.contents() for name, field in gguf.GGUFReader(str(path)).fields.items()}


def _within(llama, hf, tolerance=TOLERANCE):
    import numpy as np

    spread = float(hf.max() - hf.min())
    diff = float(np.abs(llama - hf).max())
    assert diff < tolerance * spread, f"max |llama.cpp - transformers| = {diff:.3g}, spread {spread:.3g}"
    return diff, spread


@pytest.fixture(scope="module")
def tokenizer_dir(tiny_checkpoint):
    """The tokenizer of `eexp init-model --size tiny` (the session's tiny checkpoint)."""
    return tiny_checkpoint


# --- one architecture each ----------------------------------------------------------------------------------------

GGUF_ARCH = {"llama": "llama", "llama3": "llama", "qwen2": "qwen2", "qwen3": "qwen3", "gemma3": "gemma3"}


@pytest.mark.parametrize("arch", ["llama", "llama3", "qwen2", "qwen3", "gemma3"])
def test_f32_export_computes_like_transformers_past_the_context(arch, tokenizer_dir, tmp_path):
    import numpy as np
    from transformers import AutoTokenizer

    ckpt = _tiny(arch, tokenizer_dir, tmp_path / arch)
    out = tmp_path / f"{arch}.f32.gguf"
    _export(ckpt, "-o", out, "--quant", "f32")
    fields = _fields(out)
    assert fields["general.architecture"] == GGUF_ARCH[arch]
    assert fields["tokenizer.ggml.pre"] == "qwen2"  # eexp's own tokenizer: named from its split regex
    assert fields["eexp.quant"] == "f32" and fields["eexp.source"] == str(ckpt.resolve())

    tok = AutoTokenizer.from_pretrained(ckpt)
    ids = _ids(len(tok))
    hf = _hf_all(ckpt, ids)
    _within(_llama_all(out, ids), hf)

    # what the case is about changes the logits far beyond the tolerance, so the check above can see it wrong
    spread = float(hf.max() - hf.min())
    if arch == "llama3":
        from gguf import GGUFReader

        assert any(t.name == "rope_freqs.weight" for t in GGUFReader(str(out)).tensors)  # how llama.cpp takes llama3
        plain = tmp_path / "plain"
        shutil.copytree(ckpt, plain)
        config = json.loads((plain / "config.json").read_text())
        config.pop("rope_scaling", None)
        config.pop("rope_parameters", None)
        (plain / "config.json").write_text(json.dumps(config))
        assert np.abs(_hf_all(plain, ids)[40:] - hf[40:]).max() > 10 * TOLERANCE * spread
    if arch == "gemma3":
        assert fields["gemma3.attention.sliding_window"] == 16
        wide = _tiny(arch, tokenizer_dir, tmp_path / "wide", sliding_window=256)
        assert np.abs(_hf_all(wide, ids)[20:] - hf[20:]).max() > 10 * TOLERANCE * spread

    # the tokenizer too: llama.cpp splits text as transformers does (the pre-tokenizer eexp named)
    from eexp.policies.gguf_loader import open_gguf

    text = "Task: buy a red cotton shirt under 30 dollars.\nObservation: [1] red shirt, $24.99\nAction: click[1]"
    llm = open_gguf(str(out), n_ctx=64, verbose=False)
    try:
        assert llm.tokenize(text.encode(), add_bos=False, special=True) == tok(text, add_special_tokens=False).input_ids
    finally:
        llm.close()


def test_lora_adapter_over_llama3_merged_and_lora_only(tokenizer_dir, tmp_path):
    """A LoRA adapter on every projection of the llama3-rope model, with rsLoRA and an alpha pattern (so PEFT's
    per-module scale must be folded into lora_b for llama.cpp's single alpha): merged, and as a llama.cpp adapter
    over the base GGUF, both equal to the adapter applied by PEFT in transformers."""
    import numpy as np
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    ckpt = _tiny("llama3", tokenizer_dir, tmp_path / "base")
    torch.manual_seed(3)
    peft_model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(ckpt),
        LoraConfig(
            r=8,
            lora_alpha=16,
            use_rslora=True,
            alpha_pattern={"v_proj": 4},
            target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
            task_type="CAUSAL_LM",
        ),
    )
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.3)
    adapter = tmp_path / "adapter"
    peft_model.save_pretrained(adapter)

    _export(ckpt, "-o", tmp_path / "base.gguf", "--quant", "f32")
    _export(ckpt, "--adapter", adapter, "-o", tmp_path / "merged.gguf", "--quant", "f32")
    _export(ckpt, "--adapter", adapter, "--lora-only", "-o", tmp_path / "lora.gguf")
    fields = _fields(tmp_path / "lora.gguf")
    assert fields["general.type"] == "adapter" and fields["adapter.type"] == "lora"
    assert fields["eexp.adapter"] == str(adapter.resolve())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter", "base", "base.gguf", "lora.gguf", "merged.gguf"]

    ids = _ids(peft_model.config.vocab_size, seed=2)
    with_adapter = _hf_all(ckpt, ids, adapter=adapter)
    base = _hf_all(ckpt, ids)
    spread = float(with_adapter.max() - with_adapter.min())
    assert np.abs(with_adapter - base).max() > 10 * TOLERANCE * spread  # the adapter matters
    merged = _llama_all(tmp_path / "merged.gguf", ids)
    lora = _llama_all(tmp_path / "base.gguf", ids, lora_path=str(tmp_path / "lora.gguf"))
    # the adapter's large random lora_b (sd 0.3) makes activations larger than the plain models': 1% of the spread
    # here (measured 3.6e-3 for both); the two llama.cpp routes agree with each other far more closely
    _within(merged, with_adapter, tolerance=0.01)
    _within(lora, with_adapter, tolerance=0.01)
    _within(lora, merged, tolerance=TOLERANCE / 10)


# --- errors and provenance ----------------------------------------------------------------------------------------


def test_unknown_architecture_is_one_clear_line(tokenizer_dir, tmp_path):
    ckpt = _tiny("llama", tokenizer_dir, tmp_path / "m")
    config = json.loads((ckpt / "config.json").read_text())
    config["architectures"] = ["MadeUpForCausalLM"]
    (ckpt / "config.json").write_text(json.dumps(config))
    result = CliRunner().invoke(cli, ["export", str(ckpt), "-o", str(tmp_path / "m.gguf")])
    assert result.exit_code == 1
    assert result.output.startswith("Error: ") and len(result.output.strip().splitlines()) == 1
    assert "unsupported architecture 'MadeUpForCausalLM'" in result.output and "llama.cpp's converter" in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]


def test_tokenizer_llama_cpp_cannot_name_is_refused(tokenizer_dir, tmp_path):
    """The pre-tokenizer fallback names only split regexes llama.cpp implements; another is an error, not a guess."""
    ckpt = _tiny("qwen2", tokenizer_dir, tmp_path / "m")
    spec = json.loads((ckpt / "tokenizer.json").read_text())
    text = json.dumps(spec).replace(r"\\p{N}|", r"\\p{N}{1,2}|", 1)
    assert text != json.dumps(spec)
    (ckpt / "tokenizer.json").write_text(text)
    result = CliRunner().invoke(cli, ["export", str(ckpt), "-o", str(tmp_path / "m.gguf")])
    assert result.exit_code == 1 and "split pattern is not one llama.cpp knows" in result.output


def test_one_gguf_module_of_the_version_the_converter_was_written_against():
    """The `gguf` module is owned by one distribution, the gguf-py of the llama.cpp that llama-cpp-python compiled,
    and the converter in use comes from that same llama-cpp-python sdist."""
    import importlib.metadata

    import gguf
    import llama_cpp

    from eexp.models.llama_converter import MARKER, converter_dir, gguf_module_file

    folder = converter_dir()
    marker = json.loads((folder / MARKER).read_text())
    assert marker["llama_cpp_python"] == llama_cpp.__version__
    assert importlib.metadata.packages_distributions()["gguf"] == ["gguf"]
    assert importlib.metadata.version("gguf") == marker["gguf_version"]
    assert gguf_module_file().resolve() == (Path(gguf.__file__).parent / "constants.py").resolve()
    assert (folder / "convert_hf_to_gguf.py").is_file() and (folder / "convert_lora_to_gguf.py").is_file()
    assert not (folder / "gguf-py").exists()  # no second copy beside the converter
