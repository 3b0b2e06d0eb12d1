"""Quantized GGUFs on every x86 CPU: the buffer-type decision, the loader that applies it, and quantized models
played through `eval` and `branch` (they crashed with SIGSEGV on AMX CPUs before the loader turned repacking off).

The decision is tested on flag sets, so it is checked the same way on a CPU with AMX and on one without; the
smoke tests run on whatever CPU this is, with the choice the loader makes for it."""

from __future__ import annotations

import platform
import re
import subprocess
import sys

import orjson
import pytest

from eexp.errors import PolicyError
from eexp.policies.gguf_loader import ISSUE, choose_extra_bufts, cpu_flags, parse_switch

SAPPHIRE_RAPIDS = {"avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_int8", "amx_tile"}
ZEN4 = {"avx2", "avx512f", "avx512_bf16", "avx512_vnni"}


def test_amx_turns_extra_buffer_types_off():
    choice = choose_extra_bufts(SAPPHIRE_RAPIDS)
    assert choice.use_extra_bufts is False
    assert choice.describe() == (
        "extra buffer types off (this CPU has AMX (amx_bf16, amx_int8, amx_tile): "
        f"llama.cpp's AMX repack of quantized weights crashes, {ISSUE})"
    )


def test_no_amx_keeps_them_on():
    for flags in (ZEN4, {"avx2"}, set()):
        choice = choose_extra_bufts(flags)
        assert choice.use_extra_bufts is True and choice.reason == "no AMX on this CPU: weight repacking is safe"


def test_an_override_wins_either_way():
    assert choose_extra_bufts(SAPPHIRE_RAPIDS, True).use_extra_bufts is True
    assert choose_extra_bufts(ZEN4, False).describe() == "extra buffer types off (--policy-arg extra_bufts=off)"


def test_switch_values():
    assert [parse_switch(v) for v in ("on", "OFF", "auto", "", None, True)] == [True, False, None, None, None, True]
    with pytest.raises(PolicyError, match=r"^--policy-arg extra_bufts='maybe': expected on, off or auto$"):
        parse_switch("maybe")


@pytest.mark.skipif(
    not (sys.platform.startswith("linux") and platform.machine() == "x86_64"),
    reason="reads the flags of an x86-64 Linux CPU",
)
def test_cpu_flags_are_read_from_this_machine():
    assert "sse2" in cpu_flags()  # every x86-64 CPU has it: the flags line was found and split


# --- the loader applies the choice --------------------------------------------------------------------------------


@pytest.mark.parametrize("switch,expected", [("off", False), ("on", True)])
def test_open_gguf_passes_the_choice_to_llama_cpp(tiny_gguf, switch, expected, monkeypatch):
    pytest.importorskip("llama_cpp")
    from eexp.policies import gguf_loader

    if switch == "on" and any(f in gguf_loader.AMX_FLAGS for f in cpu_flags()):
        pytest.skip("extra buffer types on crash on this AMX CPU: covered by the probe test")
    llm = gguf_loader.open_gguf(str(tiny_gguf), extra_bufts=switch, n_ctx=64, verbose=False)
    try:
        assert llm._model.params.use_extra_bufts is expected
        assert llm.eexp_buffers.use_extra_bufts is expected
        # and the library's own default is left as it was for everyone else
        import llama_cpp.llama_cpp as low_level

        assert low_level.llama_model_default_params().use_extra_bufts is True
    finally:
        llm.close()


def test_default_choice_is_this_cpus(tiny_gguf):
    pytest.importorskip("llama_cpp")
    from eexp.policies.llama import LlamaCppPolicy

    policy = LlamaCppPolicy(str(tiny_gguf), {"n_ctx": "64"})
    try:
        assert policy.llm._model.params.use_extra_bufts is choose_extra_bufts(cpu_flags()).use_extra_bufts
        assert policy.describe()["extra_bufts"] is policy.llm._model.params.use_extra_bufts
    finally:
        policy.close()


def test_a_forced_choice_on_an_amx_cpu_is_probed_and_a_crash_becomes_an_error(tiny_gguf, monkeypatch):
    """The child process is real; a SIGSEGV in it (what llama.cpp does on AMX) must come back as a PolicyError."""
    pytest.importorskip("llama_cpp")
    from eexp.policies import gguf_loader

    monkeypatch.setattr(gguf_loader, "cpu_flags", lambda: frozenset(SAPPHIRE_RAPIDS))
    monkeypatch.setattr(gguf_loader, "PROBE", "import os, signal; os.kill(os.getpid(), signal.SIGSEGV)")
    with pytest.raises(PolicyError) as caught:
        gguf_loader.open_gguf(str(tiny_gguf), extra_bufts="on", n_ctx=64, verbose=False)
    assert str(caught.value) == (
        f"{tiny_gguf}: llama.cpp crashed (SIGSEGV) evaluating this model with extra buffer "
        f"types on this AMX CPU ({ISSUE}); leave --policy-arg extra_bufts at auto (off here)"
    )
    # the default on such a CPU needs no probe: it is off
    monkeypatch.setattr(gguf_loader, "PROBE", "raise SystemExit('the probe must not run')")
    llm = gguf_loader.open_gguf(str(tiny_gguf), n_ctx=64, verbose=False)
    assert llm._model.params.use_extra_bufts is False
    llm.close()


# --- quantized models through the stages ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def quantized(tmp_path_factory):
    """A q8_0 GGUF of a tiny model and a q4_k_m GGUF of a small one (K-quants need widths of 256)."""
    pytest.importorskip("llama_cpp")
    from eexp.models.export import export_gguf
    from eexp.models.init import init_model

    d = tmp_path_factory.mktemp("quantized")
    tiny = init_model(d / "tiny", "qwen2", "tiny", seed=0)
    small = init_model(d / "small", "llama", "small", seed=0)
    return {
        "q8_0": export_gguf(tiny, d / "tiny.q8_0.gguf", quant="q8_0"),
        "q4_k_m": export_gguf(small, d / "small.q4_k_m.gguf", quant="q4_k_m"),
    }


def _eexp(*args, input=None):
    """The real process: a segfault shows as a negative return code, which CliRunner would not survive."""
    return subprocess.run(
        [sys.executable, "-m", "eexp", *map(str, args)], capture_output=True, input=input, timeout=600
    )


@pytest.mark.parametrize("quant", ["q8_0", "q4_k_m"])
def test_quantized_policy_plays_shop_through_eval(quantized, quant):
    result = _eexp("eval", "--policy", quantized[quant], "--env", "shop", "-n", "3", "--max-steps", "4", "-q")
    assert result.returncode == 0, result.stderr.decode()
    episodes = [orjson.loads(x) for x in result.stdout.splitlines()]
    assert len(episodes) == 3 and all(e["steps"] >= 1 for e in episodes)
    assert all(e["meta"]["model_sha256"] for e in episodes)


@pytest.mark.parametrize("quant", ["q8_0", "q4_k_m"])
def test_quantized_policy_proposes_alternatives_through_branch(quantized, quant):
    expert = _eexp("expert", "--env", "shop", "-n", "3", "--seed", "2")
    assert expert.returncode == 0, expert.stderr.decode()
    result = _eexp(
        "branch",
        "--policy",
        quantized[quant],
        "-k",
        "2",
        "--steps",
        "0-1",
        "--max-tokens",
        "24",
        "-q",
        input=expert.stdout,
    )
    assert result.returncode == 0, result.stderr.decode()
    records = [orjson.loads(x) for x in result.stdout.splitlines()]
    assert len(records) == 3 * 2 and all(len(r["alternatives"]) == 2 for r in records)
    assert any(a["source"] == "policy" for r in records for a in r["alternatives"])


def test_forcing_extra_buffer_types_on_never_segfaults(quantized):
    """On an AMX CPU the forced choice is probed in a child process first: the run ends with a message naming the
    signal instead of dying of it (SIGSEGV on one AMX Xeon, SIGILL on another). Elsewhere it simply runs."""
    result = _eexp(
        "eval",
        "--policy",
        quantized["q8_0"],
        "--policy-arg",
        "extra_bufts=on",
        "--env",
        "shop",
        "-n",
        "1",
        "--max-steps",
        "2",
        "-q",
    )
    amx = any(f.startswith("amx") for f in cpu_flags())
    if result.returncode == 0:
        assert len(result.stdout.splitlines()) == 1
    else:
        assert amx and result.returncode == 1, (result.returncode, result.stderr.decode())
        said = re.search(
            r"llama\.cpp crashed \((SIG[A-Z]+)\) evaluating this model with extra buffer types on this AMX CPU",
            result.stderr.decode(),
        )
        assert said and said.group(1) in ("SIGSEGV", "SIGILL", "SIGBUS", "SIGABRT"), result.stderr.decode()


# --- doctor ------------------------------------------------------------------------------------------------------


def test_doctor_prints_the_cpu_and_the_choice(tiny_gguf, tiny_checkpoint, runner):
    pytest.importorskip("llama_cpp")
    from eexp.cli import cli

    result = runner.invoke(cli, ["doctor", "--policy", str(tiny_gguf), "--tokenizer", str(tiny_checkpoint)])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    cpu = next(x for x in lines if x.startswith("cpu:"))
    assert set(cpu.split()[1:]) <= set(cpu_flags()) | {"no", "flags", "reported"}
    assert f"llama.cpp: {choose_extra_bufts(cpu_flags()).describe()}" in lines
    as_json = runner.invoke(cli, ["doctor", "--policy", str(tiny_gguf), "--tokenizer", str(tiny_checkpoint), "--json"])
    summary = orjson.loads(as_json.stdout)
    assert summary["buffers"] == choose_extra_bufts(cpu_flags()).describe() and "llama_cpp" in summary


def test_doctor_on_a_missing_file_is_one_line(runner, tmp_path):
    from eexp.cli import cli

    result = runner.invoke(cli, ["doctor", "--policy", str(tmp_path / "iwm.gguf"), "--tokenizer", "IWM"])
    assert result.exit_code == 1
    assert result.output == f"Error: {tmp_path / 'iwm.gguf'}: no such GGUF file\n"
