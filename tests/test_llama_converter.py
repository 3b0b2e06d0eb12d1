"""llama.cpp's converter is installed by a step a person asks for (`python -m eexp.models.llama_converter`, which
install.sh runs; it fetches the llama-cpp-python sdist with pip), never by `eexp export` itself: an export without it
stops with one line that gives that command, and fetches nothing. tests/test_wheel.py sees the same on a fresh pip
install."""

from __future__ import annotations

import pytest

from eexp.cli import cli


@pytest.fixture
def no_converter(monkeypatch, tmp_path):
    """Where the converter would be, made empty (and installing it a failure): its message's first part."""
    from eexp.models import llama_converter as lc

    version = lc.llama_cpp_version()
    if version is None:
        pytest.skip("llama-cpp-python is not installed here")
    missing = tmp_path / "no-converter"
    monkeypatch.setattr(lc, "install_dir", lambda version: missing)
    monkeypatch.setattr(lc, "install", lambda *a, **k: pytest.fail("the converter was installed"))
    yield (
        f"llama.cpp's converter for llama-cpp-python {version} is not installed (no {missing / 'INSTALLED.json'}): "
        "run `python -m eexp.models.llama_converter` in eexp's environment (./install.sh does)\n"
    )
    assert not missing.exists()


def test_an_export_without_the_converter_says_how_to_install_it_and_installs_nothing(
    no_converter, runner, tmp_path, tiny_checkpoint
):
    out = tmp_path / "tiny.gguf"
    result = runner.invoke(cli, ["export", str(tiny_checkpoint), "-o", str(out)])
    assert result.exit_code == 1 and result.output == f"Error: {no_converter}"
    assert not out.exists()


def test_finetune_with_export_gguf_is_refused_at_its_start_without_the_converter(
    no_converter, runner, tmp_path, tiny_checkpoint
):
    """Before any training, not after it: --export-gguf without the converter leaves no output folder."""
    data = tmp_path / "il.jsonl"
    data.write_text(
        '{"id": "e0", "messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}\n'
    )
    out = tmp_path / "run"
    result = runner.invoke(
        cli, ["finetune", str(data), "--model", str(tiny_checkpoint), "-o", str(out), "--export-gguf", "-q"]
    )
    assert result.exit_code == 1 and result.output == f"Error: --export-gguf: {no_converter}"
    assert not out.exists()
