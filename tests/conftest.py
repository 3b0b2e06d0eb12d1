"""Shared fixtures. Tests build everything they need (no downloads, no committed weights)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from click.testing import CliRunner

DATA = Path(__file__).parent / "data"


@pytest.fixture
def runner():
    return CliRunner()


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Keep caches (EEXP_CACHE) out of the user's home."""
    monkeypatch.setenv("EEXP_CACHE", str(tmp_path_factory.getbasetemp() / "eexp-cache"))


# --- models (issue 5): tiny checkpoints built once per test session with `eexp init-model` ---------------------

def _init_checkpoint(tmp_path_factory, name: str, arch: str):
    from eexp.cli import cli
    out = tmp_path_factory.mktemp("models") / name
    result = CliRunner().invoke(cli, ["init-model", str(out), "--arch", arch, "--size", "tiny", "--seed", "0"])
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """A tiny qwen2 transformers checkpoint (~0.1M parameters, ChatML template, eos <|im_end|>, no BOS)."""
    return _init_checkpoint(tmp_path_factory, "tiny-qwen2", "qwen2")


@pytest.fixture(scope="session")
def tiny_llama_checkpoint(tmp_path_factory) -> Path:
    """The same as `tiny_checkpoint` with the llama architecture (untied output embeddings)."""
    return _init_checkpoint(tmp_path_factory, "tiny-llama", "llama")


@pytest.fixture(scope="session")
def tiny_gguf(tiny_checkpoint, tmp_path_factory) -> Path:
    """`tiny_checkpoint` exported with `eexp export --quant q8_0` (a GGUF for llama-cpp-python policies)."""
    from eexp.cli import cli
    out = tmp_path_factory.mktemp("gguf") / "tiny-qwen2.q8_0.gguf"
    result = CliRunner().invoke(cli, ["export", str(tiny_checkpoint), "-o", str(out), "--quant", "q8_0"])
    assert result.exit_code == 0, result.output
    return out
