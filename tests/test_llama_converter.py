"""llama.cpp's converter is installed by the first export (eexp.models.llama_converter.ensure_converter), in process;
tests/test_wheel.py exports from a fresh pip install for real."""

from __future__ import annotations

import pytest

from eexp.errors import ConverterMissing, ModelError


def test_the_converter_is_installed_on_first_use_and_a_replaced_gguf_is_still_an_error(monkeypatch, tmp_path):
    """In process: a missing converter is installed (one note), an installed one is used as it is, and a gguf package
    replaced since the install stays the error it was (nothing is reinstalled behind the user's back)."""
    from eexp.models import llama_converter as lc

    state = {"installed": False, "gguf_replaced": False}
    installs, notes = [], []

    def converter_dir():
        if state["gguf_replaced"]:
            raise ModelError("the installed gguf package is not llama.cpp's gguf-py")
        if not state["installed"]:
            raise ConverterMissing("llama.cpp's converter is not installed")
        return tmp_path

    def install(sdist=None, echo=print):
        installs.append(sdist)
        state["installed"] = True
        return tmp_path

    monkeypatch.setattr(lc, "converter_dir", converter_dir)
    monkeypatch.setattr(lc, "install", install)
    monkeypatch.setattr(lc, "llama_cpp_version", lambda: "9.9.9")
    assert lc.ensure_converter(notes.append) == tmp_path
    assert (
        len(installs) == 1
        and len(notes) == 1
        and notes[0].startswith(
            "installing llama.cpp's converter for llama-cpp-python 9.9.9 (once; from its sdist, with pip) into "
        )
    )
    assert lc.ensure_converter(notes.append) == tmp_path and len(installs) == 1 and len(notes) == 1
    state["gguf_replaced"] = True
    with pytest.raises(ModelError, match="not llama.cpp's gguf-py"):
        lc.ensure_converter(notes.append)
    assert len(installs) == 1
