"""Export time and file size per quant type for the `small` model, and what each file costs llama.cpp to run.

    .venv/bin/python bench/bench_export.py [--arch qwen2] [--threads 1]

A `small` model (init-model, ~3-4M parameters) is made once in a temporary directory. Each quant type is timed
two ways: `export_gguf` in-process after a warm-up (the conversion itself), and `eexp export` as a real process
(what a user waits for, Python start-up and imports included). The baseline beside them is the floor for any
exporter that reads the checkpoint through transformers: loading it, in-process and as a process. Sizes are
compared with the checkpoint's own safetensors file (f32). For each GGUF, llama-cpp-python's load time and greedy
decoding speed (128 tokens, --threads threads, best of 3) are measured in-process.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

QUANTS = ["f32", "f16", "q8_0", "q4_k_m"]
LOAD_ONLY = ("import sys; from transformers import AutoModelForCausalLM, AutoTokenizer; "
             "AutoModelForCausalLM.from_pretrained(sys.argv[1]); AutoTokenizer.from_pretrained(sys.argv[1])")


def timed(cmd: list[str], repeat: int) -> float:
    """Best wall time of `repeat` runs (the least disturbed by the other jobs on a shared machine)."""
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        best = min(best, time.perf_counter() - start)
    return best


def best_of(repeat: int, fn) -> float:
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def decode_speed(path: Path, threads: int, n: int = 128) -> tuple[float, float]:
    from eexp.policies.gguf_loader import open_gguf

    start = time.perf_counter()
    llm = open_gguf(str(path), n_ctx=512, n_threads=threads, verbose=False)
    load = time.perf_counter() - start
    try:
        prompt = llm.tokenize(b"Task: buy a red shirt.\nAction:", add_bos=False)

        def run():
            llm.reset()
            for made, _ in enumerate(llm.generate(prompt, temp=0.0, reset=True), 1):
                if made == n:
                    break
        return load, n / best_of(3, run)
    finally:
        llm.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="qwen2", choices=["qwen2", "llama"])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=2, help="runs per timing; the best is reported")
    args = parser.parse_args()
    eexp = [sys.executable, "-m", "eexp"]
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = Path(tmp) / "small"
        subprocess.run(eexp + ["init-model", str(ckpt), "--arch", args.arch, "--size", "small"], check=True,
                       stderr=subprocess.DEVNULL)
        weights = ckpt / "model.safetensors"
        params = next(line.split(":")[1].strip() for line in (ckpt / "config.yaml").read_text().splitlines()
                      if line.startswith("parameters:"))
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from eexp.models.export import export_gguf

        def load_only():
            AutoModelForCausalLM.from_pretrained(str(ckpt))
            AutoTokenizer.from_pretrained(str(ckpt))

        from transformers.utils import logging
        logging.disable_progress_bar()
        load_only()  # warm-up: imports, file cache
        base_in = best_of(args.repeat, load_only)
        base_proc = timed([sys.executable, "-c", LOAD_ONLY, str(ckpt)], args.repeat)
        st_size = weights.stat().st_size
        print(f"eexp export, {args.arch} small ({params} parameters), best of {args.repeat}; "
              f"llama.cpp decoding on {args.threads} thread(s)")
        print(f"{'':28} {'in-proc s':>9} {'process s':>9} {'size MiB':>9} {'/ f32 st':>8} {'load s':>7} "
              f"{'tok/s':>7}")
        print(f"{'baseline: load checkpoint':28} {base_in:9.2f} {base_proc:9.2f} {st_size / 2**20:9.2f} "
              f"{1.0:8.2f}")
        for quant in QUANTS:
            out = Path(tmp) / f"small.{quant}.gguf"
            inproc = best_of(args.repeat, lambda: export_gguf(ckpt, out, quant=quant))
            proc = timed(eexp + ["export", str(ckpt), "-o", str(out), "--quant", quant], args.repeat)
            size = out.stat().st_size
            load, speed = decode_speed(out, args.threads)
            print(f"{'export --quant ' + quant:28} {inproc:9.2f} {proc:9.2f} {size / 2**20:9.2f} "
                  f"{size / st_size:8.2f} {load:7.3f} {speed:7.0f}")
        print(f"(machine: {os.cpu_count()} cores, shared; process times include Python start-up and imports)")


if __name__ == "__main__":
    main()
