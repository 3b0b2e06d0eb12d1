"""finetune's encoding of its training files, most of its setup on a large file: `encode_items` (through
`encode_many`: each distinct piece of text tokenized once, in one batched call a chunk) against the same records
encoded one at a time by `encode` (one tokenizer call a piece, as finetune did before), the same examples asserted.

    .venv/bin/python bench/bench_encode.py [--tasks 200] [--size tiny] [--repeats 3]

The data are shop's IL examples with a 4-step history (bench_finetune.make_inputs' expert, then imitation-data) and
the tokenizer is init-model's, trained on them. Each side runs --repeats times, alternating; the best wall time of
each is reported, with the CPU time of that run (a fast tokenizer's batched call may use more than one thread).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench_finetune import make_inputs  # bench/bench_finetune.py, beside this script


def compare(tasks: int = 200, size: str = "tiny", repeats: int = 3) -> dict:
    """{"examples", "tokens", "one_by_one": {"wall_s", "cpu_s"}, "encode_items": {...}}: the best of `repeats`."""
    from transformers import AutoTokenizer

    from eexp.training.config import FinetuneConfig
    from eexp.training.data import encode, encode_items, read_examples

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        _, model = make_inputs(work, size, tasks)
        il = work / "il4.jsonl"
        with open(il, "wb") as f:  # the history makes the states long, as the recipes' prompts are
            expert = work / "expert.jsonl"
            subprocess.run(
                [sys.executable, "-m", "eexp", "imitation-data", str(expert), "--history", "4", "-q"],
                stdout=f,
                check=True,
            )
        tokenizer = AutoTokenizer.from_pretrained(model)
        cfg = FinetuneConfig(train_files=[str(il)], model=str(model), output=str(work / "unused"), max_length=2048)
        items, _ = read_examples([str(il)], "fail", print)

        def one_by_one():
            return [encode(tokenizer, i.record["messages"], cfg.max_length, cfg.truncate) for i in items]

        def all_at_once():
            items_again, reader = read_examples([str(il)], "fail", print)
            return encode_items("train", items_again, reader, tokenizer, cfg).examples

        best: dict[str, dict] = {}
        reference = None
        for _ in range(repeats):
            for name, fn in (("one_by_one", one_by_one), ("encode_items", all_at_once)):
                wall, cpu = time.perf_counter(), time.process_time()
                examples = fn()
                wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
                reference = reference or examples
                assert examples == reference, f"{name}: not the examples encode makes one by one"
                if name not in best or wall < best[name]["wall_s"]:
                    best[name] = {"wall_s": wall, "cpu_s": cpu}
        return {"examples": len(reference), "tokens": sum(e.length for e in reference), **best}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tasks", type=int, default=200, help="shop expert trajectories to make the IL data from")
    p.add_argument("--size", default="tiny", choices=["tiny", "small"])
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    r = compare(args.tasks, args.size, args.repeats)
    a, b = r["one_by_one"], r["encode_items"]
    print(f"{r['examples']:,} examples, {r['tokens']:,} tokens, the same Encoded both ways")
    for name, x in (("encode one by one", a), ("encode_items", b)):
        rate = r["examples"] / x["wall_s"]
        print(f"{name:>18}: {x['wall_s']:.2f} s wall ({rate:,.0f} examples/s), {x['cpu_s']:.2f} CPU-s")
    print(f"speed-up: {a['wall_s'] / b['wall_s']:.2f}x wall, {a['cpu_s'] / b['cpu_s']:.2f}x CPU")


if __name__ == "__main__":
    main()
