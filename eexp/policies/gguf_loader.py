"""The one place a GGUF is opened with llama.cpp: policies, doctor, export checks, tests and benchmarks call
`open_gguf`.

Why a loader of our own: llama.cpp can repack a model's weights into "extra buffer types" for faster CPU kernels.
On Intel CPUs with AMX, llama.cpp (as built by llama-cpp-python 0.3.36) repacks quantized weights into its AMX
buffer type and the process then dies at the first matrix product, with SIGSEGV on one AMX Xeon and SIGILL on
another (family 6, model 207, a KVM guest) (ggml-org/llama.cpp#20824; the same crash is why stanfordnlp/dspy turned
them off on Sapphire Rapids CI runners). f32 weights are never repacked and
are unaffected. The model parameter `use_extra_bufts` turns the repacking off, and then every quantized file runs.

The rule (`choose_extra_bufts`): off where the CPU has AMX, on elsewhere (where the generic repack is safe and
faster: bench/bench_llama_bufts.py measures both). `--policy-arg extra_bufts=on|off` overrides it. Forcing it on
where the CPU has AMX first evaluates the model in a child process, so a crash there becomes an error message
naming the signal instead of the death of the user's run.

`Llama(...)` does not expose `use_extra_bufts`: it builds its model parameters from
`llama_cpp.llama_model_default_params()`, so for the length of one constructor call that function hands out
parameters with the field set. A lock keeps two threads from opening models with different choices at once.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
from dataclasses import dataclass
from functools import lru_cache

from eexp.errors import PolicyError

AMX_FLAGS = ("amx_bf16", "amx_int8", "amx_tile", "amx_fp16", "amx_complex")
# flags worth showing in `eexp doctor`: the SIMD levels llama.cpp's CPU kernels are chosen by
SHOWN_FLAGS = (
    "avx",
    "avx2",
    "fma",
    "f16c",
    "avx512f",
    "avx512bw",
    "avx512_vnni",
    "avx512_bf16",
    "avx_vnni",
    "neon",
    "sve",
) + AMX_FLAGS
ISSUE = "ggml-org/llama.cpp#20824"
_LOCK = threading.Lock()
# the child process of `probe`: load with extra buffer types on and evaluate two tokens
PROBE = """
import sys, llama_cpp, llama_cpp.llama_cpp as low
defaults = low.llama_model_default_params
def on():
    params = defaults(); params.use_extra_bufts = True; return params
low.llama_model_default_params = on
llm = llama_cpp.Llama(model_path=sys.argv[1], n_ctx=64, verbose=False)
llm.eval(llm.tokenize(b"hello", add_bos=False)[:2] or [0])
"""


@dataclass(frozen=True)
class BufferChoice:
    """Whether llama.cpp may repack weights into extra CPU buffer types, and why."""

    use_extra_bufts: bool
    reason: str

    def describe(self) -> str:
        return f"extra buffer types {'on' if self.use_extra_bufts else 'off'} ({self.reason})"


@lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """The CPU feature flags Linux reports (/proc/cpuinfo); empty where there is no such file."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() in ("flags", "Features"):  # x86, ARM
                    return frozenset(value.split())
    except OSError:
        pass
    return frozenset()


def parse_switch(value, where: str = "--policy-arg extra_bufts") -> bool | None:
    """on/off/auto (or a bool from a YAML config) -> True/False/None."""
    if value is None or isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("", "auto"):
        return None
    if text in ("on", "true", "1", "yes"):
        return True
    if text in ("off", "false", "0", "no"):
        return False
    raise PolicyError(f"{where}={value!r}: expected on, off or auto")


def choose_extra_bufts(flags: frozenset[str] | set[str], override: bool | None = None) -> BufferChoice:
    """The decision for a CPU with these flags; `override` (from --policy-arg extra_bufts) wins."""
    amx = sorted(f for f in flags if f in AMX_FLAGS)
    if override is not None:
        return BufferChoice(override, "--policy-arg extra_bufts=" + ("on" if override else "off"))
    if amx:
        return BufferChoice(
            False, f"this CPU has AMX ({', '.join(amx)}): llama.cpp's AMX repack of quantized weights crashes, {ISSUE}"
        )
    return BufferChoice(True, "no AMX on this CPU: weight repacking is safe")


def open_gguf(path: str, *, extra_bufts=None, **kwargs):
    """`llama_cpp.Llama(model_path=path, **kwargs)` with the buffer-type choice applied. The choice is kept on the
    returned object as `eexp_buffers` (a BufferChoice). Raises PolicyError where llama.cpp cannot load the file."""
    import llama_cpp
    import llama_cpp.llama_cpp as low_level  # the module whose function Llama.__init__ calls

    choice = choose_extra_bufts(cpu_flags(), parse_switch(extra_bufts))
    if choice.use_extra_bufts and any(f in AMX_FLAGS for f in cpu_flags()) and not kwargs.get("vocab_only"):
        probe(path)
    with _LOCK:
        defaults = low_level.llama_model_default_params

        def with_choice():
            params = defaults()
            params.use_extra_bufts = choice.use_extra_bufts
            return params

        low_level.llama_model_default_params = with_choice
        try:
            llm = llama_cpp.Llama(model_path=path, **kwargs)
        finally:
            low_level.llama_model_default_params = defaults
    llm.eexp_buffers = choice
    return llm


def probe(path: str) -> None:
    """Evaluate two tokens of `path` with extra buffer types on, in a child process: a crash there is an error here."""
    proc = subprocess.run([sys.executable, "-c", PROBE, path], capture_output=True, text=True)
    if proc.returncode < 0:
        name = signal.Signals(-proc.returncode).name
        raise PolicyError(
            f"{path}: llama.cpp crashed ({name}) evaluating this model with extra buffer types on "
            f"this AMX CPU ({ISSUE}); leave --policy-arg extra_bufts at auto (off here)"
        )
    if proc.returncode != 0:
        tail = " | ".join(proc.stderr.strip().splitlines()[-2:])
        raise PolicyError(f"{path}: llama.cpp cannot load this model with extra buffer types on ({tail})")


def system_report() -> dict:
    """What `eexp doctor` prints about the CPU: its relevant flags, llama.cpp's own view, and the choice."""
    flags = cpu_flags()
    report = {"cpu_flags": [f for f in SHOWN_FLAGS if f in flags], "buffers": choose_extra_bufts(flags).describe()}
    try:
        import llama_cpp

        report["llama_cpp"] = f"{llama_cpp.__version__}: " + llama_cpp.llama_print_system_info().decode().strip()
    except ImportError:
        report["llama_cpp"] = "not installed"
    return report
